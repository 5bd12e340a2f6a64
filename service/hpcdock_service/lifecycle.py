"""What comes of a task attempt's end, and when a job is over: the policy, apart from the SQL that
records it (:meth:`.store.Store.finish_task` and the job settling after every task change)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Optional

from hpcdock.protocol import JOB_ACTIVE, JobState, TaskState

from .config import LicenceRetry


class AttemptOutcome(NamedTuple):
    state: TaskState  # the task's state from now on
    error: Optional[str]  # what the task records as its error
    licence_wait: bool  # back to pending for a licence back-off, the attempt not spent


def attempt_outcome(
    job_state: str,
    ok: bool,
    error: Optional[str],
    attempt: int,
    max_attempts: int,
    licence: Optional[LicenceRetry],
    licence_retries: int,
) -> AttemptOutcome:
    """Where a task goes after an attempt: done, tried again, or failed for good.

    A task of a canceled job ends canceled whatever its attempt did. A failed attempt goes back
    to pending while attempts remain. One that found no licence (``licence``: the policy) goes
    back to pending without spending the attempt until the policy's licence retries are spent;
    then the task fails for good, saying so.
    """
    if job_state == JobState.CANCELED:
        return AttemptOutcome(TaskState.CANCELED, error, False)
    if ok:
        return AttemptOutcome(TaskState.SUCCEEDED, error, False)
    if licence is not None:
        if licence_retries < licence.retries:
            return AttemptOutcome(TaskState.PENDING, error, True)
        return AttemptOutcome(
            TaskState.FAILED, f"{error} (no licence after {licence_retries} licence retries)", False
        )
    if attempt < max_attempts:
        return AttemptOutcome(TaskState.PENDING, error, False)
    return AttemptOutcome(TaskState.FAILED, error, False)


def job_outcome(job_state: str, task_counts: Mapping[str, int]) -> Optional[tuple[JobState, Optional[str]]]:
    """The state and error an active job ends with once none of its tasks is pending or running
    (failed if any failed or was canceled); None while it goes on, or when it is not active."""
    active = task_counts.get(TaskState.PENDING, 0) + task_counts.get(TaskState.RUNNING, 0)
    if job_state not in JOB_ACTIVE or active:
        return None
    if task_counts.get(TaskState.FAILED) or task_counts.get(TaskState.CANCELED):
        return JobState.FAILED, f"{task_counts.get(TaskState.FAILED, 0)} task(s) failed"
    return JobState.SUCCEEDED, None
