"""What every Docker-API engine does the same way, whichever daemon runs the task's container.

The local engine (one container per task) and the Swarm engine (one service per task) hold a
task to the same rules: each bind mount is walked by :mod:`..mounts` right before the engine
sees it and walked again, unchanged, right before the container (or service) is made; a limit
the daemon's cgroups cannot enforce becomes a ulimit. One implementation, so the two engines
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .. import mounts
from ..mounts import Mount
from .base import ContainerLimits, LimitEnforcement, MountRefused


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
