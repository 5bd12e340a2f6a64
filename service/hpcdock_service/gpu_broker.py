"""The scheduler's view of GPUs: inventory, exclusive allocation, attach and verify in one place.

The pieces live in :mod:`hpcdock_service.gpu`; this adapter binds them to one engine so
the scheduler only asks "give task T N GPUs", "how do I attach them", "did it work".
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .engines.base import Engine
from .gpu.allocator import GpuAllocator
from .gpu.attach import AttachError, EngineCaps, plan_attachment, verify_attachment
from .gpu.inventory import GpuInventory, detect_gpus


def no_gpu_refusal(count: int) -> Optional[str]:
    return f"amount.worker.gpu asks for {count} GPU(s) per task, but GPU support is not available"


class GpuBroker:
    def __init__(self, inventory: GpuInventory, caps: Optional[EngineCaps]) -> None:
        self.inventory = inventory
        self.caps = caps
        self.allocator = GpuAllocator(inventory.gpus)

    @classmethod
    def detect(cls, engine: Engine) -> GpuBroker:
        inventory = detect_gpus()
        caps = None
        client = getattr(engine, "client", None)
        if client is not None:
            caps = EngineCaps.from_engine(client.version(), client.info())
        return cls(inventory, caps)

    def check_request(self, count: int) -> Optional[str]:
        return self.allocator.check_request(count)

    def acquire(self, task_id: int, count: int) -> Optional[list[int]]:
        gpus = self.allocator.try_acquire(task_id, count)
        return None if gpus is None else [g.index for g in gpus]

    def restore(self, task_id: int, indices: list[int]) -> None:
        self.allocator.restore(task_id, indices)

    def release(self, task_id: int) -> None:
        self.allocator.release(task_id)

    def _plan(self, indices: list[int]) -> Any:
        if self.caps is None:
            raise AttachError("the engine's capabilities are unknown; cannot attach GPUs")
        gpus = [g for g in self.inventory.gpus if g.index in indices]
        return plan_attachment(gpus, self.caps, self.inventory)

    def container_kwargs(self, indices: list[int]) -> dict[str, Any]:
        return self._plan(indices).create_kwargs()

    def verifier(self, indices: list[int]) -> Callable[[dict[str, Any]], Optional[str]]:
        attachment = self._plan(indices)
        return lambda inspect: verify_attachment(attachment, inspect)

    def to_json(self) -> Any:
        return self.inventory.to_json()
