"""Counted resources and licence failures on real rootless containers.

Each task writes, from inside its container, when it started and ended (the kernel's uptime,
which every container of the machine shares), so "never two at once" is proven by the
containers themselves, not by the service's own records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.helpers import ServiceProcess, check_report, make_bundle, remove_leftovers, wait_for, wait_job

pytestmark = pytest.mark.engine

UPTIME = "$(cut -d' ' -f1 /proc/uptime)"
LICENCE_LINE = "No licenses could be found to run this application."
BACKOFF = 3.0  # seconds: long enough to see the task waiting, short enough for a test


def writable(root: Path) -> dict[str, Any]:
    """hpcdock.yaml settings of a one-attempt job without frames that may write to /stamps (root/stamps)."""
    (root / "stamps").mkdir(parents=True, exist_ok=True)
    return {
        "frames": None,
        "max_attempts": 1,
        "mounts": [{"source": str(root / "stamps"), "target": "/stamps", "readonly": False}],
    }


def stamping_bundle(
    root: Path, frames: str, seconds: float, amounts: Optional[list[dict[str, Any]]] = None
) -> Path:
    """One task per frame; each writes stamps/<job name>.<frame> with its start and end uptime."""
    script = (
        f"f=/stamps/{root.name}.{{{{Task.Param.Frame}}}}; echo start {UPTIME} > $f; "
        f"sleep {seconds}; echo end {UPTIME} >> $f"
    )
    step: dict[str, Any] = {
        "name": "run",
        "parameterSpace": {
            "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}]
        },
        "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", script]}}},
    }
    if amounts:
        step["hostRequirements"] = {"amounts": amounts}
    return make_bundle(root, frames=frames, steps=[step], settings=writable(root))


def stamps(root: Path) -> list[tuple[float, float]]:
    spans = []
    for path in sorted((root / "stamps").glob(f"{root.name}.*")):
        marks = dict(line.split() for line in path.read_text().splitlines())
        spans.append((float(marks["start"]), float(marks["end"])))
    return spans


@pytest.fixture
def service(tmp_path: Path, engine_url: str):
    svc = ServiceProcess(
        tmp_path / "svc",
        engine_url,
        slots=3,
        config={
            "resources": {"lic": 1},
            "licence_backoff_s": BACKOFF,
            "licence_backoff_max_s": BACKOFF,
            "licence_retries": 2,
        },
    ).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


def test_one_licence_runs_one_such_task_at_a_time_across_jobs_while_others_flow(
    service: ServiceProcess, tmp_path: Path
) -> None:
    client = service.client()
    lic = [{"name": "amount.lic", "min": 1}]
    bundles = [stamping_bundle(tmp_path / name, "1-2", 2, lic) for name in ("lic_a", "lic_b")]
    free = stamping_bundle(tmp_path / "free", "1-2", 0.2)
    jobs = [client.submit(str(b))["id"] for b in bundles]
    free_job = client.submit(str(free))["id"]
    waiting = wait_for(
        lambda: [t for j in jobs for t in client.tasks(j) if t["waiting_for"]],
        60,
        interval=0.1,
        what="a task waiting for the licence",
    )
    assert {t["waiting_for"] for t in waiting} == {"resource lic"}
    # the second job waits for the first one's two tasks: long enough for the CLI to show it
    shown = service.cli("tasks", str(jobs[1]))
    assert shown.returncode == 0 and "waiting for resource lic" in shown.stdout, shown
    assert "(waiting for resource lic)" in service.cli("jobs").stdout
    for job in [*jobs, free_job]:
        assert wait_job(client, job)["state"] == "succeeded", [
            (t["state"], t["error"]) for t in client.tasks(job)
        ]
    spans = sorted(span for b in bundles for span in stamps(b))
    assert len(spans) == 4
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans  # a licensed container started only after the previous one ended
    # the job asking for no licence was not queued behind them: its containers ended before the last licensed one began
    assert max(end for _, end in stamps(free)) < spans[-1][0], (stamps(free), spans)
    refused = service.raw(
        "POST",
        "/v1/jobs",
        json_body={
            "bundle_dir": str(
                stamping_bundle(tmp_path / "unknown", "1", 0, [{"name": "amount.houdini_engine", "min": 1}])
            )
        },
    )
    assert refused.status == 400, refused.body
    error = refused.json()["error"]
    assert "hostRequirements.amounts" in error["field"]
    assert "amount.houdini_engine" in error["message"] and "no resource 'houdini_engine'" in error["message"]


def test_a_licence_failure_stops_the_container_and_retries_after_back_off_without_spending_the_attempt(
    service: ServiceProcess, tmp_path: Path
) -> None:
    client = service.client()
    # The first container says it found no licence and would then wait a minute for one; the second renders.
    script = (
        f"if [ ! -e /stamps/tried ]; then touch /stamps/tried; echo failed {UPTIME} > /stamps/log; "
        f"echo '{LICENCE_LINE}'; sleep 60; fi; echo started {UPTIME} >> /stamps/log; echo rendered"
    )
    step = {"name": "run", "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", script]}}}}
    bundle = make_bundle(tmp_path / "licence", steps=[step], settings=writable(tmp_path / "licence"))
    job = client.submit(str(bundle))["id"]
    submitted = time.monotonic()
    backing_off = wait_for(
        lambda: [t for t in client.tasks(job) if t["waiting_for"] == "licence back-off"],
        60,
        interval=0.1,
        what="the task backing off after its licence failure",
    )
    (task,) = backing_off
    assert task["state"] == "pending" and task["error"] == f"licence unavailable: {LICENCE_LINE}"
    assert task["attempt"] == 0 and task["licence_retries"] == 1  # the attempt was given back
    assert time.monotonic() - submitted < 30  # stopped at the line, not after its minute of waiting
    assert wait_job(client, job)["state"] == "succeeded", [
        (t["state"], t["error"]) for t in client.tasks(job)
    ]
    (task,) = client.tasks(job)
    assert task["attempt"] == 1 and task["max_attempts"] == 1 and task["licence_retries"] == 1
    marks = dict(line.split() for line in (bundle / "stamps" / "log").read_text().splitlines())
    assert float(marks["started"]) - float(marks["failed"]) >= BACKOFF - 0.1  # it waited out the back-off
    text, _ = client.log(task["id"])
    assert LICENCE_LINE in text and "rendered" in text


def test_check_reports_the_resources_packing_and_licence_retries(
    service: ServiceProcess, engine_url: str
) -> None:
    report = check_report(service, engine_url)["resources"]
    assert report["counted"] == {"lic": {"total": 1, "step_amount": "amount.lic"}}
    assert report["packing"]["vcpus"] == os.cpu_count() and report["packing"]["memory_mib"] > 0
    assert report["licence_retry"] == {"backoff_s": BACKOFF, "backoff_max_s": BACKOFF, "retries": 2}
