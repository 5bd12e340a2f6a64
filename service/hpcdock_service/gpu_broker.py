"""The scheduler's view of GPUs: inventory, exclusive allocation, attach and verify in one place.

The pieces live in :mod:`hpcdock_service.gpu`; this adapter binds them to one engine so
the scheduler only asks "give task T N GPUs", "how do I attach them", "did it work".
"""

from __future__ import annotations

from typing import Any, Optional

from .engines.base import Engine
from .gpu.allocator import GpuAllocator
from .gpu.attach import AttachError, Attachment, EngineCaps, plan_attachment
from .gpu.inventory import NVIDIA_CDI_KIND, Gpu, GpuInventory, detect_gpus


class GpuBroker:
    def __init__(
        self, inventory: GpuInventory, caps: Optional[EngineCaps], cdi_kind: str = NVIDIA_CDI_KIND
    ) -> None:
        self.inventory = inventory
        self.caps = caps
        self.cdi_kind = cdi_kind
        self.allocator = GpuAllocator(inventory.gpus)

    @classmethod
    def detect(
        cls, engine: Engine, declared: Optional[list[dict[str, Any]]] = None, cdi_kind: str = NVIDIA_CDI_KIND
    ) -> GpuBroker:
        """Inventory this machine's GPUs (or take the ones the config declares) for ``engine``.

        ``declared`` lets an admin name the GPUs hpcdock may use by hand: a subset (keep
        GPU 0 for the artist's display) or GPUs NVML cannot see from where the service runs.
        """
        inventory = detect_gpus()
        if declared is not None:
            inventory.gpus = [
                Gpu(int(g["index"]), str(g.get("uuid") or f"GPU-{g['index']}"), str(g.get("name") or ""))
                for g in declared
            ]
        caps = None
        client = getattr(engine, "client", None)
        if client is not None:
            caps = EngineCaps.from_engine(
                client.version(), client.info(), libpod_create=getattr(engine, "kind", "") == "podman"
            )
        return cls(inventory, caps, cdi_kind)

    def check_request(self, count: int) -> Optional[str]:
        return self.allocator.check_request(count)

    def acquire(self, task_id: int, count: int) -> Optional[list[int]]:
        gpus = self.allocator.try_acquire(task_id, count)
        return None if gpus is None else [g.index for g in gpus]

    def restore(self, task_id: int, indices: list[int]) -> None:
        self.allocator.restore(task_id, indices)

    def release(self, task_id: int) -> None:
        self.allocator.release(task_id)

    def attachment(self, indices: list[int]) -> Attachment:
        if self.caps is None:
            raise AttachError("the engine's capabilities are unknown; cannot attach GPUs")
        gpus = [g for g in self.inventory.gpus if g.index in indices]
        return plan_attachment(gpus, self.caps, self.inventory, cdi_kind=self.cdi_kind)

    def to_json(self) -> list[dict[str, Any]]:
        """The GPUs tasks can get, and which task holds each: what /v1/health shows."""
        return self.allocator.to_json()

    def inventory_json(self) -> dict[str, Any]:
        """Everything detected (NVML, device nodes, CDI specs): what ``--check`` shows."""
        return self.inventory.to_json()
