"""What every Docker-API engine does the same way, whichever daemon runs the task's container.

The local engine (one container per task) and the Swarm engine (one service per task) hold a
task to the same rules: each bind mount is walked by :mod:`..mounts` right before the engine
sees it and walked again, unchanged, right before the container (or service) is made; a limit
the daemon's cgroups cannot enforce becomes a ulimit. One implementation, so the two engines
cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any, Optional

from .. import mounts
from ..mounts import Mount
from .base import ContainerLimits, GpuGrant, LimitEnforcement, MountRefused


def check_binds(policy: mounts.MountPolicy, request_mounts: list[Mount]) -> list[mounts.Bound]:
    """Walk every mount source under ``policy``; what each one is, for :func:`recheck_binds`."""
    return [(m.source, m.target, verify_bind(policy, m.source, not m.readonly)) for m in request_mounts]


def verify_bind(policy: mounts.MountPolicy, source: str, writable: bool) -> mounts.Identity:
    try:
        return mounts.verify(policy, source, writable=writable)
    except mounts.PathRefused as exc:
        raise MountRefused(f"mount of {source} refused: {exc}") from None


def recheck_binds(policy: mounts.MountPolicy, bound: list[mounts.Bound]) -> None:
    """Walk the checked paths again: each must still be the very directory checked before."""
    for source, _, identity in bound:
        if verify_bind(policy, source, writable=False) != identity:
            raise MountRefused(f"mount of {source} refused: it changed since it was checked")


def docker_enforcement(info: dict[str, Any]) -> LimitEnforcement:
    """How a Docker daemon holds containers to their limits, from its ``/info``."""
    return enforcement(
        memory=bool(info.get("MemoryLimit")),
        pids=bool(info.get("PidsLimit")),
        cpu=bool(info.get("CpuCfsQuota")),
    )


def enforcement(memory: bool, pids: bool, cpu: bool) -> LimitEnforcement:
    """cgroup where the engine has the controller, else the ulimit that still holds (or none)."""
    notes = []
    if not memory:
        notes.append("memory: a per-process data limit (ulimit -d), not a limit on the container's total")
    if not pids:
        notes.append(
            "pids: ulimit nproc, which counts the processes and threads of all this user's "
            "containers together (rootless engines run them in one user namespace)"
        )
    if not cpu:
        notes.append("cpu: not enforced (no cgroup CPU controller for this engine)")
    return LimitEnforcement(
        memory="cgroup" if memory else "ulimit",
        pids="cgroup" if pids else "ulimit",
        cpu="cgroup" if cpu else "none",
        notes=tuple(notes),
    )


def split_limits(
    limits: ContainerLimits, enforced: LimitEnforcement
) -> tuple[dict[str, float], dict[str, int]]:
    """The limits the engine's cgroups enforce, and the rest as ulimits (name: value)."""
    cgroup: dict[str, float] = {}
    rlimits: dict[str, int] = {}
    if limits.memory:
        if enforced.memory == "cgroup":
            cgroup["memory"] = limits.memory
        else:
            rlimits["data"] = limits.memory
    if limits.pids:
        if enforced.pids == "cgroup":
            cgroup["pids"] = limits.pids
        else:
            rlimits["nproc"] = limits.pids
    if limits.vcpus and enforced.cpu == "cgroup":
        cgroup["vcpus"] = limits.vcpus
    return cgroup, rlimits


def no_output() -> Generator[bytes, None, None]:
    """The log of a run that is gone: nothing (a generator, which has the streams' close())."""
    yield from ()


class ClusterGpus:
    """How many GPUs each task holds where the cluster's own scheduler picks which ones (Slurm's
    gres, Swarm's generic resources): the bookkeeping both engines' GPU placements share."""

    def __init__(self) -> None:
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def _grant(self, task_id: int, count: int, limit: Optional[int] = None) -> Optional[GpuGrant]:
        """Hold ``count`` GPUs for the task, unless the tasks' GPUs together would pass ``limit``."""
        with self._lock:
            if limit is not None and sum(self._held.values()) + count > limit:
                return None
            self._held[task_id] = count
        return GpuGrant(count)

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        with self._lock:
            self._held[task_id] = grant.count

    def release(self, task_id: int) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def held(self) -> dict[int, int]:
        with self._lock:
            return dict(self._held)
