"""The store under a lock held by another process, and a corrupted store file (real SQLite, no engine)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hpcdock_service import store as store_mod
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.store import Store, StoreBusy, StoreCorrupt

from tests.unit.test_scheduler import step, write_bundle


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "hpcdock.db")
    yield s
    s.close()


def _plan(tmp_path: Path):
    return load_bundle(
        write_bundle(tmp_path / "b", [step("render", "echo")], frames="1-2"),
        mount_policy=MountPolicy.build([str(tmp_path)]),
    )


class Locker:
    """Another process holding ``BEGIN EXCLUSIVE`` on the store until released."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.readline()\n"
                "db.execute('COMMIT')\n",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


def test_a_lock_held_elsewhere_blocks_no_reader_and_no_result_is_dropped(
    store: Store, tmp_path: Path, monkeypatch
) -> None:
    job = store.create_job(_plan(tmp_path))
    task_id = store.next_pending(job.id, 0)
    assert task_id is not None
    store.start_task(task_id, "c1", [], 0)
    monkeypatch.setattr(store_mod, "API_WRITE_PATIENCE", 0.5)  # an API call's write gives up soon
    assert store.health().to_json() == {"state": "ok"}

    locker = Locker(store.path)
    try:
        assert store.health().to_json()["state"] == "busy"
        with pytest.raises(StoreBusy) as refused:
            store.cancel_job(job.id)
        assert refused.value.status == 503 and str(store.path) in refused.value.message

        finished = threading.Event()
        recorder = threading.Thread(target=lambda: (store.finish_task(task_id, 0, None), finished.set()))
        recorder.start()
        time.sleep(1.0)
        assert not finished.is_set()  # waiting for the lock, not failed
        t0 = time.monotonic()
        assert store.read_task(task_id).state == "running"  # readers are not held up by the waiting writer
        assert store.read_job(job.id).tasks_running == 1
        assert time.monotonic() - t0 < 0.5
        assert store.health().to_json()["state"] == "busy"
    finally:
        locker.release()
    recorder.join(timeout=10)
    assert finished.is_set()
    assert store.read_task(task_id).state == "succeeded"
    assert store.health().to_json() == {"state": "ok"}


def test_a_corrupted_store_is_named_and_set_aside_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "hpcdock.db"
    garbage = b"not a database at all\n" * 500
    path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt) as refused:
        Store.open(path)
    message = str(refused.value)
    assert str(path) in message and "--reset-store" in message and "Move it aside" in message
    assert path.read_bytes() == garbage

    store = Store.open(path, reset_corrupt=True)
    try:
        assert store.jobs() == []
    finally:
        store.close()
    kept = list(tmp_path.glob("hpcdock.db.corrupt-*"))
    assert [p.read_bytes() for p in kept] == [garbage]


def test_a_damaged_page_is_found_at_start(tmp_path: Path) -> None:
    path = tmp_path / "hpcdock.db"
    store = Store(path)
    for i in range(300):  # enough rows for the events table to span pages
        store.set_frame(1, 0, i, "done")
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='events'").fetchone()[0]
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * 64)
    with pytest.raises(StoreCorrupt, match="hpcdock.db"):
        Store(path)
