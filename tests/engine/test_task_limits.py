"""Runaway tasks against a real rootless engine: a fork bomb, a memory hog, a flood of output.

Each leaves the service answering, fails (or finishes) its task with the reason, and leaves no
container behind. The limits are kept small (256 processes, 200 MiB) so the bomb and the hog
are contained within seconds on a shared machine; the bomb's count is the user namespace of the
rootless engine, far below the processes the test runner itself may start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import pytest
from hpcdock_service.engines.base import ContainerLimits, ContainerRequest

from tests.helpers import (
    TEST_IMAGE,
    ServiceProcess,
    check_report,
    make_bundle,
    remove_leftovers,
    store_id_of,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.engine

PIDS = 256
MIB = 1024 * 1024


def one_task_bundle(
    root: Path, script: str, timeout: Optional[int] = None, amounts: Optional[list[dict[str, Any]]] = None
) -> Path:
    on_run: dict[str, Any] = {"command": "sh", "args": ["-c", script]}
    if timeout:
        on_run["timeout"] = timeout
    step: dict[str, Any] = {"name": "run", "script": {"actions": {"onRun": on_run}}}
    if amounts:
        step["hostRequirements"] = {"amounts": amounts}
    return make_bundle(root, steps=[step], settings={"frames": None, "max_attempts": 1})


@pytest.fixture
def limited(tmp_path: Path, engine_url: str):
    svc = ServiceProcess(tmp_path / "svc", engine_url, config={"task_pids": PIDS, "log_cap_mib": 16}).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


def finished_without_container(svc: ServiceProcess, engine, job_id: int) -> dict:
    wait_job(svc.client(), job_id, timeout=120)
    store_id = store_id_of(svc)
    wait_for(lambda: engine.leftovers(store_id) == [], 30, what="the container removed")
    (task,) = svc.client().tasks(job_id)
    return task


def test_the_engine_applies_the_limits_it_says_it_enforces(limited: ServiceProcess, engine) -> None:
    how = limited.client().health()["engine"]["limits"]
    assert how == engine.describe()["limits"]
    request = ContainerRequest(
        name="hpcdock-limits-probe",
        image=TEST_IMAGE,
        command=["cat", "/proc/self/limits"],
        env={},
        workdir="/",
        mounts=[],
        network=False,
        labels={},
        limits=ContainerLimits(pids=PIDS, memory=200 * MIB),
    )
    cid = engine.create(request)
    try:
        engine.start(cid)
        assert engine.wait(cid, timeout=30) == 0
        limits = b"".join(engine.logs(cid, follow=False)).decode()
        config = engine.inspect(cid)["HostConfig"]
    finally:
        engine.remove(cid)
    if how["pids"] == "ulimit":
        assert re.search(rf"Max processes +{PIDS} +{PIDS} ", limits), limits
    else:
        assert config["PidsLimit"] == PIDS
    if how["memory"] == "ulimit":
        assert re.search(rf"Max data size +{200 * MIB} +{200 * MIB} ", limits), limits
    else:
        assert config["Memory"] == 200 * MIB


def test_check_reports_the_task_limits_and_how_they_are_held(
    limited: ServiceProcess, engine_url: str
) -> None:
    report = check_report(limited, engine_url)["task_limits"]
    assert report["defaults"]["pids"] == PIDS and report["log_cap_mib"] == 16
    assert report["defaults"]["memory_mib"] > 0
    assert report["enforced_by"] == limited.client().health()["engine"]["limits"]


def test_a_fork_bomb_is_contained_and_the_service_keeps_working(
    limited: ServiceProcess, tmp_path: Path, engine
) -> None:
    client = limited.client()
    by_ulimit = client.health()["engine"]["limits"]["pids"] == "ulimit"
    # Never a bomb without its limit: it would spend the processes of the user running the tests.
    guard = f'[ "$(ulimit -u)" -le {PIDS} ] || exit 99; ' if by_ulimit else ""
    # PID 1 becomes `sleep` without forking, so the container lives until the step's timeout.
    bomb = one_task_bundle(tmp_path / "bomb", guard + "(b() { b | b & }; b) & exec sleep 60", timeout=4)
    job = client.submit(str(bomb))
    wait_for(lambda: client.tasks(job["id"])[0]["state"] == "running", 30, what="the bomb running")
    for _ in range(5):  # the service's threads are not the bomb's to take
        assert client.health()["ok"] is True
    task = finished_without_container(limited, engine, job["id"])
    assert task["state"] == "failed", task
    assert "timed out after 4s" in task["error"], task["error"]
    if by_ulimit:
        assert f"could not start more processes (limit {PIDS} processes and threads)" in task["error"]

    after = make_bundle(tmp_path / "after", frames="1-4", chunk=2)
    assert wait_job(client, client.submit(str(after))["id"])["state"] == "succeeded"


def test_a_memory_hog_fails_saying_it_ran_out_of_memory(
    limited: ServiceProcess, tmp_path: Path, engine
) -> None:
    client = limited.client()
    hog = one_task_bundle(
        tmp_path / "hog",
        'x=$(head -c 400000000 /dev/zero | tr "\\0" a); echo kept ${#x}',
        amounts=[{"name": "amount.worker.memory", "min": 200}],
    )
    job = client.submit(str(hog))
    task = finished_without_container(limited, engine, job["id"])
    assert task["state"] == "failed", task
    assert "out of memory" in task["error"] and "200 MiB" in task["error"], task["error"]
    assert client.health()["ok"] is True


def test_a_flood_of_output_is_streamed_capped_and_keeps_its_end(
    limited: ServiceProcess, tmp_path: Path, engine
) -> None:
    client = limited.client()
    flood = one_task_bundle(
        tmp_path / "flood", 'head -c 300000000 /dev/zero | tr "\\0" x | fold -w 3999; echo the last line'
    )
    job = client.submit(str(flood))
    task = finished_without_container(limited, engine, job["id"])
    assert task["state"] == "succeeded", task
    status = Path(f"/proc/{limited.proc.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kib * 1024 < 300 * MIB, f"the service peaked at {peak_kib // 1024} MiB"

    log_file = limited.state_dir / "logs" / f"task-{task['id']}.log"
    assert log_file.stat().st_size <= 16 * MIB + 4096  # the cap, plus the attempt's header line
    text, offset = "", 0
    while True:  # the log read from the start through the API, as `hpcdock logs` reads it
        piece, offset = client.log(task["id"], offset)
        if not piece:
            break
        text += piece
    dropped = re.search(r"--- hpcdock: +(\d+) bytes of this attempt's output dropped here", text)
    assert dropped and int(dropped.group(1)) > 250 * 1000 * 1000
    assert text.endswith("x" * 3999 + "\n" + "x" * (300_000_000 % 3999) + "the last line\n")
    # Offsets count the bytes as printed: the attempt's header line, then all the output.
    assert offset == text.index("\n") + 1 + 300_000_000 + 300_000_000 // 3999 + len("the last line\n")
