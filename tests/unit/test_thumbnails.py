"""Unit tests for frame thumbnails and the output-completeness check."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from hpcdock_service import thumbnails
from hpcdock_service.thumbnails import ThumbnailError, is_output_complete, make_thumbnail, sniff_format
from PIL import Image

try:
    import numpy as np
    import OpenImageIO as oiio
except ImportError as exc:  # pragma: no cover - depends on the environment
    oiio = None
    np = None
    OIIO_MISSING = f"OpenImageIO (the 'exr' extra) is not importable: {exc}"
else:
    OIIO_MISSING = ""

needs_oiio = pytest.mark.skipif(oiio is None, reason=OIIO_MISSING or "OpenImageIO available")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- helpers -------------------------------------------------------------------------


def gradient(size, mode="RGB"):
    """A non-uniform image, so a resize has something to filter."""
    w, h = size
    img = Image.linear_gradient("L").resize((w, h))
    if mode == "L":
        return img
    bands = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("L", (w, h), 90)]
    if mode == "RGBA":
        bands.append(Image.new("L", (w, h), 128))
    return Image.merge(mode, bands)


def check_png(path: Path, max_side=256):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        assert max(img.size) <= max_side
        return img.copy()


def assert_aspect(src_size, thumb_size):
    (sw, sh), (tw, th) = src_size, thumb_size
    # Rounding to whole pixels moves the ratio by at most one pixel on the short side.
    assert abs(tw / th - sw / sh) <= (sw / sh) / min(tw, th) + 1e-9
    assert max(tw, th) == min(256, max(sw, sh))


def png16(path: Path, width, height, pixels, color_type):
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit RGB): pixels is a list of rows of tuples."""
    raw = b"".join(b"\x00" + b"".join(struct.pack(">" + "H" * len(px), *px) for px in row) for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def write_exr(path: Path, pixels, channels=None, fmt="half"):
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    spec = oiio.ImageSpec(w, h, c, fmt)
    if channels:
        spec.channelnames = tuple(channels)
    out = oiio.ImageOutput.create(str(path))
    assert out is not None, oiio.geterror()
    assert out.open(str(path), spec), out.geterror()
    assert out.write_image(pixels), out.geterror()
    out.close()
    return path


def truncate(path: Path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def srgb8(linear):
    linear = min(1.0, max(0.0, linear))
    v = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(v * 255)


# -- Pillow formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext", "size"),
    [
        ("PNG", "png", (800, 400)),
        ("JPEG", "jpg", (300, 1000)),
        ("TIFF", "tif", (640, 480)),
        ("PNG", "png", (1000, 1)),
        ("JPEG", "jpg", (2048, 1152)),
    ],
)
def test_common_formats_thumbnail(tmp_path, fmt, ext, size):
    src = tmp_path / f"beauty.0001.{ext}"
    gradient(size).save(src, format=fmt)
    dest = make_thumbnail(src, tmp_path / "thumbs" / "0001.png")
    assert dest == tmp_path / "thumbs" / "0001.png"
    img = check_png(dest)
    assert img.mode == "RGB"
    assert_aspect(size, img.size)


def test_small_image_is_not_enlarged(tmp_path):
    src = tmp_path / "small.png"
    gradient((40, 30)).save(src)
    assert check_png(make_thumbnail(src, tmp_path / "t.png")).size == (40, 30)


def test_max_side_parameter(tmp_path):
    src = tmp_path / "f.png"
    gradient((500, 250)).save(src)
    assert check_png(make_thumbnail(src, tmp_path / "t.png", max_side=64), max_side=64).size == (64, 32)
    with pytest.raises(ValueError):
        make_thumbnail(src, tmp_path / "t.png", max_side=0)


def test_format_is_sniffed_not_taken_from_extension(tmp_path):
    src = tmp_path / "misnamed.exr"
    gradient((300, 300)).save(src, format="JPEG")
    assert sniff_format(src) == "JPEG"
    check_png(make_thumbnail(src, tmp_path / "t.png"))


def test_grayscale_stays_grey(tmp_path):
    src = tmp_path / "grey.png"
    gradient((512, 512), "L").save(src)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "L" and img.size == (256, 256)


def test_rgba_keeps_alpha(tmp_path):
    src = tmp_path / "rgba.png"
    gradient((600, 300), "RGBA").save(src)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "RGBA" and img.size == (256, 128)
    assert img.getchannel("A").getextrema() == (128, 128)


def test_palette_with_transparency(tmp_path):
    src = tmp_path / "pal.png"
    img = gradient((300, 300)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    img.save(src, transparency=0)
    out = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert out.mode == "RGBA"


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    rows = [[(v * 257,) for v in (0, 64, 128, 255)] for _ in range(4)]
    src = png16(tmp_path / "g16.png", 4, 4, rows, color_type=0)
    with Image.open(src) as probe:
        assert probe.mode in ("I;16", "I;16B", "I")  # really 16-bit on the way in
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "L"
    assert [img.getpixel((x, 0)) for x in range(4)] == [0, 64, 128, 255]


def test_16bit_rgba_png(tmp_path):
    rows = [[(65535, 32896, 0, 65535)] * 600 for _ in range(300)]
    src = png16(tmp_path / "rgba16.png", 600, 300, rows, color_type=6)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.size == (256, 128)
    assert img.convert("RGBA").getpixel((10, 10)) == (255, 128, 0, 255)


def test_16bit_tiff(tmp_path):
    src = tmp_path / "g16.tif"
    Image.new("I;16", (300, 100), 32896).save(src)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.size == (256, 85) or img.size == (256, 86)
    assert img.getpixel((5, 5)) == 128


def test_float_grey_tiff_is_tone_mapped(tmp_path):
    src = tmp_path / "f.tif"
    Image.new("F", (64, 32), 0.18).save(src)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "L"
    assert abs(img.getpixel((0, 0)) - srgb8(0.18)) <= 1


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")])
def test_truncated_file_raises_naming_it(tmp_path, fmt, ext):
    src = tmp_path / f"frame.0042.{ext}"
    # Noise compresses badly, so half the file is half the pixels.
    Image.effect_noise((400, 300), 80).convert("RGB").save(src, format=fmt)
    truncate(src)
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(src, tmp_path / "t.png")
    assert str(src) in str(err.value)
    assert "truncated" in str(err.value)
    assert not (tmp_path / "t.png").exists()


def test_missing_file_raises_naming_it(tmp_path):
    src = tmp_path / "nope.png"
    with pytest.raises(ThumbnailError, match="nope.png: unreadable"):
        make_thumbnail(src, tmp_path / "t.png")


def test_empty_file_raises(tmp_path):
    src = tmp_path / "empty.png"
    src.write_bytes(b"")
    with pytest.raises(ThumbnailError, match="empty.png: unreadable: the file is empty"):
        make_thumbnail(src, tmp_path / "t.png")


def test_unsupported_format_raises(tmp_path):
    src = tmp_path / "cache.bgeo.sc"
    src.write_bytes(b"not an image at all\n" * 50)
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(src, tmp_path / "t.png")
    assert str(src) in str(err.value) and "unsupported format" in str(err.value)


def test_corrupt_png_header_raises(tmp_path):
    src = tmp_path / "bad.png"
    src.write_bytes(PNG_MAGIC + b"\x00" * 100)
    with pytest.raises(ThumbnailError, match="bad.png"):
        make_thumbnail(src, tmp_path / "t.png")


# -- atomic writes -------------------------------------------------------------------


def test_replaces_existing_thumbnail_and_leaves_no_temp_files(tmp_path):
    src = tmp_path / "f.png"
    gradient((300, 200)).save(src)
    out_dir = tmp_path / "thumbs"
    out_dir.mkdir()
    dest = out_dir / "7.png"
    dest.write_bytes(b"old")
    make_thumbnail(src, dest)
    check_png(dest)
    assert sorted(p.name for p in out_dir.iterdir()) == ["7.png"]


def test_failed_write_keeps_old_thumbnail_and_cleans_up(tmp_path, monkeypatch):
    src = tmp_path / "f.png"
    gradient((300, 200)).save(src)
    out_dir = tmp_path / "thumbs"
    out_dir.mkdir()
    dest = out_dir / "7.png"
    dest.write_bytes(b"old")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        make_thumbnail(src, dest)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in out_dir.iterdir()) == ["7.png"]


def test_concurrent_reader_never_sees_partial_png(tmp_path):
    src = tmp_path / "f.png"
    Image.effect_noise((1024, 1024), 60).convert("RGB").save(src)
    dest = tmp_path / "t.png"
    make_thumbnail(src, dest)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            data = dest.read_bytes()
            if not data.endswith(b"IEND\xaeB`\x82"):
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(10):
            make_thumbnail(src, dest)
    finally:
        stop.set()
        thread.join()
    assert bad == []


# -- completeness --------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")])
def test_complete_and_truncated_outputs(tmp_path, fmt, ext):
    src = tmp_path / f"f.{ext}"
    Image.effect_noise((200, 100), 80).convert("RGB").save(src, format=fmt)
    assert is_output_complete(src)
    assert is_output_complete(str(src))
    for keep in (0.99, 0.5, 0.05):
        part = tmp_path / f"part{int(keep * 100)}.{ext}"
        part.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
        assert not is_output_complete(part), keep


def test_png_cut_just_before_iend_is_incomplete(tmp_path):
    src = tmp_path / "f.png"
    gradient((64, 64)).save(src)
    data = src.read_bytes()
    src.write_bytes(data[:-12])
    assert not is_output_complete(src)


def test_jpeg_with_trailing_padding_is_complete(tmp_path):
    src = tmp_path / "f.jpg"
    gradient((64, 64)).save(src, format="JPEG")
    src.write_bytes(src.read_bytes() + b"\x00\x00\r\n")
    assert is_output_complete(src)


def test_missing_empty_and_directory_are_incomplete(tmp_path):
    assert not is_output_complete(tmp_path / "missing.exr")
    (tmp_path / "empty.png").write_bytes(b"")
    assert not is_output_complete(tmp_path / "empty.png")
    (tmp_path / "dir.png").mkdir()
    assert not is_output_complete(tmp_path / "dir.png")


def test_non_image_output_is_complete_when_non_empty(tmp_path):
    cache = tmp_path / "sim.0010.bgeo.sc"
    cache.write_bytes(b"\x00binary geometry" * 10)
    assert is_output_complete(cache)


def test_growing_non_image_output_is_incomplete(tmp_path):
    """A geometry cache still being appended to when its frame is reported done is cut short."""
    growing = tmp_path / "sim.0010.bgeo.sc"
    growing.write_bytes(b"\x00start")
    stop = threading.Event()

    def writer():
        with open(growing, "ab", buffering=0) as fh:
            while not stop.is_set():
                fh.write(b"\x00more geometry")
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert not is_output_complete(growing)
    finally:
        stop.set()
        thread.join()
    assert is_output_complete(growing)


def test_alembic_archive_is_complete_only_once_closed(tmp_path):
    body = b"\x00" * 8 + b"\x01" * 40  # an empty group, then data: all the check needs
    root = (16).to_bytes(8, "little")
    open_archive = tmp_path / "sim.0001.abc"
    open_archive.write_bytes(b"Ogawa\x00\x00\x01" + (0).to_bytes(8, "little") + body)
    assert not is_output_complete(open_archive)  # the writer has not closed it
    closed = tmp_path / "sim.0002.abc"
    closed.write_bytes(b"Ogawa\xff\x00\x01" + root + body)
    assert is_output_complete(closed)
    cut = tmp_path / "sim.0003.abc"
    cut.write_bytes(b"Ogawa\xff\x00\x01" + (4096).to_bytes(8, "little") + body)
    assert not is_output_complete(cut)  # the root group lies past the end: truncated


def test_settle_requires_a_stable_size(tmp_path):
    growing = tmp_path / "growing.bgeo.sc"
    growing.write_bytes(b"x")
    stop = threading.Event()

    def writer():
        with open(growing, "ab") as fh:
            while not stop.is_set():
                fh.write(b"more")
                fh.flush()
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert not is_output_complete(growing, settle_s=0.2)
    finally:
        stop.set()
        thread.join()
    assert is_output_complete(growing, settle_s=0.05)


# -- EXR (OpenImageIO) ---------------------------------------------------------------


@needs_oiio
def test_exr_rgba_thumbnail_is_tone_mapped(tmp_path):
    h, w = 540, 960
    px = np.zeros((h, w, 4), np.float32)
    px[..., 0] = 0.18  # linear mid grey -> sRGB ~118
    px[..., 1] = 4.0  # over-bright -> clamped to 255
    px[..., 2] = 0.0
    px[..., 3] = 1.0
    src = write_exr(tmp_path / "beauty.0001.exr", px)
    assert sniff_format(src) == "EXR"
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "RGBA"
    assert_aspect((w, h), img.size)
    r, g, b, a = img.getpixel((img.width // 2, img.height // 2))
    assert abs(r - srgb8(0.18)) <= 1 and g == 255 and b == 0 and a == 255


@needs_oiio
def test_exr_premultiplied_alpha_is_unpremultiplied(tmp_path):
    px = np.zeros((32, 32, 4), np.float32)
    px[..., :3] = 0.25  # premultiplied: colour 0.5 at 50 % coverage
    px[..., 3] = 0.5
    px[:4, :4] = 0.0  # empty corner
    src = write_exr(tmp_path / "a.exr", px, fmt="float")
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    r, g, b, a = img.getpixel((20, 20))
    assert abs(r - srgb8(0.5)) <= 1 and abs(a - 128) <= 1
    assert img.getpixel((0, 0)) == (0, 0, 0, 0)


@needs_oiio
def test_exr_rgb_float_with_nan_and_inf(tmp_path):
    px = np.full((400, 1200, 3), 0.5, np.float32)
    px[0, 0] = np.nan
    px[1, 1] = np.inf
    px[2, 2] = -np.inf
    src = write_exr(tmp_path / "rgb.exr", px, fmt="float")
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "RGB"
    assert_aspect((1200, 400), img.size)
    assert all(abs(c - srgb8(0.5)) <= 1 for c in img.getpixel((100, 40)))


@needs_oiio
def test_exr_single_channel_luminance(tmp_path):
    src = write_exr(tmp_path / "y.exr", np.full((300, 100), 0.18, np.float32), channels=["Y"])
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "L"
    assert_aspect((100, 300), img.size)
    assert abs(img.getpixel((10, 10)) - srgb8(0.18)) <= 1


@needs_oiio
def test_exr_depth_channel_is_normalised(tmp_path):
    depth = np.tile(np.linspace(10.0, 1000.0, 64, dtype=np.float32), (16, 1))
    src = write_exr(tmp_path / "z.exr", depth, channels=["Z"], fmt="float")
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "L"
    assert img.getpixel((0, 0)) == 0 and img.getpixel((63, 0)) == 255


@needs_oiio
def test_exr_with_extra_layers_uses_main_rgba(tmp_path):
    px = np.zeros((20, 20, 7), np.float32)
    px[..., 0:3] = 1.0  # R G B
    px[..., 3] = 1.0  # A
    px[..., 4:7] = 0.0  # diffuse.R/G/B, deliberately different
    src = write_exr(
        tmp_path / "aov.exr", px, channels=["R", "G", "B", "A", "diffuse.R", "diffuse.G", "diffuse.B"]
    )
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.getpixel((5, 5)) == (255, 255, 255, 255)


@needs_oiio
def test_truncated_exr_raises_naming_it(tmp_path):
    src = write_exr(tmp_path / "shot.0100.exr", np.random.rand(256, 256, 4).astype(np.float32))
    assert is_output_complete(src)
    truncate(src)
    assert not is_output_complete(src)
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(src, tmp_path / "t.png")
    assert str(src) in str(err.value) and "truncated" in str(err.value)
    assert not (tmp_path / "t.png").exists()


@needs_oiio
def test_multichannel_float_tiff_falls_back_to_openimageio(tmp_path):
    src = write_exr(tmp_path / "rgbf.tif", np.full((100, 300, 3), 0.18, np.float32), fmt="float")
    assert sniff_format(src) == "TIFF"
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.size == (256, 85) or img.size == (256, 86)
    assert abs(img.getpixel((3, 3))[0] - srgb8(0.18)) <= 1


def test_exr_without_openimageio_says_so(tmp_path, monkeypatch):
    src = tmp_path / "beauty.0001.exr"
    src.write_bytes(b"v/1\x01" + b"\x00" * 200)  # EXR magic; the body does not matter here

    def no_oiio():
        raise ImportError("No module named 'OpenImageIO'")

    monkeypatch.setattr(thumbnails, "_import_oiio", no_oiio)
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(src, tmp_path / "t.png")
    assert str(src) in str(err.value) and "OpenImageIO" in str(err.value)
    # Completeness cannot be decoded without it: the header magic is the best we can say.
    assert is_output_complete(src)


@needs_oiio
def test_float_tiff_without_openimageio_names_the_file(tmp_path, monkeypatch):
    src = write_exr(tmp_path / "rgbf.tif", np.full((10, 30, 3), 0.18, np.float32), fmt="float")

    def no_oiio():
        raise ImportError("No module named 'OpenImageIO'")

    monkeypatch.setattr(thumbnails, "_import_oiio", no_oiio)
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(src, tmp_path / "t.png")
    assert str(src) in str(err.value) and "OpenImageIO" in str(err.value)
    # A float TIFF only OpenImageIO can decode: the header magic is the best we can say.
    assert is_output_complete(src)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_data_inside_a_valid_header_raises_thumbnail_error(tmp_path):
    src = tmp_path / "f.tif"
    gradient((64, 64)).save(src, format="TIFF")
    data = bytearray(src.read_bytes())
    data[8:] = b"\xff" * (len(data) - 8)  # keep the magic, destroy the directory
    src.write_bytes(bytes(data))
    with pytest.raises(ThumbnailError, match="f.tif"):
        make_thumbnail(src, tmp_path / "t.png")
    assert not is_output_complete(src)


@needs_oiio
def test_exr_channels_found_by_name_not_position(tmp_path):
    px = np.zeros((16, 48, 5), np.float32)
    px[..., 0] = 100.0  # Z
    px[..., 1] = 0.18  # R
    px[..., 2] = 0.18  # G
    px[..., 3] = 0.18  # B
    px[..., 4] = 7.0  # N.x, an unrelated layer
    src = write_exr(tmp_path / "zrgb.exr", px, channels=["Z", "R", "G", "B", "N.x"], fmt="float")
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.mode == "RGB"
    assert all(abs(c - srgb8(0.18)) <= 1 for c in img.getpixel((4, 4)))


@needs_oiio
def test_exr_large_is_reduced_in_linear_light(tmp_path):
    # Alternating 0/1 columns average to linear 0.5 (sRGB ~188), not sRGB 127.
    px = np.zeros((512, 1024, 3), np.float32)
    px[:, ::2] = 1.0
    src = write_exr(tmp_path / "stripes.exr", px)
    img = check_png(make_thumbnail(src, tmp_path / "t.png"))
    assert img.size == (256, 128)
    assert all(abs(c - srgb8(0.5)) <= 2 for c in img.getpixel((100, 60)))
