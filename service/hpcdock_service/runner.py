"""One attempt of one task, from container creation (or re-adoption) to its recorded result.

A runner owns a thread while its container lives: it streams the container's output
into the task log, turns progress lines and frame markers into store updates as they
arrive, and when the container exits settles every frame of the chunk (an exit code of
0 with a missing output still fails that frame, naming the path), then records the
result and only then removes the container, so a crash at any point leaves enough behind
for a restarted service to finish the job without running anything twice.

Losing the engine is not a task failure: the runner waits for the engine to answer again
and picks the container up where it is (re-adopts it, or creates it if it never was),
within the same attempt. A result the store cannot take now is tried again, never dropped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from openjd.model import SymbolTable
from openjd.model.v2023_09 import ArgString

from . import thumbnails
from .bundle import ContainerSpec
from .engines.base import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_STORE,
    LABEL_TASK,
    ContainerRequest,
    ContainerStatus,
    Engine,
    EngineError,
    EngineUnreachable,
)
from .engines.discovery import EngineWatch
from .gpu.attach import AttachError, verify_attachment
from .logparse import FrameDone, FrameFailed, FrameStarted, LogParser, Progress, task_progress
from .store import FrameResult, Row, Store, StoreBusy

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25  # seconds between progress events of one task
WATCH_INTERVAL = 0.05  # seconds between looks at a running task's outputs
# How long a log stream may stay open after its container exited before it is cut and the rest
# fetched in one call: Podman ends follow streams only on its next poll of the log file, up to
# a quarter of a second later, which on short tasks costs as much as the container itself.
LOG_DRAIN_SECONDS = 0.1
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")


def container_name(store_id: str, task_id: int, attempt: int) -> str:
    return f"hpcdock-{store_id}-t{task_id}-a{attempt}"


def resolve_command(command: list[str], job_params: dict[str, str], task_params: dict[str, str],
                    workdir: str) -> list[str]:
    """Resolve the step's OpenJD format strings for one task, as an OpenJD session would."""
    source: dict[str, Any] = {"Session.WorkingDirectory": workdir, "Session.HasPathMappingRules": "false"}
    for name, value in job_params.items():
        source[f"Param.{name}"] = value
        source[f"RawParam.{name}"] = value
    for name, value in task_params.items():
        source[f"Task.Param.{name}"] = value
        source[f"Task.RawParam.{name}"] = value
    symtab = SymbolTable(source=source)
    return [ArgString(part).resolve(symtab=symtab) for part in command]


