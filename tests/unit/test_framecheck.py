"""Frame checks on real bad frames written here: black, constant, NaN EXR, truncated, empty, odd size, flicker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hpcdock_service import framecheck
from hpcdock_service.errors import BadInput
from hpcdock_service.framecheck import FrameCheckSettings, compare_shape, flicker, inspect, parse_settings
from PIL import Image

SETTINGS = FrameCheckSettings()


def scene(i: int, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Frame ``i`` of a smooth rendered-looking sequence: a lit gradient with a moving ball and grain."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = 0.25 + 0.5 * y / h
    cx, cy, r = w * (0.15 + 0.03 * i), h * (0.5 + 0.15 * np.sin(i / 4)), 0.06 * w
    ball = ((x - cx) ** 2 + (y - cy) ** 2 < r**2) * 0.5
    grain = np.random.default_rng(i).normal(0, 0.02, (h, w)).astype(np.float32)
    grey = np.clip(sky + ball + grain, 0, 1)
    return np.stack([grey, grey * 0.9, grey * 0.7], axis=2)


def png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB").save(path)
    return path


def exr(path: Path, pixels: np.ndarray) -> Path:
    oiio = pytest.importorskip("OpenImageIO")
    out = oiio.ImageOutput.create(str(path))
    assert out is not None, oiio.geterror()
    h, w, c = pixels.shape
    assert out.open(str(path), oiio.ImageSpec(w, h, c, "half")), out.geterror()
    assert out.write_image(pixels.astype(np.float32)), out.geterror()
    out.close()
    return path


def checks(found: framecheck.FrameCheck) -> list[str]:
    return [f.check for f in found.flags]


def test_clean_rendered_sequence_raises_no_flag_and_gets_thumbnails(tmp_path: Path) -> None:
    lumas = {}
    for i in range(1, 25):
        found = inspect(png(tmp_path / f"f{i:04d}.png", scene(i)), tmp_path / "t" / f"{i}.png", SETTINGS)
        assert found.flags == [], (i, found.flags)
        assert (found.width, found.height, found.channels) == (640, 360, ("R", "G", "B"))
        assert found.thumbnail and Image.open(found.thumbnail).size == (256, 144)
        assert found.luma is not None and 0.2 < found.luma < 0.9
        lumas[i] = found.luma
    assert [f for f in lumas if flicker(lumas, f, SETTINGS)] == []


def test_black_png_is_flagged_black(tmp_path: Path) -> None:
    found = inspect(png(tmp_path / "black.png", np.zeros((360, 640, 3))), tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["black"]
    assert found.flags[0].values["max"] == 0.0 and "black" in found.flags[0].reason


def test_nearly_black_is_black_only_under_the_threshold(tmp_path: Path) -> None:
    dim = np.full((36, 64, 3), 3 / 255)  # brightest value 0.0118
    path = png(tmp_path / "dim.png", dim + np.random.default_rng(1).uniform(0, 1 / 255, dim.shape))
    assert "black" not in checks(inspect(path, tmp_path / "t.png", SETTINGS))
    assert checks(inspect(path, tmp_path / "t.png", FrameCheckSettings(black_max=0.02))) == ["black"]


def test_constant_frame_is_flagged_constant_with_its_level(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.new("RGB", (640, 360), (200, 80, 30)).save(path)
    found = inspect(path, tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["constant"]
    assert found.flags[0].values["range"] == 0.0
    assert found.flags[0].values["level"] == pytest.approx(200 / 255)


def test_exr_with_nans_is_flagged_with_counts(tmp_path: Path) -> None:
    pixels = scene(3)
    pixels[10:20, 30:40, 1] = np.nan
    pixels[5, 5, 0] = np.inf
    found = inspect(exr(tmp_path / "nan.exr", pixels), tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["nan"]
    assert found.flags[0].values["nan"] == 100 and found.flags[0].values["inf"] == 1
    assert "100 NaN" in found.flags[0].reason
    assert found.luma is None  # not part of the sequence its neighbours are judged by
    assert found.thumbnail is not None  # still shown


def test_clean_exr_raises_no_flag(tmp_path: Path) -> None:
    found = inspect(exr(tmp_path / "ok.exr", scene(4)), tmp_path / "t.png", SETTINGS)
    assert (
        found.flags == [] and found.channels == ("R", "G", "B") and (found.width, found.height) == (640, 360)
    )


def test_black_exr_is_black(tmp_path: Path) -> None:
    found = inspect(exr(tmp_path / "black.exr", np.zeros((64, 64, 4))), tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["black"]
    assert found.channels == ("R", "G", "B", "A")


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    whole = png(tmp_path / "whole.png", scene(5)).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    found = inspect(path, tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["unreadable"]
    assert "truncated" in found.flags[0].reason and found.flags[0].values["bytes"] == len(whole) // 2
    assert found.thumbnail is None and found.shape is None


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert checks(inspect(tmp_path / "empty.png", tmp_path / "t.png", SETTINGS)) == ["empty"]
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    found = inspect(tmp_path / "junk.png", tmp_path / "t.png", SETTINGS)
    assert checks(found) == ["unreadable"] and "not a PNG" in found.flags[0].reason


def test_odd_sized_frame_and_other_channels_against_the_reference(tmp_path: Path) -> None:
    ref = inspect(png(tmp_path / "a.png", scene(1)), tmp_path / "ta.png", SETTINGS)
    odd = inspect(png(tmp_path / "b.png", scene(2, (320, 180))), tmp_path / "tb.png", SETTINGS)
    flags = compare_shape(odd, {"frame": 1, **ref.shape}, 1)
    assert [f.check for f in flags] == ["size"]
    assert "320x180, but frame 1 is 640x360" in flags[0].reason
    rgba = tmp_path / "c.png"
    Image.fromarray((scene(3) * 255).astype(np.uint8)).convert("RGBA").save(rgba)
    other = inspect(rgba, tmp_path / "tc.png", SETTINGS)
    assert [f.check for f in compare_shape(other, {"frame": 1, **ref.shape}, 1)] == ["channels"]
    assert compare_shape(ref, {"frame": 1, **ref.shape}, 1) == []


def test_one_bright_frame_in_a_smooth_sequence_is_flicker(tmp_path: Path) -> None:
    lumas = {}
    for i in range(1, 17):
        rgb = scene(i) * (1.6 if i == 9 else 1.0)
        lumas[i] = inspect(png(tmp_path / f"f{i}.png", rgb), tmp_path / f"t{i}.png", SETTINGS).luma
    flagged = {f: flicker(lumas, f, SETTINGS) for f in lumas}
    assert [f for f, flag in flagged.items() if flag] == [9]
    values = flagged[9].values
    assert values["jump"] > values["limit"] >= SETTINGS.flicker_floor
    assert "frames 7,8,10,11" in flagged[9].reason


def test_flicker_follows_the_sequences_own_variation() -> None:
    # A sequence that changes a lot from frame to frame may jump as much as it usually does.
    busy = {i: 0.5 + (0.1 if i % 2 else -0.1) for i in range(1, 21)}
    assert [f for f in busy if flicker(busy, f, SETTINGS)] == []
    # Under the floor nothing is flicker, however still the sequence otherwise is.
    still = {i: 0.5 for i in range(1, 21)}
    still[10] = 0.51
    assert flicker(still, 10, SETTINGS) is None
    still[10] = 0.6
    assert flicker(still, 10, SETTINGS).check == "flicker"
    assert flicker(still, 10, FrameCheckSettings(flicker=False)) is None
    assert flicker({1: 0.5, 2: 0.9}, 2, SETTINGS) is None  # too few frames to judge


def test_settings_defaults_and_refusals_name_the_key() -> None:
    assert parse_settings(None) == FrameCheckSettings()
    s = parse_settings({"policy": "fail", "black_max": 0.01, "flicker_k": 4})
    assert (s.policy, s.black_max, s.flicker_k) == ("fail", 0.01, 4.0)
    for raw, field in (
        ({"blackmax": 0.1}, "frame_checks.blackmax"),
        ({"policy": "stop"}, "frame_checks.policy"),
        ({"flicker_k": "six"}, "frame_checks.flicker_k"),
        ({"black_max": 2}, "frame_checks.black_max"),
        ({"flicker": "yes"}, "frame_checks.flicker"),
        (["warn"], "frame_checks"),
    ):
        with pytest.raises(BadInput) as err:
            parse_settings(raw)
        assert err.value.field.endswith(field), err.value.field
