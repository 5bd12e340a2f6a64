"""Scheduling rules with a fake engine: slots, priority, step dependencies, retries, GPUs, recovery.

The fake engine implements the engine protocol (:class:`hpcdock_service.engines.base.Engine`)
and is only for these rules; that containers really run is proven by tests/engine.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hpcdock.protocol import JOB_FINAL
from hpcdock_service import tasklog
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.engines.base import (
    ContainerLimits,
    ContainerRequest,
    EngineError,
    EngineUnreachable,
    GpuGrant,
    RunState,
    RunStatus,
)
from hpcdock_service.model import Job, Task
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.scheduler import Scheduler
from hpcdock_service.store import Store, StoreBusy


class FakeStream:
    """A log stream whose ``close()`` may come from another thread while it is being read, as the
    SDK's CancellableStream allows (closing a plain generator there raises "already executing")."""

    def __init__(self, chunks) -> None:
        self._chunks = iter(chunks)
        self._closed = threading.Event()

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self._closed.is_set():
            raise StopIteration
        return next(self._chunks)

    def close(self) -> None:
        self._closed.set()


class FakeGpus:
    """GPU placement by index, as the local engine's; ``indexed=False`` places them as a cluster
    engine does, granting a count and leaving the choice to its scheduler."""

    def __init__(self, count: int, indexed: bool = True) -> None:
        self.total = count
        self.indexed = indexed
        self.free = list(range(count))
        self.held: dict[int, list[int]] = {}

    def check(self, count: int) -> Optional[str]:
        return None if count <= self.total else f"amount.worker.gpu: {count} GPUs, {self.total} here"

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        if len(self.free) < count:
            return None
        self.held[task_id], self.free = self.free[:count], self.free[count:]
        return GpuGrant(count, tuple(self.held[task_id]) if self.indexed else ())

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        indices = list(grant.indices) if self.indexed else self.free[: grant.count]
        self.free = [i for i in self.free if i not in indices]
        self.held[task_id] = indices

    def release(self, task_id: int) -> None:
        self.free += self.held.pop(task_id, [])

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "task": next((t for t, h in self.held.items() if i in h), None)}
            for i in range(self.total)
        ]

    def inventory_json(self) -> dict[str, Any]:
        return {"gpus": list(range(self.total))}


class FakeEngine:
    """Containers that 'run' until released; exit code chosen by the test per command."""

    def __init__(
        self,
        exit_codes: Optional[dict[str, int]] = None,
        hold: bool = False,
        slots: int = 2,
        gpus: Optional[FakeGpus] = None,
    ) -> None:
        self.exit_codes = exit_codes or {}
        self.hold = hold
        self.slots = slots
        self.gpus = gpus or FakeGpus(0)
        self.mount_policy = MountPolicy.build([])
        self.lock = threading.Lock()
        self.containers: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.started_order: list[str] = []
        self.release = threading.Event()
        self.removed: list[dict[str, Any]] = []

    def describe(self) -> dict[str, Any]:
        return {"engine": "fake"}

    def create(self, request: ContainerRequest) -> str:
        with self.lock:
            self.containers[request.name] = {"request": request, "status": "created", "code": None}
        return request.name

    def start(self, cid: str) -> None:
        with self.lock:
            self.containers[cid]["status"] = "running"
            self.running.add(cid)
            self.max_running = max(self.max_running, len(self.running))
            self.started_order.append(cid)

    def logs(self, cid: str, follow: bool, tail: Optional[int] = None):
        return FakeStream(self._log(cid))

    def _log(self, cid: str):
        if self.hold:
            self.release.wait(10)
        else:
            time.sleep(0.02)
        yield f"ran {' '.join(self.containers[cid]['request'].command)}\n".encode()

    def wait(self, cid: str, timeout: Optional[float] = None) -> int:
        command = " ".join(self.containers[cid]["request"].command)
        code = next((code for key, code in self.exit_codes.items() if key in command), 0)
        with self.lock:
            self.running.discard(cid)
            self.containers[cid].update(status="exited", code=code)
        return code

    def stop(self, cid: str, grace: float = 0) -> None:
        self.release.set()

    def remove(self, cid: str) -> None:
        with self.lock:
            if cid in self.containers:
                self.removed.append(self.containers.pop(cid))

    def status(self, cid: str) -> RunStatus:
        c = self.containers.get(cid)
        if c is None:
            raise EngineError(f"container {cid} is gone")
        state = {"created": RunState.QUEUED, "queued": RunState.QUEUED, "running": RunState.RUNNING}.get(
            c["status"], RunState.EXITED
        )
        return RunStatus(cid, cid, state, exit_code=c["code"])

    def find(self, name: str) -> Optional[RunStatus]:
        c = self.containers.get(name)
        if c is not None and c["status"] == "created":  # never started: as the protocol says, removed
            self.remove(name)
            return None
        return None if c is None else self.status(name)

    def leftovers(self, store_id: str) -> list[RunStatus]:
        return [self.status(n) for n in list(self.containers)]

    def image_exists(self, image: str) -> bool:
        return True

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass


