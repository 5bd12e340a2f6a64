"""The one engine interface the scheduler drives, and the value types it exchanges."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Protocol

from ..mounts import Mount, MountPolicy

LABEL_STORE = "hpcdock.store"
LABEL_JOB = "hpcdock.job"
LABEL_TASK = "hpcdock.task"
LABEL_ATTEMPT = "hpcdock.attempt"
LABEL_SESSION = "hpcdock.session"  # a session container's name (see :mod:`..sessions`)
# Where a session container sees its service-owned directory (ContainerRequest.session_dir).
SESSION_ROOT = "/hpcdock-session"


@dataclass(frozen=True)
class ContainerLimits:
    """What one task container may use; None means no limit of that kind."""

    pids: Optional[int] = None  # processes and threads
    memory: Optional[int] = None  # bytes
    vcpus: Optional[float] = None


NO_LIMITS = ContainerLimits()


@dataclass(frozen=True)
class LimitEnforcement:
    """How the engine holds a container to its :class:`ContainerLimits`, as ``--check`` reports it.

    Each field is ``"cgroup"`` when the engine enforces the limit for the whole container,
    ``"ulimit"`` when only a per-process resource limit applies (rootless engines on cgroup v1
    ignore cgroup limits, but ulimits still hold), or ``"none"``.
    """

    memory: str
    pids: str
    cpu: str
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"memory": self.memory, "pids": self.pids, "cpu": self.cpu, "notes": list(self.notes)}


class RunState(str, Enum):
    """Where one task attempt's run stands, in hpcdock's words (each engine maps its own onto these)."""

    QUEUED = "queued"  # the engine has it and will start it by itself (a pending Slurm job)
    RUNNING = "running"  # the task's code may be running
    EXITED = "exited"  # over: the exit code (or why there is none) is known


@dataclass(frozen=True)
class GpuGrant:
    """The GPUs a task attempt holds: how many, and which ones where the engine places them itself.

    The local engine reserves host GPUs by index before the container exists; a cluster engine
    leaves ``indices`` empty and lets its scheduler pick at run time (``--gres=gpu:N``).
    """

    count: int
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerFile:
    """A file the engine writes into the container before the task starts (an OpenJD embedded file).

    ``path`` is absolute inside the container; missing directories on the way are created.
    """

    path: str
    data: bytes
    mode: int = 0o644


@dataclass
class ContainerRequest:
    """One task attempt's container, fully decided by the service (security defaults included).

    Every engine runs the task in a container made from this request, on whatever host it places
    it, with the same security defaults and labels.
    """

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    workdir: str
    mounts: list[Mount]
    network: bool
    labels: dict[str, str]
    gpus: Optional[GpuGrant] = None  # attached and verified by the engine before the task runs
    limits: ContainerLimits = field(default_factory=ContainerLimits)
    files: list[ContainerFile] = field(default_factory=list)  # written in before it starts
    # Sessions only: a directory the service made (under its state directory, or the engine's
    # session_root), bound read-write at SESSION_ROOT. Not under the mount policy: no task chose
    # the path, and the policy keeps every task's own mounts out of both places.
    session_dir: Optional[str] = None
    # The worker groups the task may run on (Slurm partitions, Swarm node hostnames), chosen by
    # the step's host requirements; None: wherever the engine places it by itself.
    placement: Optional[tuple[str, ...]] = None
    # What the step declared it needs (amount.worker.vcpu/memory, their min), for an engine whose
    # cluster packs its own nodes (the service packs only a local engine's machine); not a limit.
    reserve: ContainerLimits = field(default_factory=ContainerLimits)


@dataclass(frozen=True)
class RunStatus:
    """What the engine knows of one run (a container, a Slurm job, a Swarm service).

    ``handle`` is the engine's own id for it, the one every other call takes; ``name`` is the
    attempt's name (:func:`..runner.container_name`), which a restarted service looks it up by.
    """

    handle: str
    name: str
    state: RunState
    exit_code: Optional[int] = None
    oom_killed: bool = False  # the engine killed it for exceeding its memory limit
    labels: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Its state as a log line says it: queued, running, or exited with its code."""
        if self.state is RunState.EXITED:
            return f"exited {self.exit_code}"
        return self.state.value


class EngineError(Exception):
    """The engine refused or failed an operation; the message says what and why."""


class EngineUnreachable(EngineError):
    """The engine's API cannot be reached at all (socket missing, connection refused or cut).

    Not the task's fault and not a refusal: the engine is down. Containers run on without
    their API (under conmon, for Podman), so tasks wait for it to come back instead of failing.
    """


class MountRefused(EngineError):
    """A mount the task's container may not have (see :mod:`..mounts`): the task fails, naming
    the path; the engine itself is fine."""


