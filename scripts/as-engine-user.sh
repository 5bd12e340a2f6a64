#!/usr/bin/env bash
# Run a make target where the rootless engine lives: `make demo`, `make test` and `make bench`
# come through here. As root it first does the system setup, then mirrors the working tree into
# the engine user's home (root's checkout may not be readable or writable by that user) and runs
# the target there as that user. As a normal user it checks the system setup and runs in place.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=$1
user=${HPCDOCK_USER:-hpcdock}

if [ "$(id -u)" != 0 ]; then
  if ! command -v podman >/dev/null || ! command -v newuidmap >/dev/null || ! grep -q "^$(id -un):" /etc/subuid; then
    echo "hpcdock: the rootless engine is not set up for $(id -un). Run once, as root:" >&2
    echo "    sudo HPCDOCK_USER=$(id -un) $here/scripts/setup-system.sh" >&2
    exit 1
  fi
  exec make -C "$here" --no-print-directory "$target-here"
fi

t0=$(date +%s)
"$here/scripts/setup-system.sh"
# The benchmark compares against Docker Swarm jobs, which need rootless Docker's packages.
[ "$target" = bench ] && "$here/scripts/setup-docker-rootless.sh" --system
home=$(getent passwd "$user" | cut -d: -f6)
uid=$(id -u "$user")
dest="$home/hpcdock"
install -d -o "$user" -g "$user" "$dest"
# Mirror the tree, keeping what the user built there before (virtualenv, rendered frames).
tar -C "$here" --exclude=./.git --exclude=./.venv --exclude=./.venv-pyside2 --exclude='./examples/*/out' --exclude=./.state \
    --exclude='*/__pycache__' --exclude='*.egg-info' -cf - . | tar -C "$dest" --no-same-owner -xf -
chown -R "$user:" "$dest"
echo "hpcdock: system setup took $(( $(date +%s) - t0 ))s; running '$target' as $user in $dest"
cd /
exec runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin XDG_RUNTIME_DIR="/run/user/$uid" \
  LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" PYTEST_ARGS="${PYTEST_ARGS:-}" \
  make -C "$dest" --no-print-directory "$target-here"
