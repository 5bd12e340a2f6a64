"""What the Houdini plugin and hpcdock-service must agree on, defined once.

Both sides import this module: the plugin (CLI, client, panel, bundle writer) in Houdini's
Python 3.9 and the service in its own environment. So it stays small, standard library only,
and free of either side's dependencies. It holds the state names the API reports, which of
them are final, the event stream's schema, the run-length encoding of frame lists (stored,
written into bundles, typed on the command line, drawn in the panel) and the reconnect policy
of an event stream follower.
"""

import json
from enum import Enum
from typing import Any, Dict, FrozenSet, Iterable, List, Tuple


class JobState(str, Enum):
    """A job's ``state``. A ``str`` enum: members compare equal to the strings the API sends."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class TaskState(str, Enum):
    """A task's ``state``; ``replaced``: a failed or canceled task whose unfinished frames a
    frame retry moved to new tasks."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REPLACED = "replaced"


class FrameState(str, Enum):
    """A frame's ``state``."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# A job or task in one of these states changes no more (unless retried): a follower stops here.
JOB_FINAL: FrozenSet[str] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
TASK_FINAL: FrozenSet[str] = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED, TaskState.REPLACED}
)
# The others: a job or task still to run or running, which a panel refreshes and may cancel.
JOB_ACTIVE: FrozenSet[str] = frozenset(JobState) - JOB_FINAL
TASK_ACTIVE: FrozenSet[str] = frozenset(TaskState) - TASK_FINAL


# -- the event stream --------------------------------------------------------------------------


class EventKind(str, Enum):
    """An event's kind: the SSE ``event:`` line, and the one key of its ``data`` object, whose
    value is the whole current job, task or frame (as ``GET`` answers it)."""

    JOB = "job"
    TASK = "task"
    FRAME = "frame"


def event_data(kind: EventKind, obj: Dict[str, Any]) -> Dict[str, Any]:
    """An event's ``data``: ``{"frame": {...}}`` for a frame event."""
    return {kind.value: obj}


def event_object(kind: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """The job, task or frame an event of ``kind`` carries in its ``data`` (empty for a kind this
    side does not know, so that an older client skips it)."""
    obj = data.get(kind)
    return obj if isinstance(obj, dict) else {}


# -- frame lists as runs ------------------------------------------------------------------------

Run = Tuple[int, int]  # inclusive (first, last)


def frame_runs(frames: Iterable[int], gap: int = 1) -> List[Run]:
    """Frames, in the order given, as inclusive runs; a frame at most ``gap`` above the last run's
    end extends it (``gap=1``: only consecutive frames). Order and repeats are kept, so
    expanding the runs gives back the same list when ``gap`` is 1."""
    out: List[Run] = []
    for f in frames:
        if out and 0 < f - out[-1][1] <= gap:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return out


def encode_frames(frames: List[int]) -> str:
    """Frames as JSON runs, exactly ``json.dumps`` of them: 100,000 frames store as ``[[1, 100000]]``.

    The store calls this once per task (100,000 times for a frame-per-task job), so the usual
    one-frame task is a plain format, without the encoder."""
    if len(frames) == 1:
        f = int(frames[0])
        return f"[[{f}, {f}]]"
    return json.dumps(frame_runs(frames))


def decode_frames(text: str) -> List[int]:
    """The frames of :func:`encode_frames`'s text."""
    if text.startswith("[[") and text.count("[") == 2:  # one run, e.g. "[[17, 17]]": every frame-per-task row
        a, _, b = text[2:-2].partition(",")
        return list(range(int(a), int(b) + 1))
    return [f for a, b in json.loads(text) for f in range(a, b + 1)]


def format_frame_list(frames: Iterable[int]) -> str:
    """Frames as the text people type and OpenJD reads: ``1-10,12,-5--3`` (sorted, repeats dropped)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in frame_runs(sorted(set(frames))))


MAX_LIST_RUN = 1_000_000  # frames one ``A-B`` of a typed list may name: a typo must not allocate gigabytes


def parse_frame_list(text: str) -> List[int]:
    """``17,40-42`` -> [17, 40, 41, 42]: a list people type, or an OpenJD range expression as a task's
    chunk hands it over (``1-9:4``, a step); negative frames as ``-5`` or ``-5--3``.

    Raises ValueError naming the part that is not a frame or a low-to-high range."""
    frames: List[int] = []
    for part in text.split(","):
        item = part.strip()
        span, colon, step_text = item.partition(":")
        first, sep, last = span.partition("-")
        if sep and not first.strip():  # a negative frame: -5, or -5--3
            lead, sep, last = last.partition("-")
            first = "-" + lead
        try:
            a = int(first)
            b = int(last) if sep else a
            step = int(step_text) if colon else 1
        except ValueError:
            raise ValueError(f"{item!r} is not a frame or a range A-B (or A-B:STEP)") from None
        if colon and not sep:
            raise ValueError(f"{item!r}: a step goes with a range A-B:STEP")
        if step < 1:
            raise ValueError(f"{item!r}: a step is at least 1")
        if b < a or (b - a) // step >= MAX_LIST_RUN:
            raise ValueError(f"{item!r}: a range runs from low to high, at most 1,000,000 frames")
        frames.extend(range(a, b + 1, step))
    return frames


# -- following the event stream -----------------------------------------------------------------

RECONNECT_FIRST_S = 0.2  # the first wait after a dropped stream: a restarting service is back soon
RECONNECT_MAX_S = 5.0  # the longest: a service down for minutes is still noticed within seconds


class Backoff:
    """The waits between tries (reconnects, and the service's own retries): doubling from
    ``first`` up to ``maximum``, and back to ``first`` once a try succeeds (:meth:`reset`)."""

    def __init__(self, first: float = RECONNECT_FIRST_S, maximum: float = RECONNECT_MAX_S) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def next(self) -> float:
        """The wait before this reconnect; the following one waits twice as long, up to the maximum."""
        delay = min(self._next, self.maximum)
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.first
