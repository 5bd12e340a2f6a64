"""How the store's rows become values (:mod:`.model`), and the texts it writes into its columns.

Reading is per row of a listing that may have 100,000 of them, so the readers index the row
once per field and look states up in a dict; writing encodes whole steps' tasks and frames as
one JSON array each, for SQLite to unpack in C (see :meth:`.store.Store.create_job`).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as _esc
from typing import Any, Optional

from hpcdock.protocol import EventKind, FrameState, JobState, TaskState, decode_frames

from .bundle_loader import EmbeddedFile, Environment
from .framecheck import Flag, FrameCheckSettings
from .model import Event, Frame, Job, ReadyStep, Step, StepRun, Task

_JOB_STATES = {s.value: s for s in JobState}
_TASK_STATES = {s.value: s for s in TaskState}
_FRAME_STATES = {s.value: s for s in FrameState}
_EVENT_KINDS = {k.value: k for k in EventKind}


def amounts(text: Optional[str]) -> dict[str, float]:
    """A step's counted resources per task (the ``amounts`` column)."""
    return json.loads(text) if text else {}


def step_from_row(r: sqlite3.Row) -> Step:
    return Step(
        r["name"],
        tuple(json.loads(r["depends_on"])),
        r["gpus"],
        r["output"],
        amounts(r["amounts"]),
        r["waiting_for"],
    )


def step_run_from_row(r: sqlite3.Row) -> StepRun:
    """A ``steps`` row as what its tasks run with."""
    return StepRun(
        r["job_id"],
        r["idx"],
        r["name"],
        r["gpus"],
        tuple(json.loads(r["command"])),
        r["timeout"],
        r["cancel_grace"],
        r["memory_mib"],
        r["vcpus"],
        amounts(r["amounts"]),
        tuple(EmbeddedFile.from_json(f) for f in json.loads(r["files"] or "[]")),
        tuple(Environment.from_json(e) for e in json.loads(r["environments"] or "[]")),
        tuple(json.loads(r["placement"])) if r["placement"] else None,
    )


def ready_step_from_row(r: sqlite3.Row) -> ReadyStep:
    """A row of the store's ready-step select."""
    return ReadyStep(r["job_id"], r["step_idx"], r["gpus"], amounts(r["amounts"]))


def job_from_row(
    r: sqlite3.Row, counts: dict[str, int], fcounts: dict[str, int], steps: Iterable[sqlite3.Row]
) -> Job:
    """A ``jobs`` row with its task and frame counts per state and its ``steps`` rows (in order)."""
    return Job(
        id=r["id"],
        name=r["name"],
        state=_JOB_STATES[r["state"]],
        priority=r["priority"],
        bundle_dir=r["bundle_dir"],
        max_attempts=r["max_attempts"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        error=r["error"],
        frame_checks=FrameCheckSettings.from_json(json.loads(r["frame_checks"] or "null")),
        fps=r["fps"],
        frames_flagged=r["frames_flagged"],
        tasks_total=sum(counts.values()),
        tasks_done=counts.get(TaskState.SUCCEEDED.value, 0),
        tasks_failed=counts.get(TaskState.FAILED.value, 0),
        tasks_running=counts.get(TaskState.RUNNING.value, 0),
        frames_total=sum(fcounts.values()),
        frames_done=fcounts.get(FrameState.DONE.value, 0),
        frames_failed=fcounts.get(FrameState.FAILED.value, 0),
        steps=tuple(step_from_row(s) for s in steps),
    )


def task_from_row(r: sqlite3.Row) -> Task:
    """A row of the store's task select (a ``tasks`` row with its step's name and ``waiting_for``)."""
    gpus = r["gpus"]
    return Task(
        r["id"],
        r["job_id"],
        r["step_idx"],
        json.loads(r["params"]),
        tuple(decode_frames(r["frames"])),
        _TASK_STATES[r["state"]],
        r["attempt"],
        r["max_attempts"],
        r["container"],
        r["exit_code"],
        r["progress"],
        r["status"],
        r["error"],
        r["started_at"],
        r["finished_at"],
        tuple(json.loads(gpus)) if gpus else (),
        r["licence_retries"],
        r["retry_at"],
        r["step"],
        r["waiting_for"],
        r["idx"],
    )


def frame_from_row(r: sqlite3.Row) -> Frame:
    """A row of the store's frame select (a ``frames`` row with its step's name and task's attempt)."""
    flags = r["flags"]
    return Frame(
        r["job_id"],
        r["step"],
        r["frame"],
        r["task_id"],
        r["attempt"],
        _FRAME_STATES[r["state"]],
        r["output"],
        r["error"],
        r["started_at"],
        r["finished_at"],
        tuple(Flag.from_json(f) for f in json.loads(flags)) if flags else (),
        r["thumbnail"] is not None,
    )


def event_from_row(r: sqlite3.Row) -> Event:
    return Event(r["id"], _EVENT_KINDS[r["kind"]], r["data"])


def params_json(params: dict[str, str]) -> str:
    """``json.dumps(params)``; the usual one-parameter task without the encoder's overhead."""
    if len(params) == 1:
        ((k, v),) = params.items()
        if type(k) is str and type(v) is str:
            return f"{{{_esc(k)}: {_esc(v)}}}"
    return json.dumps(params)


# No NUL around the field: SQLite's printf ends its format there, Python writes on.
_PRINTF_SAFE = re.compile(r"([^{}\x00]*)\{frame(?::(0?[1-9]?[0-9]?)d)?\}([^{}\x00]*)")


def printf_format(pattern: str) -> Optional[str]:
    """The SQLite ``printf`` format equal to ``pattern.format(frame=N)`` for every int N, if simple.

    Only ``PREFIX{frame}SUFFIX`` and ``PREFIX{frame:0Wd}``/``{frame:Wd}``: Python and printf agree
    on those (sign and padding included); anything else is formatted in Python.
    """
    m = _PRINTF_SAFE.fullmatch(pattern)
    if m is None:
        return None
    head, spec, tail = m.groups()
    return head.replace("%", "%%") + "%" + (spec or "") + "d" + tail.replace("%", "%%")


def frame_only_params(tasks: Sequence[Any]) -> Optional[str]:
    """The printf format of ``json.dumps(task.params)`` when every task is ``{NAME: str(F)}`` for its
    one frame F (one frame per task, the frame being the only parameter); else None."""
    if not tasks or len(tasks[0].params) != 1:
        return None
    (name,) = tasks[0].params
    if type(name) is not str:
        return None
    for t in tasks:
        if len(t.frames) != 1 or len(t.params) != 1 or t.params.get(name) != str(t.frames[0]):
            return None
    return "{" + _esc(name).replace("%", "%%") + ': "%d"}'


def json_rows(rows: Iterable[Any]) -> str:
    """Rows as one JSON array for ``json_each``; non-ASCII text stays UTF-8 (no \\u escapes to undo)."""
    return json.dumps(list(rows), ensure_ascii=False, check_circular=False)
