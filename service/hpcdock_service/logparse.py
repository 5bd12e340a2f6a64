"""Incremental parser of a task's combined stdout/stderr.

The engine streams a running container's log in arbitrary chunks (whatever the socket
delivers), so a line can be split across chunks, a UTF-8 character can be split across
chunks, and renderers redraw progress with carriage returns instead of newlines. This
module turns that byte stream into typed updates the service stores as task and frame
state:

- ``ALF_PROGRESS N%`` (Mantra, Karma, husk) -> :class:`Progress`; N may be an int or a
  float and is clamped to 0..100. For Mantra it is the progress *of the current frame*,
  so :class:`Progress` carries the frame the last frame-start marker named.
- hpcdock frame markers (the one format both sides share, :mod:`hpcdock.markers`) ->
  :class:`FrameStarted`, :class:`FrameDone`, :class:`FrameFailed`.

- A line saying no licence was available (:data:`LICENCE_FAILURES`) -> :class:`LicenceUnavailable`,
  once per log: the service stops the attempt at once and tries the task again later.
- OpenJD's stdout messages, recognised by ``openjd-sessions``' own action filter so that a
  line means here exactly what it means to the reference runtime: ``openjd_progress: N`` ->
  :class:`Progress`, ``openjd_status: TEXT`` -> :class:`OpenJDStatus`, ``openjd_fail: TEXT``
  -> :class:`OpenJDFail`, ``openjd_env: NAME=VALUE`` -> :class:`OpenJDEnv`,
  ``openjd_unset_env: NAME`` -> :class:`OpenJDUnsetEnv`, and a malformed env message (which
  the reference runtime fails the action for) -> :class:`OpenJDMalformed`.

Everything else is ordinary log output and produces nothing, except that the first line
saying the task ran out of memory or could not fork is remembered
(:attr:`LogParser.out_of_memory`, :attr:`LogParser.fork_failed`): under ulimits, that is
all a task that hit its memory or process limit leaves behind to explain its failure. The parser never raises
on log content: garbage bytes are decoded with U+FFFD replacements, malformed markers
are plain output.

Cost is linear in the bytes fed: each chunk is split once at its line ends, and a line
is only inspected with a regex when a cheap substring test says it may hold a progress
report. A pathological line with no line end is capped at :data:`MAX_LINE_CHARS`, so a
binary blob printed to stdout cannot grow memory without bound.

This module knows nothing of the store or the API; the service feeds it and decides
what to persist (see :func:`task_progress` for task-level progress of a chunk of frames).
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from hpcdock.markers import FRAME_DONE, FRAME_FAILED, FRAME_START, PREFIX, parse_marker
from openjd.sessions._action_filter import ActionMessageKind, ActionMonitoringFilter

__all__ = [
    "FrameDone",
    "FrameFailed",
    "FrameStarted",
    "LICENCE_FAILURES",
    "LicenceUnavailable",
    "LogParser",
    "MAX_LINE_CHARS",
    "NO_REASON",
    "OpenJDEnv",
    "OpenJDFail",
    "OpenJDMalformed",
    "OpenJDStatus",
    "OpenJDUnsetEnv",
    "Progress",
    "Update",
    "parse_progress",
    "task_progress",
]

#: Longest line kept for inspection; the rest of a longer line is dropped. Markers and
#: progress reports are short, and a renderer that prints a megabyte without a newline
#: is not telling us anything we parse.
MAX_LINE_CHARS = 64 * 1024

_ALF = "ALF_PROGRESS"
# "ALF_PROGRESS 45%", "ALF_PROGRESS 45.5%", "ALF_PROGRESS: 7 %" and the like.
_ALF_RE = re.compile(r"ALF_PROGRESS[\s:=]*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*%")
_LINE_END_RE = re.compile(r"\r\n|\r|\n")

# What programs print when an allocation, a fork or a new thread fails (busybox, bash, glibc's
# strerror, Python, C++), matched only on lines that hold one of the cheap substrings below.
_OOM_RE = re.compile(
    r"out of memory|cannot allocate memory|memory exhausted|MemoryError|bad_alloc", re.IGNORECASE
)
_FORK_RE = re.compile(
    r"(can't|cannot|could not|unable to) (fork|start new thread|create thread)"
    r"|fork( failed|: retry|: resource temporarily)|pthread_create",
    re.IGNORECASE,
)
_HINT_CHARS = 200

#: What renderers print when no licence could be checked out, as their vendors' tools match it:
#: Houdini's hython and husk (Karma) "No licenses could be found to run this application."
#: (the licence pattern of AWS Deadline Cloud's Houdini adaptor), Houdini Engine's
#: "HAPI Error: No Valid Licenses Found", Redshift's "[Redshift] Maxon licensing error: ..."
#: (Redshift under Maxon licensing), and the generic "could not acquire a license".
LICENCE_FAILURES = (
    "No licenses could be found to run this application",
    "No Valid Licenses Found",
    "Maxon licensing error",
    "could not acquire a license",
)
_LICENCE_RE = re.compile("|".join(re.escape(m) for m in LICENCE_FAILURES), re.IGNORECASE)

#: Reason used when a frame-failed marker gives none, so a failed frame always says something.
NO_REASON = "the render script reported the frame failed without giving a reason"


@dataclass(frozen=True)
class Progress:
    """A renderer's progress report, 0..100.

    ``frame`` is the frame named by the most recent frame-start marker that has not yet
    finished, or None when no marker said which frame is rendering (then the percentage
    is best read as the progress of the whole task).
    """

    percent: float
    frame: int | None = None


@dataclass(frozen=True)
class FrameStarted:
    """The render script began ``frame``."""

    frame: int


@dataclass(frozen=True)
class FrameDone:
    """The render script finished ``frame``; ``path`` is where it says the output landed.

    ``path`` is None when the marker named no path. The service must still check that the
    output exists and is complete: the marker is a claim, not proof.
    """

    frame: int
    path: str | None = None


@dataclass(frozen=True)
class FrameFailed:
    """The render script gave up on ``frame`` for ``reason``."""

    frame: int
    reason: str = NO_REASON


@dataclass(frozen=True)
class LicenceUnavailable:
    """The task's renderer said no licence was available (``line``, stripped and capped)."""

    line: str


