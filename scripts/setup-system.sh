#!/usr/bin/env bash
# System part of hpcdock's setup, run as root (make demo / make test do it for you):
# the rootless engine's packages, the unprivileged user it runs as, and its runtime dir.
# Idempotent: a second run installs nothing and changes nothing.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup-system.sh: run as root (sudo $0)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
user=${HPCDOCK_USER:-hpcdock}

packages=(podman uidmap slirp4netns runc busybox-static mmdebstrap python3 python3-venv python3-dev
          libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core
          # PySide2 5.15, the binding of Houdini 19.5-20.5, for the panel's PySide2 test lane
          python3-pyside2.qtcore python3-pyside2.qtgui python3-pyside2.qtwidgets python3-pyside2.qttest)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! id "$user" >/dev/null 2>&1; then
  echo "setup-system: creating user $user"
  useradd --create-home --shell /bin/bash "$user"
fi
# Rootless containers need subordinate ids for the user namespace, a range of 65536 per user
# that overlaps no other user's: ids shared by two users' containers would let one user's
# container own (and read or change) files of the other's.
next_subid() {  # the first id after every range in /etc/sub{u,g}id ($1), 100000 at the least
  awk -F: 'BEGIN { n = 100000 } NF >= 3 && $2 + $3 > n { n = $2 + $3 } END { print n }' "$1"
}
for kind in uid gid; do
  file=/etc/sub$kind
  touch "$file"
  if ! grep -q "^$user:" "$file"; then
    start=$(next_subid "$file")
    usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$user"
  fi
done

uid=$(id -u "$user")
install -d -m 0700 -o "$user" -g "$user" "/run/user/$uid"
# Networked containers (network: true) use slirp4netns, which needs /dev/net/tun.
[ -c /dev/net/tun ] && chmod 0666 /dev/net/tun || true
# The CDI spec of the harmless test "GPU" the engine tests use (rootless Podman 4 reads /etc/cdi only).
install -D -m 0644 "$here/tests/engine/cdi/hpcdock-test.yaml" /etc/cdi/hpcdock-test.yaml
echo "setup-system: ok (engine user $user, uid $uid)"
