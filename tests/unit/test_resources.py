"""Counted resources, machine packing and licence back-off, with the fake engine of test_scheduler.

That real containers obey the counts and that a real licence line stops a real container is
proven by tests/engine/test_counted_resources.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import pytest
from hpcdock_service.bundle import load_bundle
from hpcdock_service.config import LicenceRetry, Machine, load_config
from hpcdock_service.errors import BadInput
from hpcdock_service.logparse import LicenceUnavailable, LogParser
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.resources import Pool, capacity
from hpcdock_service.scheduler import Scheduler
from hpcdock_service.store import Store

from tests.unit.test_scheduler import FakeEngine, FakeStream, run_until_done, step, write_bundle

MACHINE = Machine(vcpus=2, memory_mib=4096, detected=False)


def asking(name: str, command: str, *amounts: dict[str, Any]) -> dict[str, Any]:
    s = step(name, command)
    s["hostRequirements"] = {"amounts": list(amounts)}
    return s


def make(
    tmp_path: Path,
    engine: FakeEngine,
    resources: dict[str, int],
    slots: int = 3,
    licence: Optional[LicenceRetry] = None,
) -> tuple[Store, Scheduler, dict[str, float]]:
    sizes = capacity(resources, MACHINE)
    store = Store(tmp_path / "state" / "db.sqlite")
    kw = {"licence": licence} if licence else {}
    engine.slots = slots
    sched = Scheduler(store, engine, state_dir=tmp_path / "state", pool=Pool(sizes), **kw)
    return store, sched, sizes


def plan(path: str, sizes: dict[str, float]):
    return load_bundle(path, mount_policy=MountPolicy.build([str(Path(path).parent)]), capacity=sizes)


def most_at_once(tasks: list[dict[str, Any]]) -> int:
    """The most of these tasks that ran at the same time (by their recorded start and end)."""
    edges = sorted([(t.started_at, 1) for t in tasks] + [(t.finished_at, -1) for t in tasks])
    running = most = 0
    for _, step_ in edges:  # at equal times an end sorts before a start: back to back is not at once
        running += step_
        most = max(most, running)
    return most


def test_a_counted_resource_is_never_overcommitted_across_jobs_while_other_work_flows(tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched, sizes = make(tmp_path, engine, {"lic": 1})
    lic = {"name": "amount.lic", "min": 1}
    jobs = [
        store.create_job(plan(write_bundle(tmp_path / n, [asking("r", n, lic)], frames="1-3"), sizes))
        for n in ("a", "b")
    ]
    free = store.create_job(plan(write_bundle(tmp_path / "c", [step("r", "c")], frames="1-2"), sizes))
    run_until_done(store, sched, [j.id for j in [*jobs, free]])
    licensed = [t for j in jobs for t in store.tasks(j.id)]
    assert all(t.state == "succeeded" for t in licensed) and len(licensed) == 6
    assert most_at_once(licensed) == 1  # one licence: never two such tasks at once, across both jobs
    # the job without the resource was not queued behind them: it finished before they all did
    assert store.read_job(free.id).finished_at < max(t.finished_at for t in licensed)
    assert sched.pool.to_json()["amount.lic"] == {"total": 1.0, "in_use": 0.0}


def test_tasks_held_back_by_a_resource_say_what_they_wait_for(tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    store, sched, sizes = make(tmp_path, engine, {"lic": 1})
    lic = {"name": "amount.lic", "min": 1}
    first = store.create_job(plan(write_bundle(tmp_path / "a", [asking("r", "a", lic)], frames="1"), sizes))
    second = store.create_job(plan(write_bundle(tmp_path / "b", [asking("r", "b", lic)], frames="1"), sizes))
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and store.tasks(second.id)[0].waiting_for is None:
            time.sleep(0.02)
        (running,) = store.tasks(first.id)
        (waiting,) = store.tasks(second.id)
        assert running.state == "running" and running.waiting_for is None
        assert waiting.state == "pending" and waiting.waiting_for == "resource lic"
        assert store.read_job(second.id).steps[0].waiting_for == "resource lic"
        engine.release.set()
        while time.monotonic() < deadline and store.read_job(second.id).state != "succeeded":
            time.sleep(0.02)
        assert store.read_job(second.id).state == "succeeded"
    finally:
        engine.release.set()
        sched.stop()
    assert store.tasks(second.id)[0].waiting_for is None
    assert store.read_job(second.id).steps[0].waiting_for is None


@pytest.mark.parametrize(
    "amount, message",
    [
        (
            {"name": "amount.houdini_engine", "min": 1},
            "no resource 'houdini_engine' (resources in service.yaml: lic)",
        ),
        ({"name": "amount.lic", "min": 2}, "asks for 2 but this service has only 1"),
        ({"name": "amount.lic", "min": 1.5}, "whole units"),
        ({"name": "amount.worker.vcpu", "min": 3}, "amount.worker.vcpu 3 can never fit"),
        ({"name": "amount.worker.memory", "min": 8192}, "amount.worker.memory 8192 MiB can never fit"),
        (
            {"name": "amount.worker.disk.scratch", "min": 1},
            "amount.worker.disk.scratch (min 1): the workers of this service have no amount.worker.disk.scratch",
        ),
        ({"name": "acme:amount.lic", "min": 1}, "vendor-prefixed amounts are not supported by hpcdock"),
        ({"name": "amount.houdini-engine", "min": 1}, "not a valid Capability name"),  # openjd's own rule
    ],
)
def test_a_job_asking_for_what_the_service_cannot_give_is_refused_naming_it(
    tmp_path: Path, amount: dict[str, Any], message: str
) -> None:
    sizes = capacity({"lic": 1}, MACHINE)
    with pytest.raises(BadInput) as err:
        plan(write_bundle(tmp_path / "j", [asking("r", "x", amount)]), sizes)
    assert "hostRequirements" in str(err.value) and message in str(err.value)


def test_resource_names_are_lowercased_as_openjd_compares_them(tmp_path: Path) -> None:
    sizes = capacity({"houdini_engine": 2}, MACHINE)
    job = plan(
        write_bundle(tmp_path / "j", [asking("r", "x", {"name": "amount.Houdini_Engine", "min": 2})]), sizes
    )
    assert job.steps[0].amounts == {"amount.houdini_engine": 2}


def test_steps_are_packed_by_their_declared_vcpus_and_memory(tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched, sizes = make(tmp_path, engine, {}, slots=4)
    two_cores = asking("r", "v", {"name": "amount.worker.vcpu", "min": 2})
    half_memory = asking("r", "m", {"name": "amount.worker.memory", "min": 2048, "max": 8192})
    cores = store.create_job(plan(write_bundle(tmp_path / "v", [two_cores], frames="1-3"), sizes))
    memory = store.create_job(plan(write_bundle(tmp_path / "m", [half_memory], frames="1-4"), sizes))
    run_until_done(store, sched, [cores.id, memory.id])
    assert most_at_once(store.tasks(cores.id)) == 1  # 2 vCPUs each on a 2-vCPU machine: one at a time
    memory_tasks = store.tasks(memory.id)
    assert most_at_once(memory_tasks) <= 2  # 2048 MiB each (min) in 4096: two at once, whatever max says
    limits = {c["request"].name: c["request"].limits for c in engine.removed}
    assert {limits[t.container].memory for t in memory_tasks} == {8192 * 1024 * 1024}  # the limit is max


class LicenceEngine(FakeEngine):
    """Prints Houdini's licence failure for the first ``failures`` containers, then renders."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.stopped: list[str] = []

    def logs(self, cid: str, follow: bool, tail: Optional[int] = None):
        return FakeStream(self._render(cid) if follow else iter(()))

    def _render(self, cid: str):
        with self.lock:
            fail = self.failures > 0
            self.failures -= fail
        if fail:
            yield b"hython: No licenses could be found to run this application.\n"
            self.release.wait(5)  # a renderer waiting for a licence: only the stop ends it
            return
        yield b"rendered\n"

    def wait(self, cid: str, timeout: Optional[float] = None) -> int:
        code = super().wait(cid, timeout)
        return 137 if cid in self.stopped else code

    def stop(self, cid: str, grace: float = 0) -> None:
        self.stopped.append(cid)
        super().stop(cid, grace)


