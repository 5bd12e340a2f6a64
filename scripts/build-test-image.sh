#!/usr/bin/env bash
# The tiny test image the engine tests run: static busybox, imported into the user's rootless
# Podman storage (no registry needed). Skipped when the image is already there.
set -euo pipefail
image=${1:-localhost/hpcdock-test:latest}
if podman image exists "$image"; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/tmp"
chmod 1777 "$tmp/tmp"
cp /bin/busybox "$tmp/bin/busybox"
for tool in $("$tmp/bin/busybox" --list); do
  [ "$tool" = busybox ] || ln -s busybox "$tmp/bin/$tool"
done
tar -C "$tmp" -c . | podman import --change 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
