"""Checks on finished image frames: what an artist would otherwise find by eye, late.

The service decodes every image frame once, to make its thumbnail; the checks ride on that
decode (:class:`Probe` is handed to :func:`thumbnails.make_thumbnail` and sees the pixels
as they pass), so checking a frame costs a few array reductions, not another read.

Two kinds of checks:

- about the frame alone (:func:`inspect`): unreadable or truncated, empty, all black,
  constant, NaN/Inf pixels;
- about the frame among the job's other frames, which only the store can see:
  :func:`compare_shape` (size and channel set against the step's first done frame) and
  :func:`flicker` (mean luminance against the neighbouring frames, judged against the
  sequence's own frame-to-frame variation).

Each flag carries a reason in words and the numbers behind it. Nothing here knows the
store, the runner or the API.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import thumbnails
from .errors import BadInput

__all__ = [
    "CHECKS",
    "FLICKER_RADIUS",
    "Flag",
    "FrameCheck",
    "FrameCheckSettings",
    "Probe",
    "compare_shape",
    "flicker",
    "inspect",
    "parse_settings",
]

CHECKS = ("unreadable", "empty", "black", "constant", "nan", "size", "channels", "flicker")
# Frames farther than this from a frame play no part in its flicker verdict: the verdict of
# frame i depends only on the done frames in [i - R, i + R], which is what lets the store
# re-judge just the frames around one that lands, and reach the same verdicts in any order.
FLICKER_RADIUS = 10
# A frame is compared with the median of its nearest done frames: four of them, so that one
# bad neighbour (at a sequence's end too, where all are on one side) cannot move the median far.
_NEIGHBOURS = 4
_MIN_NEIGHBOURS = 3
_MIN_STEPS = 3  # frame-to-frame differences needed before the sequence's variation means anything


@dataclass(frozen=True)
class Flag:
    check: str  # one of CHECKS
    reason: str
    values: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "reason": self.reason, "values": self.values}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Flag:
        return cls(data["check"], data["reason"], dict(data["values"]))


@dataclass(frozen=True)
class FrameCheckSettings:
    """``frame_checks:`` in hpcdock.yaml. Levels are fractions of full scale (0..1): of 255 for
    8-bit images, of 1.0 scene-linear for float ones; luminance is the thumbnail's (display) one."""

    policy: str = "warn"  # warn: the frame is done and flagged; fail: a flagged frame fails
    black_max: float = 0.002  # brightest colour value of a frame still called black
    constant_max: float = 0.002  # widest per-channel range of a frame still called constant
    flicker_k: float = 6.0  # how many times the sequence's typical step a jump must exceed
    flicker_floor: float = 0.02  # smallest luminance jump ever called flicker (0 disables nothing)
    flicker: bool = True  # judge flicker at all

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "black_max": self.black_max,
            "constant_max": self.constant_max,
            "flicker_k": self.flicker_k,
            "flicker_floor": self.flicker_floor,
            "flicker": self.flicker,
        }

    @classmethod
    def from_json(cls, data: Optional[dict[str, Any]]) -> FrameCheckSettings:
        return cls(**data) if data else cls()


_NUMBERS = {
    "black_max": (0.0, 1.0),
    "constant_max": (0.0, 1.0),
    "flicker_k": (0.0, 1000.0),
    "flicker_floor": (0.0, 1.0),
}


