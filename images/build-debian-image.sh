#!/bin/sh
# Build one of hpcdock's images (images/NAME/recipe.env) from Debian packages, without a
# registry: mmdebstrap makes a Debian root filesystem, the rootless engine imports it.
# Each image's own images/NAME/build.sh runs this with its directory.
#
# Idempotent: the image is tagged with a hash of the recipe (recipe.env + this script);
# when the engine already has IMAGE:<hash> nothing is built, only :latest is (re)pointed.
#
# Usage (DIR is the image's directory, holding recipe.env):
#   build-debian-image.sh DIR [--force]        build if needed, then tag IMAGE:<hash> and IMAGE:latest
#   build-debian-image.sh DIR hash             print the recipe hash
#   build-debian-image.sh DIR ref              print IMAGE:<hash>
#   build-debian-image.sh DIR rootfs OUT.tar   only make the root filesystem tarball
#   build-debian-image.sh DIR import TAR       only import a tarball made by "rootfs" (as the engine user)
#
# Who runs it:
#   - the unprivileged engine user (normal case): mmdebstrap runs in --mode=unshare
#     (needs /etc/subuid and /etc/subgid entries for the user, as rootless Podman does);
#   - root: the root filesystem is built as root, and every engine command runs as the
#     unprivileged user $HPCDOCK_ENGINE_USER (default: hpcdock) through runuser, so the
#     image lands in that user's rootless storage. Root's own engine is never used.
#
# Environment:
#   HPCDOCK_ENGINE_USER    engine user when run as root (default: hpcdock)
#   HPCDOCK_ENGINE_CLI     podman (default) or docker (a rootless Docker's CLI)
#   HPCDOCK_DEBIAN_MIRROR  Debian mirror URI (default: mmdebstrap's, deb.debian.org
#                          with the -updates and -security suites)
set -eu

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
[ $# -ge 1 ] && [ -f "$1/recipe.env" ] || { echo "usage: $0 DIR [--force|hash|ref|rootfs OUT.tar|import TAR]" >&2; exit 2; }
RECIPE=$(cd "$1" && pwd)/recipe.env
shift
# Optional in a recipe: CUSTOMIZE, a shell command run on the finished tree ("$1" is its root).
CUSTOMIZE=
# shellcheck source=povray/recipe.env
. "$RECIPE"

ENGINE_USER=${HPCDOCK_ENGINE_USER:-hpcdock}
CLI=${HPCDOCK_ENGINE_CLI:-podman}

say() { printf 'build-debian-image.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s; }

recipe_hash() {
    cat "$RECIPE" "$SELF" | sha256sum | cut -c1-12
}

is_root() { [ "$(id -u)" = 0 ]; }

# Run the container engine CLI, as the engine user when we are root.
engine() {
    if is_root; then
        uid=$(id -u "$ENGINE_USER" 2>/dev/null) || die "no user '$ENGINE_USER' for the rootless engine (set HPCDOCK_ENGINE_USER)"
        home=$(getent passwd "$ENGINE_USER" | cut -d: -f6)
        run_dir=/run/user/$uid
        if [ ! -d "$run_dir" ]; then
            install -d -m 0700 -o "$uid" -g "$(id -g "$ENGINE_USER")" "$run_dir"
        fi
        # A rootless Docker listens on the user's runtime dir; Podman needs no socket here.
        docker_host=${DOCKER_HOST:-unix://$run_dir/docker.sock}
        (cd / && runuser -u "$ENGINE_USER" -- env HOME="$home" USER="$ENGINE_USER" LOGNAME="$ENGINE_USER" \
            XDG_RUNTIME_DIR="$run_dir" DOCKER_HOST="$docker_host" \
            PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" "$CLI" "$@")
    else
        "$CLI" "$@"
    fi
}

make_rootfs() {
    out=$1
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    set -- --variant="$VARIANT" --include="$PACKAGES" --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --skip=output/dev
    # merged-usr hook: the /usr merge without the usrmerge package (which pulls in perl).
    # output/dev: no device nodes in the tarball; the engine provides /dev.
    # Thin the tree after installation (dpkg path-exclude trips the merged-usr hook).
    strip='cd "$1" && rm -rf '"$STRIP_DIRS"' var/cache/apt/* var/lib/apt/lists/* &&'
    strip="$strip"' find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete &&'
    strip="$strip"' find usr/share/doc -mindepth 1 -type d -empty -delete'
    set -- "$@" --customize-hook="$strip"
    if [ -n "$CUSTOMIZE" ]; then set -- "$@" --customize-hook="$CUSTOMIZE"; fi
    # Use the host apt's proxy, if it has one.
    proxy=$(apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n1)
    if [ -n "$proxy" ]; then set -- "$@" --aptopt="Acquire::http::Proxy \"$proxy\""; fi
    if is_root; then mode=root; else mode=unshare; fi
    set -- "$@" --mode=$mode "$SUITE" "$out"
    if [ -n "${HPCDOCK_DEBIAN_MIRROR:-}" ]; then set -- "$@" "$HPCDOCK_DEBIAN_MIRROR"; fi
    say "mmdebstrap: Debian $SUITE, $VARIANT + $PACKAGES, $mode mode, mirror ${HPCDOCK_DEBIAN_MIRROR:-default}"
    log=$(mktemp "${TMPDIR:-/tmp}/hpcdock-mmdebstrap.XXXXXX")
    if ! mmdebstrap "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "mmdebstrap failed (last lines above)"
    fi
    rm -f "$log"
}

import_rootfs() {
    tar=$1 ref=$2 hash=$3
    say "importing $tar as $ref"
    # Read the tarball here (root may own it) and hand it to the engine on stdin.
    quiet=
    if [ "$CLI" = podman ]; then quiet=--quiet; fi
    engine import $quiet \
        --change 'CMD ["/bin/sh"]' \
        --change 'WORKDIR /tmp' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV HOME=/root' \
        --change "LABEL hpcdock.recipe=$hash" \
        --change "LABEL org.opencontainers.image.title=${IMAGE##*/}" \
        --change "LABEL org.opencontainers.image.description=$PACKAGES from Debian $SUITE packages, built by hpcdock images/build-debian-image.sh" \
        - "$ref" <"$tar" >/dev/null
    engine tag "$ref" "$IMAGE:latest"
    # Drop the tags of images built from older recipes (an image still in use stays).
    engine images --format '{{.Repository}}:{{.Tag}}' "$IMAGE" 2>/dev/null | while read -r old; do
        case "$old" in "$ref" | "$IMAGE:latest" | *"<none>"*) ;; *) engine rmi "$old" >/dev/null 2>&1 || true ;; esac
    done
}

has_image() {
    got=$(engine image inspect --format '{{index .Config.Labels "hpcdock.recipe"}}' "$1" 2>/dev/null) || return 1
    [ "$got" = "$2" ]
}

build() {
    force=$1
    t0=$(now)
    hash=$(recipe_hash)
    ref="$IMAGE:$hash"
    if [ "$force" = 0 ] && has_image "$ref" "$hash"; then
        engine tag "$ref" "$IMAGE:latest"
        say "$ref is up to date (recipe $hash); tagged $IMAGE:latest; $(($(now) - t0)) s"
        echo "$ref"
        return 0
    fi
    work=$(mktemp -d "${TMPDIR:-/tmp}/hpcdock-image.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    trap 'exit 130' INT TERM
    say "building $ref (recipe $hash)"
    make_rootfs "$work/rootfs.tar"
    t1=$(now)
    say "root filesystem: $(du -m "$work/rootfs.tar" | cut -f1) MiB in $((t1 - t0)) s"
    import_rootfs "$work/rootfs.tar" "$ref" "$hash"
    rm -rf "$work"
    trap - EXIT
    size=$(engine image inspect --format '{{.Size}}' "$ref" 2>/dev/null || echo 0)
    say "imported $ref and $IMAGE:latest ($((size / 1048576)) MiB) in $(($(now) - t1)) s; total $(($(now) - t0)) s"
    echo "$ref"
}

case "${1:-}" in
    "") build 0 ;;
    --force) build 1 ;;
    hash) recipe_hash ;;
    ref) echo "$IMAGE:$(recipe_hash)" ;;
    rootfs)
        [ $# = 2 ] || die "usage: build-debian-image.sh DIR rootfs OUT.tar"
        t0=$(now)
        make_rootfs "$2"
        say "wrote $2 ($(du -m "$2" | cut -f1) MiB) in $(($(now) - t0)) s"
        ;;
    import)
        [ $# = 2 ] || die "usage: build-debian-image.sh DIR import TAR"
        [ -r "$2" ] || die "cannot read $2"
        t0=$(now)
        hash=$(recipe_hash)
        import_rootfs "$2" "$IMAGE:$hash" "$hash"
        say "imported $IMAGE:$hash and $IMAGE:latest in $(($(now) - t0)) s"
        echo "$IMAGE:$hash"
        ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown argument '$1' (try --help)" ;;
esac
