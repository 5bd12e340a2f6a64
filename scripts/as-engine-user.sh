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
# The Slurm engine's tests and benchmark run on a single-node Slurm cluster started here; the Swarm
# engine's tests and the benchmark's Swarm rows need rootless Docker's packages.
case "$target" in test | bench)
  "$here/scripts/setup-slurm.sh"
  "$here/scripts/setup-docker-rootless.sh" --system ;;
esac
home=$(getent passwd "$user" | cut -d: -f6)
uid=$(id -u "$user")
dest="$home/hpcdock"
install -d -o "$user" -g "$user" "$dest"
# Mirror the tree into a fresh copy, carrying over what the user built there before (virtualenvs,
# rendered frames and previews, a state dir), so a file removed or renamed here is gone there
# too: a stale copy of a renamed test module would still be collected.
fresh="$dest.fresh"
rm -rf "$fresh"
install -d -o "$user" -g "$user" "$fresh"
tar -C "$here" --exclude=./.git --exclude=./.venv --exclude=./.venv-pyside2 --exclude=./.venv-openjd --exclude='./examples/*/out' --exclude=./.state \
    --exclude='./examples/*/preview.*' --exclude='*/__pycache__' --exclude='*.egg-info' -cf - . \
  | tar -C "$fresh" --no-same-owner -xf -
(cd "$dest" && find . -maxdepth 1 \( -name .venv -o -name .venv-pyside2 -o -name .venv-openjd -o -name .state \) -print
 if [ -d examples ]; then find ./examples -mindepth 2 -maxdepth 2 \( -name out -o -name 'preview.*' \) -print; fi) \
  | while read -r kept; do
      if [ -d "$fresh/$(dirname "$kept")" ]; then mv "$dest/$kept" "$fresh/$kept"; fi
    done
rm -rf "$dest"
mv "$fresh" "$dest"
chown -R "$user:" "$dest"
echo "hpcdock: system setup took $(( $(date +%s) - t0 ))s; running '$target' as $user in $dest"
cd /
exec runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin XDG_RUNTIME_DIR="/run/user/$uid" \
  LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" PYTEST_ARGS="${PYTEST_ARGS:-}" BENCH_ARGS="${BENCH_ARGS:-}" \
  make -C "$dest" --no-print-directory "$target-here"
