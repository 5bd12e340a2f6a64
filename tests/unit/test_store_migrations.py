"""Numbered store migrations (real SQLite, no engine): a store written by an earlier release, in each shape
the releases gave it, upgrades in place with every row kept and the service runs on it; a newer store is
refused; foreign keys hold on every connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hpcdock_service.main import main
from hpcdock_service.migrations import LATEST, MIGRATIONS, _add_references
from hpcdock_service.scheduler import Scheduler
from hpcdock_service.store import Store, StoreCorrupt, StoreTooNew

from tests.unit.test_frame_store import checked, flags_by_frame, render
from tests.unit.test_scheduler import FakeEngine, run_until_done

DATA = Path(__file__).parent / "data"
V1_COLUMNS = {  # the first release's columns, which every later shape keeps
    "meta": "key, value",
    "jobs": "id, name, state, priority, bundle_dir, container, params, max_attempts, created_at, started_at, "
    "finished_at, error",
    "steps": "job_id, idx, name, depends_on, gpus, command, timeout, cancel_grace, output",
    "tasks": "id, job_id, step_idx, idx, params, frames, state, attempt, max_attempts, container, exit_code, "
    "progress, error, started_at, finished_at, gpus, log_offset",
    "frames": "job_id, step_idx, frame, task_id, state, output, error, started_at, finished_at, thumbnail",
    "events": "id, job_id, kind, data, ts",
}
# The columns each release after the first added, as it added them to a store it found without them.
LIMITS = ["ALTER TABLE steps ADD COLUMN memory_mib INTEGER", "ALTER TABLE steps ADD COLUMN vcpus REAL"]
FRAME_CHECKS = [
    "ALTER TABLE jobs ADD COLUMN frame_checks TEXT",
    "ALTER TABLE jobs ADD COLUMN fps REAL",
    "ALTER TABLE jobs ADD COLUMN frames_flagged INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE steps ADD COLUMN frame_ref TEXT",
    "ALTER TABLE frames ADD COLUMN flags TEXT",
    "ALTER TABLE frames ADD COLUMN luma REAL",
]
RESOURCES = [
    "ALTER TABLE steps ADD COLUMN amounts TEXT",
    "ALTER TABLE steps ADD COLUMN waiting_for TEXT",
    "ALTER TABLE tasks ADD COLUMN licence_retries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE tasks ADD COLUMN retry_at REAL",
]
SHAPES = {
    "baaf33d": ("store_v1.sql", []),
    "baaf33d+limits": ("store_v1.sql", LIMITS),
    "baaf33d+limits+frame-checks": ("store_v1.sql", LIMITS + FRAME_CHECKS),
    "baaf33d+every-column": ("store_v1.sql", LIMITS + FRAME_CHECKS + RESOURCES),
    "2caf135-new-store": ("store_2caf135.sql", []),
}


def old_store(path: Path, shape: str) -> dict[str, list[tuple]]:
    """An earlier release's store with the fixture rows; returns its rows in the first release's columns."""
    schema, alters = SHAPES[shape]
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript((DATA / schema).read_text())
    for statement in alters:
        db.execute(statement)
    db.executescript((DATA / "store_v1_rows.sql").read_text())
    db.execute("UPDATE sqlite_sequence SET seq=20 WHERE name='events'")  # ids handed out before, never again
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    rows = v1_rows(db)
    db.close()
    return rows


def v1_rows(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    return {
        table: db.execute(f"SELECT {cols} FROM {table} ORDER BY rowid").fetchall()
        for table, cols in V1_COLUMNS.items()
    }


def references(db: sqlite3.Connection) -> set[tuple[str, str, str]]:
    """(table, column, parent) for every foreign key declared."""
    return {
        (table, row[3], row[2])
        for table in V1_COLUMNS
        for row in db.execute(f"PRAGMA foreign_key_list({table})")
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_earlier_store_upgrades_in_place_keeping_every_row(tmp_path: Path, shape: str) -> None:
    path = tmp_path / "state" / "db.sqlite"
    before = old_store(path, shape)
    store = Store(path)
    try:
        assert store.store_id == "oldstore0001"
        assert [(j.id, j.name, j.state, j.frames_flagged) for j in store.jobs()] == [
            (2, "shot020", "queued", 0),
            (1, "shot010", "failed", 0),
        ]
        assert [(t.id, t.state, t.frames, t.licence_retries) for t in store.tasks(1)] == [
            (1, "succeeded", (1,), 0),
            (2, "failed", (2,), 0),
        ]
        assert [(f.frame, f.state, f.output, f.flags) for f in store.frames(1)] == [
            (1, "done", "/tmp/hpcdock-old/out/f.0001.png", ()),
            (2, "failed", "/tmp/hpcdock-old/out/f.0002.png", ()),
        ]
        assert [e.id for e in store.events_after(0)] == [1, 2, 3, 4, 5]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert v1_rows(db) == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        indexes = {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")
        }
        assert indexes == {"tasks_by_job", "tasks_by_state", "frames_by_task", "events_by_job"}
    finally:
        db.close()


@pytest.mark.parametrize("shape", ["baaf33d", "2caf135-new-store"])
def test_the_service_runs_on_an_upgraded_store(tmp_path: Path, shape: str) -> None:
    old_store(tmp_path / "state" / "db.sqlite", shape)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(store, FakeEngine(slots=2), state_dir=tmp_path / "state")
    try:
        run_until_done(store, sched, [2])  # the old queued job runs
        assert [t.state for t in store.tasks(2)] == ["succeeded", "succeeded"]
        assert store.read_job(2).state == "succeeded"

        job = store.retry_frames(1, [2])  # a new task for the old failed frame, checked as it lands
        assert job.state == "queued"
        assert [(t.id, t.state) for t in store.tasks(1)] == [
            (1, "succeeded"),
            (2, "replaced"),
            (5, "pending"),
        ]
        render(store, 1, checked(tmp_path / "frames", range(2, 3), {2: np.zeros((90, 160, 3))}))
        assert flags_by_frame(store, 1) == {2: ["black"]}
        assert store.read_job(1).state == "succeeded" and store.read_job(1).frames_flagged == 1

        events = store.events_after(0, limit=10_000)
        assert [e.id for e in events[:5]] == [1, 2, 3, 4, 5]
        assert events[5].id == 21  # the counter went on from where the old store left it
    finally:
        store.close()


def test_a_new_store_has_the_latest_version_and_foreign_keys_on(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = Store(path)
    try:
        with store._read() as reader:
            assert reader.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert reader.execute("PRAGMA user_version").fetchone()[0] == LATEST
            assert references(reader) == {
                ("steps", "job_id", "jobs"),
                ("tasks", "job_id", "steps"),
                ("tasks", "step_idx", "steps"),
                ("frames", "job_id", "steps"),
                ("frames", "step_idx", "steps"),
                ("frames", "task_id", "tasks"),
                ("events", "job_id", "jobs"),
            }
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store._tx() as db:
            db.execute(
                "INSERT INTO steps (job_id, idx, name, depends_on, gpus, command, cancel_grace) "
                "VALUES (7, 0, 'render', '[]', 0, '[]', 1)"
            )
    finally:
        store.close()


def test_a_store_newer_than_the_code_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={LATEST + 3}")
    image = path.read_bytes()
    for reset in (False, True):  # --reset-store is for a corrupted store, not a newer one
        with pytest.raises(StoreTooNew) as refused:
            Store.open(path, reset_corrupt=reset)
        message = str(refused.value)
        assert str(path) in message and f"version {LATEST + 3}" in message and f"up to {LATEST}" in message
        assert path.read_bytes() == image
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_the_service_refuses_a_newer_store_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HPCDOCK_ALLOW_ROOT", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    state = tmp_path / "state"
    Store(state / "hpcdock.db").close()
    with sqlite3.connect(state / "hpcdock.db") as db:
        db.execute(f"PRAGMA user_version={LATEST + 1}")
    for extra in ([], ["--reset-store"]):
        assert (
            main(["--state-dir", str(state), "--check", *extra]) == 1
        )  # the store is opened before the engine
        err = capsys.readouterr().err
        assert err.startswith("hpcdock-service: the store ") and err.count("\n") == 1, err
        assert f"schema version {LATEST + 1}" in err and "Traceback" not in err
    assert not list(state.glob("*.corrupt-*"))


def test_a_migration_that_cannot_keep_a_row_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    before = old_store(path, "baaf33d+every-column")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO frames (job_id, step_idx, frame, task_id, state) VALUES (1, 0, 3, 99, 'waiting')"
        )
        before["frames"].append((1, 0, 3, 99, "waiting", None, None, None, None, None))
    with pytest.raises(StoreCorrupt, match="frames row 3 refers to a tasks row that does not exist"):
        Store(path)
    db = sqlite3.connect(path)
    try:
        # the migrations before the one that failed held
        assert db.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS.index(_add_references)
        assert v1_rows(db) == before
        assert references(db) == set()
    finally:
        db.close()
