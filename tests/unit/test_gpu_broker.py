"""The local engine's GPU placement, as the scheduler sees it through the engine seam (GpuGrant values)."""

from __future__ import annotations

import pytest
from hpcdock_service.engines.base import GpuGrant
from hpcdock_service.gpu import AttachError, EngineCaps, GpuConflict
from hpcdock_service.gpu_broker import GpuBroker

from tests.unit.test_gpu_attach import inventory


def broker() -> GpuBroker:
    return GpuBroker(inventory(), EngineCaps("podman", (5, 4)))


def test_grants_name_the_gpus_held_and_nobody_else_gets_them() -> None:
    gpus = broker()
    assert gpus.acquire(1, 1) == GpuGrant(1, (0,))
    assert gpus.acquire(2, 1) == GpuGrant(1, (1,))
    assert gpus.acquire(3, 1) is None  # both held: the task waits
    gpus.release(1)
    assert gpus.acquire(3, 1) == GpuGrant(1, (0,))
    assert [g["task"] for g in gpus.to_json()] == [3, 2]


def test_a_restored_grant_holds_its_gpus_again_and_a_clash_is_refused() -> None:
    gpus = broker()
    gpus.restore(7, GpuGrant(1, (1,)))
    assert gpus.acquire(8, 2) is None and gpus.acquire(8, 1) == GpuGrant(1, (0,))
    with pytest.raises(GpuConflict):
        gpus.restore(9, GpuGrant(1, (1,)))


def test_the_submit_check_names_the_gpus_this_machine_has() -> None:
    gpus = broker()
    assert gpus.check(2) is None
    refusal = gpus.check(3)
    assert refusal is not None and "amount.worker.gpu" in refusal and "2 GPUs" in refusal


def test_the_attachment_is_planned_for_the_granted_gpus_only() -> None:
    gpus = broker()
    attachment = gpus.attachment(gpus.acquire(1, 1) or GpuGrant(0))
    assert attachment.indices == [0] and attachment.cdi_names == ["nvidia.com/gpu=GPU-aaa"]
    with pytest.raises(AttachError, match="by index"):
        gpus.attachment(GpuGrant(1))  # a count alone: this engine cannot tell which GPU
