"""One attempt of one task, from container creation (or re-adoption) to its recorded result.

A runner owns a thread while its container lives: it streams the container's output
into the task log (chunk by chunk, under the per-attempt cap of :mod:`.tasklog`), turns
progress lines and frame markers into store updates as they arrive, and when the
container exits settles every frame of the chunk (an exit code of 0 with a missing output
still fails that frame, naming the path), then records the result and only then removes
the container, so a crash at any point leaves enough behind for a restarted service to
finish the job without running anything twice.

A log line saying no licence was available (:data:`.logparse.LICENCE_FAILURES`) ends the
attempt at once: the container is stopped, and the store puts the task back to wait out a
back-off without spending the attempt (see :class:`.config.LicenceRetry`).

Losing the engine is not a task failure: the runner waits for the engine to answer again
and picks the container up where it is (re-adopts it, or creates it if it never was),
within the same attempt. A result the store cannot take now is tried again, never dropped.

A runner uses three threads (reading, waiting, watching outputs), so the service's
threads grow with its slots, not with what tasks do. When the system refuses a new
thread (a runaway task can spend the process count the service shares with the user's
containers), the runner waits for one rather than giving up on a container that runs on.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from hpcdock.protocol import Backoff, FrameState

from . import framecheck, taskfiles, tasklog, thumbnails
from .bundle_loader import ContainerSpec
from .config import LicenceRetry
from .engines.base import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_STORE,
    LABEL_TASK,
    NO_LIMITS,
    ContainerLimits,
    ContainerRequest,
    EngineError,
    EngineUnreachable,
    GpuGrant,
    Runs,
    RunStatus,
)
from .engines.discovery import EngineWatch
from .logparse import (
    FrameDone,
    FrameFailed,
    FrameStarted,
    LicenceUnavailable,
    LogParser,
    OpenJDFail,
    OpenJDMalformed,
    OpenJDStatus,
    Progress,
    task_progress,
)
from .model import StepRun, Task
from .sessions import COLD_WORKING_DIRECTORY, FILES_DIRECTORY, WORKING_DIRECTORY, Session, cold_command
from .store import FrameResult, Store, StoreBusy

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25  # seconds between progress events of one task
WATCH_INTERVAL = 0.05  # seconds between looks at a running task's outputs
# How long a log stream may stay idle after its container exited before it is closed (and its
# end checked against the engine's): Podman ends follow streams only on its next poll of the log
# file, up to a quarter of a second later, which on short tasks costs as much as the container.
LOG_DRAIN_SECONDS = 0.1
# How much of the log's end is compared with what the follow stream delivered.
TAIL_CHECK_LINES = 20
TAIL_CHECK_BYTES = 64 * 1024
THREAD_RETRY_MAX = 2.0  # seconds between tries to start a thread the system refused
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")


def _is_image(output: str) -> bool:
    """Whether a frame's output is an image by its name, or else by its first bytes."""
    if output.lower().endswith(_IMAGE_SUFFIXES):
        return True
    try:
        return thumbnails.sniff_format(output) is not None
    except OSError:
        return False


def container_name(store_id: str, task_id: int, attempt: int, licence_retries: int = 0) -> str:
    """A licence retry runs the same attempt again: its container needs a name of its own."""
    return f"hpcdock-{store_id}-t{task_id}-a{attempt}" + (f"-l{licence_retries}" if licence_retries else "")


def thread_refused(exc: RuntimeError) -> bool:
    """Whether ``Thread.start`` failed for want of a thread (not for a bug, such as starting twice)."""
    return "new thread" in str(exc)


def start_thread(thread: threading.Thread) -> None:
    """Start ``thread``, waiting as long as the system refuses new threads."""
    backoff = Backoff(0.05, THREAD_RETRY_MAX)
    while True:
        try:
            thread.start()
            return
        except RuntimeError as exc:
            if not thread_refused(exc):
                raise
            delay = backoff.next()
            log.warning("%s: %s; trying again in %.2fs", thread.name, exc, delay)
        time.sleep(delay)