@dataclass(frozen=True)
class OpenJDStatus:
    """``openjd_status: TEXT``: the task's current status line, replacing the previous one."""

    text: str


@dataclass(frozen=True)
class OpenJDFail:
    """``openjd_fail: TEXT``: the reason to show if the task fails (it does not end the task)."""

    text: str


@dataclass(frozen=True)
class OpenJDEnv:
    """``openjd_env: NAME=VALUE``: set ``name`` for the actions that follow in the session.

    ``redacted`` is True for ``openjd_redacted_env``, whose value must not be shown.
    """

    name: str
    value: str
    redacted: bool = False


@dataclass(frozen=True)
class OpenJDUnsetEnv:
    """``openjd_unset_env: NAME``: unset ``name`` for the actions that follow in the session."""

    name: str


@dataclass(frozen=True)
class OpenJDMalformed:
    """An OpenJD env message the reference runtime cannot read, and what it does about it.

    ``kind`` is ``"env"`` or ``"unset_env"`` for a well-formed prefix with a bad name or value:
    that fails an environment's action, and is ignored in a task's (env messages mean nothing
    there). ``kind`` is ``"fail"`` for a line that is almost an env message (wrong case, no
    colon): that fails whatever action printed it.
    """

    reason: str
    kind: str

    @property
    def fails_task(self) -> bool:
        """Whether a task's action that printed it fails, as under ``openjd run``."""
        return self.kind == "fail"


OpenJDUpdate = Union[OpenJDStatus, OpenJDFail, OpenJDEnv, OpenJDUnsetEnv, OpenJDMalformed]

Update = Union[
    Progress,
    FrameStarted,
    FrameDone,
    FrameFailed,
    LicenceUnavailable,
    OpenJDStatus,
    OpenJDFail,
    OpenJDEnv,
    OpenJDUnsetEnv,
    OpenJDMalformed,
]

_SESSION = "hpcdock-task"


