"""Frame thumbnails and the "is this output complete?" check.

Two pure building blocks the service calls when a frame finishes:

- :func:`is_output_complete` decides whether a frame's output file is finished, so a
  frame is only marked done when the renderer is really through with it.
- :func:`make_thumbnail` writes a small PNG (longest side at most 256 px by default) of a
  PNG, JPEG, TIFF or EXR output for the panel's frame grid.

Pillow reads the display-referred formats; OpenImageIO (the optional ``exr`` extra)
reads EXR and whatever Pillow cannot (multi-channel float TIFF). Float images are
scene-linear, so they are tone-mapped for display: linear -> sRGB with clamping, alpha
kept straight. Nothing here knows the store or the API.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Protocol, cast

from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_SIDE",
    "NeedsOpenImageIO",
    "ThumbnailError",
    "is_output_complete",
    "make_thumbnail",
    "sniff_format",
]

DEFAULT_MAX_SIDE = 256

PNG, JPEG, TIFF, EXR = "PNG", "JPEG", "TIFF", "EXR"

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
    (b"II+\x00", TIFF),  # BigTIFF
    (b"MM\x00+", TIFF),
    (b"v/1\x01", EXR),
)
_OGAWA_MAGIC = b"Ogawa"  # Alembic's archive format
# A non-image output written to this recently is probed for growth for this long.
_RECENT_WRITE_S = 1.0
_GROWTH_PROBE_S = 0.05
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"

# Single-channel data that is not a colour (depth and the like) is normalised to its own
# range instead of being tone-mapped: a depth pass would otherwise be a white rectangle.
_DATA_CHANNELS = {"z", "depth", "zdepth", "pz", "zback"}


class PixelProbe(Protocol):
    """Sees the pixels a thumbnail is made from (the frame checks use it; see framecheck.Probe)."""

    def display_image(self, img: Image.Image, size: tuple[int, int]) -> None: ...
    def float_pixels(
        self, pixels: Any, names: list[str], picked: list[int], *, has_alpha: bool, levels: bool
    ) -> None: ...
    def thumbnail_image(self, img: Image.Image) -> None: ...


class ThumbnailError(Exception):
    """A thumbnail could not be made; the message names the file and the reason."""


class NeedsOpenImageIO(ThumbnailError):
    """The file may be fine, but only OpenImageIO (not installed) could decode it."""


def sniff_format(path: Path | str) -> str | None:
    """Return ``"PNG"``, ``"JPEG"``, ``"TIFF"`` or ``"EXR"`` from the file's magic bytes, else None.

    Magic bytes rather than the extension, because render outputs are named by artists.
    Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


# ---------------------------------------------------------------------------------------
# completeness