def write_bundle(root: Path, steps: list[dict[str, Any]], frames: str = "1-4", **settings: Any) -> str:
    root.mkdir(parents=True, exist_ok=True)
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": root.name,
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
        "steps": steps,
    }
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    (root / "hpcdock.yaml").write_text(
        yaml.safe_dump({"image": "img", "frames": {"parameter": "Frame"}, **settings})
    )
    return str(root)


def step(name: str, command: str, chunk: int = 1, deps: Optional[list[str]] = None, gpus: int = 0) -> dict:
    s: dict[str, Any] = {
        "name": name,
        "parameterSpace": {
            "taskParameterDefinitions": [
                {
                    "name": "Frame",
                    "type": "CHUNK[INT]",
                    "range": "{{Param.Frames}}",
                    "chunks": {"defaultTaskCount": chunk, "rangeConstraint": "CONTIGUOUS"},
                }
            ]
        },
        "script": {
            "actions": {"onRun": {"command": "sh", "args": ["-c", f"{command} {{{{Task.Param.Frame}}}}"]}}
        },
    }
    if deps:
        s["dependencies"] = [{"dependsOn": d} for d in deps]
    if gpus:
        s["hostRequirements"] = {"amounts": [{"name": "amount.worker.gpu", "min": gpus}]}
    return s


@pytest.fixture
def env(tmp_path: Path):
    def make(engine: FakeEngine, slots: int = 2, gpus: Optional[FakeGpus] = None):
        engine.slots = slots
        if gpus is not None:
            engine.gpus = gpus
        store = Store(tmp_path / "state" / "db.sqlite")
        sched = Scheduler(store, engine, state_dir=tmp_path / "state")
        return store, sched

    return make


def submit(store: Store, sched: Scheduler, path: str, **kw: Any) -> Job:
    plan = load_bundle(path, mount_policy=MountPolicy.build([str(Path(path).parent)]))
    job = store.create_job(plan, **kw)
    sched.wake()
    return job


def run_until_done(store: Store, sched: Scheduler, job_ids: list[int], timeout: float = 20) -> None:
    """Run the scheduler until the jobs are over and no run that exited is left: a runner removes
    its run just after it records the result, and the tests look at what was removed."""
    sched.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(store.read_job(j).state in JOB_FINAL for j in job_ids) and not exited_runs(sched.engine):
                return
            time.sleep(0.02)
        raise AssertionError([store.read_job(j) for j in job_ids], exited_runs(sched.engine))
    finally:
        sched.stop()


def exited_runs(engine: Any) -> list[str]:
    """The names of the fake engine's runs that exited and are not removed yet."""
    with engine.lock:
        return [name for name, c in engine.containers.items() if c["status"] == "exited"]


def test_slots_limit_concurrency_and_chunks_become_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=2)
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "render", chunk=5)], frames="1-12"))
    assert job.tasks_total == 3
    run_until_done(store, sched, [job.id])
    assert store.read_job(job.id).state == "succeeded"
    assert engine.max_running <= 2
    assert [t.frames for t in store.tasks(job.id)] == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]