class _OpenJDMessages:
    """Runs one line through ``openjd-sessions``' ActionMonitoringFilter and types what it finds.

    The filter is the reference runtime's own grammar (anchored ``openjd_KIND: VALUE`` lines,
    progress 0..100, env names, quoted values, the "almost an env command" check), so it is
    reused rather than re-implemented; it speaks through a callback on logging records, which
    this adapter turns into the typed updates above. Only the filter is reused: its logger,
    redaction and log-level handling belong to a runtime that owns the log, which here the
    engine and :mod:`.tasklog` do.
    """

    def __init__(self) -> None:
        self._found: list[Update] = []
        self._filter = ActionMonitoringFilter(session_id=_SESSION, callback=self._take)

    def _take(self, kind: ActionMessageKind, value: Any, cancel_and_fail: bool) -> None:
        if cancel_and_fail:
            self._found.append(OpenJDMalformed(str(value), kind.value))
        elif kind is ActionMessageKind.PROGRESS:
            self._found.append(Progress(_clamp_percent(float(value))))
        elif kind is ActionMessageKind.STATUS:
            self._found.append(OpenJDStatus(str(value)))
        elif kind is ActionMessageKind.FAIL:
            self._found.append(OpenJDFail(str(value)))
        elif kind in (ActionMessageKind.ENV, ActionMessageKind.REDACTED_ENV):
            redacted = kind is ActionMessageKind.REDACTED_ENV
            self._found.append(OpenJDEnv(str(value["name"]), str(value["value"]), redacted))
        elif kind is ActionMessageKind.UNSET_ENV:
            self._found.append(OpenJDUnsetEnv(str(value)))

    def parse(self, line: str) -> list[Update]:
        """The updates ``line`` carries (usually none, at most one)."""
        record = logging.LogRecord(_SESSION, logging.INFO, "", 0, line, None, None)
        record.session_id = _SESSION
        self._found = []
        self._filter.filter(record)
        return self._found


def is_openjd_message(line: str) -> bool:
    """Cheap pre-test: could ``line`` be (or almost be) an OpenJD stdout message?"""
    return line[:64].lstrip()[:7].lower() == "openjd_"


def _clamp_percent(value: float) -> float:
    """Clamp to 0..100; NaN counts as 0 so a bad report never poisons an average."""
    if math.isnan(value):
        return 0.0
    return min(100.0, max(0.0, value))


def parse_progress(line: str) -> float | None:
    """Return the clamped percentage of the last ``ALF_PROGRESS N%`` in ``line``, or None.

    The last report wins because, without a line end between them, later reports
    supersede earlier ones.
    """
    if _ALF not in line:
        return None
    value = None
    for match in _ALF_RE.finditer(line):
        value = match.group(1)
    if value is None:
        return None
    try:
        return _clamp_percent(float(value))
    except ValueError:  # pragma: no cover - the regex only admits float syntax
        return None


def task_progress(frames: Iterable[int], done: Iterable[int], current_frame_percent: float) -> float:
    """Task-level progress, 0..100, of a task that renders ``frames`` one after another.

    Each frame is an equal share: finished frames count whole, and the frame being rendered
    counts ``current_frame_percent`` of its share. Pass every finished frame in ``done``,
    failed ones too if they should count as "no longer outstanding"; frames in ``done`` that
    are not in ``frames`` are ignored. With no frames at all (a step that is not frame based)
    the task's progress is simply ``current_frame_percent``.

    Pure and cheap, so the service can call it on every progress update.
    """
    wanted = set(frames)
    pct = _clamp_percent(float(current_frame_percent))
    if not wanted:
        return pct
    finished = len(wanted.intersection(done))
    if finished >= len(wanted):
        return 100.0
    return _clamp_percent((finished + pct / 100.0) * 100.0 / len(wanted))