def is_output_complete(path: Path | str, *, settle_s: float = 0.0) -> bool:
    """True when the frame output at ``path`` exists, is non-empty and is a whole file.

    Checks, cheapest that is still reliable per format:

    - PNG: the file ends with the IEND chunk, and Pillow can parse the header. Writers put
      IEND last, so a file still being written does not end with it. No pixel decode.
    - JPEG: the file ends with the EOI marker (trailing NUL/whitespace padding tolerated)
      and the header parses. Byte stuffing means EOI cannot occur inside scan data.
    - TIFF and EXR: a full decode (Pillow, else OpenImageIO; OpenImageIO for EXR). Neither
      format has an end marker, and libtiff/OpenEXR write directories and offset tables
      last, so a partial file fails to decode. When OpenImageIO is missing an EXR is judged
      by its header magic alone.
    - Alembic (Ogawa): the writer sets the "frozen" byte and the root group's offset in
      the header only when it closes the archive.
    - Anything else (geometry caches, USD, ...): non-zero size, and, when the file was
      written to within the last second, a size and mtime that hold still over a short
      probe: these formats have no end marker, and the service calls this once the task
      has said the frame is done, so a file still growing then is cut short.

    ``settle_s`` > 0 additionally requires the size and mtime to stay unchanged over that
    many seconds, for outputs watched while a renderer may still be appending.

    Never raises: any problem reading the file means "not complete (yet)".
    """
    path = Path(path)
    try:
        st = path.stat()
        if not path.is_file() or st.st_size == 0:
            return False
        if settle_s > 0:
            time.sleep(settle_s)
            st2 = path.stat()
            if (st2.st_size, st2.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                return False
        fmt = sniff_format(path)
        if fmt == PNG:
            return _ends_with(path, _PNG_IEND, strip=b"") and _header_ok(path)
        if fmt == JPEG:
            return _ends_with(path, _JPEG_EOI, strip=b"\x00\r\n \t") and _header_ok(path)
        if fmt in (TIFF, EXR):
            try:
                _load(path, fmt)
            except NeedsOpenImageIO:
                return True  # magic bytes present, and nothing here can decode more
            except Exception:  # any decode failure means "not complete"
                return False
        if fmt is None and _is_ogawa(path):
            return _ogawa_closed(path, st.st_size)
        if fmt is None and settle_s <= 0 and time.time() - st.st_mtime < _RECENT_WRITE_S:
            time.sleep(_GROWTH_PROBE_S)
            st2 = path.stat()
            return (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        return True
    except (OSError, ValueError):
        return False


def _is_ogawa(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(_OGAWA_MAGIC)) == _OGAWA_MAGIC


def _ogawa_closed(path: Path, size: int) -> bool:
    """Header: magic, frozen flag (0xff once closed), version, then the root group's offset."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 16 or head[5] != 0xFF:
        return False
    root = int.from_bytes(head[8:16], "little")
    return 16 <= root and root + 8 <= size


def _ends_with(path: Path, marker: bytes, *, strip: bytes) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if strip:
        tail = tail.rstrip(strip)
    return tail.endswith(marker)


def _header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.width > 0 and img.height > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


# ---------------------------------------------------------------------------------------
# thumbnails


def make_thumbnail(
    src: Path | str, dest: Path | str, max_side: int = DEFAULT_MAX_SIDE, probe: Optional[PixelProbe] = None
) -> Path:
    """Write a PNG thumbnail of ``src`` to ``dest``; its longest side is at most ``max_side``.

    Aspect ratio is kept and small images are not enlarged. Alpha is kept (straight, as PNG
    wants it). The PNG is written to a temporary file in ``dest``'s directory and renamed
    into place, so a concurrent reader sees either no file or a whole one. Returns ``dest``.

    Raises :class:`ThumbnailError` naming ``src`` when the file is missing, unreadable,
    truncated or of an unsupported format (or is an EXR and OpenImageIO is not installed).

    ``probe`` (a :class:`.framecheck.Probe`) is shown the decoded pixels on the way, so the
    frame checks cost no second read.
    """
    src, dest = Path(src), Path(dest)
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    try:
        if src.stat().st_size == 0:
            raise ThumbnailError(f"{src}: unreadable: the file is empty")
        fmt = sniff_format(src)
    except OSError as exc:
        raise ThumbnailError(f"{src}: unreadable: {exc.strerror or exc}") from exc
    try:
        img = _load(src, fmt, max_side=max_side, probe=probe)
    except ThumbnailError:
        raise
    except Exception as exc:
        # Decoders meeting corrupt data raise all sorts (struct.error, IndexError, ...).
        raise ThumbnailError(f"{src}: unreadable (corrupt): {type(exc).__name__}: {exc}") from exc
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if probe is not None:
        probe.thumbnail_image(img)
    _write_png_atomically(img, dest)
    return dest


def cached_thumbnail(src: Path, dest: Path) -> Path:
    """``dest``, made from ``src`` unless it is there: a frame's thumbnail is made when the frame
    finishes, or, if that failed, the first time someone asks for it (then kept)."""
    return dest if dest.exists() else make_thumbnail(src, dest)


def _write_png_atomically(img: Image.Image, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG")
            fh.flush()
            # A cached thumbnail that a crash left empty would be served forever; a 256 px
            # PNG is a few kB, so the fsync is cheap.
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load(
    src: Path, fmt: str | None, *, max_side: int | None = None, probe: Optional[PixelProbe] = None
) -> Image.Image:
    """Decode ``src`` fully into an 8-bit Pillow image in mode L, LA, RGB or RGBA."""
    if fmt == EXR:
        return _load_oiio(src, fmt, max_side, probe)
    try:
        return _load_pillow(src, max_side, probe)
    except _PillowCannot as exc:
        if fmt == TIFF or fmt is None:
            # Multi-channel float TIFFs and formats Pillow lacks: OpenImageIO may read them.
            try:
                return _load_oiio(src, fmt, max_side, probe)
            except ThumbnailError as oiio_exc:
                if fmt is None:
                    raise ThumbnailError(
                        f"{src}: unsupported format (not PNG, JPEG, TIFF or EXR, and neither Pillow "
                        f"nor OpenImageIO could read it)"
                    ) from oiio_exc
                if isinstance(oiio_exc, NeedsOpenImageIO):
                    raise NeedsOpenImageIO(
                        f"{src}: unreadable by Pillow ({exc}): corrupt, truncated, or a TIFF variant "
                        f"(e.g. multi-channel float) that needs OpenImageIO, which is not installed"
                    ) from exc
                raise  # OpenImageIO's reason is the specific one (truncated, unreadable)
        raise ThumbnailError(f"{src}: unreadable: {exc}") from exc


class _PillowCannot(Exception):
    """Pillow does not understand the file (as opposed to: the file is broken)."""


def _load_pillow(src: Path, max_side: int | None, probe: Optional[PixelProbe] = None) -> Image.Image:
    # LOAD_TRUNCATED_IMAGES is global state; a thumbnail of half a frame must be an error,
    # so insist on the default rather than trusting whoever imported Pillow before us.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ThumbnailError(
            f"{src}: cannot check it: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, truncated frames would pass"
        )
    try:
        with Image.open(src) as img:
            size = img.size  # before draft() shrinks it
            if max_side and img.format == "JPEG":
                # Let libjpeg decode at 1/2..1/8 scale: large JPEGs thumbnail much faster.
                img.draft("RGB", (max_side, max_side))
            img.load()
            display = _to_display(img)
        if probe is not None:
            probe.display_image(display, size)
        return display
    except UnidentifiedImageError as exc:
        raise _PillowCannot("Pillow cannot identify the image") from exc
    except Image.DecompressionBombError as exc:
        raise ThumbnailError(f"{src}: unreadable: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ThumbnailError(f"{src}: truncated: {msg}") from exc
        if isinstance(exc, OSError) and ("decoder" in msg or "mode" in msg):
            raise _PillowCannot(msg) from exc
        raise ThumbnailError(f"{src}: unreadable (corrupt or truncated): {msg}") from exc


def _to_display(img: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit L, LA, RGB or RGBA, without changing the look."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img.copy()
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode == "I":
        # 16/32-bit integer grey (16-bit PNG/TIFF): display-referred, so scale, don't normalise.
        img = img.convert("I")
        _, hi = cast("tuple[int, int]", img.getextrema())  # one band: (lowest, highest)
        scale = 1 / 257 if hi <= 65535 else 255 / hi
        return img.point(lambda v: v * scale).convert("L")
    if mode == "F":
        return _float_grey_to_display(img)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("La", "RGBa"):
        return img.convert(mode.upper())
    return img.convert("RGBA" if "A" in mode else "RGB")


def _float_grey_to_display(img: Image.Image) -> Image.Image:
    """A single-channel float image (float TIFF) is scene-linear grey: tone-map like EXR."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with OpenImageIO and most Pillows
        lut = [round(255 * _srgb_scalar(i / 255)) for i in range(256)]
        return img.point(lambda v: v * 255).convert("L").point(lut)
    arr = np.asarray(img, dtype=np.float32)
    return Image.fromarray(_encode(arr[:, :, None], linear=True, alpha=False)[:, :, 0], "L")


def _srgb_scalar(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return 12.92 * x if x <= 0.0031308 else 1.055 * math.pow(x, 1 / 2.4) - 0.055


def _encode(arr: Any, *, linear: bool, alpha: bool) -> Any:
    """float array (h, w, c) -> uint8; colour channels linear->sRGB when ``linear``."""
    import numpy as np

    arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    arr = np.clip(arr, 0.0, 1.0)
    colour = arr[:, :, :-1] if alpha else arr
    if linear:
        colour = np.where(colour <= 0.0031308, colour * 12.92, 1.055 * np.power(colour, 1 / 2.4) - 0.055)
    if alpha:
        arr = np.concatenate([colour, arr[:, :, -1:]], axis=2)
    else:
        arr = colour
    return np.round(arr * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# OpenImageIO


def _import_oiio() -> Any:
    """Import OpenImageIO lazily: it is an optional extra, only EXR (and odd TIFFs) need it."""
    import OpenImageIO

    return OpenImageIO


def _load_oiio(
    src: Path, fmt: str | None, max_side: int | None = None, probe: Optional[PixelProbe] = None
) -> Image.Image:
    try:
        oiio = _import_oiio()
        import numpy as np
    except ImportError as exc:
        raise NeedsOpenImageIO(
            f"{src}: reading {fmt or 'this image'} files needs OpenImageIO, which is not installed "
            f"(pip install 'hpcdock[exr]' or pip install OpenImageIO)"
        ) from exc

    inp = oiio.ImageInput.open(str(src))
    if inp is None:
        err = _first_line(oiio.geterror()) or "OpenImageIO could not open it"
        if fmt is None:
            raise ThumbnailError(f"{src}: unsupported format: {err}")
        raise ThumbnailError(f"{src}: unreadable: {err}")
    try:
        spec = inp.spec()
        names = [str(n) for n in spec.channelnames]
        if len(names) != spec.nchannels:
            names = [f"channel{i}" for i in range(spec.nchannels)]
        idx, has_alpha, is_colour = _pick_channels(names)
        # Read only the span of channels the thumbnail uses: a multi-layer EXR with dozens of
        # AOVs would otherwise cost gigabytes of float pixels for a 256 px picture.
        first, last = min(idx), max(idx) + 1
        pixels = inp.read_image(0, 0, first, last, "float")
        if pixels is None:
            err = _first_line(inp.geterror()) or "pixel data could not be read"
            raise ThumbnailError(f"{src}: truncated or corrupt: {err}")
        is_float = spec.format.basetype in (oiio.BASETYPE.HALF, oiio.BASETYPE.FLOAT, oiio.BASETYPE.DOUBLE)
    finally:
        inp.close()

    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels[:, :, [i - first for i in idx]]
    if probe is not None:
        probe.float_pixels(pixels, names, idx, has_alpha=has_alpha, levels=is_colour)
    if max_side:
        pixels = _box_reduce(pixels, max_side)
    return _oiio_to_display(pixels, has_alpha=has_alpha, is_colour=is_colour, linear=is_float)


def _box_reduce(pixels: Any, max_side: int) -> Any:
    """Average k x k blocks while the image is still scene-linear (and premultiplied).

    Filtering light, not its sRGB encoding, is what keeps highlights and edges right; it also
    means the tone map runs on a thumbnail-sized array. Pillow does the final, non-integer step.
    Edge pixels that do not fill a block (fewer than k) are dropped; the aspect change is
    below one thumbnail pixel.
    """
    import numpy as np

    h, w, c = pixels.shape
    k = max(h, w) // max_side
    if k < 2:
        return pixels
    hh, ww = (h // k) * k, (w // k) * k
    if hh == 0 or ww == 0:
        return pixels
    block = pixels[:hh, :ww].reshape(hh // k, k, ww // k, k, c)
    with np.errstate(invalid="ignore", over="ignore"):
        # NaN would poison a whole block; infinities are left to clamp (colour) or go white (data).
        return np.where(np.isnan(block), 0.0, block).mean(axis=(1, 3), dtype=np.float32)


def _first_line(message: str, limit: int = 300) -> str:
    """OpenImageIO reports one line per failed scanline; the first says enough."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _pick_channels(names: list[str]) -> tuple[list[int], bool, bool]:
    """Choose which channels make the thumbnail: (indices, has_alpha, is_colour).

    Prefers the plain R, G, B(, A) of the main layer; then a luminance Y; then the first
    layer's ``*.R/G/B``; else the first channel alone (data such as depth when so named).
    """
    upper = [n.upper() for n in names]

    def find(name: str, suffix_ok: bool = False) -> int | None:
        if name in upper:
            return upper.index(name)
        if suffix_ok:
            for i, n in enumerate(upper):
                if n.endswith("." + name):
                    return i
        return None

    alpha = find("A")
    rgb = [find(c) for c in "RGB"]
    if all(i is not None for i in rgb):
        return [*rgb, *([alpha] if alpha is not None else [])], alpha is not None, True  # type: ignore[list-item]
    y = find("Y")
    if y is not None:
        return [y, *([alpha] if alpha is not None else [])], alpha is not None, True
    rgb = [find(c, suffix_ok=True) for c in "RGB"]
    if all(i is not None for i in rgb):
        return rgb, False, True  # type: ignore[return-value]
    if len(names) >= 3 and not any(n.lower() in _DATA_CHANNELS for n in names[:3]):
        return [0, 1, 2], False, True
    first = names[0].rsplit(".", 1)[-1].lower() if names else ""
    return [0], False, first not in _DATA_CHANNELS


def _oiio_to_display(arr: Any, *, has_alpha: bool, is_colour: bool, linear: bool) -> Image.Image:
    """Picked float channels (h, w, c) -> 8-bit Pillow image; see the module docstring."""
    import numpy as np

    if not is_colour:
        # Data (depth): normalise its finite range to 0..1, near = dark.
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        linear = False
    elif has_alpha and linear:
        # Renders are premultiplied; PNG alpha is straight. Unpremultiply where there is coverage.
        a = np.clip(np.nan_to_num(arr[:, :, -1:], nan=0.0), 0.0, 1.0)
        arr = arr.copy()
        arr[:, :, :-1] = np.where(a > 1e-6, arr[:, :, :-1] / np.maximum(a, 1e-6), 0.0)
    out = _encode(arr, linear=linear, alpha=has_alpha)
    channels = out.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    if channels == 1:
        out = out[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(out), mode)