class Tail:
    """The last ``size`` bytes of a stream, kept without copying each chunk into a buffer."""

    def __init__(self, size: int = TAIL_CHECK_BYTES) -> None:
        self.size = size
        self._chunks: deque[bytes] = deque()
        self._length = 0

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._length += len(chunk)
        while self._length - len(self._chunks[0]) >= self.size:
            self._length -= len(self._chunks.popleft())

    def value(self) -> bytes:
        return b"".join(self._chunks)[-self.size :]


def mib(n: int) -> str:
    return f"{n / tasklog.MIB:g} MiB"


class TaskRunner:
    def __init__(
        self,
        *,
        store: Store,
        engine: Runs,
        task: Task,
        step: StepRun,
        log_path: Path,
        log_offset: int,
        thumbnail_path: Callable[[int, str, int], Path],
        on_exit: Callable[[int], None],
        watch: EngineWatch,
        gpus: Optional[GpuGrant] = None,
        adopt: Optional[RunStatus] = None,
        limits: ContainerLimits = NO_LIMITS,
        log_cap: int = 64 * tasklog.MIB,
        licence: Optional[LicenceRetry] = None,
        session: Optional[Session] = None,
    ) -> None:
        assert task.container is not None, "start_task names the task's run"
        self.store = store
        self.engine = engine
        self.task = task
        self.run_name = task.container  # what the engine knows the run by (see container_name)
        self.step = step
        self.log_path = log_path
        self.log_offset = log_offset  # where this attempt's part of the task log starts
        self.thumbnail_path = thumbnail_path
        self.on_exit = on_exit
        self.watch = watch
        self.gpus = gpus  # attached and verified by the engine's create
        self.adopt = adopt
        self.adopted_after = "a service restart"
        self.limits = limits
        self.log_cap = log_cap
        self.container_id: Optional[str] = adopt.handle if adopt else None
        # Whether this runner's own start of the run went through: after an outage, a run the
        # engine no longer has was either never started (create it again) or lost (the attempt ends).
        self._started = adopt is not None
        self.timed_out = False
        self.licence = licence  # None: licence failures are ordinary failures
        self.session = session  # the session the task runs in (then also its ``engine``), if any
        self.licence_failure: Optional[str] = None  # the log line saying no licence was available
        self.fail_message: Optional[str] = None  # the last openjd_fail: the reason shown if the task fails
        self.malformed: Optional[str] = None  # an OpenJD message the reference runtime fails the action for
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        self._frames = {f.frame: f for f in store.frames_of_task(task.id)}
        self._done: set[int] = {n for n, f in self._frames.items() if f.state == FrameState.DONE}
        # Frames already done when this runner began: a re-adopted container's log is read again
        # from the start, and a retry renders the whole chunk again; their markers change nothing.
        self._done_before = frozenset(self._done)
        self._settled: set[int] = set(self._done)
        self._failed: dict[int, str] = {}
        self._frame_lock = threading.Lock()
        self._checks = store.frame_check_settings(task.job_id)
        self._current_percent = 0.0
        self._last_progress = 0.0
        self._progress_unsent = False  # a report held back by PROGRESS_INTERVAL, sent when the log ends
        self._log_bytes = 0  # read from the follow stream so far
        self._log_tail = Tail()  # the end of what the follow stream delivered
        self.thread = threading.Thread(target=self._run, name=f"task-{task.id}", daemon=True)

    @property
    def _handle(self) -> str:
        """The run's handle, for what only a created (or re-adopted) run can be asked."""
        assert self.container_id is not None, "no run created or re-adopted yet"
        return self.container_id

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the runner's thread; RuntimeError when the system refuses one (try again later)."""
        self.thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        if self.thread.ident is not None:  # a runner still waiting for its thread has nothing to join
            self.thread.join(timeout)

    def _run(self) -> None:
        exit_code, error = self._attempt()
        try:
            ok = exit_code == 0 and error is None
            results = self._settle_frames(ok, exit_code, error)
            failures = {**self._failed, **{f: e for f, (st, e, _) in results.items() if st == "failed"}}
            if ok and failures:
                frame, why = min(failures.items())
                more = f" (and {len(failures) - 1} more frame(s))" if len(failures) > 1 else ""
                error = f"frame {frame}: {why}{more}"
            self._record(exit_code, error, results)
            recorded = True
        except Exception:
            log.exception("task %s: could not record the result", self.task.id)
            recorded = False
        finally:
            self.on_exit(self.task.id)  # the slot is free: the next task starts while this one is removed
        if recorded and self.container_id is not None:
            self._remove()

    def _attempt(self) -> tuple[Optional[int], Optional[str]]:
        """Run the attempt to its exit code, through any number of engine outages."""
        resuming = False
        while True:
            try:
                if resuming:
                    gone = self._resume()
                    if gone:
                        return None, gone
                    resuming = False
                if self.container_id is None:
                    self.container_id = self._create()
                return self._follow()
            except EngineUnreachable as exc:
                self._await_engine(exc)
                resuming = True
            except EngineError as exc:
                return None, self._engine_failure(exc)
            except Exception as exc:  # a bug here must not leave the task 'running' forever
                log.exception("task %s: runner failed", self.task.id)
                return None, f"internal error while running the task: {exc}"

    def _engine_failure(self, exc: EngineError) -> str:
        """Why the attempt failed before its command ran. A session whose onEnter found no
        licence (a render server starting) fails its task as the task's own licence line would:
        back to pending after the back-off, no attempt spent."""
        why = str(exc)
        if self.session is not None and self.licence is not None:
            parser = LogParser()
            for update in [*parser.feed(why), *parser.close()]:
                if isinstance(update, LicenceUnavailable):
                    self.licence_failure = update.line
                    return f"licence unavailable: {update.line}"
        return why

    def _await_engine(self, exc: EngineUnreachable) -> None:
        log.warning("task %s: %s; waiting for the engine", self.task.id, exc)
        self.watch.lost(exc)
        self.watch.wait_up()

    def _resume(self) -> Optional[str]:
        """After an outage: follow the run again from where the engine has it.

        One that started is re-adopted (its log read again from the start of the attempt, the
        frames settled so far left as they are); one never created, or created but never
        started (the engine's ``find`` removes it), is created again. Returns why the attempt
        is over when a run this runner started is gone.
        """
        status = self.engine.find(self.run_name)
        if status is not None:
            log.info(
                "task %s: re-adopting %s (%s) after the engine came back",
                self.task.id,
                status.name,
                status.summary(),
            )
            self.container_id = status.handle
            self.adopt = status
            self.adopted_after = "the engine came back"
            self._done_before = frozenset(self._settled)
            self._log_bytes, self._log_tail = 0, Tail()  # its log is read again from the start
            if self._stop_requested:  # canceled or timed out while the engine was away
                self.engine.stop(status.handle)
            return None
        if self._started:
            return "the container disappeared while the engine was unreachable"
        self.container_id = None
        tasklog.truncate(self.log_path, self.log_offset)  # _create writes the attempt's header again
        return None

    def _record(
        self, exit_code: Optional[int], error: Optional[str], results: dict[int, FrameResult]
    ) -> None:
        """Record the result until it is recorded: the store waits out locks itself; a full disk
        or an I/O error is tried again, since dropping the result would leave the task running."""
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                self.store.finish_task(
                    self.task.id,
                    exit_code,
                    error,
                    results,
                    licence=self.licence if self.licence_failure else None,
                )
                return
            except (sqlite3.OperationalError, StoreBusy) as exc:
                delay = backoff.next()
                log.warning(
                    "task %s: cannot record the result yet (%s); trying again in %.0fs",
                    self.task.id,
                    exc,
                    delay,
                )
                time.sleep(delay)

    def _remove(self) -> None:
        while True:
            try:
                self.engine.remove(self._handle)
                return
            except EngineUnreachable as exc:
                self._await_engine(exc)
            except EngineError as exc:  # a restarted service removes leftovers of its store
                log.warning("task %s: %s", self.task.id, exc)
                return

    def _create(self) -> str:
        task, step = self.task, self.step
        spec: ContainerSpec = self.store.job_container(task.job_id)
        params = self.store.job_params(task.job_id)
        cold_environments = bool(step.environments) and self.session is None
        # {{Session.WorkingDirectory}}: the session's scratch directory when the task runs in one,
        # the one its container makes when it enters the environments itself, else its own
        if self.session is not None:
            workdir, files_dir = WORKING_DIRECTORY, FILES_DIRECTORY
        else:
            workdir = COLD_WORKING_DIRECTORY if cold_environments else spec.workdir
            files_dir = taskfiles.FILES_DIR
        command, files = taskfiles.resolve(step.command, step.files, params, task.params, workdir, files_dir)
        if cold_environments:  # environments, but no session: the container enters them itself
            environments = [
                taskfiles.resolve_environment(env, params, workdir, taskfiles.cold_env_files_dir(i))
                for i, env in enumerate(step.environments)
            ]
            command = cold_command(environments, command, spec.workdir)
            files += [file for env in environments for file in env.files]
        request = ContainerRequest(
            name=self.run_name,
            image=spec.image,
            command=command,
            env={
                **spec.env,
                "HPCDOCK_JOB": str(task.job_id),
                "HPCDOCK_TASK": str(task.id),
                "HPCDOCK_ATTEMPT": str(task.attempt),
            },
            workdir=spec.workdir,
            mounts=spec.mounts,
            network=spec.network,
            labels={
                LABEL_STORE: self.store.store_id,
                LABEL_JOB: str(task.job_id),
                LABEL_TASK: str(task.id),
                LABEL_ATTEMPT: str(task.attempt),
            },
            gpus=self.gpus,
            limits=self.limits,
            files=files,
            placement=step.placement,
            reserve=step.reserve,
        )
        with self._stop_lock:
            if self._stop_requested:  # canceled while this runner waited for its thread
                raise EngineError("canceled before the container was created")
        tasklog.append_line(self.log_path, f"--- attempt {task.attempt}: {' '.join(command)}")
        try:
            container_id = self.engine.create(request)  # GPUs attached and verified, or EngineError
        finally:
            self._log_environments()  # whether they were entered or one failed
        with self._stop_lock:
            self.container_id = container_id
            if self._stop_requested:  # canceled while the container was being created
                raise EngineError("canceled before the container started")
            self.engine.start(container_id)
            self._started = True
        return container_id

    def _log_environments(self) -> None:
        """Put what the session's environments printed entering it at the head of the log of the
        task that opened it (the service writes it: no openjd_* line of theirs is the task's)."""
        text = self.session.environment_log_of(self.run_name) if self.session is not None else None
        if text:
            tasklog.append_line(self.log_path, text)

    def _follow(self) -> tuple[Optional[int], Optional[str]]:
        """Stream the log into the task log until the container exits; return its exit code.

        Three threads cooperate: this one reads the log, a waiter learns the exit code (and
        stops the container at its timeout), and a watcher settles frames as their outputs
        appear on disk, so a frame's event does not wait for the engine's log path (Podman's
        lags by a few hundred milliseconds).
        """
        parser = LogParser()
        if self.adopt:  # the whole container log is read again: drop what an earlier run wrote
            tasklog.truncate(self.log_path, self.log_offset)
            tasklog.append_line(
                self.log_path, f"--- attempt {self.task.attempt} (re-adopted after {self.adopted_after})"
            )
            self._log_environments()
        stream = self.engine.logs(self._handle, follow=True)
        exited = threading.Event()
        drained = threading.Event()
        outcome: dict[str, Any] = {}
        waiter = threading.Thread(
            target=self._wait_exit,
            args=(stream, exited, drained, outcome),
            name=f"task-{self.task.id}-wait",
            daemon=True,
        )
        watcher = threading.Thread(
            target=self._watch_outputs, args=(exited,), name=f"task-{self.task.id}-watch", daemon=True
        )
        start_thread(waiter)
        try:
            start_thread(watcher)
            with tasklog.AttemptLog(self.log_path, self.log_cap) as out:
                for chunk in stream:
                    self._log_bytes += len(chunk)
                    self._log_tail.add(chunk)
                    self._take_log(out, parser, chunk)
                drained.set()
                waiter.join()
                if "code" in outcome:
                    self._take_missing(out, parser)
                for update in parser.close():
                    self._apply(update)
                if self._progress_unsent:  # the last report stands, as the task left it
                    self._report_progress(force=True)
        finally:
            drained.set()
            exited.set()
            if watcher.ident is not None:
                watcher.join()
        if "error" in outcome:
            raise outcome["error"]
        exit_code = outcome["code"]
        if self.licence_failure:
            return exit_code, f"licence unavailable: {self.licence_failure}"
        if self.malformed:
            reason = f"stopped: {self.malformed}"
        elif self.timed_out:
            reason = f"timed out after {self.step.timeout:g}s (onRun.timeout) and was stopped"
        elif exit_code == 0:
            return exit_code, None
        else:
            reason = self._exit_reason(exit_code)
        if self.fail_message:  # the task's own words first (openjd_fail), then how it ended
            reason = f"{self.fail_message} ({reason})"
        return exit_code, reason + self._limit_hints(parser)

    def _exit_reason(self, exit_code: int) -> str:
        try:
            oom = self.engine.status(self._handle).oom_killed
        except EngineError:  # an engine that cannot tell leaves the plain exit code
            oom = False
        if oom:
            limit = f" (limit {mib(self.limits.memory)})" if self.limits.memory else ""
            return f"killed: out of memory{limit}"
        return f"exited with code {exit_code}"

    def _limit_hints(self, parser: LogParser) -> str:
        """What the log says about a limit the task ran into (all a ulimit leaves behind)."""
        hints = []
        if parser.out_of_memory:
            limit = f" (memory limit {mib(self.limits.memory)})" if self.limits.memory else ""
            hints.append(f"it ran out of memory{limit}: {parser.out_of_memory!r}")
        if parser.fork_failed:
            limit = f" (limit {self.limits.pids} processes and threads)" if self.limits.pids else ""
            hints.append(f"it could not start more processes{limit}: {parser.fork_failed!r}")
        return "".join(f"; {h}" for h in hints)

    def _take_log(self, out: tasklog.AttemptLog, parser: LogParser, chunk: bytes) -> None:
        out.write(chunk)
        for update in parser.feed(chunk):
            self._apply(update)

    def _take_missing(self, out: tasklog.AttemptLog, parser: LogParser) -> None:
        """Take what the follow stream did not deliver, if anything.

        Podman ends a follow stream when the container exits whether it delivered everything
        or not (a reader slower than a task that floods its output gets only part of it), and
        the service ends one that stays open too long: compare the log's last lines with what
        arrived, and when they differ read the log again past what arrived.
        """
        theirs = Tail()
        for chunk in self.engine.logs(self._handle, follow=False, tail=TAIL_CHECK_LINES):
            theirs.add(chunk)
        if not self._log_tail.value().endswith(theirs.value()):
            log.info(
                "task %s: the log stream ended early; reading the log again past its first %d bytes",
                self.task.id,
                self._log_bytes,
            )
            self._take_rest(out, parser)

    def _take_rest(self, out: tasklog.AttemptLog, parser: LogParser) -> None:
        """Read the log again from the start, streamed, and take what the follow stream had not delivered."""
        skip = self._log_bytes
        for chunk in self.engine.logs(self._handle, follow=False):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            self._take_log(out, parser, chunk[skip:] if skip else chunk)
            skip = 0

    def _wait_exit(
        self, stream: Any, exited: threading.Event, drained: threading.Event, outcome: dict[str, Any]
    ) -> None:
        try:
            outcome["code"] = self._wait()
        except Exception as exc:  # reported by the reading thread
            outcome["error"] = exc
        exited.set()
        # Podman ends a follow stream late, and now and then never; the exit code is the truth,
        # so once the stream goes idle, end it and let the reader collect the rest. A stream still
        # delivering (a task that printed a lot just before it exited) is left to deliver.
        seen = self._log_bytes
        while not drained.wait(LOG_DRAIN_SECONDS):
            if self._log_bytes == seen and hasattr(stream, "close"):
                stream.close()
                return
            seen = self._log_bytes

    def _wait(self) -> int:
        """The container's exit code; a container still running at the step's timeout is stopped."""
        timeout = self.step.timeout
        if timeout:
            elapsed = time.time() - (self.task.started_at or time.time())
            try:
                return self.engine.wait(self._handle, timeout=max(0.01, float(timeout) - elapsed))
            except TimeoutError:
                self._time_out()
        return self.engine.wait(self._handle)

    def _watch_outputs(self, exited: threading.Event) -> None:
        """Settle image frames as soon as their output files are complete on disk."""
        since = float(self.task.started_at or 0.0)
        while not exited.wait(WATCH_INTERVAL):
            for frame, output in self._watchable():
                try:
                    fresh = os.stat(output).st_mtime >= since - 1.0  # not a leftover of an earlier run
                except OSError:
                    continue
                if fresh and thumbnails.is_output_complete(Path(output)):
                    self._settle(frame, "done", None)

    def _watchable(self) -> list[tuple[int, str]]:
        """The unsettled image frames, with their outputs."""
        with self._frame_lock:
            return [
                (f, info.output)
                for f, info in self._frames.items()
                if f not in self._settled and info.output and info.output.lower().endswith(_IMAGE_SUFFIXES)
            ]

    def stop(self, grace: float = 0) -> None:
        """Stop the container now, or as soon as it exists (cancel can race with creation)."""
        with self._stop_lock:
            self._stop_requested = True
            if self.container_id:
                try:
                    self.engine.stop(self.container_id, grace=grace)
                except EngineUnreachable:
                    pass  # stopped when the engine is back (see _resume)

    def _time_out(self) -> None:
        self.timed_out = True
        self.stop(grace=self.step.cancel_grace)

    # -- log updates --------------------------------------------------------------------
    def _apply(self, update: Any) -> None:
        task_id = self.task.id
        if isinstance(update, (FrameStarted, FrameDone, FrameFailed)) and update.frame in self._done_before:
            self._current_percent = 0.0
            return
        if isinstance(update, Progress):
            self._current_percent = update.percent
            self._report_progress()
        elif isinstance(update, FrameStarted) and update.frame in self._frames:
            self._current_percent = 0.0
            self.store.set_frame(self.task.job_id, self.task.step_idx, update.frame, "running")
        elif isinstance(update, FrameDone) and update.frame in self._frames:
            self._current_percent = 0.0
            if update.frame not in self._settled:
                state, error = self._check_output(update.frame)
                self._settle(update.frame, state, error)
            self._report_progress(force=True)
        elif isinstance(update, FrameFailed) and update.frame in self._frames:
            self._settle(update.frame, "failed", update.reason or "the render script reported a failure")
        elif isinstance(update, LicenceUnavailable) and self.licence is not None:
            self._licence_unavailable(update.line)
        elif isinstance(update, OpenJDStatus):
            self.store.set_status(task_id, update.text)
        elif isinstance(update, OpenJDFail):
            self.fail_message = update.text
        elif isinstance(update, OpenJDMalformed) and update.fails_task and self.malformed is None:
            self.malformed = update.reason  # as openjd-sessions does: the action is canceled as failed
            log.info("task %s: %s; stopping the attempt", task_id, update.reason)
            self._stop_quietly()
        elif isinstance(update, (FrameStarted, FrameDone, FrameFailed)):
            log.warning("task %s reported frame %s, which is not one of its frames", task_id, update.frame)

    def _licence_unavailable(self, line: str) -> None:
        """Stop the attempt now: a renderer without a licence only fails later, or waits for one."""
        self.licence_failure = line
        log.info("task %s: licence unavailable (%r); stopping the attempt", self.task.id, line)
        self._stop_quietly()

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except EngineError as exc:  # it exited already
            log.info("task %s: %s", self.task.id, exc)

    def _report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            self._progress_unsent = True
            return
        self._last_progress, self._progress_unsent = now, False
        frames = self.task.frames
        percent = (
            task_progress(frames, self._done, self._current_percent) if frames else self._current_percent
        )
        self.store.set_progress(self.task.id, percent)

    def _settle(self, frame: int, state: str, error: Optional[str]) -> None:
        """Record a frame's end once, whichever of the log marker and the watcher sees it first.

        A done image frame is checked on its thumbnail's decode; the store may fail it (the
        job's ``fail`` policy), so the frame counts as done or failed only once recorded.
        """
        with self._frame_lock:
            if frame in self._settled:
                return
            self._settled.add(frame)
        check = self._inspect(frame) if state == "done" else None
        state, error = self.store.set_frame(
            self.task.job_id,
            self.task.step_idx,
            frame,
            state,
            error,
            thumbnail=check.thumbnail if check else None,
            check=check,
        )
        with self._frame_lock:
            if state == "done":
                self._done.add(frame)
            else:
                self._failed[frame] = error or "failed"

    # -- frames -------------------------------------------------------------------------
    def _check_output(self, frame: int) -> tuple[str, Optional[str]]:
        output = self._frames[frame].output
        if not output:
            return "done", None
        if not os.path.exists(output):
            return "failed", f"output missing: {output}"
        if _is_image(output):
            return "done", None  # checked with its thumbnail: an unreadable one is flagged there
        if not thumbnails.is_output_complete(Path(output)):
            return "failed", f"output incomplete or unreadable: {output}"
        return "done", None

    def _inspect(self, frame: int) -> Optional[framecheck.FrameCheck]:
        """The frame's thumbnail and checks, from one decode; None when it is not an image."""
        output = self._frames[frame].output
        if not output or not _is_image(output):
            return None  # not an image (a geometry cache, say): nothing to show or check
        dest = self.thumbnail_path(self.task.job_id, self.task.step, frame)
        try:
            return framecheck.inspect(output, dest, self._checks)
        except Exception:  # a full disk under the thumbnails, say: the frame is still recorded
            log.exception("task %s: frame %s: no thumbnail or checks", self.task.id, frame)
            return None

    def _settle_frames(
        self, ok: bool, exit_code: Optional[int], error: Optional[str]
    ) -> dict[int, FrameResult]:
        """Decide the frames the markers and the watcher did not settle; done image frames are
        checked and recorded one by one (the check may fail them), the rest with the task's result."""
        results: dict[int, FrameResult] = {}
        for frame in self._frames:
            if frame in self._settled:
                continue
            if ok:
                state, f_error = self._check_output(frame)
                if state == "done" and _is_image(self._frames[frame].output or ""):
                    self._settle(frame, state, None)
                else:
                    results[frame] = (state, f_error, None)
            else:
                results[frame] = ("failed", error or f"task exited with code {exit_code}", None)
        return results