class LogStream(Protocol):
    """A run's output in chunks; ``close()`` ends a following one from another thread (the
    runner ends a stream that idles after its run exited: some engines end theirs late)."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class GpuPlacement(Protocol):
    """Which tasks hold which GPUs, for one engine; the scheduler asks, the engine decides."""

    def check(self, count: int) -> Optional[str]:
        """Why a step needing ``count`` GPUs could never run on this engine (None: it could).

        Asked at submit, so such a job is refused instead of waiting forever: the answer is the
        refusal's message (under the step's ``hostRequirements.amounts``), naming
        ``amount.worker.gpu`` and the GPUs this engine has."""

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        """Reserve ``count`` GPUs for the task; None when they are not free now (it waits)."""

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        """Mark a re-adopted task's GPUs as held again after a restart."""

    def release(self, task_id: int) -> None:
        """Give back what the task holds (holding nothing is fine)."""

    def to_json(self) -> list[dict[str, Any]]:
        """The GPUs tasks can get and which task holds each: what ``/v1/health`` shows."""

    def inventory_json(self) -> dict[str, Any]:
        """Everything detected: what ``--check`` shows."""


class Runs(Protocol):
    """One run's lifecycle: what a task's runner drives, whether the run is a container of its own
    (an :class:`Engine`) or a task inside a session's container (:class:`..sessions.Session`)."""

    def create(self, request: ContainerRequest) -> str:
        """Prepare the run without starting the task's code; return its handle.

        Mounts are checked here again, and the request's GPUs attached and verified (an engine
        that cannot prove a GPU is attached raises EngineError naming it)."""

    def start(self, handle: str) -> None:
        """Let the run go (a cancel between create and start means the task never ran)."""

    def status(self, handle: str) -> RunStatus: ...

    def find(self, name: str) -> Optional[RunStatus]:
        """The run of that name, for re-adoption after a restart or an outage.

        None when there is none, or when one was prepared but never started (the engine removes
        it): the attempt then runs again without spending an attempt."""

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> LogStream:
        """Combined stdout and stderr from the start (or its last ``tail`` lines), in chunks as the
        engine sends them (never the whole log at once: a task may print gigabytes); with ``follow``
        until the run exits."""

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        """The task's exit code; raises TimeoutError when ``timeout`` passes first, EngineError
        naming the reason when the run ended without one (a node failure, say)."""

    def stop(self, handle: str, grace: float = 0) -> None: ...

    def remove(self, handle: str) -> None:
        """Forget the run: no container (and no cluster job) of it is left."""


class Engine(Runs, Protocol):
    """Runs task attempts: owns capacity, GPUs, each run's lifecycle and recovery after a restart.

    The scheduler and the runner speak only this protocol and hpcdock's own states; they never
    know whether a run is a local container, a Slurm job or a Swarm service.

    Sessions (OpenJD environments, :mod:`..sessions`) are an optional capability: an engine with
    ``runs_sessions = True`` binds :attr:`ContainerRequest.session_dir` into the container, and
    says where session directories must live in ``session_root``: None when its containers run
    on the service's own host (the service keeps them in its state directory), else a directory
    that every host it may place a container on sees at the same path (a cluster's shared
    filesystem). Any other engine runs a step with environments cold: each task's container
    enters the environments, runs the task and exits them.

    So are worker groups: a cluster engine whose partitions or nodes differ has
    ``workers(common) -> config.Workers``, what each has for host requirements, read when the
    service starts; it then honours :attr:`ContainerRequest.placement`. Without it every worker
    is this machine.
    """

    # What containers may mount, checked again at every creation; the service sets it.
    mount_policy: MountPolicy
    # How many task attempts may run at once.
    slots: int

    @property
    def gpus(self) -> GpuPlacement:
        """GPU placement, attachment and verification for this engine (read-only here, so that an
        engine may hold its own kind of placement)."""

    def describe(self) -> dict[str, Any]:
        """Name, version, socket, rootless, limit enforcement: what ``/v1/health`` shows.

        The one engine-specific dict of the seam: besides ``/v1/health``, only the mount policy
        reads it (the ``socket`` no container may mount)."""

    def ping(self) -> None:
        """Return when the engine answers; raise EngineUnreachable when it does not.

        The service pings every few seconds, and twice a second while the engine is away: an
        engine that can bring itself back (the local engine's embedded Podman service) does so
        here, so the watch that pings needs to know nothing about how."""

    def image_exists(self, image: str) -> bool: ...

    def leftovers(self, store_id: str) -> list[RunStatus]:
        """Every run of that store the engine still has (those no task claims are removed)."""

    def close(self) -> None: ...
