"""Decides which task runs next, starts it, and puts a restarted service back on its feet.

The scheduler knows priorities, step dependencies and counted amounts (licences, the
machine's vCPUs and memory: :mod:`.resources`); the engine's slots and GPU placement it asks
of the engine (:class:`~.engines.base.Engine`), never knowing which engine it drives.
A step held back by an amount or by GPUs says so (``waiting_for``), and the steps after it
keep their turn: a task that needs no licence never waits behind one that does. Dispatch is one thread woken by anything that frees or adds work; each
running task has a :class:`~.runner.TaskRunner` of its own, so the service's threads are
bounded by its slots. A runner whose thread the system refuses (the user's process count
spent, say by a runaway task) keeps its slot and is started again on the next rounds: its
task is neither failed nor left unwatched. While the engine is unreachable nothing new
starts; running tasks wait for it (see :class:`~.engines.discovery.EngineWatch`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from hpcdock.protocol import TaskState

from . import taskfiles, tasklog
from .config import DEFAULT_LICENCE_RETRY, LicenceRetry
from .engines.base import (
    LABEL_JOB,
    LABEL_STORE,
    NO_LIMITS,
    ContainerLimits,
    ContainerRequest,
    Engine,
    GpuGrant,
    Runs,
    RunStatus,
)
from .engines.discovery import EngineWatch
from .model import Job, StepRun, Task
from .resources import GPU_WAIT, Pool, waiting_label
from .runner import TaskRunner, container_name, thread_refused
from .sessions import FILES_DIRECTORY, WORKING_DIRECTORY, Session, SessionPlan, SessionPool
from .store import Store, StoreBusy

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        state_dir: Path,
        watch: Optional[EngineWatch] = None,
        limits: ContainerLimits = NO_LIMITS,
        log_cap: int = 64 * tasklog.MIB,
        pool: Optional[Pool] = None,
        licence: LicenceRetry = DEFAULT_LICENCE_RETRY,
    ) -> None:
        self.store = store
        self.engine = engine
        self.watch = watch or EngineWatch(engine)
        self.limits = limits  # a task's limits where its step does not set its own
        self.log_cap = log_cap
        self.pool = pool or Pool({})
        self.licence = licence
        self._waiting: dict[tuple[int, int], Optional[str]] = {}  # what dispatch last recorded
        self.log_dir = state_dir / "logs"
        self.thumbs_dir = state_dir / "thumbnails"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        # Steps with environments run in sessions where the engine can (else cold, see .sessions).
        self.sessions: Optional[SessionPool] = None
        if getattr(engine, "runs_sessions", False):
            self.sessions = SessionPool(engine, state_dir / "sessions")
            self.sessions.on_ended = self._session_ended  # type: ignore[method-assign]
        self._session_of: dict[int, Session] = {}  # running task -> the session it runs in
        self._steps: dict[tuple[int, int], StepRun] = {}  # asked once a dispatch round (they never change)
        self._running: dict[int, TaskRunner] = {}
        self._unstarted: list[TaskRunner] = []  # runners whose thread the system refused
        self._lock = threading.Lock()
        self._launch_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._session_count = 0

    def log_path(self, task_id: int) -> Path:
        return self.log_dir / f"task-{task_id}.log"

    def thumbnail_path(self, job_id: int, step: str, frame: int) -> Path:
        """Where a frame's thumbnail is cached (step names may hold any character: quoted)."""
        return self.thumbs_dir / str(job_id) / f"{quote(step, safe='')}.{frame}.png"

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self.watch.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop dispatching. Running containers keep running; the next start re-adopts them.

        Idle sessions end here (their environments exit); a session running a task runs on, and
        the next start re-adopts it with its task."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.sessions is not None and self.watch.up:
            self.sessions.end_idle(self.sessions.idle_names(), wait=True)
        self.watch.stop()

    def wake(self) -> None:
        self._wake.set()

    @property
    def slots(self) -> int:
        """How many tasks may run at once: the engine's to say, asked at every dispatch."""
        return max(1, self.engine.slots)

    def running_count(self) -> int:
        """Slots in use: each cold task's, and each session's (busy or not, until it has ended)."""
        with self._lock:
            cold = len(self._running) - len(self._session_of)
        return cold + (self.sessions.count() if self.sessions is not None else 0)

    def step_run(self, job_id: int, step_idx: int) -> StepRun:
        key = (job_id, step_idx)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = self.store.step_run(job_id, step_idx)
        return step

    def _in_session(self, step: StepRun) -> bool:
        """Whether the step's tasks run in sessions: it has environments and the engine runs them
        (a step needing GPUs holds them for the whole session; see :mod:`.sessions`)."""
        return bool(step.environments) and self.sessions is not None

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                self._start_unstarted()
                self.dispatch()
            except StoreBusy as exc:
                log.warning("dispatch waits: %s", exc.message)
            except Exception:
                log.exception("dispatch failed; retrying")
            with self._lock:
                waiting = bool(self._unstarted)
            self._wake.wait(timeout=0.5 if waiting else 2.0)

    # -- dispatch -----------------------------------------------------------------------
    def dispatch(self) -> int:
        """Start as many ready tasks as free slots, GPUs and amounts allow; return how many started."""
        started = 0
        if not self.watch.up:
            return started  # a task started now would only wait for the engine, holding its slot
        waiting: dict[tuple[int, int], Optional[str]] = {}
        self._steps = {}
        # Sessions idle as this round begins: those it gives no task end (no ready task of their
        # step). One whose task ends during the round is left to the next round.
        idle = self.sessions.idle_names() if self.sessions is not None else set()
        given: set[str] = set()
        for step in self.store.ready_steps():
            key = (step.job_id, step.step_idx)
            run = self.step_run(step.job_id, step.step_idx)
            full = self.running_count() >= self.slots and self._idle_session(run) is None
            if full or self._stopped.is_set():
                short = self.pool.short(step.amounts)  # no slot now; say whether an amount holds it back too
                waiting[key] = waiting_label(short) if short else None
                continue
            waiting[key] = None
            while not self._stopped.is_set():
                session = self._idle_session(run)
                if session is None and self.running_count() >= self.slots:
                    break
                task_id = self.store.next_pending(step.job_id, step.step_idx)
                if task_id is None:
                    break
                new_session = session is None and self._in_session(run)
                # What a cold task holds under its id, a new session holds under its own key for
                # its whole life (its container keeps them between tasks: a render server's
                # licence, its memory, its GPUs); a task given an idle session takes nothing more.
                holder = task_id
                if new_session and self.sessions is not None:
                    holder = self.sessions.new_key()
                grant: Optional[GpuGrant] = None
                if session is None:
                    short = self.pool.acquire(holder, step.amounts)
                    if short is not None:
                        waiting[key] = waiting_label(short)
                        break  # this step waits for the amount; lower-priority steps may still run
                    if step.gpus:
                        grant = self.engine.gpus.acquire(holder, step.gpus)
                        if grant is None:
                            self.pool.release(holder)
                            waiting[key] = GPU_WAIT
                            break  # this step waits for GPUs; lower-priority CPU steps may still run
                if new_session:
                    session = self._new_session(run, grant, holder)
                if session is not None:
                    session.task = task_id
                    given.add(session.name)
                    grant = session.gpus  # the task runs on them: the store records which
                self._launch(task_id, grant, session)
                started += 1
        self._record_waiting(waiting)
        if self.sessions is not None:
            self.sessions.end_idle(idle - given)
        return started

    def _idle_session(self, step: StepRun) -> Optional[Session]:
        if not self._in_session(step):
            return None
        assert self.sessions is not None
        return self.sessions.idle(step.job_id, step.idx)

    def _new_session(self, step: StepRun, grant: Optional[GpuGrant], key: int) -> Session:
        assert self.sessions is not None
        self._session_count += 1
        name = f"hpcdock-{self.store.store_id}-j{step.job_id}-s{step.idx}-{self._session_count}-{os.getpid()}"
        return self.sessions.new(
            name, step.job_id, step.idx, lambda: self._session_plan(step, name), grant, key
        )

    def _session_ended(self, session: Session) -> None:
        """A session is gone: its slot, its amounts and its GPUs are free; a failing onExit is
        told in its last task's log, unless that task runs again by now (its new attempt's log is
        its runner's alone; the service log has it). Launching takes the same lock, so no attempt
        starts meanwhile."""
        if session.exit_failures and session.last_task is not None:
            with self._launch_lock:
                with self._lock:
                    busy = session.last_task in self._running
                for failure in [] if busy else session.exit_failures:
                    tasklog.append_line(
                        self.log_path(session.last_task), f"--- session {session.name} ended: {failure}"
                    )
        if session.key is not None:
            self._release(session.key)
        self.wake()

    def _session_plan(self, step: StepRun, name: str) -> SessionPlan:
        """The session's container (the job's image, mounts, env and the step's limits) and its
        environments with what their format strings resolve against."""
        spec = self.store.job_container(step.job_id)
        params = self.store.job_params(step.job_id)
        request = ContainerRequest(
            name=name,
            image=spec.image,
            command=[],
            env=dict(spec.env),
            workdir=spec.workdir,
            mounts=spec.mounts,
            network=spec.network,
            labels={LABEL_STORE: self.store.store_id, LABEL_JOB: str(step.job_id)},
            limits=self.limits_for(step),
            placement=step.placement,
            reserve=step.reserve,
        )

        environments = [
            taskfiles.resolve_environment(env, params, WORKING_DIRECTORY, FILES_DIRECTORY)
            for env in step.environments
        ]
        return SessionPlan(request, environments, dict(spec.env))

    def _record_waiting(self, waiting: dict[tuple[int, int], Optional[str]]) -> None:
        """Store what changed in what steps wait for (a step no longer ready waits for nothing)."""
        changes = {
            key: waiting.get(key)
            for key in set(waiting) | set(self._waiting)
            if waiting.get(key) != self._waiting.get(key)
        }
        if changes:
            self.store.set_waiting(changes)
        self._waiting = {key: what for key, what in waiting.items() if what is not None}

    def _launch(self, task_id: int, grant: Optional[GpuGrant], session: Optional[Session] = None) -> None:
        started = False
        try:
            pending = self.store.read_task(task_id)
            name = container_name(self.store.store_id, task_id, pending.attempt + 1, pending.licence_retries)
            log_path = self.log_path(task_id)
            offset = log_path.stat().st_size if log_path.exists() else 0
            # Marking the task running and registering its runner happen under the lock cancel takes,
            # so a cancel sees either a pending task or a runner it can stop, never a task in between.
            with self._launch_lock:
                # The store keeps the GPU indices the engine placed (none where the engine's own
                # scheduler places them at run time), for the restart that restores them.
                task = self.store.start_task(task_id, name, list(grant.indices) if grant else [], offset)
                if task.state != TaskState.RUNNING:  # canceled after it was chosen
                    return
                self._run(task, grant, adopt=None, log_offset=offset, session=session)
                started = True
        finally:
            if not started:  # canceled, or the store was locked (StoreBusy): dispatch tries again
                self._release(task_id)
                if session is not None:
                    session.task = None

    def limits_for(self, step: StepRun) -> ContainerLimits:
        """The step's own memory and vCPU amounts where it gives them, else the service's defaults."""
        memory = step.memory_mib
        return replace(
            self.limits,
            memory=memory * tasklog.MIB if memory else self.limits.memory,
            vcpus=step.vcpus or self.limits.vcpus,
        )

    def _run(
        self,
        task: Task,
        grant: Optional[GpuGrant],
        adopt: Optional[RunStatus],
        log_offset: int,
        session: Optional[Session] = None,
    ) -> None:
        """Follow ``task`` in a runner of its own (inside ``session`` when it runs in one); its
        attempt's log starts at ``log_offset``."""
        step = self.step_run(task.job_id, task.step_idx)
        runs: Runs = session if session is not None else self.engine
        runner = TaskRunner(
            store=self.store,
            engine=runs,
            task=task,
            step=step,
            log_path=self.log_path(task.id),
            log_offset=log_offset,
            thumbnail_path=self.thumbnail_path,
            on_exit=self._on_exit,
            watch=self.watch,
            gpus=grant,
            adopt=adopt,
            limits=self.limits_for(step),
            log_cap=self.log_cap,
            licence=self.licence,
            session=session,
        )
        with self._lock:
            self._running[task.id] = runner
            if session is not None:
                self._session_of[task.id] = session
        self._start_runner(runner)

    def _start_runner(self, runner: TaskRunner) -> None:
        try:
            runner.start()
        except RuntimeError as exc:
            if not thread_refused(exc):
                raise
            log.warning(
                "task %s: %s; its runner starts when the system allows a thread again", runner.task.id, exc
            )
            with self._lock:
                self._unstarted.append(runner)

    def _start_unstarted(self) -> None:
        with self._lock:
            waiting, self._unstarted = self._unstarted, []
        for runner in waiting:
            self._start_runner(runner)

    def _on_exit(self, task_id: int) -> None:
        with self._lock:
            self._running.pop(task_id, None)
            session = self._session_of.pop(task_id, None)
        if session is not None:
            session.last_task = task_id
            session.task = None  # free for its step's next task, or to end (see dispatch)
        self._release(task_id)
        self._wake.set()

    def _release(self, holder: int) -> None:
        """Give back what a task (by its id) or a session (by its key) holds: its counted amounts
        and its GPUs (holding none is fine)."""
        self.pool.release(holder)
        self.engine.gpus.release(holder)

    # -- cancel -------------------------------------------------------------------------
    def cancel(self, job_id: int, wait: float = 30.0) -> Job:
        """Cancel the job: pending tasks never start, running containers are stopped and removed."""
        runners = []
        with self._launch_lock:
            for task in self.store.cancel_job(job_id):
                with self._lock:
                    runner = self._running.get(task.id)
                if runner is not None:
                    runner.stop()
                    runners.append(runner)
                elif task.container:
                    status = self.engine.find(task.container)
                    if status is not None:
                        self.engine.stop(status.handle)
        if self.watch.up:  # while the engine is away, runners stop their containers once it is back
            for runner in runners:
                runner.join(timeout=wait)
        return self.store.read_job(job_id)

    def _truncate_log(self, task_id: int, offset: int) -> None:
        tasklog.truncate(self.log_path(task_id), offset)

    # -- restart ------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-adopt runs that outlived the previous service process.

        A task the store says is running is looked up by its run's name: a queued or running
        run is followed again, an exited one has its exit code and log collected, and one
        the engine does not have (never created, or never started) is put back to pending
        without spending an attempt. Runs of this store that no task claims are leftovers
        of a crash after the result was recorded, and are removed.
        """
        claimed = set()
        self.store.clear_waiting()
        if self.sessions is not None:
            self.sessions.recover()
            claimed |= self.sessions.handles()
            for session in self.sessions.listed():  # each holds what it held until it ends
                if session.key is not None:
                    self.pool.restore(session.key, self.step_run(session.job_id, session.step_idx).amounts)
                    if session.gpus is not None:
                        self.engine.gpus.restore(session.key, session.gpus)
        for task in self.store.tasks_in_state(TaskState.RUNNING):
            found = self.sessions.find_task(task.container) if self.sessions and task.container else None
            if found is not None:
                session, in_session = found
                session.task = task.id
                log.info(
                    "task %s: re-adopting %s in session %s (%s)",
                    task.id,
                    in_session.name,
                    session.name,
                    in_session.summary(),
                )
                self._run(
                    task, None, adopt=in_session, log_offset=self.store.log_offset(task.id), session=session
                )
                continue
            status = self.engine.find(task.container) if task.container else None
            if status is None:
                self._truncate_log(task.id, self.store.log_offset(task.id))
                self.store.unstart_task(task.id)
                log.info("task %s: its run never started; back to pending", task.id)
                continue
            claimed.add(status.handle)
            step = self.store.step_run(task.job_id, task.step_idx)
            grant = GpuGrant(step.gpus, task.gpus) if step.gpus else None
            if grant is not None:
                self.engine.gpus.restore(task.id, grant)
            self.pool.restore(task.id, step.amounts)
            log.info("task %s: re-adopting %s (%s)", task.id, status.name, status.summary())
            self._run(task, grant, adopt=status, log_offset=self.store.log_offset(task.id))
        for status in self.engine.leftovers(self.store.store_id):
            if status.handle not in claimed:
                log.info("removing leftover run %s", status.name)
                self.engine.remove(status.handle)