def parse_settings(raw: Any, where: str = "hpcdock.yaml: frame_checks") -> FrameCheckSettings:
    """Validate ``frame_checks:``; every problem names its key."""
    if raw is None:
        return FrameCheckSettings()
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a mapping, e.g. {policy: warn, black_max: 0.002, flicker_k: 6}")
    known = ["policy", "flicker", *_NUMBERS]
    for key in raw:
        if key not in known:
            raise BadInput(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    if "policy" in raw:
        if raw["policy"] not in ("warn", "fail"):
            raise BadInput(f"{where}.policy", f"must be warn or fail, got {raw['policy']!r}")
        values["policy"] = raw["policy"]
    if "flicker" in raw:
        if not isinstance(raw["flicker"], bool):
            raise BadInput(f"{where}.flicker", f"must be true or false, got {raw['flicker']!r}")
        values["flicker"] = raw["flicker"]
    for key, (lo, hi) in _NUMBERS.items():
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise BadInput(f"{where}.{key}", f"must be a number from {lo:g} to {hi:g}, got {value!r}")
            values[key] = float(value)
    return FrameCheckSettings(**values)


@dataclass
class FrameCheck:
    """What checking one frame found: its own flags, and what the store compares across frames."""

    flags: list[Flag] = field(default_factory=list)
    width: Optional[int] = None
    height: Optional[int] = None
    channels: Optional[tuple[str, ...]] = None
    luma: Optional[float] = None  # mean display luminance 0..1, None when unreadable
    thumbnail: Optional[str] = None

    @property
    def shape(self) -> Optional[dict[str, Any]]:
        if self.width is None or self.channels is None:
            return None
        return {"width": self.width, "height": self.height, "channels": list(self.channels)}


class Probe:
    """Collects a frame's numbers from the pixels :mod:`.thumbnails` decodes for the thumbnail.

    8-bit images are seen at full size after conversion to L/LA/RGB/RGBA (Pillow's extrema run
    in C); float images (EXR, float TIFF) are seen as the picked float channels, at full size,
    before anything clamps or drops NaN; the luminance is the thumbnail's mean.
    """

    def __init__(self, settings: FrameCheckSettings) -> None:
        self.settings = settings
        self.check = FrameCheck()

    # called by thumbnails ---------------------------------------------------------------
    def display_image(self, img: Any, size: tuple[int, int]) -> None:
        bands = img.getbands()
        self.check.width, self.check.height = size
        self.check.channels = tuple(bands)
        extrema = img.getextrema()
        if len(bands) == 1:
            extrema = (extrema,)
        colour = [e for b, e in zip(bands, extrema) if b != "A"]
        self._levels(
            max(hi for _, hi in colour) / 255.0,
            max(hi - lo for lo, hi in colour) / 255.0,
            colour_ranges=[(lo / 255.0, hi / 255.0) for lo, hi in colour],
        )

    def float_pixels(
        self, pixels: Any, names: list[str], picked: list[int], *, has_alpha: bool, levels: bool
    ) -> None:
        import numpy as np

        h, w = pixels.shape[:2]
        self.check.width, self.check.height = w, h
        self.check.channels = tuple(names)
        colour = pixels[:, :, :-1] if has_alpha else pixels
        finite = np.isfinite(pixels)
        bad = int(pixels.size - np.count_nonzero(finite))
        if bad:
            nans = int(np.count_nonzero(np.isnan(pixels)))
            self.check.flags.append(
                Flag(
                    "nan",
                    f"{nans} NaN and {bad - nans} infinite value(s) in channels "
                    f"{', '.join(names[i] for i in picked)} ({100.0 * bad / pixels.size:.3g}% of the values)",
                    {"nan": nans, "inf": bad - nans, "fraction": bad / pixels.size},
                )
            )
            colour = np.where(np.isfinite(colour), colour, np.nan)
            lo, hi = np.nanmin(colour, axis=(0, 1)), np.nanmax(colour, axis=(0, 1))
            if np.isnan(hi).all():
                return  # nothing finite: the NaN flag says it all
            lo, hi = np.nan_to_num(lo), np.nan_to_num(hi)
        else:
            lo, hi = colour.min(axis=(0, 1)), colour.max(axis=(0, 1))
        if not levels:
            return  # data (depth and the like): black or flat says nothing
        ranges = [(float(a), float(b)) for a, b in zip(np.atleast_1d(lo), np.atleast_1d(hi))]
        self._levels(max(b for _, b in ranges), max(b - a for a, b in ranges), colour_ranges=ranges)

    def thumbnail_image(self, img: Any) -> None:
        from PIL import ImageStat

        grey = img.convert("L") if img.mode not in ("L", "LA") else img.getchannel(0)
        self.check.luma = round(ImageStat.Stat(grey).mean[0] / 255.0, 5)

    # ------------------------------------------------------------------------------------
    def _levels(self, brightest: float, widest: float, colour_ranges: list[tuple[float, float]]) -> None:
        s = self.settings
        if brightest <= s.black_max:
            self.check.flags.append(
                Flag(
                    "black",
                    f"all black: the brightest value is {brightest:.4g} (black_max {s.black_max:g})",
                    {"max": brightest, "black_max": s.black_max},
                )
            )
        elif widest <= s.constant_max:
            level = colour_ranges[0][1]
            self.check.flags.append(
                Flag(
                    "constant",
                    f"one flat colour: every channel varies by at most {widest:.4g} "
                    f"(constant_max {s.constant_max:g}), level {level:.4g}",
                    {"range": widest, "level": level, "constant_max": s.constant_max},
                )
            )


def inspect(output: Path | str, thumbnail: Path | str, settings: FrameCheckSettings) -> FrameCheck:
    """Make ``output``'s thumbnail at ``thumbnail`` and check the frame on the same decode."""
    output = Path(output)
    try:
        size = os.stat(output).st_size
    except OSError as exc:
        return FrameCheck([Flag("unreadable", f"unreadable: {exc.strerror or exc}", {})])
    if size == 0:
        return FrameCheck([Flag("empty", "the file is empty (0 bytes)", {"bytes": 0})])
    probe = Probe(settings)
    try:
        probe.check.thumbnail = str(thumbnails.make_thumbnail(output, thumbnail, probe=probe))
    except thumbnails.NeedsOpenImageIO:
        pass  # nothing here can read it: no verdict rather than a false one
    except thumbnails.ThumbnailError as exc:
        reason = str(exc).replace(f"{output}: ", "", 1)
        if thumbnails.sniff_format(output) is None:
            reason = "not a PNG, JPEG, TIFF or EXR image"
        return FrameCheck([Flag("unreadable", reason, {"bytes": size})])
    if any(f.check == "nan" for f in probe.check.flags):
        probe.check.luma = None  # the thumbnail shows NaN as black: no luminance to compare
    return probe.check


def compare_shape(check: FrameCheck, ref: dict[str, Any], ref_frame: int) -> list[Flag]:
    """Flags for a size or channel set different from the reference frame's (none for a frame
    whose shape is unknown)."""
    if check.width is None or check.height is None:
        return []
    flags = []
    if (check.width, check.height) != (ref["width"], ref["height"]):
        flags.append(
            Flag(
                "size",
                f"{check.width}x{check.height}, but frame {ref_frame} is {ref['width']}x{ref['height']}",
                {
                    "width": check.width,
                    "height": check.height,
                    "expected_width": ref["width"],
                    "expected_height": ref["height"],
                },
            )
        )
    if check.channels is not None and list(check.channels) != list(ref["channels"]):
        flags.append(
            Flag(
                "channels",
                f"channels {','.join(check.channels)}, but frame {ref_frame} has {','.join(ref['channels'])}",
                {"channels": len(check.channels), "expected_channels": len(ref["channels"])},
            )
        )
    return flags


def flicker(lumas: dict[int, float], frame: int, settings: FrameCheckSettings) -> Optional[Flag]:
    """Frame ``frame``'s flicker flag among ``lumas`` (done frames' mean luminance), or None.

    The frame is compared with the median of its nearest neighbours (up to four, either side),
    against k times the median frame-to-frame step of the sequence around it (never less than
    the floor): a sequence that changes fast may jump, a smooth one may not. Only frames
    within :data:`FLICKER_RADIUS` count, so the answer does not depend on what lies further.
    """
    if not settings.flicker or frame not in lumas:
        return None
    near = sorted(f for f in lumas if abs(f - frame) <= FLICKER_RADIUS)
    neighbours = sorted(
        sorted((f for f in near if f != frame), key=lambda f: (abs(f - frame), f))[:_NEIGHBOURS]
    )
    steps = [abs(lumas[b] - lumas[a]) for a, b in zip(near, near[1:])]
    if len(neighbours) < _MIN_NEIGHBOURS or len(steps) < _MIN_STEPS:
        return None
    expected = statistics.median(lumas[f] for f in neighbours)
    typical = statistics.median(steps)
    limit = max(settings.flicker_k * typical, settings.flicker_floor)
    jump = abs(lumas[frame] - expected)
    if jump <= limit:
        return None
    return Flag(
        "flicker",
        f"mean luminance {lumas[frame]:.3f} against {expected:.3f} in frames "
        f"{','.join(map(str, neighbours))}: a jump of {jump:.3f}, over {limit:.3f} "
        f"({settings.flicker_k:g} x the sequence's typical step {typical:.4f}, floor "
        f"{settings.flicker_floor:g})",
        {"luma": lumas[frame], "neighbours": expected, "jump": jump, "limit": limit, "typical_step": typical},
    )
