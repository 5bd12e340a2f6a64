"""The service's only state: jobs, steps, tasks, frames and the event log, in SQLite (WAL).

Everything that must survive a ``kill -9`` lives here and is written before the action
it describes (a task is marked running, with its container name, before the container
is created), so a restarted service can tell what was in flight. Every change of job,
task or frame state appends an event in the same transaction, which is what makes the
event stream resumable without gaps.

One writer connection guarded by one lock (SQLite serialises writers anyway; this keeps
every multi-statement change atomic) and a pool of reader connections, each read one
snapshot: in WAL mode readers never wait for a writer, so the API answers while a write
waits. Another process may hold the database's write lock (an admin's ``sqlite3`` shell, a
backup): writes the service cannot drop (a task's frames and result) wait for it as long
as it takes, writes an API call makes wait a bounded time and then answer 503.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hpcdock.protocol import JOB_ACTIVE, EventKind, TaskState, decode_frames, encode_frames, event_data
from openjd.model import IntRangeExpr

from .bundle_loader import ContainerSpec, JobPlan
from .config import LicenceRetry
from .errors import BadInput, NotFound
from .framecheck import FLICKER_RADIUS, Flag, FrameCheck, FrameCheckSettings, compare_shape, flicker
from .lifecycle import attempt_outcome, job_outcome
from .migrations import SchemaTooNew, migrate
from .model import JSON, Event, Frame, Job, ReadyStep, StepRun, Task
from .records import (
    event_from_row,
    frame_from_row,
    frame_only_params,
    job_from_row,
    json_rows,
    params_json,
    printf_format,
    ready_step_from_row,
    step_run_from_row,
    task_from_row,
)

log = logging.getLogger(__name__)

_FRAME_SELECT = (
    "SELECT f.*, s.name AS step, t.attempt AS attempt FROM frames f "
    "JOIN steps s ON s.job_id = f.job_id AND s.idx = f.step_idx JOIN tasks t ON t.id = f.task_id"
)
# A pending task waits for its licence back-off while it lasts, else for what its step waits for
# (set by dispatch). The back-off's end is compared in SQLite's clock: Unix seconds from julianday.
_TASK_SELECT = (
    "SELECT t.*, s.name AS step, CASE WHEN t.state = 'pending' THEN CASE WHEN t.retry_at > "
    "(julianday('now') - 2440587.5) * 86400.0 THEN 'licence back-off' ELSE s.waiting_for END END "
    "AS waiting_for FROM tasks t JOIN steps s ON s.job_id = t.job_id AND s.idx = t.step_idx"
)

FrameResult = tuple[str, Optional[str], Optional[str]]  # state, error, thumbnail path

# How long a write made for an API call waits for a write lock held by another process
# before the call answers 503; the caller may try again.
API_WRITE_PATIENCE = 10.0
# One try at the write lock: short, so that the service's own lock is free between tries.
_WRITER_BUSY_SECONDS = 0.2
# Readers are not blocked by writers in WAL mode; this only covers checkpoints and recovery.
_READER_BUSY_SECONDS = 10.0
_OPEN_BUSY_SECONDS = 60.0
#: Longest status line kept: a status line is one line of a panel, not a log.
STATUS_CHARS = 500


class StoreBusy(BadInput):
    """Another process holds the store's write lock longer than this call may wait."""

    def __init__(self, path: Path, waited: float) -> None:
        super().__init__(
            "store", f"the store {path} is locked by another process (waited {waited:.0f}s); try again", 503
        )


class StoreUnusable(Exception):
    """The service cannot start on this store; the message says why and what to do."""


class StoreCorrupt(StoreUnusable):
    """The store file is not a readable SQLite database: the service cannot start on it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"the store {path} is corrupted ({reason}). Move it aside (with any {path.name}-wal and "
            f"{path.name}-shm next to it) or start once with --reset-store, which keeps it as "
            f"{path.name}.corrupt-<time> and starts an empty store; jobs recorded in it are forgotten "
            "and containers they left are not removed"
        )
        self.path = path
        self.reason = reason


class StoreTooNew(StoreUnusable):
    """A newer release wrote the store: its schema is not this one's, and it is kept as it is."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(
            f"the store {path} has schema version {found}, but this hpcdock-service knows versions up to "
            f"{known}: a newer release wrote it. Run that release (or a newer one) on it, or start on "
            "another --state-dir; the store is left as it is"
        )
        self.path = path


