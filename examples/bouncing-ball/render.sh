#!/bin/sh
# Render one chunk of frames of scene.pov with POV-Ray, printing hpcdock's frame markers.
#
#   sh render.sh 7-12     (an OpenJD CHUNK[INT] value: "START-END" or a single frame "7")
#
# Runs inside the hpcdock-povray image with the bundle directory as working directory
# (mounted read-only) and out/ writable. Each frame is rendered by its own povray run
# (+SF/+EF equal) into a scratch directory under out/, then renamed to
# out/ball.NNNN.png, so a finished name only ever holds a complete image.
# Settings can be overridden with environment variables (defaults in brackets):
#   WIDTH [640] HEIGHT [360] ANTIALIAS [0.3] LAST_FRAME [48, the clip's final frame]
#   THREADS [POV-Ray's default: one per CPU the container sees]
set -u

cd "$(dirname "$0")" || exit 1
here=$(pwd)

chunk=${1:?usage: sh render.sh START-END | FRAME}
case "$chunk" in
    *-*) start=${chunk%%-*} end=${chunk#*-} ;;
    *) start=$chunk end=$chunk ;;
esac
case "$start$end" in
    "" | *[!0-9]*) echo "render.sh: bad frame chunk '$chunk' (want START-END or FRAME)" >&2; exit 2 ;;
esac
# strip leading zeros so the shell does not read them as octal
decimal() { echo "$1" | sed 's/^0*//; s/^$/0/'; }
start=$(decimal "$start")
end=$(decimal "$end")
if [ "$end" -lt "$start" ]; then
    echo "render.sh: chunk '$chunk' ends before it starts" >&2
    exit 2
fi

width=${WIDTH:-640}
height=${HEIGHT:-360}
aa=${ANTIALIAS:-0.3}
last=${LAST_FRAME:-48}
if [ "$last" -lt "$end" ]; then last=$end; fi
threads=
if [ -n "${THREADS:-}" ]; then threads="+WT$THREADS"; fi

mkdir -p out || exit 1
scratch=$(mktemp -d "$here/out/.render.XXXXXX") || exit 1
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

count=$((end - start + 1))
done_count=0
failed=0
frame=$start
echo "render.sh: frames $start-$end of scene.pov at ${width}x${height}, antialias $aa"
while [ "$frame" -le "$end" ]; do
    name=$(printf 'ball.%04d.png' "$frame")
    echo "::hpcdock::frame-start $frame"
    t0=$(date +%s%N)
    # -D: no display window; +KFI1 +KFF: the clip; +SF/+EF: this one frame of it.
    # shellcheck disable=SC2086
    povray +Iscene.pov +O"$scratch/ball.png" +FN +W"$width" +H"$height" +A"$aa" -D -GP $threads \
        +KFI1 +KFF"$last" +SF"$frame" +EF"$frame" >"$scratch/log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    # POV-Ray appends the zero-padded frame number itself (ball07.png, ball007.png, ...).
    made=
    for f in "$scratch"/ball*.png; do
        if [ -f "$f" ]; then made=$f; fi
    done
    if [ "$rc" -eq 0 ] && [ -n "$made" ] && mv -f "$made" "out/$name"; then
        done_count=$((done_count + 1))
        ds=$(((t1 - t0) / 100000000))
        echo "render.sh: frame $frame rendered in $((ds / 10)).$((ds % 10)) s"
        echo "::hpcdock::frame-done $frame $here/out/$name"
    else
        failed=$((failed + 1))
        cat "$scratch/log" >&2
        reason=$(grep -i -m1 'error' "$scratch/log" | tr -d '\r')
        echo "::hpcdock::frame-failed $frame povray exit status $rc${reason:+: $reason}"
    fi
    rm -f "$scratch"/ball*.png "$scratch/log"
    echo "ALF_PROGRESS $(((done_count + failed) * 100 / count))%"
    frame=$((frame + 1))
done

if [ "$failed" -gt 0 ]; then
    echo "render.sh: $failed of $count frames failed" >&2
    exit 1
fi
echo "render.sh: $count frames done"