def test_higher_priority_job_runs_first(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    low = submit(store, sched, write_bundle(tmp_path / "low", [step("r", "low")], frames="1-2"), priority=10)
    high = submit(
        store, sched, write_bundle(tmp_path / "high", [step("r", "high")], frames="1-2"), priority=90
    )
    run_until_done(store, sched, [low.id, high.id])
    firsts = [store.read_task(int(name.split("-t")[1].split("-")[0])).job_id for name in engine.started_order]
    assert firsts[:2] == [high.id, high.id] and firsts[2:] == [low.id, low.id]


def test_dependent_step_waits_for_all_upstream_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=4)
    job = submit(
        store,
        sched,
        write_bundle(tmp_path / "dep", [step("sim", "sim"), step("render", "render", deps=["sim"])]),
    )
    run_until_done(store, sched, [job.id])
    tasks = store.tasks(job.id)
    last_sim = max(t.finished_at for t in tasks if t.step == "sim")
    first_render = min(t.started_at for t in tasks if t.step == "render")
    assert first_render >= last_sim
    assert store.read_job(job.id).state == "succeeded"


def test_failed_task_retries_then_fails_and_cancels_dependents(env, tmp_path: Path) -> None:
    engine = FakeEngine(exit_codes={"sim 3": 1})
    store, sched = env(engine, slots=2)
    job = submit(
        store,
        sched,
        write_bundle(
            tmp_path / "f", [step("sim", "sim"), step("render", "render", deps=["sim"])], max_attempts=3
        ),
    )
    run_until_done(store, sched, [job.id])
    tasks = {(t.step, t.frames[0]): t for t in store.tasks(job.id)}
    assert tasks[("sim", 3)].state == "failed" and tasks[("sim", 3)].attempt == 3
    assert all(
        t.state == "canceled" and "upstream step 'sim' failed" in t.error
        for (s, _), t in tasks.items()
        if s == "render"
    )
    assert store.read_job(job.id).state == "failed"
    job = store.retry_failed(job.id)
    assert job.state == "queued"
    assert store.read_task(tasks[("sim", 3)].id).max_attempts == 6


