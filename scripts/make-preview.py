#!/usr/bin/env python3
"""Write an animated preview (GIF) of rendered frames.

    make-preview.py FRAMES_DIR OUT.gif [--width 320] [--fps 24] [--pattern '*.png']

Frames are the images in FRAMES_DIR matching the pattern, in order of the frame number
in their names (ball.0007.png sorts after ball.0006.png and before ball.0010.png, with or
without zero padding). Each frame is scaled to --width pixels wide and quantised with one
shared palette, so the GIF is small and does not flicker. Needs only Pillow.
Prints what it wrote; exits 1 when there are no frames.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image

_NUMBER = re.compile(r"(\d+)")


def frame_key(path: Path) -> tuple:
    """Sort key: the last number in the file name, then the name itself."""
    numbers = _NUMBER.findall(path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def find_frames(frames_dir: Path, pattern: str) -> list[Path]:
    return sorted(
        (p for p in frames_dir.glob(pattern) if p.is_file() and not p.name.startswith(".")), key=frame_key
    )


def load_frame(path: Path, width: int) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if width and im.width != width:
            height = max(1, round(im.height * width / im.width))
            im = im.resize((width, height), Image.Resampling.LANCZOS)
        return im


def write_gif(frames: list[Image.Image], out: Path, fps: float) -> None:
    # One palette for every frame (taken from a montage of a few of them) keeps colours steady.
    sample = frames[:: max(1, len(frames) // 8)][:8]
    montage = Image.new("RGB", (sample[0].width, sample[0].height * len(sample)))
    for i, im in enumerate(sample):
        montage.paste(im, (0, i * sample[0].height))
    palette = montage.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    quantised = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in frames]
    quantised[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=quantised[1:],
        loop=0,
        duration=max(20, round(1000 / fps)),
        optimize=False,
        disposal=1,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("frames_dir", type=Path, help="directory holding the rendered frames")
    ap.add_argument("out", type=Path, help="GIF to write")
    ap.add_argument("--width", type=int, default=320, help="width of the preview in pixels (default 320)")
    ap.add_argument("--fps", type=float, default=24.0, help="frames per second (default 24)")
    ap.add_argument("--pattern", default="*.png", help="glob for the frame files (default *.png)")
    args = ap.parse_args(argv)

    if args.out.suffix.lower() != ".gif":
        ap.error(f"{args.out}: only animated GIF is written (name it .gif)")
    if args.width < 16 or args.fps <= 0:
        ap.error("--width must be at least 16 and --fps positive")
    paths = find_frames(args.frames_dir, args.pattern)
    if not paths:
        print(f"make-preview: no frames matching {args.pattern} in {args.frames_dir}", file=sys.stderr)
        return 1
    frames = []
    for path in paths:
        try:
            frames.append(load_frame(path, args.width))
        except OSError as exc:  # a half-written or broken file: leave it out, say so
            print(f"make-preview: skipping {path}: {exc}", file=sys.stderr)
    if not frames:
        print(f"make-preview: none of the {len(paths)} files could be read", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    write_gif(frames, tmp, args.fps)
    tmp.replace(args.out)
    w, h = frames[0].size
    kib = args.out.stat().st_size / 1024
    print(f"make-preview: wrote {args.out} ({len(frames)} frames, {w}x{h}, {args.fps:g} fps, {kib:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
