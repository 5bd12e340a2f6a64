#!/usr/bin/env bash
# Per-user part of the setup, run as the (unprivileged) engine user: rootless Podman settings.
# runc rather than crun: crun fails on these machines' hybrid cgroups; cgroupfs because there is
# no systemd user session; native overlay storage (kernel >= 5.13) instead of slow vfs.
set -euo pipefail
conf=${XDG_CONFIG_HOME:-$HOME/.config}/containers
mkdir -p "$conf"
if [ ! -f "$conf/containers.conf" ]; then
  printf '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > "$conf/containers.conf"
fi
if [ ! -f "$conf/storage.conf" ]; then
  printf '[storage]\ndriver = "overlay"\n' > "$conf/storage.conf"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/run/user/$(id -u)}
podman info --format '{{.Host.Security.Rootless}}' 2>/dev/null | grep -q true || {
  echo "setup-engine: rootless podman does not work for $(id -un); see 'podman info'" >&2; exit 1; }
