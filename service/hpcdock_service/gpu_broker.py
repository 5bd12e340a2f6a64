"""The local engine's GPU placement: this machine's inventory, exclusive allocation, attach and verify.

The pieces live in :mod:`hpcdock_service.gpu`; :class:`GpuBroker` binds them to one local
engine (whose capabilities it is given) and is that engine's
:class:`~.engines.base.GpuPlacement`: the scheduler only asks "give task T N GPUs"; the
engine asks how to attach them and whether the container really got them.
"""

from __future__ import annotations

from typing import Any, Optional

from .engines.base import GpuGrant
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
        cls,
        caps: Optional[EngineCaps],
        declared: Optional[list[dict[str, Any]]] = None,
        cdi_kind: str = NVIDIA_CDI_KIND,
    ) -> GpuBroker:
        """Inventory this machine's GPUs (or take the ones the config declares) for an engine of ``caps``.

        ``declared`` lets an admin name the GPUs hpcdock may use by hand: a subset (keep
        GPU 0 for the artist's display) or GPUs NVML cannot see from where the service runs.
        """
        inventory = detect_gpus()
        if declared is not None:
            inventory.gpus = [
                Gpu(int(g["index"]), str(g.get("uuid") or f"GPU-{g['index']}"), str(g.get("name") or ""))
                for g in declared
            ]
        return cls(inventory, caps, cdi_kind)

    # -- GpuPlacement -----------------------------------------------------------------------
    def check(self, count: int) -> Optional[str]:
        return self.allocator.check_request(count)

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        gpus = self.allocator.try_acquire(task_id, count)
        return None if gpus is None else GpuGrant(count, tuple(g.index for g in gpus))

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        self.allocator.restore(task_id, grant.indices)

    def release(self, task_id: int) -> None:
        self.allocator.release(task_id)

    def to_json(self) -> list[dict[str, Any]]:
        """The GPUs tasks can get, and which task holds each: what /v1/health shows."""
        return self.allocator.to_json()

    def inventory_json(self) -> dict[str, Any]:
        """Everything detected (NVML, device nodes, CDI specs): what ``--check`` shows."""
        return self.inventory.to_json()

    # -- the local engine's own ------------------------------------------------------------------
    def attachment(self, grant: GpuGrant) -> Attachment:
        """How to attach the granted GPUs on this engine; AttachError when it cannot."""
        if self.caps is None:
            raise AttachError("the engine's capabilities are unknown; cannot attach GPUs")
        if len(grant.indices) != grant.count:
            raise AttachError(
                f"the local engine attaches GPUs by index, and a grant of {grant.count} GPU(s) "
                f"names {len(grant.indices)}"
            )
        gpus = [g for g in self.inventory.gpus if g.index in grant.indices]
        return plan_attachment(gpus, self.caps, self.inventory, cdi_kind=self.cdi_kind)
