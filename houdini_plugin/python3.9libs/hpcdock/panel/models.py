"""Item models of the panel: the jobs table and the frame grid of the selected job.

Both models are fed in batches (lists of full objects as the event stream carries them,
see docs/api.md) and never reset per event: the frame model keeps an index from
``(step, frame)`` to its row, replaces the changed rows in place and emits one
``dataChanged`` per run of nearby rows, so a 10,000-frame job costs a dictionary lookup per
update, not a relayout.

Snapshots (``GET /jobs``, ``GET /jobs/{id}/frames``) and events can cross in flight. Every
row remembers the id of the last event applied to it; a snapshot taken when the panel had
seen events up to ``anchor`` leaves alone the rows an event newer than ``anchor`` already
set. Since every event carries the whole current object, applying events in order on top
of a snapshot always ends in the service's current state.
"""

import bisect
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..protocol import JOB_ACTIVE, frame_runs
from .qt import (
    ALIGN_RIGHT_VCENTER,
    ALIGNMENT,
    BACKGROUND,
    DISPLAY,
    FOREGROUND,
    HORIZONTAL,
    TOOLTIP,
    USER,
    QtCore,
    QtGui,
    Signal,
)

JSON = Dict[str, Any]
FrameKey = Tuple[Optional[str], Optional[int]]  # (step, frame), as a frame's JSON has them

# custom roles
OBJECT_ROLE = USER + 1  # the job / frame dict
STATE_ROLE = USER + 2
PROGRESS_ROLE = USER + 3  # job progress, 0..100
THUMB_ROLE = USER + 4  # QImage or None
KEY_ROLE = USER + 5  # frame model: (step, frame)
FLAGS_ROLE = USER + 6  # frame model: the frame's flags (list of {"check", "reason", "values"})

#: the flipbook's rate when the job does not say (hpcdock.yaml ``fps:``)
DEFAULT_FPS = 24.0

STATE_COLORS = {
    # frames
    "waiting": "#4a4d52",
    "running": "#2f6fb5",
    "done": "#2e8b45",
    "failed": "#b8332e",
    # jobs / tasks
    "queued": "#6b6f76",
    "pending": "#6b6f76",
    "succeeded": "#2e8b45",
    "canceled": "#8a6d1f",
    "replaced": "#6b6f76",  # a task whose frames a frame retry moved to new tasks
}

# merge dataChanged ranges whose gap is smaller than this (a repaint of a few unchanged
# cells is cheaper than hundreds of signals)
RANGE_GAP = 64


def job_waits(job: JSON) -> List[str]:
    """What the job's unfinished steps wait for (a resource, GPUs, machine room), each named once."""
    if job.get("state") not in JOB_ACTIVE:
        return []
    waits: List[str] = []
    for step in job.get("steps") or []:
        if step.get("waiting_for") and step["waiting_for"] not in waits:
            waits.append(step["waiting_for"])
    return waits


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def frame_flags(frame: JSON) -> List[JSON]:
    """The checks a finished frame failed (empty when clean, or from a service without checks)."""
    return [f for f in frame.get("flags") or () if isinstance(f, dict)]


def flag_lines(frame: JSON) -> List[str]:
    """One line per flag: the check's name and the service's sentence with its numbers."""
    return [f"⚠ {f.get('check') or '?'}: {f.get('reason') or ''}".rstrip(": ") for f in frame_flags(frame)]


def frame_spans(frames: Iterable[int]) -> str:
    """Frame numbers as the CLI writes them: ``[17, 40, 41, 42]`` -> ``"17, 40-42"``."""
    spans = ranges(frames, gap=1)
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def job_fps(job: Optional[JSON]) -> float:
    """The job's frame rate for the flipbook; ``DEFAULT_FPS`` when unset or nonsense."""
    try:
        fps = float((job or {}).get("fps") or 0)
    except (TypeError, ValueError):
        fps = 0.0
    return fps if 0 < fps <= 1000 else DEFAULT_FPS


def job_progress(job: JSON) -> float:
    """Percent of the job finished (frames when the job has outputs, else tasks)."""
    total = job.get("frames_total") or 0
    if total:
        return 100.0 * min(total, (job.get("frames_done") or 0)) / total
    total = job.get("tasks_total") or 0
    if total:
        return 100.0 * min(total, (job.get("tasks_done") or 0)) / total
    return 100.0 if job.get("state") == "succeeded" else 0.0


