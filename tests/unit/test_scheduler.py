"""Scheduling rules with a fake engine: slots, priority, step dependencies, retries, GPUs, recovery.

The fake engine is only for these rules; that containers really run is proven by tests/engine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hpcdock_service.bundle import load_bundle
from hpcdock_service.engines.base import ContainerRequest, ContainerStatus
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.scheduler import Scheduler
from hpcdock_service.store import Store


class FakeEngine:
    """Containers that 'run' until released; exit code chosen by the test per command."""

    def __init__(self, exit_codes: Optional[dict[str, int]] = None, hold: bool = False) -> None:
        self.exit_codes = exit_codes or {}
        self.hold = hold
        self.lock = threading.Lock()
        self.containers: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.started_order: list[str] = []
        self.release = threading.Event()

    def create(self, request: ContainerRequest) -> str:
        with self.lock:
            self.containers[request.name] = {"request": request, "status": "created"}
        return request.name

    def start(self, cid: str) -> None:
        with self.lock:
            self.containers[cid]["status"] = "running"
            self.running.add(cid)
            self.max_running = max(self.max_running, len(self.running))
            self.started_order.append(cid)

    def logs(self, cid: str, follow: bool):
        if self.hold:
            self.release.wait(10)
        else:
            time.sleep(0.02)
        yield f"ran {' '.join(self.containers[cid]['request'].command)}\n".encode()

    def wait(self, cid: str, timeout: Optional[float] = None) -> int:
        with self.lock:
            self.running.discard(cid)
            self.containers[cid]["status"] = "exited"
        command = " ".join(self.containers[cid]["request"].command)
        return next((code for key, code in self.exit_codes.items() if key in command), 0)

    def stop(self, cid: str, grace: float = 0) -> None:
        self.release.set()

    def remove(self, cid: str) -> None:
        with self.lock:
            self.containers.pop(cid, None)

    def inspect(self, cid: str) -> dict[str, Any]:
        return {}

    def find(self, name: str) -> Optional[ContainerStatus]:
        c = self.containers.get(name)
        if c is None:
            return None
        return ContainerStatus(name, name, c["status"], c["status"] == "running",
                               None if c["status"] == "running" else 0, {})

    def list_labeled(self, labels: dict[str, str]) -> list[ContainerStatus]:
        return [s for s in (self.find(n) for n in list(self.containers)) if s]

    def image_exists(self, image: str) -> bool:
        return True


def write_bundle(root: Path, steps: list[dict[str, Any]], frames: str = "1-4", **settings: Any) -> str:
    root.mkdir(parents=True, exist_ok=True)
    template = {"specificationVersion": "jobtemplate-2023-09", "extensions": ["TASK_CHUNKING"],
                "name": root.name, "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
                "steps": steps}
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": "img", "frames": {"parameter": "Frame"},
                                                        **settings}))
    return str(root)


def step(name: str, command: str, chunk: int = 1, deps: Optional[list[str]] = None, gpus: int = 0) -> dict:
    s: dict[str, Any] = {
        "name": name,
        "parameterSpace": {"taskParameterDefinitions": [{
            "name": "Frame", "type": "CHUNK[INT]", "range": "{{Param.Frames}}",
            "chunks": {"defaultTaskCount": chunk, "rangeConstraint": "CONTIGUOUS"}}]},
        "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", f"{command} {{{{Task.Param.Frame}}}}"]}}},
    }
    if deps:
        s["dependencies"] = [{"dependsOn": d} for d in deps]
    if gpus:
        s["hostRequirements"] = {"amounts": [{"name": "amount.worker.gpu", "min": gpus}]}
    return s


class FakeGpus:
    def __init__(self, count: int) -> None:
        self.free = list(range(count))
        self.held: dict[int, list[int]] = {}

    def acquire(self, task_id: int, count: int) -> Optional[list[int]]:
        if len(self.free) < count:
            return None
        self.held[task_id], self.free = self.free[:count], self.free[count:]
        return self.held[task_id]

    def restore(self, task_id: int, indices: list[int]) -> None:
        self.held[task_id] = indices

    def release(self, task_id: int) -> None:
        self.free += self.held.pop(task_id, [])

    def attachment(self, indices: list[int]) -> Any:
        return None


@pytest.fixture
def env(tmp_path: Path):
    def make(engine: FakeEngine, slots: int = 2, gpus: Any = None):
        store = Store(tmp_path / "state" / "db.sqlite")
        sched = Scheduler(store, engine, slots=slots, state_dir=tmp_path / "state", gpus=gpus)
        return store, sched

    return make


def submit(store: Store, sched: Scheduler, path: str, **kw: Any) -> dict:
    plan = load_bundle(path, mount_policy=MountPolicy.build([str(Path(path).parent)]))
    job = store.add_job(plan, **kw)
    sched.wake()
    return job


def run_until_done(store: Store, sched: Scheduler, job_ids: list[int], timeout: float = 20) -> None:
    sched.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(store.job(j)["state"] in ("succeeded", "failed", "canceled") for j in job_ids):
                return
            time.sleep(0.02)
        raise AssertionError([store.job(j) for j in job_ids])
    finally:
        sched.stop()


def test_slots_limit_concurrency_and_chunks_become_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=2)
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "render", chunk=5)], frames="1-12"))
    assert job["tasks_total"] == 3
    run_until_done(store, sched, [job["id"]])
    assert store.job(job["id"])["state"] == "succeeded"
    assert engine.max_running <= 2
    assert [t["frames"] for t in store.tasks(job["id"])] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]


def test_higher_priority_job_runs_first(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    low = submit(store, sched, write_bundle(tmp_path / "low", [step("r", "low")], frames="1-2"), priority=10)
    high = submit(store, sched, write_bundle(tmp_path / "high", [step("r", "high")], frames="1-2"), priority=90)
    run_until_done(store, sched, [low["id"], high["id"]])
    firsts = [store.task(int(name.split("-t")[1].split("-")[0]))["job_id"] for name in engine.started_order]
    assert firsts[:2] == [high["id"], high["id"]] and firsts[2:] == [low["id"], low["id"]]


def test_dependent_step_waits_for_all_upstream_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=4)
    job = submit(store, sched, write_bundle(tmp_path / "dep", [step("sim", "sim"), step("render", "render",
                                                                                  deps=["sim"])]))
    run_until_done(store, sched, [job["id"]])
    tasks = store.tasks(job["id"])
    last_sim = max(t["finished_at"] for t in tasks if t["step"] == "sim")
    first_render = min(t["started_at"] for t in tasks if t["step"] == "render")
    assert first_render >= last_sim
    assert store.job(job["id"])["state"] == "succeeded"


def test_failed_task_retries_then_fails_and_cancels_dependents(env, tmp_path: Path) -> None:
    engine = FakeEngine(exit_codes={"sim 3": 1})
    store, sched = env(engine, slots=2)
    job = submit(store, sched, write_bundle(tmp_path / "f", [step("sim", "sim"), step("render", "render",
                                                                                deps=["sim"])], max_attempts=3))
    run_until_done(store, sched, [job["id"]])
    tasks = {(t["step"], t["frames"][0]): t for t in store.tasks(job["id"])}
    assert tasks[("sim", 3)]["state"] == "failed" and tasks[("sim", 3)]["attempt"] == 3
    assert all(t["state"] == "canceled" and "upstream step 'sim' failed" in t["error"]
               for (s, _), t in tasks.items() if s == "render")
    assert store.job(job["id"])["state"] == "failed"
    job = store.retry_job(job["id"])
    assert job["state"] == "queued"
    assert store.task(tasks[("sim", 3)]["id"])["max_attempts"] == 6


def test_gpu_steps_wait_for_free_gpus_while_cpu_work_continues(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    gpus = FakeGpus(1)
    store, sched = env(engine, slots=3, gpus=gpus)
    gpu_job = submit(store, sched, write_bundle(tmp_path / "g", [step("r", "gpu", gpus=1)], frames="1-3"),
                     priority=90)
    cpu_job = submit(store, sched, write_bundle(tmp_path / "c", [step("r", "cpu")], frames="1-2"))
    run_until_done(store, sched, [gpu_job["id"], cpu_job["id"]])
    gpu_tasks = sorted(store.tasks(gpu_job["id"]), key=lambda t: t["started_at"])
    for a, b in zip(gpu_tasks, gpu_tasks[1:]):
        assert b["started_at"] >= a["finished_at"]  # one GPU: never two GPU tasks at once
    assert all(t["gpus"] == [0] for t in gpu_tasks)
    assert gpus.free == [0]


def test_cancel_stops_running_and_pending_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    store, sched = env(engine, slots=1)
    job = submit(store, sched, write_bundle(tmp_path / "c", [step("r", "long")], frames="1-3"))
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while store.job(job["id"])["tasks_running"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        job = sched.cancel(job["id"])
    finally:
        sched.stop()
    assert job["state"] == "canceled"
    assert {t["state"] for t in store.tasks(job["id"])} == {"canceled"}
    assert engine.containers == {}


def test_recover_puts_never_created_tasks_back_without_spending_an_attempt(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    job = submit(store, sched, write_bundle(tmp_path / "r", [step("r", "x")], frames="1"))
    (task,) = store.tasks(job["id"])
    store.start_task(task["id"], "hpcdock-gone-t1-a1", [], 0)  # the service died before creating it
    run_until_done(store, sched, [job["id"]])
    assert store.task(task["id"])["attempt"] == 1
    assert store.job(job["id"])["state"] == "succeeded"
