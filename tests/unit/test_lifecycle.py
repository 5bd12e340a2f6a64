"""The task and job lifecycle policy on its own: what an attempt's end leads to, when a job is over."""

from __future__ import annotations

import pytest
from hpcdock.protocol import JobState, TaskState
from hpcdock_service.config import LicenceRetry
from hpcdock_service.lifecycle import attempt_outcome, job_outcome

LICENCE = LicenceRetry(backoff_s=1.0, backoff_max_s=4.0, retries=2)


@pytest.mark.parametrize(
    ("job_state", "ok", "attempt", "licence", "retries", "expected"),
    [
        ("running", True, 1, None, 0, (TaskState.SUCCEEDED, None, False)),
        ("canceled", True, 1, None, 0, (TaskState.CANCELED, None, False)),
        ("canceled", False, 1, LICENCE, 0, (TaskState.CANCELED, "boom", False)),
        ("running", False, 1, None, 0, (TaskState.PENDING, "boom", False)),  # an attempt is left
        ("running", False, 2, None, 0, (TaskState.FAILED, "boom", False)),  # the last one
        ("running", False, 2, LICENCE, 1, (TaskState.PENDING, "boom", True)),  # licence: not spent
        (
            "running",
            False,
            1,
            LICENCE,
            2,
            (TaskState.FAILED, "boom (no licence after 2 licence retries)", False),
        ),
    ],
)
def test_an_attempts_end(job_state, ok, attempt, licence, retries, expected) -> None:
    error = None if ok else "boom"
    assert attempt_outcome(job_state, ok, error, attempt, 2, licence, retries) == expected


def test_a_job_ends_when_nothing_is_left_to_run() -> None:
    assert job_outcome("running", {"succeeded": 3, "running": 1}) is None
    assert job_outcome("queued", {"pending": 2}) is None
    assert job_outcome("running", {"succeeded": 3, "replaced": 1}) == (JobState.SUCCEEDED, None)
    assert job_outcome("running", {"succeeded": 1, "failed": 2}) == (JobState.FAILED, "2 task(s) failed")
    assert job_outcome("running", {"succeeded": 1, "canceled": 1}) == (JobState.FAILED, "0 task(s) failed")
    assert job_outcome("canceled", {"canceled": 4}) is None  # a canceled job stays canceled
