#!/usr/bin/env bash
# The tiny test image the engine tests and benchmarks run: static busybox, imported into the
# user's rootless engine storage (no registry needed). Skipped when the image is already there.
# ENGINE=docker imports into the Docker at $DOCKER_HOST instead of Podman.
set -euo pipefail
image=${1:-localhost/hpcdock-test:latest}
engine=${ENGINE:-podman}
if "$engine" image inspect "$image" >/dev/null 2>&1; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/tmp"
chmod 1777 "$tmp/tmp"
cp /bin/busybox "$tmp/bin/busybox"
for tool in $("$tmp/bin/busybox" --list); do
  [ "$tool" = busybox ] || ln -s busybox "$tmp/bin/$tool"
done
tar -C "$tmp" -c . | "$engine" import --change 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