@dataclass
class StoreHealth:
    """Whether writes get through now: what ``/v1/health`` says about the store."""

    busy_since: Optional[float]  # since when a write has found the store locked by another process

    def to_json(self) -> JSON:
        if self.busy_since is None:
            return {"state": "ok"}
        return {
            "state": "busy",
            "busy_for": round(time.time() - self.busy_since, 1),
            "message": "another process holds the store's write lock; writes wait for it",
        }


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = self._connect(_OPEN_BUSY_SECONDS)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            problem = self._db.execute("PRAGMA quick_check").fetchone()[
                0
            ]  # a few tenths of a second at 35 MB
            if problem != "ok":
                raise StoreCorrupt(path, problem)
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                migrate(self._db)
            except SchemaTooNew as exc:
                raise StoreTooNew(path, exc.found, exc.known) from None
            self.store_id = self._meta("store_id") or self._set_meta("store_id", uuid.uuid4().hex[:12])
        except BaseException as exc:
            self._db.close()
            # "file is not a database", "database disk image is malformed"; an OperationalError
            # (locked, unreadable, out of space) says nothing against the file itself
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                raise StoreCorrupt(path, str(exc)) from None
            raise
        self._db.execute(f"PRAGMA busy_timeout={int(_WRITER_BUSY_SECONDS * 1000)}")
        self._lock = threading.Lock()
        self._busy_since: Optional[float] = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._listeners: list[Callable[[int], None]] = []

    @classmethod
    def open(cls, path: Path, reset_corrupt: bool = False) -> Store:
        """The store at ``path``; with ``reset_corrupt`` a corrupted one is moved aside (kept) first."""
        try:
            return cls(path)
        except StoreCorrupt as exc:
            if not reset_corrupt:
                raise
            kept = set_aside(path)
            log.warning(
                "the store %s was corrupted (%s); kept it as %s and started an empty store",
                path,
                exc.reason,
                kept,
            )
            return cls(path)

    def _connect(self, busy_seconds: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=busy_seconds
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()
        for db in self._all_readers:
            db.close()

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _tx(self, patient: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; waits for the lock API_WRITE_PATIENCE seconds, or if ``patient``
        as long as it takes."""
        self._begin(None if patient else API_WRITE_PATIENCE)
        try:
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            self._lock.release()
        self._notify()

    def _begin(self, patience: Optional[float]) -> None:
        """Take the service's lock and SQLite's write lock, or raise StoreBusy once ``patience`` is spent.

        Each try waits briefly inside SQLite and then lets go of the service's lock, so a write
        with little patience (an API call) is not stuck behind one that waits forever (a result).
        """
        start = time.monotonic()
        while True:
            if patience is None:
                self._lock.acquire()
            else:
                left = patience - (time.monotonic() - start)
                if left <= 0 or not self._lock.acquire(timeout=left):
                    raise StoreBusy(self.path, time.monotonic() - start)
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except BaseException as exc:
                self._lock.release()
                if not (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)):
                    raise
                self._found_busy()
                continue
            self._found_free()
            return

    def _found_busy(self) -> None:
        if self._busy_since is None:
            self._busy_since = time.time()
            log.warning("the store %s is locked by another process; writes wait for it", self.path)

    def _found_free(self) -> None:
        if self._busy_since is not None:
            log.warning("the store %s is free again after %.0fs", self.path, time.time() - self._busy_since)
            self._busy_since = None

    def health(self) -> StoreHealth:
        """Whether a write would get the lock now; never waits for it (``/v1/health`` must answer).

        When no write of the service's is under way, one try at the lock tells; otherwise what
        the last try of a waiting write found.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._db.execute("PRAGMA busy_timeout=0")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute("ROLLBACK")
                    self._found_free()
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    self._found_busy()
                finally:
                    self._db.execute(f"PRAGMA busy_timeout={int(_WRITER_BUSY_SECONDS * 1000)}")
            finally:
                self._lock.release()
        return StoreHealth(self._busy_since)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A reader connection holding one snapshot for every statement of the read."""
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = self._connect(_READER_BUSY_SECONDS)
            self._all_readers.append(db)
        try:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise StoreBusy(self.path, _READER_BUSY_SECONDS) from exc
            raise
        finally:
            self._readers.put(db)

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return value

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read() as db:
            return db.execute(sql, tuple(args)).fetchall()

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(last_event_id)`` runs after every committed change (from any thread)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        last = self.last_event_id()
        for cb in list(self._listeners):
            cb(last)

    # -- events -------------------------------------------------------------------------
    def _event(self, db: sqlite3.Connection, job_id: Optional[int], kind: EventKind, data: JSON) -> None:
        db.execute(
            "INSERT INTO events (job_id, kind, data, ts) VALUES (?, ?, ?, ?)",
            (job_id, kind.value, json.dumps(event_data(kind, data)), time.time()),
        )

    def last_event_id(self) -> int:
        row = self._query("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(row[0][0])

    def events_after(self, after: int, job_id: Optional[int] = None, limit: int = 500) -> list[Event]:
        if job_id is None:
            rows = self._query(
                "SELECT id, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            )
        else:
            rows = self._query(
                "SELECT id, kind, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                (job_id, after, limit),
            )
        return [event_from_row(r) for r in rows]

    # -- jobs ---------------------------------------------------------------------------
    def create_job(self, plan: JobPlan, priority: Optional[int] = None, name: Optional[str] = None) -> Job:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, state, priority, bundle_dir, container, params, max_attempts, created_at, "
                "frame_checks, fps) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name or plan.name,
                    plan.priority if priority is None else priority,
                    plan.bundle_dir,
                    json.dumps(plan.container.to_json()),
                    json.dumps(plan.params),
                    plan.max_attempts,
                    now,
                    json.dumps(plan.frame_checks.to_json()),
                    plan.fps,
                ),
            )
            job_id = _inserted(cur)
            n_tasks = n_frames = 0
            for s_idx, step in enumerate(plan.steps):
                db.execute(
                    "INSERT INTO steps (job_id, idx, name, depends_on, gpus, command, timeout, "
                    "cancel_grace, output, memory_mib, vcpus, amounts, files, environments, placement) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        s_idx,
                        step.name,
                        json.dumps(step.depends_on),
                        step.gpus,
                        json.dumps(step.command),
                        step.timeout,
                        step.cancel_grace,
                        step.output,
                        step.memory_mib,
                        step.vcpus,
                        json.dumps(step.amounts),
                        json.dumps([f.to_json() for f in step.files]) if step.files else None,
                        json.dumps([e.to_json() for e in step.environments]) if step.environments else None,
                        json.dumps(step.placement) if step.placement is not None else None,
                    ),
                )
                first = db.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()[0] + 1
                # Rows go to SQLite as one JSON array each, unpacked by json_each in C: binding
                # 100,000 rows one by one through executemany was most of a big job's accept time.
                frame_only = frame_only_params(step.tasks)
                if frame_only is not None:  # each task is {NAME: "F"} for its one frame F: printf'd by SQLite
                    db.execute(
                        "INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, max_attempts) "
                        "SELECT ? + key, ?, ?, key, printf(?, value), printf('[[%d, %d]]', value, value), "
                        "'pending', ? FROM json_each(?)",
                        (
                            first,
                            job_id,
                            s_idx,
                            frame_only,
                            plan.max_attempts,
                            json_rows(t.frames[0] for t in step.tasks),
                        ),
                    )
                else:
                    db.execute(
                        "INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, max_attempts) "
                        "SELECT ? + key, ?, ?, key, json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                        "'pending', ? FROM json_each(?)",
                        (
                            first,
                            job_id,
                            s_idx,
                            plan.max_attempts,
                            json_rows([params_json(t.params), encode_frames(t.frames)] for t in step.tasks),
                        ),
                    )
                if step.output is not None:
                    fmt = printf_format(step.output)
                    one_each = all(len(t.frames) == 1 for t in step.tasks)
                    if one_each:  # one frame per task: a flat array; the task is the array index
                        frames: list[Any] = [t.frames[0] for t in step.tasks]
                        frame_sql, task_sql, out_sql = "value", "key", "printf(?, value)"
                    else:
                        frames = [[f, t_idx] for t_idx, t in enumerate(step.tasks) for f in t.frames]
                        frame_sql, task_sql = "json_extract(value, '$[0]')", "json_extract(value, '$[1]')"
                        out_sql = "printf(?, json_extract(value, '$[0]'))"
                    if fmt is None:  # not printf-able: the paths come formatted by Python
                        frames = [
                            [f, t_idx, step.output.format(frame=f)]
                            for t_idx, t in enumerate(step.tasks)
                            for f in t.frames
                        ]
                        frame_sql, task_sql = "json_extract(value, '$[0]')", "json_extract(value, '$[1]')"
                        out_sql = "json_extract(value, '$[2]')"
                    db.execute(
                        "INSERT INTO frames (job_id, step_idx, frame, task_id, state, output) "
                        f"SELECT ?, ?, {frame_sql}, ? + {task_sql}, 'waiting', {out_sql} FROM json_each(?)",
                        (job_id, s_idx, first, *([fmt] if fmt is not None else []), json_rows(frames)),
                    )
                    n_frames += len(frames)
                n_tasks += len(step.tasks)
            # a new job's counts are known: every task pending, every frame waiting
            job = self._job_event(
                db, job_id, {"pending": n_tasks} if n_tasks else {}, {"waiting": n_frames} if n_frames else {}
            )
        return job

    def read_job(self, job_id: int) -> Job:
        with self._read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFound("job", f"no job {job_id}")
            return self._job(db, row)

    def jobs(self, state: Optional[str] = None) -> list[Job]:
        """The jobs, newest first; with ``state``, only the jobs in it."""
        with self._read() as db:
            if state:
                rows = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id DESC", (state,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
            return [self._job(db, r) for r in rows]

    def job_container(self, job_id: int) -> ContainerSpec:
        rows = self._query("SELECT container FROM jobs WHERE id=?", (job_id,))
        return ContainerSpec.from_json(json.loads(rows[0][0]))

    def job_params(self, job_id: int) -> dict[str, str]:
        return json.loads(self._query("SELECT params FROM jobs WHERE id=?", (job_id,))[0][0])

    def _job(
        self,
        db: sqlite3.Connection,
        row: sqlite3.Row,
        counts: Optional[dict[str, int]] = None,
        fcounts: Optional[dict[str, int]] = None,
    ) -> Job:
        """The job of a ``jobs`` row; ``counts`` and ``fcounts`` (tasks and frames per state) when the
        caller knows them, else counted."""
        job_id = row["id"]
        return job_from_row(
            row,
            _state_counts(db, "tasks", job_id) if counts is None else counts,
            _state_counts(db, "frames", job_id) if fcounts is None else fcounts,
            db.execute("SELECT * FROM steps WHERE job_id=? ORDER BY idx", (job_id,)),
        )

    def _job_event(
        self,
        db: sqlite3.Connection,
        job_id: int,
        counts: Optional[dict[str, int]] = None,
        fcounts: Optional[dict[str, int]] = None,
    ) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        job = self._job(db, row, counts, fcounts)
        self._event(db, job_id, EventKind.JOB, job.to_json())
        return job

    def step_run(self, job_id: int, step_idx: int) -> StepRun:
        """What the tasks of the job's step ``step_idx`` run with."""
        rows = self._query("SELECT * FROM steps WHERE job_id=? AND idx=?", (job_id, step_idx))
        if not rows:
            raise NotFound("step", f"job {job_id} has no step {step_idx}")
        return step_run_from_row(rows[0])

    def set_waiting(self, changes: dict[tuple[int, int], Optional[str]]) -> None:
        """Record what steps' pending tasks wait for (``(job_id, step_idx)`` -> "resource lic", None)."""
        with self._tx() as db:  # StoreBusy: dispatch records it on a later round
            for (job_id, step_idx), what in changes.items():
                db.execute(
                    "UPDATE steps SET waiting_for=? WHERE job_id=? AND idx=?", (what, job_id, step_idx)
                )
            for job_id in sorted({job_id for job_id, _ in changes}):
                self._job_event(db, job_id)

    def clear_waiting(self) -> None:
        """Forget what steps waited for: a starting service's dispatch finds out again."""
        with self._tx() as db:
            db.execute("UPDATE steps SET waiting_for=NULL WHERE waiting_for IS NOT NULL")

    # -- tasks --------------------------------------------------------------------------
    def tasks(self, job_id: int) -> list[Task]:
        self.read_job(job_id)
        return list(self.iter_tasks(job_id))

    def iter_tasks(self, job_id: int) -> Iterator[Task]:
        """The job's tasks one by one from one snapshot, for a listing that never holds them all."""
        with self._read() as db:
            for r in db.execute(_TASK_SELECT + " WHERE t.job_id=? ORDER BY t.id", (job_id,)):
                yield task_from_row(r)

    def read_task(self, task_id: int) -> Task:
        rows = self._query(_TASK_SELECT + " WHERE t.id=?", (task_id,))
        if not rows:
            raise NotFound("task", f"no task {task_id}")
        return task_from_row(rows[0])

    def _task_event(self, db: sqlite3.Connection, task_id: int) -> None:
        row = db.execute(_TASK_SELECT + " WHERE t.id=?", (task_id,)).fetchone()
        self._event(db, row["job_id"], EventKind.TASK, task_from_row(row).to_json())

    def _task_events(self, db: sqlite3.Connection, task_ids: list[int]) -> None:
        """One task event per id, in that order: what ``_task_event`` in a loop appends, in a few
        statements (canceling a 100,000-task job took 100,000 lookups and inserts)."""
        if not task_ids:
            return
        rows = {
            r["id"]: r
            for r in db.execute(
                _TASK_SELECT + " WHERE t.id IN (SELECT value FROM json_each(?))", (json.dumps(task_ids),)
            )
        }
        db.executemany(
            "INSERT INTO events (job_id, kind, data, ts) VALUES (?, 'task', ?, ?)",
            (
                (
                    rows[i]["job_id"],
                    json.dumps(event_data(EventKind.TASK, task_from_row(rows[i]).to_json())),
                    time.time(),
                )
                for i in task_ids
            ),
        )

    def log_offset(self, task_id: int) -> int:
        return int(self._query("SELECT log_offset FROM tasks WHERE id=?", (task_id,))[0][0])

    def tasks_in_state(self, state: TaskState) -> list[Task]:
        rows = self._query(_TASK_SELECT + " WHERE t.state=? ORDER BY t.id", (state.value,))
        return [task_from_row(r) for r in rows]

    def ready_steps(self) -> list[ReadyStep]:
        """Steps of active jobs that have pending tasks and whose dependencies all succeeded.

        Ordered by job priority (high first), then submission order, then step order.
        """
        # EXISTS over the (job_id, step_idx, state) index: one probe per step, not a scan of
        # every pending task (a queued 100,000-task job made each dispatch read 100,000 rows).
        rows = self._query(
            "SELECT s.job_id AS job_id, s.idx AS step_idx, j.priority AS priority, s.gpus AS gpus, "
            "s.depends_on AS depends_on, s.amounts AS amounts FROM steps s JOIN jobs j ON j.id = s.job_id "
            "WHERE j.state IN ('queued', 'running') AND EXISTS (SELECT 1 FROM tasks t "
            "WHERE t.job_id = s.job_id AND t.step_idx = s.idx AND t.state = 'pending') "
            "ORDER BY j.priority DESC, s.job_id, s.idx"
        )
        ready = []
        for r in rows:
            deps = json.loads(r["depends_on"])
            if deps and not self._steps_succeeded(r["job_id"], deps):
                continue
            ready.append(ready_step_from_row(r))
        return ready

    def _steps_succeeded(self, job_id: int, names: list[str]) -> bool:
        marks = ",".join("?" * len(names))
        row = self._query(
            f"SELECT COUNT(*) FROM tasks t JOIN steps s ON s.job_id = t.job_id AND s.idx = t.step_idx "
            f"WHERE t.job_id = ? AND s.name IN ({marks}) AND t.state != 'succeeded'",
            (job_id, *names),
        )
        return row[0][0] == 0

    def next_pending(self, job_id: int, step_idx: int) -> Optional[int]:
        """The step's first pending task that is not backing off after a licence failure."""
        # ids grow with idx within a step (create_job numbers them so), and ordering by id lets the
        # (job_id, step_idx, state) index answer without sorting every pending task.
        rows = self._query(
            "SELECT id FROM tasks WHERE job_id=? AND step_idx=? AND state='pending' "
            "AND (retry_at IS NULL OR retry_at <= ?) ORDER BY id LIMIT 1",
            (job_id, step_idx, time.time()),
        )
        return rows[0][0] if rows else None

    def start_task(self, task_id: int, container: str, gpus: list[int], log_offset: int) -> Task:
        """Mark the task running *before* its container exists: the name is what a restart looks for."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET state='running', attempt=attempt+1, container=?, exit_code=NULL, "
                "progress=0, status=NULL, error=NULL, started_at=?, finished_at=NULL, gpus=?, log_offset=?, retry_at=NULL "
                "WHERE id=? AND state='pending'",
                (container, now, json.dumps(gpus), log_offset, task_id),
            )
            job_id, attempt = db.execute(
                "SELECT job_id, attempt FROM tasks WHERE id=?", (task_id,)
            ).fetchone()
            self._reset_frames(db, task_id, "running")
            if db.execute(
                "UPDATE jobs SET state='running', started_at=COALESCE(started_at, ?) "
                "WHERE id=? AND state='queued'",
                (now, job_id),
            ).rowcount:
                self._job_event(db, job_id)
            self._task_event(db, task_id)
        return self.read_task(task_id)

    def unstart_task(self, task_id: int) -> None:
        """Undo :meth:`start_task` for a container that was never created (restart before create)."""
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET state='pending', attempt=attempt-1, container=NULL, started_at=NULL, "
                "gpus=NULL WHERE id=? AND state='running'",
                (task_id,),
            )
            self._reset_frames(db, task_id, "waiting")
            self._task_event(db, task_id)

    def set_progress(self, task_id: int, progress: float) -> None:
        with self._tx(patient=True) as db:  # from a task's runner: waits out any lock, as below
            db.execute("UPDATE tasks SET progress=? WHERE id=? AND state='running'", (progress, task_id))
            self._task_event(db, task_id)

    def set_status(self, task_id: int, status: str) -> None:
        """Record a running task's status line (the last ``openjd_status`` it printed)."""
        with self._tx(patient=True) as db:  # from a task's runner, like set_progress
            if db.execute(
                "UPDATE tasks SET status=? WHERE id=? AND state='running' AND status IS NOT ?",
                (status[:STATUS_CHARS], task_id, status[:STATUS_CHARS]),
            ).rowcount:
                self._task_event(db, task_id)

    def finish_task(
        self,
        task_id: int,
        exit_code: Optional[int],
        error: Optional[str],
        frame_results: Optional[dict[int, FrameResult]] = None,
        licence: Optional[LicenceRetry] = None,
    ) -> Task:
        """Record how an attempt ended and decide what comes next for the task and its job.

        A failed attempt goes back to ``pending`` while attempts remain; a task of a
        canceled job ends ``canceled`` whatever its exit code. An attempt that found no
        licence (``licence`` given: the policy) goes back to ``pending`` without spending the
        attempt, not to be started before its back-off, until the policy's licence retries are
        spent; then the task fails for good. ``frame_results`` maps each
        frame not already settled to ``(state, error, thumbnail)``. Waits as long as another
        process holds the write lock: a result is never dropped, and the runner keeps the
        container until it is recorded.
        """
        now = time.time()
        with self._tx(patient=True) as db:
            t = db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
            if t["state"] != "running":
                return self.read_task(task_id)
            job_state = db.execute("SELECT state FROM jobs WHERE id=?", (t["job_id"],)).fetchone()[0]
            ok = exit_code == 0 and error is None
            state, error, licence_wait = attempt_outcome(
                job_state, ok, error, t["attempt"], t["max_attempts"], licence, t["licence_retries"]
            )
            if licence_wait:
                assert licence is not None
                db.execute(
                    "UPDATE tasks SET attempt=attempt-1, licence_retries=licence_retries+1, retry_at=? "
                    "WHERE id=?",
                    (now + licence.delay(t["licence_retries"]), task_id),
                )
            db.execute(
                "UPDATE tasks SET state=?, exit_code=?, error=?, finished_at=?, "
                "progress=CASE WHEN ? THEN 100 ELSE progress END WHERE id=?",
                (state.value, exit_code, error, now, ok, task_id),
            )
            self._task_event(db, task_id)
            for frame, (f_state, f_error, thumb) in sorted((frame_results or {}).items()):
                self._set_frame(db, t["job_id"], t["step_idx"], frame, f_state, f_error, now, thumb)
            if state == "pending":
                self._reset_frames(db, task_id, "waiting")
            if state == "failed":
                self._cancel_dependents(db, t["job_id"], t["step_idx"])
            self._settle_job(db, t["job_id"], now)
        return self.read_task(task_id)

    def _cancel_dependents(self, db: sqlite3.Connection, job_id: int, step_idx: int) -> None:
        steps = {
            r["name"]: (r["idx"], json.loads(r["depends_on"]))
            for r in db.execute("SELECT * FROM steps WHERE job_id=?", (job_id,))
        }
        failed_names = {n for n, (i, _) in steps.items() if i == step_idx}
        changed = True
        while changed:
            changed = False
            for name, (_, deps) in steps.items():
                if name not in failed_names and failed_names.intersection(deps):
                    failed_names.add(name)
                    changed = True
        upstream = next(n for n, (i, _) in steps.items() if i == step_idx)
        for name in failed_names - {upstream}:
            idx = steps[name][0]
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM tasks WHERE job_id=? AND step_idx=? AND state='pending'", (job_id, idx)
                )
            ]
            db.execute(
                "UPDATE tasks SET state='canceled', error=? WHERE job_id=? AND step_idx=? AND state='pending'",
                (f"upstream step {upstream!r} failed", job_id, idx),
            )
            self._task_events(db, ids)

    def _settle_job(self, db: sqlite3.Connection, job_id: int, now: float) -> None:
        job = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        counts = _state_counts(db, "tasks", job_id)
        ended = job_outcome(job["state"], counts)
        if ended is not None:
            state, error = ended
            db.execute(
                "UPDATE jobs SET state=?, error=?, finished_at=? WHERE id=?",
                (state.value, error, now, job_id),
            )
        elif job["state"] == "canceled" and not counts.get("running"):
            db.execute("UPDATE jobs SET finished_at=COALESCE(finished_at, ?) WHERE id=?", (now, job_id))
        self._job_event(db, job_id, counts)  # only the jobs row changed: the task counts still hold

    def cancel_job(self, job_id: int) -> list[Task]:
        """Cancel the job's pending tasks; return its running tasks, whose containers the caller stops."""
        self.read_job(job_id)
        now = time.time()
        with self._tx() as db:
            state = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if state not in JOB_ACTIVE:
                return []
            db.execute("UPDATE jobs SET state='canceled', error='canceled by user' WHERE id=?", (job_id,))
            ids = [
                r[0] for r in db.execute("SELECT id FROM tasks WHERE job_id=? AND state='pending'", (job_id,))
            ]
            db.execute(
                "UPDATE tasks SET state='canceled', finished_at=? WHERE job_id=? AND state='pending'",
                (now, job_id),
            )
            self._task_events(db, ids)
            self._settle_job(db, job_id, now)
        rows = self._query(_TASK_SELECT + " WHERE t.job_id=? AND t.state='running' ORDER BY t.id", (job_id,))
        return [task_from_row(r) for r in rows]

    def retry_failed(self, job_id: int) -> Job:
        """Put failed and canceled tasks back to pending with a fresh budget of attempts."""
        _finished(self.read_job(job_id))
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM tasks WHERE job_id=? AND state IN ('failed', 'canceled')", (job_id,)
                )
            ]
            if ids:
                db.execute(
                    "UPDATE tasks SET state='pending', max_attempts=attempt + "
                    "(SELECT max_attempts FROM jobs WHERE id=?), error=NULL, exit_code=NULL, "
                    "licence_retries=0, retry_at=NULL "
                    "WHERE job_id=? AND state IN ('failed', 'canceled')",
                    (job_id, job_id),
                )
                db.execute(
                    "UPDATE frames SET state='waiting', error=NULL, flags=NULL, luma=NULL "
                    "WHERE job_id=? AND state != 'done'",
                    (job_id,),
                )
                db.execute(
                    "UPDATE jobs SET state='queued', error=NULL, finished_at=NULL WHERE id=?", (job_id,)
                )
                _recount_flagged(db, job_id)
                self._task_events(db, ids)
                self._job_event(db, job_id)
        return self.read_job(job_id)

    def retry_frames(
        self,
        job_id: int,
        frames: Optional[list[int]] = None,
        flagged: bool = False,
        step: Optional[str] = None,
    ) -> Job:
        """Render again just the chosen frames (``frames``, or every flagged frame), as new tasks.

        New tasks, not re-opened ones: a task's parameters are what its container renders, and
        the chosen frames of several tasks are re-chunked together (at most the step's frames
        per task, contiguous runs only), so the old tasks keep their attempts, logs and
        parameters as history, and the frames move to the new tasks. The other frames stay
        done and untouched. A failed or canceled task's unfinished frames all come along (they
        have nothing worth keeping), so such a task ends ``replaced``, and its dependents
        canceled by its failure are re-opened. A frame number names the frame of the last
        step that has it, unless ``step`` names the step.
        """
        job = _finished(self.read_job(job_id))
        with self._tx() as db:
            chosen = self._chosen_frames(db, job_id, frames, flagged, step)
            steps = {r["idx"]: r for r in db.execute("SELECT * FROM steps WHERE job_id=?", (job_id,))}
            owners = {
                r["id"]: r
                for r in db.execute(
                    "SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(sorted({r["task_id"] for r in chosen})),),
                )
            }
            keys = {(r["step_idx"], r["frame"]) for r in chosen}
            broken = [t for t in owners.values() if t["state"] in ("failed", "canceled")]
            for t in broken:  # their unfinished frames come along
                keys.update(
                    (r["step_idx"], r["frame"])
                    for r in db.execute(
                        "SELECT step_idx, frame FROM frames WHERE task_id=? AND state != 'done'", (t["id"],)
                    )
                )
            rows = [
                db.execute(
                    "SELECT * FROM frames WHERE job_id=? AND step_idx=? AND frame=?", (job_id, s_idx, f)
                ).fetchone()
                for s_idx, f in sorted(keys)
            ]
            new_ids = self._tasks_for_frames(db, job, steps, rows)
            for t in broken:
                db.execute(
                    "UPDATE tasks SET state='replaced', error=? WHERE id=?",
                    (
                        f"{t['error'] or t['state']} (its unfinished frames were retried as new tasks)",
                        t["id"],
                    ),
                )
            reopened = self._reopen_dependents(db, job, {r["step_idx"] for r in rows}, steps)
            db.execute("UPDATE jobs SET state='queued', error=NULL, finished_at=NULL WHERE id=?", (job_id,))
            _recount_flagged(db, job_id)
            settings = self._check_settings(db, job_id)
            for r in rows:
                self._frame_event(db, job_id, r["step_idx"], r["frame"])
                self._reflicker(db, job_id, r["step_idx"], r["frame"], settings)
            self._task_events(db, [t["id"] for t in broken] + reopened + new_ids)
            self._job_event(db, job_id)
        return self.read_job(job_id)

    def _chosen_frames(
        self,
        db: sqlite3.Connection,
        job_id: int,
        frames: Optional[list[int]],
        flagged: bool,
        step: Optional[str],
    ) -> list[sqlite3.Row]:
        sql = (
            "SELECT f.* FROM frames f JOIN steps s ON s.job_id = f.job_id AND s.idx = f.step_idx "
            "WHERE f.job_id=?"
        )
        args: list[Any] = [job_id]
        if step is not None:
            if not db.execute("SELECT 1 FROM steps WHERE job_id=? AND name=?", (job_id, step)).fetchone():
                raise BadInput("step", f"job {job_id} has no step {step!r}")
            sql += " AND s.name=?"
            args.append(step)
        if flagged:
            rows = db.execute(sql + " AND f.flags IS NOT NULL", args).fetchall()
            if not rows:
                raise BadInput("flagged", f"job {job_id} has no flagged frames", 409)
            return rows
        if not frames:
            raise BadInput("frames", "give at least one frame")
        last: dict[int, sqlite3.Row] = {}  # frame -> its row in the last step that has it
        for r in db.execute(
            sql + " AND f.frame IN (SELECT value FROM json_each(?)) ORDER BY f.step_idx",
            (*args, json.dumps(sorted(set(frames)))),
        ):
            last[r["frame"]] = r
        missing = sorted(set(frames) - set(last))
        if missing:
            raise BadInput(
                "frames",
                f"job {job_id} has no frame {missing[0]}"
                + (f" in step {step!r}" if step else "")
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            )
        return list(last.values())

    def _tasks_for_frames(
        self, db: sqlite3.Connection, job: Job, steps: dict[int, sqlite3.Row], rows: list[sqlite3.Row]
    ) -> list[int]:
        """New pending tasks rendering exactly ``rows``' frames; the frames move to them."""
        groups: dict[tuple[int, str, str], list[int]] = {}  # (step, frame param, other params) -> frames
        for r in rows:
            owner = db.execute("SELECT params, frames FROM tasks WHERE id=?", (r["task_id"],)).fetchone()
            params = json.loads(owner["params"])
            name = _frame_param(params, decode_frames(owner["frames"]))
            others = json.dumps({k: v for k, v in params.items() if k != name}, sort_keys=True)
            groups.setdefault((r["step_idx"], name, others), []).append(r["frame"])
        new_ids = []
        for (s_idx, name, others), chosen in sorted(groups.items()):
            first = db.execute(
                "SELECT frames FROM tasks WHERE job_id=? AND step_idx=? AND idx=0", (job.id, s_idx)
            ).fetchone()
            per_task = max(1, len(decode_frames(first["frames"])))
            idx = db.execute(
                "SELECT MAX(idx) FROM tasks WHERE job_id=? AND step_idx=?", (job.id, s_idx)
            ).fetchone()[0]
            for chunk in _chunks(sorted(chosen), per_task):
                idx += 1
                value = str(chunk[0]) if len(chunk) == 1 else f"{chunk[0]}-{chunk[-1]}"
                params = {**json.loads(others), name: value}
                cur = db.execute(
                    "INSERT INTO tasks (job_id, step_idx, idx, params, frames, state, max_attempts) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (job.id, s_idx, idx, json.dumps(params), encode_frames(chunk), job.max_attempts),
                )
                new_ids.append(_inserted(cur))
                db.execute(
                    "UPDATE frames SET task_id=?, state='waiting', error=NULL, started_at=NULL, "
                    "finished_at=NULL, flags=NULL, luma=NULL WHERE job_id=? AND step_idx=? "
                    "AND frame IN (SELECT value FROM json_each(?))",
                    (cur.lastrowid, job.id, s_idx, json.dumps(chunk)),
                )
        return new_ids

    def _reopen_dependents(
        self, db: sqlite3.Connection, job: Job, retried: set[int], steps: dict[int, sqlite3.Row]
    ) -> list[int]:
        """Re-open the tasks that a failure of a retried step canceled in the steps after it."""
        job_id = job.id
        after = set(retried)
        changed = True
        while changed:
            names = {steps[i]["name"] for i in after}
            grown = after | {i for i, s in steps.items() if names.intersection(json.loads(s["depends_on"]))}
            changed, after = grown != after, grown
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM tasks WHERE job_id=? AND state='canceled' AND step_idx IN "
                "(SELECT value FROM json_each(?))",
                (job_id, json.dumps(sorted(after - retried))),
            )
        ]
        db.execute(
            "UPDATE tasks SET state='pending', max_attempts=attempt + ?, error=NULL "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (job.max_attempts, json.dumps(ids)),
        )
        return ids

    # -- frames -------------------------------------------------------------------------
    def _reset_frames(self, db: sqlite3.Connection, task_id: int, state: str) -> None:
        """Put the task's unfinished frames in ``state`` (a new attempt starts, or will)."""
        rows = db.execute(
            "SELECT job_id, step_idx, frame, flags FROM frames WHERE task_id=? AND state != 'done'",
            (task_id,),
        ).fetchall()
        db.execute(
            "UPDATE frames SET state=?, started_at=NULL, finished_at=NULL, thumbnail=NULL, flags=NULL, "
            "luma=NULL WHERE task_id=? AND state != 'done'",
            (state, task_id),
        )
        flagged = sum(1 for r in rows if r["flags"])
        if flagged:
            db.execute(
                "UPDATE jobs SET frames_flagged=frames_flagged - ? WHERE id=?", (flagged, rows[0]["job_id"])
            )
        for r in rows:
            self._frame_event(db, r["job_id"], r["step_idx"], r["frame"])

    def _frame_event(self, db: sqlite3.Connection, job_id: int, step_idx: int, frame: int) -> None:
        row = db.execute(
            _FRAME_SELECT + " WHERE f.job_id=? AND f.step_idx=? AND f.frame=?", (job_id, step_idx, frame)
        ).fetchone()
        self._event(db, job_id, EventKind.FRAME, frame_from_row(row).to_json())

    def frames(self, job_id: int) -> list[Frame]:
        self.read_job(job_id)
        return list(self.iter_frames(job_id))

    def iter_frames(self, job_id: int) -> Iterator[Frame]:
        """The job's frames one by one from one snapshot, for a listing that never holds them all."""
        with self._read() as db:
            for r in db.execute(_FRAME_SELECT + " WHERE f.job_id=? ORDER BY f.step_idx, f.frame", (job_id,)):
                yield frame_from_row(r)

    def frame(self, job_id: int, frame: int, step: Optional[str] = None) -> Frame:
        sql = _FRAME_SELECT + " WHERE f.job_id=? AND f.frame=?"
        args: list[Any] = [job_id, frame]
        if step is not None:
            sql += " AND s.name=?"
            args.append(step)
        rows = self._query(sql + " ORDER BY f.step_idx DESC LIMIT 1", args)
        if not rows:
            raise NotFound(
                "frame", f"job {job_id} has no frame {frame}" + (f" in step {step!r}" if step else "")
            )
        return frame_from_row(rows[0])

    def thumbnail_path(self, job_id: int, frame: int, step: Optional[str] = None) -> Optional[str]:
        sql = (
            "SELECT f.thumbnail FROM frames f JOIN steps s ON s.job_id = f.job_id AND s.idx = f.step_idx "
            "WHERE f.job_id=? AND f.frame=?"
        )
        args: list[Any] = [job_id, frame]
        if step is not None:
            sql += " AND s.name=?"
            args.append(step)
        rows = self._query(sql + " ORDER BY f.step_idx DESC LIMIT 1", args)
        return rows[0][0] if rows and rows[0][0] and Path(rows[0][0]).exists() else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs, tasks and frames per state, for /metrics."""
        return {
            table: {s: n for s, n in self._query(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")}
            for table in ("jobs", "tasks", "frames")
        }

    def frames_of_task(self, task_id: int) -> list[Frame]:
        rows = self._query(_FRAME_SELECT + " WHERE f.task_id=? ORDER BY f.frame", (task_id,))
        return [frame_from_row(r) for r in rows]

    def set_frame(
        self,
        job_id: int,
        step_idx: int,
        frame: int,
        state: str,
        error: Optional[str] = None,
        thumbnail: Optional[str] = None,
        check: Optional[FrameCheck] = None,
    ) -> tuple[str, Optional[str]]:
        """Record a frame's state; returns the state and error recorded.

        With ``check`` (what checking a done image frame found), the frame is also judged
        among the step's other frames (size and channels against the step's first done frame,
        flicker against its neighbours, whose own verdicts are judged again), its flags are
        recorded, and under the job's ``fail`` policy a frame with any flag but flicker fails.
        Flicker never fails a frame: its verdict changes as neighbours land, after the task
        that rendered the frame may have ended.
        """
        with self._tx(patient=True) as db:  # a frame's end is recorded, however long that takes
            settings = None
            if check is not None and state == "done":
                settings = self._check_settings(db, job_id)
                state, error = self._judge(db, job_id, step_idx, frame, check, settings)
            self._set_frame(db, job_id, step_idx, frame, state, error, time.time(), thumbnail)
            if settings is not None:
                self._reflicker(db, job_id, step_idx, frame, settings)
        return state, error

    def frame_check_settings(self, job_id: int) -> FrameCheckSettings:
        with self._read() as db:
            return self._check_settings(db, job_id)

    def _check_settings(self, db: sqlite3.Connection, job_id: int) -> FrameCheckSettings:
        raw = db.execute("SELECT frame_checks FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        return FrameCheckSettings.from_json(json.loads(raw) if raw else None)

    def _judge(
        self,
        db: sqlite3.Connection,
        job_id: int,
        step_idx: int,
        frame: int,
        check: FrameCheck,
        settings: FrameCheckSettings,
    ) -> tuple[str, Optional[str]]:
        """Record the frame's own flags and its shape's; the state and error the policy gives it."""
        flags = list(check.flags)
        shape = check.shape
        if shape is not None:
            raw = db.execute(
                "SELECT frame_ref FROM steps WHERE job_id=? AND idx=?", (job_id, step_idx)
            ).fetchone()[0]
            ref = json.loads(raw) if raw else None
            if ref is None or ref["frame"] == frame:  # the first done frame is the reference (or is it again)
                db.execute(
                    "UPDATE steps SET frame_ref=? WHERE job_id=? AND idx=?",
                    (json.dumps({"frame": frame, **shape}), job_id, step_idx),
                )
            else:
                flags += compare_shape(check, ref, ref["frame"])
        # A frame flagged already is no part of the sequence its neighbours are judged by.
        luma = check.luma if not flags else None
        self._write_flags(db, job_id, step_idx, frame, flags, luma)
        if flags and settings.policy == "fail":
            return "failed", "; ".join(f.reason for f in flags)
        return "done", None

    def _write_flags(
        self,
        db: sqlite3.Connection,
        job_id: int,
        step_idx: int,
        frame: int,
        flags: list[Flag],
        luma: Optional[float] = None,
        keep_luma: bool = False,
    ) -> None:
        old = db.execute(
            "SELECT flags FROM frames WHERE job_id=? AND step_idx=? AND frame=?", (job_id, step_idx, frame)
        ).fetchone()
        if old is None:
            return
        text = json.dumps([f.to_json() for f in flags]) if flags else None
        if keep_luma:
            db.execute(
                "UPDATE frames SET flags=? WHERE job_id=? AND step_idx=? AND frame=?",
                (text, job_id, step_idx, frame),
            )
        else:
            db.execute(
                "UPDATE frames SET flags=?, luma=? WHERE job_id=? AND step_idx=? AND frame=?",
                (text, luma, job_id, step_idx, frame),
            )
        change = bool(text) - bool(old[0])
        if change:
            db.execute("UPDATE jobs SET frames_flagged=frames_flagged + ? WHERE id=?", (change, job_id))

    def _reflicker(
        self, db: sqlite3.Connection, job_id: int, step_idx: int, frame: int, settings: FrameCheckSettings
    ) -> None:
        """Judge flicker again for the done frames whose verdict ``frame`` can change.

        A verdict depends only on the done frames within FLICKER_RADIUS of its frame, so the
        frames within that radius of ``frame`` are all that can change, and judging them again
        each time a frame lands (or leaves) gives the same flags in any order of arrival.
        """
        r = FLICKER_RADIUS
        rows = db.execute(
            "SELECT frame, luma, flags FROM frames WHERE job_id=? AND step_idx=? AND state='done' "
            "AND luma IS NOT NULL AND frame BETWEEN ? AND ?",
            (job_id, step_idx, frame - 2 * r, frame + 2 * r),
        ).fetchall()
        lumas = {row["frame"]: row["luma"] for row in rows}
        for row in rows:
            if abs(row["frame"] - frame) > r:
                continue
            old = [Flag.from_json(f) for f in json.loads(row["flags"] or "[]")]
            verdict = flicker(lumas, row["frame"], settings)
            new = [f for f in old if f.check != "flicker"] + ([verdict] if verdict else [])
            if new != old:
                self._write_flags(db, job_id, step_idx, row["frame"], new, keep_luma=True)
                self._frame_event(db, job_id, step_idx, row["frame"])

    def _set_frame(
        self,
        db: sqlite3.Connection,
        job_id: int,
        step_idx: int,
        frame: int,
        state: str,
        error: Optional[str],
        now: float,
        thumbnail: Optional[str] = None,
    ) -> None:
        # A frame's start marker can reach the runner after the frame's output was seen complete
        # (the engine's log lags): a frame that ended is not made running again by it. A new
        # attempt puts its frames back to running through _reset_frames, not here.
        cur = db.execute(
            "UPDATE frames SET state=?, error=?, "
            "started_at=CASE WHEN ?='running' THEN ? ELSE COALESCE(started_at, ?) END, "
            "finished_at=CASE WHEN ? IN ('done', 'failed') THEN ? ELSE NULL END, "
            "thumbnail=COALESCE(?, thumbnail) WHERE job_id=? AND step_idx=? AND frame=? "
            "AND NOT (? = 'running' AND state IN ('done', 'failed'))",
            (state, error, state, now, now, state, now, thumbnail, job_id, step_idx, frame, state),
        )
        if cur.rowcount:
            self._frame_event(db, job_id, step_idx, frame)


def set_aside(path: Path) -> Path:
    """Rename the store (and its WAL files, which belong to it) to ``NAME.corrupt-TIME``; return the new path."""
    kept = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("-wal", "-shm", ""):
        old = path.with_name(path.name + suffix)
        if old.exists():
            old.rename(kept.with_name(kept.name + suffix))
    return kept


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock (not a broken database)."""
    return "locked" in str(exc) or "busy" in str(exc)


