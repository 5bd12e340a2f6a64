"""Wires config, store, engine, GPUs and scheduler into one running service.

The API layer talks to this object only (its facade, below ``close``), which answers with the
values of :mod:`.model`; tests build one with a real engine and a temporary state directory,
and ``main`` builds one from the user's config.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

from hpcdock.protocol import FrameState

from . import __version__, tasklog, thumbnails
from .bundle_loader import load_bundle, prepare_output_dirs
from .config import ServiceConfig, WorkerCapabilities, Workers
from .engines import open_engine
from .engines.base import ContainerLimits, Engine, EngineUnreachable
from .engines.discovery import EngineWatch
from .errors import BadInput, NotFound
from .model import Event, Frame, Job, Task
from .resources import Pool, capacity
from .scheduler import Scheduler
from .store import Store, StoreBusy
from .tasklog import MIB

log = logging.getLogger(__name__)


def ensure_token(path: Path) -> str:
    """Read the bearer token, creating it (mode 0600, never world readable) on first start."""
    try:
        token = path.read_text().strip()
        if token:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


class StateDirInUse(Exception):
    """Another service holds the state directory; this one must not touch its store or containers."""


class StateLock:
    """An exclusive ``flock`` on ``service.lock`` in the state directory, held for the service's life.

    Taken before the engine is connected or anything recovered: a second service on the same
    state would otherwise re-adopt and remove the first one's containers. The kernel drops the
    lock when the holder dies, even by ``kill -9``, so there is never a stale lock to clear.
    The file says who holds it, for the message the next one prints.
    """

    def __init__(self, state_dir: Path, endpoint_url: str) -> None:
        path = state_dir / "service.lock"
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "pid unknown"
            os.close(fd)
            raise StateDirInUse(
                f"another hpcdock-service ({holder}) already uses the state directory "
                f"{state_dir}; stop that one first (nothing was changed)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, listening on {endpoint_url}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        engine: Optional[Engine] = None,
        reset_store: bool = False,
    ) -> None:
        self.config = config
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = StateLock(self.state_dir, config.endpoint.url)
        try:
            self.token = ensure_token(Path(config.token_file))
            # The store first: a corrupted one stops the start before an embedded engine is started.
            self.store = Store.open(self.state_dir / "hpcdock.db", reset_corrupt=reset_store)
        except BaseException:
            self.lock.release()
            raise
        if engine is None:
            try:
                engine = open_engine(config, self.state_dir)
            except BaseException:
                self.store.close()
                self.lock.release()
                raise
        self.engine = engine
        self.mount_policy = config.mount_policy(engine.describe().get("socket"))
        engine.mount_policy = self.mount_policy
        self.watch = EngineWatch(engine)
        # A cluster engine's partitions or nodes each have their own; the local engine's workers
        # are this machine, which its tasks are packed into.
        cluster_workers = getattr(engine, "workers", None)
        self.capacity = capacity(
            config.resources, config.packing_machine if cluster_workers is None else None
        )
        if cluster_workers is not None:
            try:  # a configured partition the cluster lacks stops the start, naming it
                self.workers = cluster_workers(config.capabilities)
            except BaseException:
                engine.close()
                self.store.close()
                self.lock.release()
                raise
        else:
            gpus = engine.gpus.inventory_json().get("gpus") or []
            self.workers = Workers.alike(
                WorkerCapabilities.build(config.capabilities, [int(g.get("memory_mib") or 0) for g in gpus])
            )
        self.scheduler = Scheduler(
            self.store,
            engine,
            state_dir=self.state_dir,
            watch=self.watch,
            limits=self.task_limits(),
            log_cap=config.log_cap_mib * MIB,
            pool=Pool(self.capacity),
            licence=config.licence_retry,
        )

    def task_limits(self) -> ContainerLimits:
        """A task container's limits where its step asks for no memory or vCPUs of its own."""
        memory = self.config.task_memory_mib
        return ContainerLimits(
            pids=self.config.task_pids, memory=memory * MIB if memory else None, vcpus=self.config.task_vcpus
        )

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        """Stop dispatching and let go of the engine; running containers keep running."""
        self.scheduler.stop()
        self.store.close()
        self.engine.close()
        self.lock.release()

    def submit(
        self,
        bundle_dir: str,
        parameter_values: Optional[dict[str, Any]] = None,
        priority: Optional[int] = None,
        name: Optional[str] = None,
    ) -> Job:
        try:
            plan = load_bundle(
                bundle_dir,
                mount_policy=self.mount_policy,
                parameter_values=parameter_values,
                image_exists=self.engine.image_exists,
                gpu_check=self.engine.gpus.check,
                limits=self.config.limits,
                capacity=self.capacity,
                capabilities=self.workers,
            )
        except EngineUnreachable as exc:  # the image cannot be checked now; nothing was accepted
            self.watch.lost(exc)
            raise BadInput("engine", f"{exc}; submit again once it is back", 503) from None
        prepare_output_dirs(plan, self.mount_policy)
        job = self.store.create_job(plan, priority=priority, name=name)
        log.info("job %s (%s): %d task(s), %d frame(s)", job.id, job.name, job.tasks_total, job.frames_total)
        self.scheduler.wake()
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel the job: pending tasks never start, running containers are stopped and removed."""
        self.scheduler.cancel(job_id)
        return self.store.read_job(job_id)

    def retry(self, job_id: int) -> Job:
        job = self.store.retry_failed(job_id)
        self.scheduler.wake()
        return job

    def retry_frames(
        self, job_id: int, frames: Optional[list[int]], flagged: bool, step: Optional[str]
    ) -> Job:
        job = self.store.retry_frames(job_id, frames, flagged, step)
        self.scheduler.wake()
        return job

    def jobs(self, state: Optional[str] = None) -> list[Job]:
        return self.store.jobs(state)

    def job(self, job_id: int) -> Job:
        return self.store.read_job(job_id)

    def tasks(self, job_id: int) -> Iterator[Task]:
        """The job's tasks, read as they are taken; NotFound (before any is read) for no such job."""
        self.store.read_job(job_id)
        return self.store.iter_tasks(job_id)

    def task(self, task_id: int) -> Task:
        return self.store.read_task(task_id)

    def task_log(self, task_id: int, offset: int) -> tasklog.LogPart:
        """The task's log from ``offset`` (bytes as the task printed them), at most READ_LIMIT bytes."""
        self.store.read_task(task_id)
        return tasklog.read(self.scheduler.log_path(task_id), offset, tasklog.READ_LIMIT)

    def frames(self, job_id: int) -> Iterator[Frame]:
        """The job's frames, read as they are taken; NotFound (before any is read) for no such job."""
        self.store.read_job(job_id)
        return self.store.iter_frames(job_id)

    def thumbnail(self, job_id: int, frame: int, step: Optional[str] = None) -> Path:
        """The PNG thumbnail of a done frame (of ``step``, else of the last step that has the frame)."""
        path = self.store.thumbnail_path(job_id, frame, step)
        if path is not None:
            return Path(path)
        info = self.store.frame(job_id, frame, step)
        if info.state != FrameState.DONE or not info.output:
            raise NotFound("frame", f"frame {frame} of job {job_id} has no thumbnail ({info.state.value})")
        try:
            return thumbnails.cached_thumbnail(
                Path(info.output), self.scheduler.thumbnail_path(job_id, info.step, frame)
            )
        except thumbnails.ThumbnailError as exc:
            raise NotFound("frame", str(exc)) from None

    def events_after(self, after: int, job_id: Optional[int] = None, limit: int = 500) -> list[Event]:
        """The events after id ``after`` (of one job, with ``job_id``), oldest first, at most ``limit``."""
        return self.store.events_after(after, job_id, limit)

    def add_event_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(last_event_id)`` runs after every change (from any thread)."""
        self.store.add_listener(callback)

    def remove_event_listener(self, callback: Callable[[int], None]) -> None:
        self.store.remove_listener(callback)

    def metrics_text(self) -> str:
        """Prometheus text exposition: what a farm admin graphs and alerts on."""
        lines = []
        for table, by_state in self.store.counts().items():
            lines.append(f"# TYPE hpcdock_{table} gauge")
            lines += [f'hpcdock_{table}{{state="{s}"}} {n}' for s, n in sorted(by_state.items())]
        lines += [
            "# TYPE hpcdock_slots gauge",
            f"hpcdock_slots {self.engine.slots}",
            "# TYPE hpcdock_running_tasks gauge",
            f"hpcdock_running_tasks {self.scheduler.running_count()}",
            "# TYPE hpcdock_engine_up gauge",
            f"hpcdock_engine_up {int(self.watch.up)}",
            "# TYPE hpcdock_events_total counter",
            f"hpcdock_events_total {self.store.last_event_id()}",
        ]
        return "\n".join(lines) + "\n"

    def health(self) -> dict[str, Any]:
        """What runs, and whether the engine and the store can be used now; never waits for either.

        ``ok`` is false while the engine is unreachable or another process holds the store's
        write lock; tasks wait through both.
        """
        described = self.engine.describe()
        engine = {**described, **self.watch.to_json()}
        store = self.store.health().to_json()
        try:
            last_event_id: Optional[int] = self.store.last_event_id()
        except StoreBusy:
            last_event_id = None
        return {
            "ok": engine["state"] == "up" and store["state"] == "ok",
            "version": __version__,
            "engine": engine,
            "store": store,
            "embedded_engine": bool(described.get("embedded")),
            "gpus": self.engine.gpus.to_json(),
            "slots": self.engine.slots,
            "running": self.scheduler.running_count(),
            "last_event_id": last_event_id,
        }