def test_a_licence_failure_stops_the_attempt_and_retries_after_back_off_without_spending_it(
    tmp_path: Path,
) -> None:
    engine = LicenceEngine(failures=2)
    store, sched, sizes = make(
        tmp_path, engine, {}, licence=LicenceRetry(backoff_s=0.3, backoff_max_s=5, retries=3)
    )
    job = store.create_job(plan(write_bundle(tmp_path / "j", [step("r", "x")], frames="1"), sizes))
    events_from = store.last_event_id()
    run_until_done(store, sched, [job.id])
    (task,) = store.tasks(job.id)
    assert task.state == "succeeded"
    assert task.attempt == 1 and task.licence_retries == 2  # two licence failures, no attempt spent
    assert len(engine.stopped) == 2  # each failing container was stopped at the licence line
    tries = [e for e in store.events_after(events_from, job.id, limit=10_000) if e.kind == "task"]
    backoffs = [e for e in tries if '"licence back-off"' in e.data]
    assert backoffs and "licence unavailable: hython: No licenses could be found" in backoffs[0].data
    starts = sorted(c["request"].name for c in engine.removed)
    assert starts == [task.container.rsplit("-l", 1)[0] + s for s in ("", "-l1", "-l2")]


def test_a_task_out_of_licence_retries_fails_for_good_saying_so(tmp_path: Path) -> None:
    engine = LicenceEngine(failures=5)
    store, sched, sizes = make(
        tmp_path, engine, {}, licence=LicenceRetry(backoff_s=0.05, backoff_max_s=1, retries=1)
    )
    job = store.create_job(plan(write_bundle(tmp_path / "j", [step("r", "x")], frames="1"), sizes))
    run_until_done(store, sched, [job.id])
    (task,) = store.tasks(job.id)
    assert task.state == "failed" and task.attempt == 1
    assert task.error.startswith("licence unavailable: hython: No licenses could be found")
    assert "after 1 licence retries" in task.error