class LogParser:
    """Feed it log chunks as they arrive; it returns the updates each chunk completes.

    Typical use by the service::

        parser = LogParser()
        for chunk in engine.logs(handle, follow=True):
            for update in parser.feed(chunk):
                handle(update)
        for update in parser.close():
            handle(update)

    It also keeps the state a task's progress needs (:attr:`current_frame`,
    :attr:`current_percent`, :attr:`done`, :attr:`failed`), so
    ``parser.task_progress(task.frames)`` gives task-level progress at any time.

    Consecutive identical progress reports for the same frame are reported once
    (renderers repeat themselves; every update may become a stored event). Feed either
    bytes or str; bytes are decoded as UTF-8 with replacement, keeping a character split
    across chunks intact.
    """

    def __init__(self, *, dedupe_progress: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # pieces of the current, unfinished line
        self._pending_len = 0
        self._after_cr = False  # the last chunk ended in "\r": a leading "\n" belongs to it
        self._dedupe = dedupe_progress
        self._last_progress: Progress | None = None
        self.current_frame: int | None = None
        self.current_percent: float = 0.0
        self.done: set[int] = set()
        self.failed: dict[int, str] = {}
        self.outputs: dict[int, str] = {}
        self.lines = 0
        self.out_of_memory: str | None = None  # the first line saying an allocation failed
        self.fork_failed: str | None = None  # the first line saying a fork failed
        self.licence_failure: str | None = None  # the first line saying no licence was available
        self._openjd: _OpenJDMessages | None = None  # made on the first OpenJD message

    # -- feeding -------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview | str) -> list[Update]:
        """Consume one chunk; return the updates of every line it completes."""
        if isinstance(chunk, str):
            # Finish any bytes still waiting for the rest of a character first.
            text = self._decoder.decode(b"", final=True) + chunk
            self._decoder.reset()
        else:
            text = self._decoder.decode(bytes(chunk))
        if not text:
            return []
        if self._after_cr and text[0] == "\n":
            text = text[1:]  # the "\n" of a "\r\n" split across chunks
        self._after_cr = text.endswith("\r")
        updates: list[Update] = []
        # str.split finds newlines far faster than a regex scan; carriage returns are rarer.
        pieces = _LINE_END_RE.split(text) if "\r" in text else text.split("\n")
        for piece in pieces[:-1]:  # each of these ended with a line end
            self._take_line(piece, updates)
        if pieces[-1]:
            self._remember(pieces[-1])
        return updates

    def close(self) -> list[Update]:
        """Flush the last line if it had no line end; call once when the log ends."""
        tail = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        if tail:
            self._remember(tail)
        updates: list[Update] = []
        if self._pending:
            self._take_line("", updates)
        return updates

    def _remember(self, piece: str) -> None:
        room = MAX_LINE_CHARS - self._pending_len
        if room <= 0:
            return
        piece = piece[:room]
        self._pending.append(piece)
        self._pending_len += len(piece)

    def _take_line(self, piece: str, updates: list[Update]) -> None:
        if self._pending:
            self._remember(piece)
            line = "".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
        else:
            line = piece[:MAX_LINE_CHARS]
        self.lines += 1
        if line:
            self._parse_line(line, updates)

    # -- recognising ---------------------------------------------------------------

    def _parse_line(self, line: str, updates: list[Update]) -> None:
        if self.out_of_memory is None and ("emory" in line or "bad_alloc" in line) and _OOM_RE.search(line):
            self.out_of_memory = line.strip()[:_HINT_CHARS]
        if self.fork_failed is None and ("fork" in line or "thread" in line) and _FORK_RE.search(line):
            self.fork_failed = line.strip()[:_HINT_CHARS]
        if self.licence_failure is None and ("icens" in line or "ICENS" in line) and _LICENCE_RE.search(line):
            self.licence_failure = line.strip()[:_HINT_CHARS]
            updates.append(LicenceUnavailable(self.licence_failure))
            return
        if is_openjd_message(line):
            self._parse_openjd(line, updates)
            return
        if PREFIX in line:
            marker = parse_marker(line)
            if marker is not None:
                updates.append(self._apply_marker(marker.kind, marker.frame, marker.detail.strip()))
                return
        percent = parse_progress(line)
        if percent is None:
            return
        progress = Progress(percent, self.current_frame)
        if self._dedupe and progress == self._last_progress:
            return
        self._last_progress = progress
        self.current_percent = percent
        updates.append(progress)

    def _parse_openjd(self, line: str, updates: list[Update]) -> None:
        if self._openjd is None:
            self._openjd = _OpenJDMessages()
        for update in self._openjd.parse(line):
            if isinstance(update, Progress):
                update = Progress(update.percent, self.current_frame)
                if self._dedupe and update == self._last_progress:
                    continue
                self._last_progress = update
                self.current_percent = update.percent
            updates.append(update)

    def _apply_marker(self, kind: str, frame: int, detail: str) -> Update:
        self._last_progress = None  # a new frame's first report is news even if it repeats
        if kind == FRAME_START:
            self.current_frame = frame
            self.current_percent = 0.0
            return FrameStarted(frame)
        if self.current_frame == frame:
            self.current_frame = None
            self.current_percent = 0.0
        if kind == FRAME_DONE:
            self.done.add(frame)
            self.failed.pop(frame, None)
            if detail:
                self.outputs[frame] = detail
            return FrameDone(frame, detail or None)
        assert kind == FRAME_FAILED, kind
        reason = detail or NO_REASON
        self.failed[frame] = reason
        self.done.discard(frame)
        return FrameFailed(frame, reason)

    # -- state ---------------------------------------------------------------------

    def task_progress(self, frames: Iterable[int], *, count_failed: bool = True) -> float:
        """Task-level progress for a task rendering ``frames``; see :func:`task_progress`.

        Failed frames count as finished by default: the task will not work on them again
        in this attempt, and a bar stuck below 100 % would misreport a task that is over.
        """
        finished = self.done | set(self.failed) if count_failed else self.done
        return task_progress(frames, finished, self.current_percent)
