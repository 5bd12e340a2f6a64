"""Counted amounts running tasks hold: licences (``resources:``) and the machine's vCPUs and memory.

One pool, keyed by OpenJD amount name: ``amount.houdini_engine`` for a counted resource of
service.yaml, ``amount.worker.vcpu`` and ``amount.worker.memory`` (MiB) for packing tasks
into the machine. A task holds its step's amounts from the moment dispatch picks it until its
runner exits, so no more tasks run than the counts allow, across jobs. Amounts a step does not
name cost it nothing: a task that declares no vCPUs is bounded by the slots alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Optional

from .bundle_loader import CUSTOM_AMOUNT_PREFIX, MEMORY_AMOUNT, VCPU_AMOUNT
from .config import Machine

GPU_WAIT = "GPU"


def capacity(resources: Mapping[str, int], machine: Optional[Machine]) -> dict[str, float]:
    """The pool's size by amount name: the service's resources and the machine tasks are packed
    into; without one (a cluster engine, whose scheduler packs each task's vCPUs and memory into
    its own nodes) only the resources are counted here."""
    sizes = {f"{CUSTOM_AMOUNT_PREFIX}{name}": float(count) for name, count in resources.items()}
    if machine is not None:
        sizes[VCPU_AMOUNT] = float(machine.vcpus)
        sizes[MEMORY_AMOUNT] = float(machine.memory_mib)
    return sizes


def waiting_label(amount: str) -> str:
    """What a task held back by ``amount`` waits for, as the task's ``waiting_for`` says it."""
    if amount.startswith("amount.worker."):
        return f"machine {amount[len('amount.worker.') :]}"
    return f"resource {amount[len(CUSTOM_AMOUNT_PREFIX) :]}"


class Pool:
    def __init__(self, sizes: Mapping[str, float]) -> None:
        self.sizes = dict(sizes)
        self._held: dict[int, Mapping[str, float]] = {}
        self._lock = threading.Lock()

    def _in_use(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for amounts in self._held.values():
            for name, n in amounts.items():
                used[name] = used.get(name, 0.0) + n
        return used

    def _short(self, needs: Mapping[str, float]) -> Optional[str]:
        used = self._in_use()
        for name, n in sorted(needs.items()):
            if name in self.sizes and used.get(name, 0.0) + n > self.sizes[name] + 1e-9:
                return name
        return None

    def short(self, needs: Mapping[str, float]) -> Optional[str]:
        """The first amount ``needs`` would not fit in now, or None."""
        with self._lock:
            return self._short(needs)

    def acquire(self, task_id: int, needs: Mapping[str, float]) -> Optional[str]:
        """Hold ``needs`` for the task and return None, or return the amount that does not fit."""
        with self._lock:
            missing = self._short(needs)
            if missing is None and needs:
                self._held[task_id] = dict(needs)
            return missing

    def restore(self, task_id: int, needs: Mapping[str, float]) -> None:
        """Hold what a re-adopted task already holds, fitting or not (it runs already)."""
        with self._lock:
            if needs:
                self._held[task_id] = dict(needs)

    def release(self, task_id: int) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def to_json(self) -> dict[str, dict[str, float]]:
        with self._lock:
            used = self._in_use()
        return {
            name: {"total": size, "in_use": used.get(name, 0.0)} for name, size in sorted(self.sizes.items())
        }