def test_gpu_steps_wait_for_free_gpus_while_cpu_work_continues(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    gpus = FakeGpus(1)
    store, sched = env(engine, slots=3, gpus=gpus)
    gpu_job = submit(
        store, sched, write_bundle(tmp_path / "g", [step("r", "gpu", gpus=1)], frames="1-3"), priority=90
    )
    cpu_job = submit(store, sched, write_bundle(tmp_path / "c", [step("r", "cpu")], frames="1-2"))
    run_until_done(store, sched, [gpu_job.id, cpu_job.id])
    gpu_tasks = sorted(store.tasks(gpu_job.id), key=lambda t: t.started_at)
    for a, b in zip(gpu_tasks, gpu_tasks[1:]):
        assert b.started_at >= a.finished_at  # one GPU: never two GPU tasks at once
    assert all(t.gpus == (0,) for t in gpu_tasks)
    assert gpus.free == [0]


def test_cancel_stops_running_and_pending_tasks(env, tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    store, sched = env(engine, slots=1)
    job = submit(store, sched, write_bundle(tmp_path / "c", [step("r", "long")], frames="1-3"))
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while store.read_job(job.id).tasks_running < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.read_job(job.id).tasks_running == 1  # one slot: the first task runs, two wait
        job = sched.cancel(job.id)
    finally:
        sched.stop()
    assert job.state == "canceled"
    assert {t.state for t in store.tasks(job.id)} == {"canceled"}
    assert engine.containers == {}


def test_recover_puts_never_created_tasks_back_without_spending_an_attempt(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    job = submit(store, sched, write_bundle(tmp_path / "r", [step("r", "x")], frames="1"))
    (task,) = store.tasks(job.id)
    store.start_task(task.id, "hpcdock-gone-t1-a1", [], 0)  # the service died before creating it
    run_until_done(store, sched, [job.id])
    assert store.read_task(task.id).attempt == 1
    assert store.read_job(job.id).state == "succeeded"


def left_running(engine: FakeEngine, store: Store, task: Task, status: str, command: str = "adopted") -> str:
    """What a killed service leaves: the task marked running, and its run in ``status`` on the engine."""
    name = f"hpcdock-{store.store_id}-t{task.id}-a1"
    store.start_task(task.id, name, [], 0)
    request = ContainerRequest(name, "img", [command], {}, "/", [], False, {})
    engine.containers[name] = {"request": request, "status": status, "code": None}
    return name


def one_task_job(store: Store, sched: Scheduler, tmp_path: Path) -> tuple[Job, Task]:
    job = submit(store, sched, write_bundle(tmp_path / "r", [step("r", "x")], frames="1"))
    (task,) = store.tasks(job.id)
    return job, task


@pytest.mark.parametrize("status", ["queued", "running"])
def test_recover_readopts_a_queued_or_running_run_without_starting_another(
    env, tmp_path: Path, status: str
) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    job, task = one_task_job(store, sched, tmp_path)
    name = left_running(engine, store, task, status)
    run_until_done(store, sched, [job.id])
    assert store.read_job(job.id).state == "succeeded"
    assert store.read_task(task.id).attempt == 1 and store.read_task(task.id).container == name
    assert engine.started_order == []  # followed where it was, not run again
    assert [c["request"].name for c in engine.removed] == [name]  # removed once its result was recorded


def test_recover_collects_an_exited_run_s_result(env, tmp_path: Path) -> None:
    engine = FakeEngine(exit_codes={"adopted": 3})  # the run that ended while no service watched failed
    store, sched = env(engine, slots=1)
    job, task = one_task_job(store, sched, tmp_path)
    name = left_running(engine, store, task, "exited")
    run_until_done(store, sched, [job.id])
    done = store.read_task(task.id)
    assert done.state == "succeeded" and done.attempt == 2  # the collected failure spent attempt 1
    assert engine.started_order == [name.replace("-a1", "-a2")]  # only the retry was started


def test_recover_reruns_a_never_started_run_without_spending_an_attempt(env, tmp_path: Path) -> None:
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    job, task = one_task_job(store, sched, tmp_path)
    name = left_running(engine, store, task, "created")
    run_until_done(store, sched, [job.id])
    assert store.read_job(job.id).state == "succeeded" and store.read_task(task.id).attempt == 1
    assert [c["status"] for c in engine.removed] == ["created", "exited"]  # the unstarted one went first
    assert engine.started_order == [name]  # then the same attempt ran, once


def test_recover_removes_runs_no_task_claims_and_keeps_the_claimed(env, tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    store, sched = env(engine, slots=1)
    job, task = one_task_job(store, sched, tmp_path)
    claimed = left_running(engine, store, task, "running")
    stray = ContainerRequest("hpcdock-stray", "img", ["stray"], {}, "/", [], False, {})
    engine.containers["hpcdock-stray"] = {"request": stray, "status": "exited", "code": 0}
    sched.recover()
    try:
        assert [c["request"].name for c in engine.removed] == ["hpcdock-stray"]
        assert list(engine.containers) == [claimed]
    finally:
        engine.release.set()
        sched.stop()
        for runner in list(sched._running.values()):
            runner.join(5)


def test_a_grant_without_indices_is_passed_to_the_engine_and_restored_by_count(env, tmp_path: Path) -> None:
    """A cluster engine places GPUs itself: the store keeps no indices, the engine gets the count."""
    engine = FakeEngine()
    gpus = FakeGpus(1, indexed=False)
    store, sched = env(engine, slots=2, gpus=gpus)
    job = submit(store, sched, write_bundle(tmp_path / "g", [step("r", "gpu", gpus=1)], frames="1-2"))
    first = store.tasks(job.id)[0]
    left_running(engine, store, first, "running")
    run_until_done(store, sched, [job.id])
    assert store.read_job(job.id).state == "succeeded" and gpus.free == [0]
    created = [c["request"] for c in engine.removed if c["request"].name in engine.started_order]
    assert [r.gpus for r in created] == [GpuGrant(1, ())]
    assert all(t.gpus == () for t in store.tasks(job.id))


class FlakyEngine(FakeEngine):
    """Unreachable while ``down`` is set, the way LocalEngine reports a missing socket.

    That real containers outlive a killed Podman API and are re-adopted is proven in
    tests/engine/test_resilience.py; this covers a container the engine never got.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()

    def _reach(self) -> None:
        if self.down.is_set():
            raise EngineUnreachable("the engine at unix:///gone.sock cannot be reached: FileNotFoundError")

    def ping(self) -> None:
        self._reach()

    def create(self, request: ContainerRequest) -> str:
        self._reach()
        return super().create(request)


def test_tasks_wait_for_a_lost_engine_without_spending_attempts(env, tmp_path: Path) -> None:
    engine = FlakyEngine()
    engine.down.set()
    store, sched = env(engine, slots=2)
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "render")], frames="1-4"))
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while sched.watch.up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sched.watch.to_json()["state"] == "down"
        time.sleep(1.0)  # long enough for a failing task to have failed, and for more to start
        tasks = store.tasks(job.id)  # the first two started before the loss was known; no more since
        assert [(t.state, t.attempt) for t in tasks] == [("running", 1)] * 2 + [("pending", 0)] * 2
        engine.down.clear()
        while store.read_job(job.id).state == "running" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sched.stop()
    assert store.read_job(job.id).state == "succeeded"
    assert [t.attempt for t in store.tasks(job.id)] == [1, 1, 1, 1]
    assert sched.watch.to_json()["state"] == "up"


def test_a_task_the_locked_store_kept_from_starting_gives_its_gpu_back(
    env, tmp_path: Path, monkeypatch
) -> None:
    engine = FakeEngine()
    gpus = FakeGpus(1)
    store, sched = env(engine, slots=1, gpus=gpus)
    job = submit(store, sched, write_bundle(tmp_path / "g", [step("r", "gpu", gpus=1)], frames="1"))
    start_task = store.start_task

    def locked(*args: Any) -> Any:
        monkeypatch.setattr(store, "start_task", start_task)  # free again for the next dispatch
        raise StoreBusy(store.path, 10.0)

    monkeypatch.setattr(store, "start_task", locked)
    with pytest.raises(StoreBusy):
        sched.dispatch()
    assert gpus.free == [0] and store.tasks(job.id)[0].state == "pending"
    run_until_done(store, sched, [job.id])
    assert store.read_job(job.id).state == "succeeded" and gpus.free == [0]


def test_a_task_whose_threads_are_refused_waits_for_them_and_still_runs_once(
    env, tmp_path: Path, monkeypatch
) -> None:
    """A runaway task can spend the process count the service shares: its neighbours are not failed."""
    engine = FakeEngine()
    store, sched = env(engine, slots=1)
    refusals = {"": 2, "-wait": 1, "-watch": 1}  # the runner's own thread twice, then each helper once
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        named = re.fullmatch(r"task-\d+(-\w+)?", thread.name)
        key = (named.group(1) or "") if named else None
        if key in refusals and refusals[key] > 0:
            refusals[key] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "render", chunk=2)], frames="1-2"))
    run_until_done(store, sched, [job.id])
    assert refusals == {"": 0, "-wait": 0, "-watch": 0}
    assert store.read_job(job.id).state == "succeeded"
    assert [t.attempt for t in store.tasks(job.id)] == [1]
    assert engine.started_order == [store.tasks(job.id)[0].container]


def test_containers_get_the_steps_limits_or_the_service_defaults(tmp_path: Path) -> None:
    engine = FakeEngine()
    store = Store(tmp_path / "state" / "db.sqlite")
    defaults = ContainerLimits(pids=256, memory=512 * 1024 * 1024, vcpus=None)
    sched = Scheduler(store, engine, state_dir=tmp_path / "state", limits=defaults)
    sized = step("big", "render")
    sized["hostRequirements"] = {
        "amounts": [
            {"name": "amount.worker.memory", "min": 1024},
            {"name": "amount.worker.vcpu", "min": 1, "max": 3},
        ]
    }
    job = submit(store, sched, write_bundle(tmp_path / "a", [sized, step("plain", "render")], frames="1"))
    run_until_done(store, sched, [job.id])
    limits = {c["request"].name.split("-t")[1]: c["request"].limits for c in engine.removed}
    by_step = {t.step: limits[f"{t.id}-a1"] for t in store.tasks(job.id)}
    assert by_step["big"] == ContainerLimits(pids=256, memory=1024 * 1024 * 1024, vcpus=3.0)
    assert by_step["plain"] == defaults


class EarlyEndEngine(FakeEngine):
    """Podman ends a follow stream when the container exits, whether the reader got everything or not."""

    LOG = (
        b"".join(
            b"::hpcdock::frame-start %d\nALF_PROGRESS 50%%\n::hpcdock::frame-done %d\n" % (f, f)
            for f in (1, 2)
        )
        + b"last words\n"
    )

    def logs(self, cid: str, follow: bool, tail: Optional[int] = None):
        if follow:
            return FakeStream([self.LOG[:40]])
        if tail:
            return iter([b"".join(self.LOG.splitlines(keepends=True)[-tail:])])
        return (self.LOG[i : i + 7] for i in range(0, len(self.LOG), 7))


def test_what_an_early_ended_log_stream_missed_is_read_again_once(tmp_path: Path) -> None:
    engine = EarlyEndEngine(slots=1)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(store, engine, state_dir=tmp_path / "state")
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "render", chunk=2)], frames="1-2"))
    run_until_done(store, sched, [job.id])
    (task,) = store.tasks(job.id)
    log = sched.log_path(task.id).read_bytes()
    assert log.split(b"\n", 1)[1] == EarlyEndEngine.LOG  # after the attempt's header: all of it, once


class OomEngine(FakeEngine):
    def status(self, cid: str) -> RunStatus:
        return replace(super().status(cid), oom_killed=True)


def test_an_oom_killed_task_says_so_with_its_limit(tmp_path: Path) -> None:
    engine = OomEngine(exit_codes={"hog": 137}, slots=1)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(
        store, engine, state_dir=tmp_path / "state", limits=ContainerLimits(memory=512 * 1024 * 1024)
    )
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "hog")], frames="1", max_attempts=1))
    run_until_done(store, sched, [job.id])
    (task,) = store.tasks(job.id)
    assert task.state == "failed" and task.error == "killed: out of memory (limit 512 MiB)"


class FloodEngine(FakeEngine):
    """A container that printed far more than the log cap, all of it replayed on every read."""

    LOG = b"".join(b"line %08d\n" % n for n in range(30_000)) + b"the end\n"

    def logs(self, cid: str, follow: bool, tail: Optional[int] = None):
        if tail:
            return iter([b"".join(self.LOG.splitlines(keepends=True)[-tail:])])
        chunks = (self.LOG[i : i + 4096] for i in range(0, len(self.LOG), 4096))
        return FakeStream(chunks) if follow else chunks


def test_a_readopted_container_rewrites_its_capped_log_from_its_start(tmp_path: Path) -> None:
    cap = 64 * 1024
    engine = FloodEngine(slots=1)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(store, engine, state_dir=tmp_path / "state", log_cap=cap)
    job = submit(store, sched, write_bundle(tmp_path / "a", [step("r", "flood")], frames="1"))
    (task,) = store.tasks(job.id)
    path = sched.log_path(task.id)
    path.write_bytes(b"--- attempt 0: an earlier attempt\n")
    offset = path.stat().st_size
    store.start_task(task.id, "hpcdock-flood-t1-a1", [], offset)
    with tasklog.AttemptLog(path, cap) as out:  # the service that died had already cut this attempt
        out.write(FloodEngine.LOG[:200_000])
    engine.containers["hpcdock-flood-t1-a1"] = {"request": None, "status": "running", "code": None}
    engine.wait = lambda cid, timeout=None: 0  # type: ignore[method-assign]
    run_until_done(store, sched, [job.id])

    assert store.read_job(job.id).state == "succeeded"
    data = path.read_bytes()
    assert data.startswith(b"--- attempt 0: an earlier attempt\n--- attempt 1 (re-adopted")
    assert len(data) - offset <= cap + 100 and data.endswith(b"line 00029999\nthe end\n")
    header = data.index(b"\n", offset) + 1
    whole, position = b"", 0
    while True:  # as a reader from the start: the old cut is gone, the new one counted from this run
        piece, position, size = tasklog.read(path, position, 10_000)
        if not piece:
            break
        whole += piece
    assert whole.count(b"bytes of this attempt's output dropped here") == 1
    assert whole.endswith(b"the end\n") and position == size == header + len(FloodEngine.LOG)