def test_licence_back_off_doubles_up_to_its_cap() -> None:
    policy = LicenceRetry(backoff_s=30, backoff_max_s=600, retries=10)
    assert [policy.delay(n) for n in range(7)] == [30, 60, 120, 240, 480, 600, 600]


@pytest.mark.parametrize(
    "line",
    [
        "No licenses could be found to run this application.",
        "HAPI Error: No Valid Licenses Found",
        "[Redshift] Maxon licensing error: User not logged in (7)",
    ],
)
def test_licence_failure_lines_are_recognised_once(line: str) -> None:
    parser = LogParser()
    updates = parser.feed(f"loading scene\n{line}\n{line}\n".encode())
    assert updates == [LicenceUnavailable(line)]
    assert LogParser().feed(b"licensed to: Studio Inc.\n") == []


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"resources": {"houdini-engine": 1}}, "resources.houdini-engine"),
        ({"resources": {"worker": 1}}, "resources.worker"),
        ({"resources": {"lic": 0}}, "resources.lic"),
        ({"resources": ["lic"]}, "resources"),
        ({"machine": {"vcpus": 0}}, "machine.vcpus"),
        ({"machine": {"cores": 2}}, "machine"),
        ({"licence_retries": -1}, "licence_retries"),
        ({"licence_backoff_s": 0}, "licence_backoff_s"),
    ],
)
def test_bad_resource_settings_are_refused_by_name(tmp_path: Path, settings: dict, field: str) -> None:
    import yaml

    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(BadInput) as err:
        load_config(path)
    assert err.value.field == f"{path}: {field}"


def test_the_machine_defaults_to_this_one_and_can_be_set(tmp_path: Path) -> None:
    import os

    import yaml

    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump({"machine": {"vcpus": 1.5, "memory_mib": 1024}, "resources": {"lic": 2}}))
    config = load_config(path)
    assert config.packing_machine == Machine(vcpus=1.5, memory_mib=1024, detected=False)
    assert capacity(config.resources, config.packing_machine)["amount.lic"] == 2
    path.write_text("{}")
    assert load_config(path).packing_machine.vcpus == os.cpu_count()


def test_a_store_made_before_resources_gets_their_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state" / "db.sqlite"
    path.parent.mkdir()
    old = sqlite3.connect(str(path))
    old.executescript("""
        CREATE TABLE steps (job_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
            depends_on TEXT NOT NULL, gpus INTEGER NOT NULL, command TEXT NOT NULL, timeout REAL,
            cancel_grace REAL NOT NULL, output TEXT, memory_mib INTEGER, vcpus REAL, PRIMARY KEY (job_id, idx));
        CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL,
            idx INTEGER NOT NULL, params TEXT NOT NULL, frames TEXT NOT NULL, state TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, container TEXT, exit_code INTEGER,
            progress REAL NOT NULL DEFAULT 0, error TEXT, started_at REAL, finished_at REAL, gpus TEXT,
            log_offset INTEGER NOT NULL DEFAULT 0);
    """)
    old.close()
    store = Store(path)
    sizes = capacity({"lic": 1}, MACHINE)
    job = store.create_job(
        plan(
            write_bundle(tmp_path / "j", [asking("r", "x", {"name": "amount.lic", "max": 1})], frames="1"),
            sizes,
        )
    )
    assert store.read_job(job.id).steps[0].amounts == {"amount.lic": 1}  # no min: counted by max
    (task,) = store.tasks(job.id)
    assert task.licence_retries == 0 and task.retry_at is None and task.waiting_for is None
