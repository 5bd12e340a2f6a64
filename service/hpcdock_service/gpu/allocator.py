"""Exclusive GPU allocation: a GPU is held by at most one task at a time, pinned by index/UUID."""

from __future__ import annotations

import threading
import time
from typing import Dict, Hashable, Iterable, List, Optional

from .inventory import Gpu


class GpuConflict(RuntimeError):
    """restore() was asked for a GPU that is unknown or held by another task."""


class GpuAllocator:
    def __init__(self, gpus: Iterable[Gpu]):
        self._gpus: List[Gpu] = sorted(gpus, key=lambda g: g.index)
        if len({g.index for g in self._gpus}) != len(self._gpus):
            raise ValueError("duplicate GPU index in inventory")
        self._by_index: Dict[int, Gpu] = {g.index: g for g in self._gpus}
        self._owner: Dict[int, Hashable] = {}  # gpu index -> task id
        self._cond = threading.Condition()

    @property
    def gpus(self) -> List[Gpu]:
        return list(self._gpus)

    def check_request(self, count: int) -> Optional[str]:
        """Refusal message for a job whose tasks each need ``count`` GPUs, or None if it can run."""
        total = len(self._gpus)
        if count < 0:
            return f"amount.worker.gpu must be 0 or more, got {count}"
        if count <= total:
            return None
        listing = ", ".join(f"{g.index}: {g.name or g.uuid}" for g in self._gpus)
        have = "no NVIDIA GPU" if total == 0 else f"{total} GPU{'' if total == 1 else 's'} ({listing})"
        plural = "" if count == 1 else "s"
        return f"amount.worker.gpu asks for {count} GPU{plural} per task, but this machine has {have}"

    def try_acquire(self, task_id: Hashable, count: int) -> Optional[List[Gpu]]:
        """Pin ``count`` free GPUs (lowest indices first) to ``task_id``; None if not enough are free.
        A task that already holds GPUs gets the same ones back."""
        with self._cond:
            held = self._held_locked(task_id)
            if held:
                if len(held) != count:
                    raise ValueError(f"task {task_id!r} already holds {len(held)} GPUs, asked for {count}")
                return held
            if count <= 0:
                return []
            free = [g for g in self._gpus if g.index not in self._owner]
            if len(free) < count:
                return None
            for g in free[:count]:
                self._owner[g.index] = task_id
            return free[:count]

    def acquire(self, task_id: Hashable, count: int, timeout: Optional[float] = None) -> Optional[List[Gpu]]:
        """Like try_acquire, but waits up to ``timeout`` seconds (None: forever) for GPUs to be freed.
        Raises ValueError if the request can never be met."""
        msg = self.check_request(count)
        if msg:
            raise ValueError(msg)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                got = self.try_acquire(task_id, count)
                if got is not None:
                    return got
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def release(self, task_id: Hashable) -> List[Gpu]:
        """Free whatever ``task_id`` holds (nothing is fine). Returns what was freed."""
        with self._cond:
            held = self._held_locked(task_id)
            for g in held:
                del self._owner[g.index]
            if held:
                self._cond.notify_all()
            return held

    def restore(self, task_id: Hashable, indices: Iterable[int]) -> List[Gpu]:
        """Mark GPUs as held by a task that already runs (a restarted service re-adopting its container)."""
        wanted = sorted(set(int(i) for i in indices))
        with self._cond:
            for i in wanted:
                if i not in self._by_index:
                    raise GpuConflict(f"task {task_id!r} holds GPU {i}, which this machine does not have")
                owner = self._owner.get(i, task_id)
                if owner != task_id:
                    raise GpuConflict(f"GPU {i} is claimed by both task {owner!r} and task {task_id!r}")
            for i in wanted:
                self._owner[i] = task_id
            return [self._by_index[i] for i in wanted]

    def held_by(self, task_id: Hashable) -> List[Gpu]:
        with self._cond:
            return self._held_locked(task_id)

    def free_count(self) -> int:
        with self._cond:
            return len(self._gpus) - len(self._owner)

    def to_json(self) -> List[dict]:
        with self._cond:
            return [
                {"index": g.index, "uuid": g.uuid, "name": g.name, "task": self._owner.get(g.index)}
                for g in self._gpus
            ]

    def _held_locked(self, task_id: Hashable) -> List[Gpu]:
        return [self._by_index[i] for i in sorted(i for i, t in self._owner.items() if t == task_id)]