def job_elapsed(job: JSON, now: float) -> Optional[float]:
    started = job.get("started_at")
    if not started:
        return None
    end = job.get("finished_at") or now
    return max(0.0, end - started)


def job_eta(job: JSON, now: float) -> Optional[float]:
    """Seconds left, extrapolated from the rate so far; None when it can't be told."""
    if job.get("state") not in JOB_ACTIVE:
        return None
    elapsed = job_elapsed(job, now)
    total = job.get("frames_total") or 0
    done = job.get("frames_done") or 0
    if not total:
        total, done = job.get("tasks_total") or 0, job.get("tasks_done") or 0
    if not elapsed or not total or done <= 0:
        return None
    return elapsed * (total - done) / done


def ranges(rows: Iterable[int], gap: int = RANGE_GAP) -> List[Tuple[int, int]]:
    """Rows in any order -> sorted inclusive (first, last) runs, merging runs closer than ``gap``."""
    return frame_runs(sorted(set(rows)), gap)


class JobsModel(QtCore.QAbstractTableModel):
    COLUMNS = ("Job", "State", "Progress", "Frames", "Elapsed", "ETA")
    NAME, STATE, PROGRESS, FRAMES, ELAPSED, ETA = range(6)

    def __init__(
        self, parent: Optional[QtCore.QObject] = None, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(parent)
        self._clock = clock
        self._jobs: List[JSON] = []  # newest (highest id) first
        self._index: Dict[int, int] = {}
        self._evid: Dict[int, int] = {}

    # -- Qt API -------------------------------------------------------------------------
    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Any, role: int = DISPLAY) -> Any:
        if role == DISPLAY and orientation == HORIZONTAL and 0 <= section < len(self.COLUMNS):
            return self.COLUMNS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = DISPLAY) -> Any:
        if not index.isValid() or index.row() >= len(self._jobs):
            return None
        job = self._jobs[index.row()]
        col = index.column()
        if role == DISPLAY:
            return self._display(job, col)
        if role == OBJECT_ROLE:
            return job
        if role == STATE_ROLE:
            return job.get("state")
        if role == PROGRESS_ROLE:
            return job_progress(job)
        if role == FOREGROUND and col == self.STATE:
            return QtGui.QColor(STATE_COLORS.get(job.get("state") or "", "#888888"))
        if role == ALIGNMENT and col in (self.FRAMES, self.ELAPSED, self.ETA):
            return ALIGN_RIGHT_VCENTER
        if role == TOOLTIP:
            lines = [
                f"job {job.get('id')}: {job.get('name')} ({job.get('state')})",
                f"bundle: {job.get('bundle_dir')}",
                f"tasks: {job.get('tasks_done', 0)}/{job.get('tasks_total', 0)} done, "
                f"{job.get('tasks_running', 0)} running, {job.get('tasks_failed', 0)} failed",
            ]
            if job.get("frames_flagged"):
                lines.append(f"frames flagged by the output checks: {job['frames_flagged']}")
            lines += [
                f"step {s.get('name')}: waiting for {s['waiting_for']}"
                for s in job.get("steps") or []
                if s.get("waiting_for")
            ]
            if job.get("error"):
                lines.append(f"error: {job['error']}")
            return "\n".join(lines)
        return None

    def _display(self, job: JSON, col: int) -> Any:
        if col == self.NAME:
            return f"{job.get('name') or '?'}  #{job.get('id')}"
        if col == self.STATE:
            waits = job_waits(job)
            return (job.get("state") or "") + (f" (waiting for {', '.join(waits)})" if waits else "")
        if col == self.PROGRESS:
            return f"{job_progress(job):.0f}%"
        if col == self.FRAMES:
            text = f"{job.get('frames_done') or 0}/{job.get('frames_total') or 0}"
            notes = [
                f"{job[k]} {word}"
                for k, word in (("frames_failed", "failed"), ("frames_flagged", "flagged"))
                if job.get(k)
            ]
            if notes:
                text += f" ({', '.join(notes)})"
            return text
        now = self._clock()
        if col == self.ELAPSED:
            return format_duration(job_elapsed(job, now))
        if col == self.ETA:
            return format_duration(job_eta(job, now))
        return None

    # -- feeding ------------------------------------------------------------------------
    def job(self, row: int) -> Optional[JSON]:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def job_by_id(self, job_id: Optional[int]) -> Optional[JSON]:
        row = None if job_id is None else self._index.get(job_id)
        return None if row is None else self._jobs[row]

    def row_of(self, job_id: Optional[int]) -> Optional[int]:
        return None if job_id is None else self._index.get(job_id)

    def apply(
        self, jobs: Sequence[JSON], event_ids: Optional[Sequence[int]] = None, anchor: Optional[int] = None
    ) -> None:
        """Insert or replace jobs. ``event_ids`` (parallel) marks event-borne updates;
        ``anchor`` marks a snapshot: rows updated by an event after it are kept."""
        changed: List[int] = []
        for i, job in enumerate(jobs):
            jid = job.get("id")
            if jid is None:
                continue
            if anchor is not None and self._evid.get(jid, -1) > anchor:
                continue
            if event_ids is not None:
                self._evid[jid] = event_ids[i]
            row = self._index.get(jid)
            if row is not None:
                self._jobs[row] = job
                changed.append(row)
                continue
            keys = [-j["id"] for j in self._jobs]
            pos = bisect.bisect_left(keys, -jid)
            self.beginInsertRows(QtCore.QModelIndex(), pos, pos)
            self._jobs.insert(pos, job)
            self._index = {j["id"]: r for r, j in enumerate(self._jobs)}
            self.endInsertRows()
            changed = [r + 1 if r >= pos else r for r in changed]
        last = len(self.COLUMNS) - 1
        for first, end in ranges(changed, gap=4):
            self.dataChanged.emit(self.index(first, 0), self.index(end, last))

    def tick(self) -> None:
        """Refresh the time columns of running jobs (call about once a second)."""
        rows = [r for r, j in enumerate(self._jobs) if j.get("state") in JOB_ACTIVE]
        for first, end in ranges(rows, gap=8):
            self.dataChanged.emit(self.index(first, self.ELAPSED), self.index(end, self.ETA))