def _inserted(cur: sqlite3.Cursor) -> int:
    """The id of the row the cursor's INSERT added."""
    assert cur.lastrowid is not None, "not after an INSERT"
    return cur.lastrowid


def _finished(job: Job) -> Job:
    """The job, if it has finished (only a finished job is retried); else a 409 saying its state."""
    if job.state in JOB_ACTIVE:
        raise BadInput("job", f"job {job.id} is {job.state.value}; only finished jobs can be retried", 409)
    return job


def _recount_flagged(db: sqlite3.Connection, job_id: int) -> None:
    db.execute(
        "UPDATE jobs SET frames_flagged=(SELECT COUNT(*) FROM frames WHERE job_id=? AND flags IS NOT NULL) "
        "WHERE id=?",
        (job_id, job_id),
    )


def _frame_param(params: dict[str, str], frames: list[int]) -> str:
    """The name of the task parameter that holds the task's frames."""
    for name, value in params.items():
        try:
            if list(IntRangeExpr.from_str(value)) == frames:
                return name
        except (ValueError, TypeError):
            continue
    raise BadInput("frames", f"cannot tell which task parameter of {sorted(params)} holds frames {frames}")


def _chunks(frames: list[int], per_task: int) -> list[list[int]]:
    """Sorted frames cut into contiguous runs of at most ``per_task`` frames."""
    chunks: list[list[int]] = []
    for f in frames:
        if chunks and f == chunks[-1][-1] + 1 and len(chunks[-1]) < per_task:
            chunks[-1].append(f)
        else:
            chunks.append([f])
    return chunks


def _state_counts(db: sqlite3.Connection, table: str, job_id: int) -> dict[str, int]:
    """How many of the job's tasks (or frames) are in each state."""
    assert table in ("tasks", "frames")
    return dict(
        db.execute(f"SELECT state, COUNT(*) FROM {table} WHERE job_id=? GROUP BY state", (job_id,)).fetchall()
    )
