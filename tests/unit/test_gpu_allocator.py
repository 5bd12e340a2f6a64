import threading
import time

import pytest
from hpcdock_service.gpu import Gpu, GpuAllocator, GpuConflict

GPUS = [Gpu(i, f"GPU-{i}", "NVIDIA H200") for i in range(3)]


def test_exclusive_and_pinned():
    a = GpuAllocator(GPUS)
    assert [g.index for g in a.try_acquire("t1", 2)] == [0, 1]
    assert a.try_acquire("t2", 2) is None  # only one free
    assert [g.uuid for g in a.try_acquire("t3", 1)] == ["GPU-2"]
    assert a.free_count() == 0 and a.try_acquire("t4", 1) is None
    assert [g.index for g in a.release("t1")] == [0, 1]
    assert [g.index for g in a.try_acquire("t2", 2)] == [0, 1]
    assert a.release("nobody") == []


def test_zero_and_idempotent():
    a = GpuAllocator(GPUS)
    assert a.try_acquire("cpu", 0) == []
    first = a.try_acquire("t", 1)
    assert a.try_acquire("t", 1) == first and a.free_count() == 2
    with pytest.raises(ValueError):
        a.try_acquire("t", 2)


def test_check_request_refuses_more_than_the_machine_has():
    a = GpuAllocator(GPUS)
    assert a.check_request(0) is None and a.check_request(3) is None
    msg = a.check_request(4)
    assert "amount.worker.gpu" in msg and "4 GPUs" in msg and "3 GPUs" in msg
    assert "no NVIDIA GPU" in GpuAllocator([]).check_request(1)
    assert "amount.worker.gpu" in a.check_request(-1)
    with pytest.raises(ValueError, match="amount.worker.gpu"):
        a.acquire("t", 5)


def test_waiting_task_gets_gpu_when_freed():
    a = GpuAllocator(GPUS[:1])
    a.try_acquire("t1", 1)
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("g", a.acquire("t2", 1, timeout=10)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()
    a.release("t1")
    waiter.join(5)
    assert [g.index for g in got["g"]] == [0]
    assert a.acquire("t3", 1, timeout=0.05) is None


def test_concurrent_acquire_never_double_books():
    a = GpuAllocator(GPUS)
    owners, lock = [], threading.Lock()

    def worker(n):
        for i in range(200):
            tid = (n, i)
            got = a.try_acquire(tid, 1)
            if got:
                with lock:
                    owners.append(got[0].index)
                held = [
                    g.index
                    for g in GPUS
                    if any(x["task"] == tid for x in a.to_json() if x["index"] == g.index)
                ]
                assert held == [got[0].index]
                a.release(tid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert owners and a.free_count() == 3


def test_restore_after_restart():
    a = GpuAllocator(GPUS)
    assert [g.index for g in a.restore("t1", [2, 0])] == [0, 2]
    assert a.restore("t1", [0]) and a.held_by("t1")[0].index == 0
    assert [g.index for g in a.try_acquire("t2", 1)] == [1]
    with pytest.raises(GpuConflict):
        a.restore("t3", [1])
    with pytest.raises(GpuConflict):
        a.restore("t3", [7])
    assert [x["task"] for x in a.to_json()] == ["t1", "t2", "t1"]


def test_duplicate_index_rejected():
    with pytest.raises(ValueError):
        GpuAllocator([GPUS[0], GPUS[0]])