class ThumbnailCache:
    """LRU of decoded thumbnails keyed by (job, step, frame, attempt)."""

    def __init__(self, capacity: int = 3000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Tuple[Any, ...], Any] = OrderedDict()
        self.missing: set = set()  # keys the service had no thumbnail for
        self.pending: set = set()  # requested, not answered yet

    def get(self, key: Tuple[Any, ...]) -> Any:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Tuple[Any, ...], image: Any) -> None:
        self.pending.discard(key)
        if image is None:
            self.missing.add(key)
            return
        self._items[key] = image
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Tuple[Any, ...]) -> bool:
        return key in self._items


class FramesModel(QtCore.QAbstractListModel):
    """One row per (step, frame) of the selected job, in step order then frame order."""

    thumbnailWanted = Signal(object)  # key (job, step, frame, attempt)

    def __init__(
        self, parent: Optional[QtCore.QObject] = None, cache: Optional[ThumbnailCache] = None
    ) -> None:
        super().__init__(parent)
        self.cache = cache if cache is not None else ThumbnailCache()
        self.job_id: Optional[int] = None
        self._steps: Dict[str, int] = {}
        self._frames: List[JSON] = []
        self._sort: List[Tuple[int, int, str]] = []
        self._index: Dict[FrameKey, int] = {}
        self._evid: Dict[FrameKey, int] = {}
        self._counts: Dict[str, int] = {}
        self._flagged = 0
        self.tasks: Dict[int, JSON] = {}
        self._task_evid: Dict[int, int] = {}

    # -- Qt API -------------------------------------------------------------------------
    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._frames)

    def data(self, index: QtCore.QModelIndex, role: int = DISPLAY) -> Any:
        row = index.row()
        if not index.isValid() or row >= len(self._frames):
            return None
        frame = self._frames[row]
        if role == DISPLAY:
            return str(frame.get("frame"))
        if role == STATE_ROLE:
            return frame.get("state")
        if role == OBJECT_ROLE:
            return frame
        if role == KEY_ROLE:
            return (frame.get("step"), frame.get("frame"))
        if role == FLAGS_ROLE:
            return frame_flags(frame)
        if role == BACKGROUND:
            return QtGui.QColor(STATE_COLORS.get(frame.get("state") or "", "#4a4d52"))
        if role == THUMB_ROLE:
            return self._thumbnail(frame)
        if role == PROGRESS_ROLE:
            if frame.get("state") != "running":
                return None
            task = self.tasks.get(frame.get("task_id"))
            return None if task is None else task.get("progress")
        if role == TOOLTIP:
            return self.tooltip(frame)
        return None

    def tooltip(self, frame: JSON) -> str:
        lines = [f"frame {frame.get('frame')}  ({frame.get('step')})", f"state: {frame.get('state')}"]
        task_id = frame.get("task_id")
        task = self.tasks.get(task_id) if task_id is not None else None
        task_line = f"task {frame.get('task_id')}, attempt {frame.get('attempt')}"
        if task is not None:
            task_line += f" ({task.get('state')}"
            if task.get("state") == "running" and task.get("progress") is not None:
                task_line += f", {task['progress']:.0f}%"
            if task.get("waiting_for"):
                task_line += f", waiting for {task['waiting_for']}"
            task_line += ")"
        lines.append(task_line)
        if task is not None and task.get("status"):
            lines.append(f"status: {task['status']}")
        if frame.get("render_time") is not None:
            lines.append(f"render time: {frame['render_time']:.2f} s")
        if frame.get("output"):
            lines.append(str(frame["output"]))
        if frame.get("error"):
            lines.append(f"error: {frame['error']}")
        lines.extend(flag_lines(frame))
        return "\n".join(lines)

    @staticmethod
    def thumb_key(frame: JSON) -> Tuple[Any, ...]:
        return (frame.get("job_id"), frame.get("step"), frame.get("frame"), frame.get("attempt"))

    def _thumbnail(self, frame: JSON) -> Any:
        if frame.get("state") != "done" or not frame.get("thumbnail_url"):
            return None
        key = self.thumb_key(frame)
        image = self.cache.get(key)
        if image is None and key not in self.cache.missing and key not in self.cache.pending:
            self.cache.pending.add(key)
            self.thumbnailWanted.emit(key)
        return image

    # -- access -------------------------------------------------------------------------
    def frame(self, row: int) -> Optional[JSON]:
        return self._frames[row] if 0 <= row < len(self._frames) else None

    def row_of(self, step: str, frame: int) -> Optional[int]:
        return self._index.get((step, frame))

    def frames(self) -> List[JSON]:
        return list(self._frames)

    def counts(self) -> Dict[str, int]:
        """Frames per state (kept up to date as frames are applied)."""
        return {k: v for k, v in self._counts.items() if v}

    def _count(self, old: Optional[JSON], new: JSON) -> None:
        """Keep the per-state and flagged counts as ``old`` (None: a new row) becomes ``new``."""
        self._flagged += bool(new.get("flags")) - bool(old is not None and old.get("flags"))
        if old is not None and old.get("state") == new.get("state"):
            return
        counts = self._counts
        if old is not None:
            state = old.get("state") or "?"
            counts[state] = counts.get(state, 0) - 1
        state = new.get("state") or "?"
        counts[state] = counts.get(state, 0) + 1

    def done_frames(self, step: Optional[str] = None) -> List[JSON]:
        """The finished frames with an output, in frame order (of ``step``, or of every step)."""
        return [
            f
            for f in self._frames
            if f.get("output") and f.get("state") == "done" and (step is None or f.get("step") == step)
        ]

    def flagged_count(self) -> int:
        """Frames with flags (kept up to date as frames are applied)."""
        return self._flagged

    def output_dir(self) -> Optional[str]:
        dirs = {os.path.dirname(f["output"]) for f in self._frames if f.get("output")}
        if not dirs:
            return None
        return os.path.commonpath(sorted(dirs)) if len(dirs) > 1 else dirs.pop()

    # -- feeding ------------------------------------------------------------------------
    def set_job(self, job_id: Optional[int], steps: Sequence[str] = ()) -> None:
        """Show another job (one reset, on selection only)."""
        self.beginResetModel()
        self.job_id = job_id
        self._steps = {name: i for i, name in enumerate(steps)}
        self._frames, self._sort, self._index, self._evid = [], [], {}, {}
        self._counts = {}
        self._flagged = 0
        self.tasks, self._task_evid = {}, {}
        self.endResetModel()

    def set_steps(self, steps: Sequence[str]) -> None:
        for name in steps:
            self._steps.setdefault(name, len(self._steps))

    def _sort_key(self, frame: JSON) -> Tuple[int, int, str]:
        step = frame.get("step") or ""
        rank = self._steps.get(step)
        if rank is None:
            rank = self._steps[step] = len(self._steps)
        return (rank, int(frame.get("frame") or 0), step)

    def apply(
        self, frames: Sequence[JSON], event_ids: Optional[Sequence[int]] = None, anchor: Optional[int] = None
    ) -> int:
        """Insert or replace frames of the shown job; returns how many rows changed."""
        updated: List[int] = []
        new: Dict[FrameKey, JSON] = {}
        new_ids: Dict[FrameKey, int] = {}
        for i, frame in enumerate(frames):
            if frame.get("job_id") != self.job_id:
                continue
            key = (frame.get("step"), frame.get("frame"))
            if anchor is not None and self._evid.get(key, -1) > anchor:
                continue
            row = self._index.get(key)
            if row is not None:
                old = self._frames[row]
                if old.get("attempt") != frame.get("attempt") or (
                    old.get("state") == "done" and frame.get("state") != "done"
                ):
                    self.cache.missing.discard(self.thumb_key(old))
                self._frames[row] = frame
                self._count(old, frame)
                updated.append(row)
                if event_ids is not None:
                    self._evid[key] = event_ids[i]
            else:
                new[key] = frame
                if event_ids is not None:
                    new_ids[key] = event_ids[i]
        for first, last in ranges(updated):
            self.dataChanged.emit(self.index(first), self.index(last))
        if new:
            for frame in new.values():
                self._count(None, frame)
            self._insert(list(new.values()))
            self._evid.update(new_ids)
        return len(updated) + len(new)

    def _insert(self, frames: List[JSON]) -> None:
        items = sorted(((self._sort_key(f), f) for f in frames), key=lambda kv: kv[0])
        if not self._sort or items[0][0] > self._sort[-1]:
            first = len(self._frames)
            self.beginInsertRows(QtCore.QModelIndex(), first, first + len(items) - 1)
            self._sort.extend(k for k, _ in items)
            self._frames.extend(f for _, f in items)
            for row in range(first, len(self._frames)):
                frame = self._frames[row]
                self._index[(frame.get("step"), frame.get("frame"))] = row
            self.endInsertRows()
            return
        # group the new rows by where they land; few groups: insert each, else one reset
        groups: List[Tuple[int, List[Tuple[Tuple[int, int, str], JSON]]]] = []
        for item in items:
            pos = bisect.bisect_left(self._sort, item[0])
            if groups and groups[-1][0] == pos:
                groups[-1][1].append(item)
            else:
                groups.append((pos, [item]))
        if len(groups) > 32:
            self.beginResetModel()
            merged = sorted(list(zip(self._sort, self._frames)) + items, key=lambda kv: kv[0])
            self._sort = [k for k, _ in merged]
            self._frames = [f for _, f in merged]
            self._reindex()
            self.endResetModel()
            return
        shift = 0
        for pos, group in groups:
            at = pos + shift
            self.beginInsertRows(QtCore.QModelIndex(), at, at + len(group) - 1)
            self._sort[at:at] = [k for k, _ in group]
            self._frames[at:at] = [f for _, f in group]
            self.endInsertRows()
            shift += len(group)
        self._reindex()

    def _reindex(self) -> None:
        self._index = {(f.get("step"), f.get("frame")): r for r, f in enumerate(self._frames)}

    def apply_tasks(
        self, tasks: Sequence[JSON], event_ids: Optional[Sequence[int]] = None, anchor: Optional[int] = None
    ) -> List[int]:
        """Remember tasks of the shown job (tooltips, log tailing); returns rows to refresh.

        ``event_ids`` and ``anchor`` work as for frames: a snapshot does not undo a newer event."""
        rows: List[int] = []
        for i, task in enumerate(tasks):
            if task.get("job_id") != self.job_id:
                continue
            if anchor is not None and self._task_evid.get(task["id"], -1) > anchor:
                continue
            if event_ids is not None:
                self._task_evid[task["id"]] = event_ids[i]
            self.tasks[task["id"]] = task
            if task.get("state") == "running":
                for fr in task.get("frames") or ():
                    row = self._index.get((task.get("step"), fr))
                    if row is not None:
                        rows.append(row)
        for first, last in ranges(rows):
            self.dataChanged.emit(self.index(first), self.index(last))
        return rows

    def set_thumbnail(self, key: Tuple[Any, ...], image: Any) -> None:
        self.cache.put(key, image)
        if image is None:
            return
        job_id, step, frame = key[0], key[1], key[2]
        if job_id != self.job_id:
            return
        row = self._index.get((step, frame))
        if row is not None:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx)
