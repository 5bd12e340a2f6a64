"""The one engine interface the scheduler drives, and the value types it exchanges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from ..bundle import Mount
from ..mounts import MountPolicy

LABEL_STORE = "hpcdock.store"
LABEL_JOB = "hpcdock.job"
LABEL_TASK = "hpcdock.task"
LABEL_ATTEMPT = "hpcdock.attempt"


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


@dataclass
class ContainerRequest:
    """One task attempt's container, fully decided by the service (security defaults included)."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    workdir: str
    mounts: list[Mount]
    network: bool
    labels: dict[str, str]
    # How the task's GPUs attach (a hpcdock_service.gpu.Attachment), decided by the GPU broker.
    gpu: Optional[Any] = None
    limits: ContainerLimits = field(default_factory=ContainerLimits)


@dataclass
class ContainerStatus:
    id: str
    name: str
    status: str  # the engine's word: created, running, exited, ...
    running: bool
    exit_code: Optional[int]
    labels: dict[str, str]


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


class Engine(Protocol):
    # What containers may mount, checked again at every creation; the service sets it.
    mount_policy: MountPolicy

    def describe(self) -> dict[str, Any]:
        """Name, version, socket, rootless, limit enforcement: what ``/v1/health`` shows."""

    def ping(self) -> None:
        """Return when the engine answers; raise EngineUnreachable when it does not."""

    def image_exists(self, image: str) -> bool: ...

    def create(self, request: ContainerRequest) -> str:
        """Create the container (initialised far enough that inspect shows its devices); return its id."""

    def start(self, container_id: str) -> None: ...

    def inspect(self, container_id: str) -> dict[str, Any]: ...

    def find(self, name: str) -> Optional[ContainerStatus]: ...

    def list_labeled(self, labels: dict[str, str]) -> list[ContainerStatus]: ...

    def logs(self, container_id: str, follow: bool, tail: Optional[int] = None) -> Iterator[bytes]:
        """Combined stdout and stderr from the start (or its last ``tail`` lines), in chunks as the
        engine sends them (never the whole log at once: a task may print gigabytes); with ``follow``
        until the container exits.

        A following iterator has ``close()``, which ends it from another thread.
        """

    def wait(self, container_id: str, timeout: Optional[float] = None) -> int:
        """Exit code; raises TimeoutError when ``timeout`` passes first."""

    def stop(self, container_id: str, grace: float = 0) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def close(self) -> None: ...