class TaskRunner:
    def __init__(self, *, store: Store, engine: Engine, task: Row, step: Row, log_path: Path,
                 thumbnail_path: Callable[[int, str, int], Path], on_exit: Callable[[int], None],
                 watch: EngineWatch, gpu: Optional[Callable[[], Any]] = None,
                 adopt: Optional[ContainerStatus] = None) -> None:
        self.store = store
        self.engine = engine
        self.task = task
        self.step = step
        self.log_path = log_path
        self.thumbnail_path = thumbnail_path
        self.on_exit = on_exit
        self.watch = watch
        self.plan_gpu = gpu  # returns the task's GPU Attachment; raises AttachError when impossible
        self.adopt = adopt
        self.adopted_after = "a service restart"
        self.container_id: Optional[str] = adopt.id if adopt else None
        self.timed_out = False
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        self._frames = {f["frame"]: f for f in store.frames_of_task(task["id"])}
        self._done: set[int] = {n for n, f in self._frames.items() if f["state"] == "done"}
        # Frames already done when this runner began: a re-adopted container's log is read again
        # from the start, and a retry renders the whole chunk again; their markers change nothing.
        self._done_before = frozenset(self._done)
        self._settled: set[int] = set(self._done)
        self._failed: dict[int, str] = {}
        self._frame_lock = threading.Lock()
        self._current_percent = 0.0
        self._last_progress = 0.0
        self.thread = threading.Thread(target=self._run, name=f"task-{task['id']}", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

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
            log.exception("task %s: could not record the result", self.task["id"])
            recorded = False
        finally:
            self.on_exit(self.task["id"])  # the slot is free: the next task starts while this one is removed
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
                return None, str(exc)
            except Exception as exc:  # a bug here must not leave the task 'running' forever
                log.exception("task %s: runner failed", self.task["id"])
                return None, f"internal error while running the task: {exc}"

    def _await_engine(self, exc: EngineUnreachable) -> None:
        log.warning("task %s: %s; waiting for the engine", self.task["id"], exc)
        self.watch.lost(exc)
        self.watch.wait_up()

    def _resume(self) -> Optional[str]:
        """After an outage: follow the container again from where the engine has it.

        One that started is re-adopted (its log read again from the start of the attempt, the
        frames settled so far left as they are); one never created, or created but never
        started, is created again. Returns why the attempt is over when the container is gone.
        """
        status = self.engine.find(self.task["container"])
        if status is not None and status.status != "created":
            log.info("task %s: re-adopting container %s (%s) after the engine came back", self.task["id"],
                     status.name, "running" if status.running else f"exited {status.exit_code}")
            self.container_id = status.id
            self.adopt = status
            self.adopted_after = "the engine came back"
            self._done_before = frozenset(self._settled)
            if self._stop_requested:  # canceled or timed out while the engine was away
                self.engine.stop(status.id)
            return None
        if status is None and self.container_id is not None:
            return "the container disappeared while the engine was unreachable"
        if status is not None:
            self.engine.remove(status.id)
        self.container_id = None
        if self.log_path.exists():  # the attempt's header is written again by _create
            os.truncate(self.log_path, self.task["log_offset"])
        return None

    def _record(self, exit_code: Optional[int], error: Optional[str], results: dict[int, FrameResult]) -> None:
        """Record the result until it is recorded: the store waits out locks itself; a full disk
        or an I/O error is tried again, since dropping the result would leave the task running."""
        delay = 0.5
        while True:
            try:
                self.store.finish_task(self.task["id"], exit_code, error, results)
                return
            except (sqlite3.OperationalError, StoreBusy) as exc:
                log.warning("task %s: cannot record the result yet (%s); trying again in %.0fs",
                            self.task["id"], exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _remove(self) -> None:
        assert self.container_id is not None
        while True:
            try:
                self.engine.remove(self.container_id)
                return
            except EngineUnreachable as exc:
                self._await_engine(exc)
            except EngineError as exc:  # a restarted service removes leftovers of its store
                log.warning("task %s: %s", self.task["id"], exc)
                return

    def _create(self) -> str:
        task, step = self.task, self.step
        spec: ContainerSpec = self.store.job_container(task["job_id"])
        command = resolve_command(step["command"], self.store.job_params(task["job_id"]), task["params"],
                                  spec.workdir)
        request = ContainerRequest(
            name=task["container"],
            image=spec.image,
            command=command,
            env={**spec.env, "HPCDOCK_JOB": str(task["job_id"]), "HPCDOCK_TASK": str(task["id"]),
                 "HPCDOCK_ATTEMPT": str(task["attempt"])},
            workdir=spec.workdir,
            mounts=spec.mounts,
            network=spec.network,
            labels={LABEL_STORE: self.store.store_id, LABEL_JOB: str(task["job_id"]),
                    LABEL_TASK: str(task["id"]), LABEL_ATTEMPT: str(task["attempt"])},
        )
        if self.plan_gpu is not None:
            try:
                request.gpu = self.plan_gpu()
            except AttachError as exc:
                raise EngineError(str(exc)) from None
        with open(self.log_path, "ab") as fh:
            fh.write(f"--- attempt {task['attempt']}: {' '.join(command)}\n".encode())
        container_id = self.engine.create(request)
        with self._stop_lock:
            self.container_id = container_id
        if request.gpu is not None:
            # Engines drop GPU requests they do not understand without a word: check, never trust.
            problem = verify_attachment(request.gpu, self.engine.inspect(container_id))
            if problem:
                raise EngineError(f"GPU not attached: {problem}")
        with self._stop_lock:
            if self._stop_requested:  # canceled while the container was being created
                raise EngineError("canceled before the container started")
            self.engine.start(container_id)
        return container_id

    def _follow(self) -> tuple[Optional[int], Optional[str]]:
        """Stream the log into the task log until the container exits; return its exit code.

        Three threads cooperate: this one reads the log, a waiter learns the exit code, and
        a watcher settles frames as their outputs appear on disk, so a frame's event does not
        wait for the engine's log path (Podman's lags by a few hundred milliseconds).
        """
        assert self.container_id is not None
        timer = None
        timeout = self.step.get("timeout")
        if timeout:
            remaining = max(0.0, float(timeout) - (time.time() - (self.task["started_at"] or time.time())))
            timer = threading.Timer(remaining, self._time_out)
            timer.daemon = True
            timer.start()
        parser = LogParser()
        mode = "r+b" if self.adopt else "ab"
        stream = self.engine.logs(self.container_id, follow=True)
        exited = threading.Event()
        drained = threading.Event()
        outcome: dict[str, Any] = {}
        waiter = threading.Thread(target=self._wait_exit, args=(stream, exited, drained, outcome),
                                  name=f"task-{self.task['id']}-wait", daemon=True)
        watcher = threading.Thread(target=self._watch_outputs, args=(exited,),
                                   name=f"task-{self.task['id']}-watch", daemon=True)
        waiter.start()
        watcher.start()
        try:
            with open(self.log_path, mode) as fh:
                if self.adopt:  # re-read the whole container log: drop what an earlier run wrote
                    fh.seek(self.task["log_offset"])
                    fh.truncate()
                    fh.write(f"--- attempt {self.task['attempt']} (re-adopted after {self.adopted_after})\n"
                             .encode())
                read = 0
                for chunk in stream:
                    read += len(chunk)
                    self._take_log(fh, parser, chunk)
                drained.set()
                waiter.join()
                if outcome.get("cut"):  # the stream was ended for us: fetch what it had not delivered
                    rest = b"".join(self.engine.logs(self.container_id, follow=False))[read:]
                    self._take_log(fh, parser, rest)
                for update in parser.close():
                    self._apply(update)
        finally:
            drained.set()
            exited.set()
            watcher.join()
            if timer is not None:
                timer.cancel()
        if "error" in outcome:
            raise outcome["error"]
        exit_code = outcome["code"]
        if self.timed_out:
            return exit_code, f"timed out after {timeout:g}s (onRun.timeout) and was stopped"
        return exit_code, None if exit_code == 0 else f"exited with code {exit_code}"

    def _take_log(self, fh: Any, parser: LogParser, chunk: bytes) -> None:
        fh.write(chunk)
        fh.flush()
        for update in parser.feed(chunk):
            self._apply(update)

    def _wait_exit(self, stream: Any, exited: threading.Event, drained: threading.Event,
                   outcome: dict[str, Any]) -> None:
        try:
            outcome["code"] = self.engine.wait(self.container_id)
        except Exception as exc:  # reported by the reading thread
            outcome["error"] = exc
        exited.set()
        # Podman ends a follow stream late, and now and then never; the exit code is the truth,
        # so end the stream and let the reader collect the rest.
        if not drained.wait(LOG_DRAIN_SECONDS) and hasattr(stream, "close"):
            outcome["cut"] = True
            stream.close()

    def _watch_outputs(self, exited: threading.Event) -> None:
        """Settle image frames as soon as their output files are complete on disk."""
        since = float(self.task.get("started_at") or 0.0)
        while not exited.wait(WATCH_INTERVAL):
            for frame in self._watchable():
                output = self._frames[frame]["output"]
                try:
                    fresh = os.stat(output).st_mtime >= since - 1.0  # not a leftover of an earlier run
                except OSError:
                    continue
                if fresh and thumbnails.is_output_complete(Path(output)):
                    self._settle(frame, "done", None)

    def _watchable(self) -> list[int]:
        with self._frame_lock:
            return [f for f, info in self._frames.items() if f not in self._settled and info["output"]
                    and info["output"].lower().endswith(_IMAGE_SUFFIXES)]

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
        self.stop(grace=float(self.step.get("cancel_grace") or 0))

    # -- log updates --------------------------------------------------------------------
    def _apply(self, update: Any) -> None:
        task_id = self.task["id"]
        if isinstance(update, (FrameStarted, FrameDone, FrameFailed)) and update.frame in self._done_before:
            self._current_percent = 0.0
            return
        if isinstance(update, Progress):
            self._current_percent = update.percent
            self._report_progress()
        elif isinstance(update, FrameStarted) and update.frame in self._frames:
            self._current_percent = 0.0
            self.store.set_frame(self.task["job_id"], self.task["step_idx"], update.frame, "running")
        elif isinstance(update, FrameDone) and update.frame in self._frames:
            self._current_percent = 0.0
            if update.frame not in self._settled:
                state, error = self._check_output(update.frame)
                self._settle(update.frame, state, error)
            self._report_progress(force=True)
        elif isinstance(update, FrameFailed) and update.frame in self._frames:
            self._settle(update.frame, "failed", update.reason or "the render script reported a failure")
        elif isinstance(update, (FrameStarted, FrameDone, FrameFailed)):
            log.warning("task %s reported frame %s, which is not one of its frames", task_id, update.frame)

    def _report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        frames = self.task["frames"]
        percent = task_progress(frames, self._done, self._current_percent) if frames else self._current_percent
        self.store.set_progress(self.task["id"], percent)

    def _settle(self, frame: int, state: str, error: Optional[str]) -> None:
        """Record a frame's end once, whichever of the log marker and the watcher sees it first."""
        with self._frame_lock:
            if frame in self._settled:
                return
            self._settled.add(frame)
            if state == "done":
                self._done.add(frame)
            else:
                self._failed[frame] = error or "failed"
        thumb = self._thumbnail(frame) if state == "done" else None
        self.store.set_frame(self.task["job_id"], self.task["step_idx"], frame, state, error, thumbnail=thumb)

    # -- frames -------------------------------------------------------------------------
    def _check_output(self, frame: int) -> tuple[str, Optional[str]]:
        output = self._frames[frame]["output"]
        if not output:
            return "done", None
        if not os.path.exists(output):
            return "failed", f"output missing: {output}"
        if not thumbnails.is_output_complete(Path(output)):
            return "failed", f"output incomplete or unreadable: {output}"
        return "done", None

    def _thumbnail(self, frame: int) -> Optional[str]:
        output = self._frames[frame]["output"]
        if not output or thumbnails.sniff_format(output) is None:
            return None  # not an image (a geometry cache, say): nothing to show
        dest = self.thumbnail_path(self.task["job_id"], self.task["step"], frame)
        try:
            return str(thumbnails.make_thumbnail(Path(output), dest))
        except thumbnails.ThumbnailError as exc:
            log.warning("no thumbnail for frame %s: %s", frame, exc)
            return None

    def _settle_frames(self, ok: bool, exit_code: Optional[int], error: Optional[str]
                       ) -> dict[int, FrameResult]:
        """Decide the frames the markers and the watcher did not settle (with thumbnails of new outputs)."""
        results: dict[int, FrameResult] = {}
        for frame in self._frames:
            if frame in self._settled:
                continue
            if ok:
                state, f_error = self._check_output(frame)
                results[frame] = (state, f_error, self._thumbnail(frame) if state == "done" else None)
            else:
                results[frame] = ("failed", error or f"task exited with code {exit_code}", None)
        return results
