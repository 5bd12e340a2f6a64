"""The frame markers farm-side scripts print and the service parses.

Defined once, here, because both sides depend on it: the render script inside the
container (``hython``, or a plain shell script that ``echo``-es the same lines) prints
them, and the service's log parser reads them to learn which frame a task is on and
where its output landed. The format is line based and shell friendly::

    ::hpcdock::frame-start 12
    ::hpcdock::frame-done 12 /projects/shot/render/beauty.0012.exr
    ::hpcdock::frame-failed 12 the reason, to the end of the line

Everything after the frame number is free text to the end of the line, so paths with
spaces need no quoting. Pure stdlib, Python 3.9.
"""

from typing import NamedTuple, Optional

PREFIX = "::hpcdock::"

FRAME_START = "frame-start"
FRAME_DONE = "frame-done"
FRAME_FAILED = "frame-failed"
KINDS = (FRAME_START, FRAME_DONE, FRAME_FAILED)


class Marker(NamedTuple):
    kind: str
    frame: int
    detail: str = ""  # output path for frame-done, reason for frame-failed


def format_marker(kind: str, frame: int, detail: str = "") -> str:
    """Return the marker line (without newline) for ``kind`` on ``frame``."""
    if kind not in KINDS:
        raise ValueError(f"unknown marker kind {kind!r}; expected one of {', '.join(KINDS)}")
    if "\n" in detail:
        raise ValueError("marker detail must be a single line")
    line = f"{PREFIX}{kind} {int(frame)}"
    return f"{line} {detail}" if detail else line


def parse_marker(line: str) -> Optional[Marker]:
    """Return the marker in ``line``, or None when the line is ordinary log output.

    Leading text is tolerated (renderers and ``hython`` sometimes prefix lines), a
    malformed marker is treated as plain output rather than an error.
    """
    at = line.find(PREFIX)
    if at < 0:
        return None
    parts = line[at + len(PREFIX) :].rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or parts[0] not in KINDS:
        return None
    try:
        frame = int(parts[1])
    except ValueError:
        return None
    return Marker(parts[0], frame, parts[2] if len(parts) > 2 else "")
