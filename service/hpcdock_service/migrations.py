"""The store's schema as numbered migrations, its version kept in ``PRAGMA user_version``.

Migration N brings a store at version N-1 to version N; migration 1 is the schema of the first
release, and each later change of the schema is one more migration, appended, never edited: a
store written by any earlier release upgrades in place, each migration in one transaction
together with its new version number, so a crash leaves the store at the last version that
was whole. A store from before numbered migrations has version 0 and any of the columns that
migrations 2-4 add (the releases before added them as they found them missing): migration 1
creates only missing tables and the column migrations add only missing columns.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

Migration = Callable[[sqlite3.Connection], None]

# The schema of the first release (baaf33d), as it created it.
_FIRST_RELEASE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL,
    bundle_dir TEXT NOT NULL, container TEXT NOT NULL, params TEXT NOT NULL,
    max_attempts INTEGER NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
    depends_on TEXT NOT NULL, gpus INTEGER NOT NULL, command TEXT NOT NULL,
    timeout REAL, cancel_grace REAL NOT NULL, output TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, idx INTEGER NOT NULL,
    params TEXT NOT NULL, frames TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    container TEXT, exit_code INTEGER, progress REAL NOT NULL DEFAULT 0, error TEXT,
    started_at REAL, finished_at REAL, gpus TEXT, log_offset INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job_id, step_idx, state);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);
CREATE TABLE IF NOT EXISTS frames (
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, frame INTEGER NOT NULL,
    task_id INTEGER NOT NULL, state TEXT NOT NULL, output TEXT, error TEXT,
    started_at REAL, finished_at REAL, thumbnail TEXT,
    PRIMARY KEY (job_id, step_idx, frame)
);
CREATE INDEX IF NOT EXISTS frames_by_task ON frames (task_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER, kind TEXT NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
"""

# The tables that refer to others, as migration 5 rebuilds them: SQLite adds a foreign key only
# with a new table. A task's step (and through it its job) must exist, and so must a frame's
# step and task, and an event's job (a NULL job is an event about no job).
_WITH_REFERENCES = (
    (
        "steps",
        """CREATE TABLE steps_new (
    job_id INTEGER NOT NULL REFERENCES jobs (id), idx INTEGER NOT NULL, name TEXT NOT NULL,
    depends_on TEXT NOT NULL, gpus INTEGER NOT NULL, command TEXT NOT NULL,
    timeout REAL, cancel_grace REAL NOT NULL, output TEXT, memory_mib INTEGER, vcpus REAL, frame_ref TEXT,
    amounts TEXT, waiting_for TEXT,
    PRIMARY KEY (job_id, idx)
)""",
        (),
    ),
    (
        "tasks",
        """CREATE TABLE tasks_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, idx INTEGER NOT NULL,
    params TEXT NOT NULL, frames TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    container TEXT, exit_code INTEGER, progress REAL NOT NULL DEFAULT 0, error TEXT,
    started_at REAL, finished_at REAL, gpus TEXT, log_offset INTEGER NOT NULL DEFAULT 0,
    licence_retries INTEGER NOT NULL DEFAULT 0, retry_at REAL,
    FOREIGN KEY (job_id, step_idx) REFERENCES steps (job_id, idx)
)""",
        (
            "CREATE INDEX tasks_by_job ON tasks (job_id, step_idx, state)",
            "CREATE INDEX tasks_by_state ON tasks (state)",
        ),
    ),
    (
        "frames",
        """CREATE TABLE frames_new (
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, frame INTEGER NOT NULL,
    task_id INTEGER NOT NULL REFERENCES tasks (id), state TEXT NOT NULL, output TEXT, error TEXT,
    started_at REAL, finished_at REAL, thumbnail TEXT, flags TEXT, luma REAL,
    PRIMARY KEY (job_id, step_idx, frame),
    FOREIGN KEY (job_id, step_idx) REFERENCES steps (job_id, idx)
)""",
        ("CREATE INDEX frames_by_task ON frames (task_id)",),
    ),
    (
        "events",
        """CREATE TABLE events_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER REFERENCES jobs (id), kind TEXT NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL
)""",
        ("CREATE INDEX events_by_job ON events (job_id, id)",),
    ),
)


class SchemaTooNew(Exception):
    """The store was written by a newer release: this code does not know its schema."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"store version {found}, newer than the {known} this service knows")
        self.found = found
        self.known = known


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def _first_release(db: sqlite3.Connection) -> None:
    for statement in _FIRST_RELEASE.split(";"):
        if statement.strip():
            db.execute(statement)


def _adding(*columns: tuple[str, str, str]) -> Migration:
    """A migration adding ``(table, column, type)`` columns, each unless the store has it already."""

    def add(db: sqlite3.Connection) -> None:
        have: dict[str, list[str]] = {}
        for table, name, kind in columns:
            if table not in have:
                have[table] = _columns(db, table)
            if name not in have[table]:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    return add


def _add_references(db: sqlite3.Connection) -> None:
    """Rebuild the tables that refer to others with their foreign keys, keeping every row and each
    AUTOINCREMENT counter (an event id is a client's resume point: it never goes back)."""
    for table, create, indexes in _WITH_REFERENCES:
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
        db.execute(create)
        new = set(_columns(db, f"{table}_new"))
        kept = ", ".join(c for c in _columns(db, table) if c in new)
        db.execute(f"INSERT INTO {table}_new ({kept}) SELECT {kept} FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        if seq is not None:
            db.execute("UPDATE sqlite_sequence SET seq=MAX(seq, ?) WHERE name=?", (seq[0], table))
        for index in indexes:
            db.execute(index)
    broken = db.execute("PRAGMA foreign_key_check").fetchone()
    if broken is not None:
        table, rowid, parent, _ = broken
        raise sqlite3.IntegrityError(
            f"{table} row {rowid} refers to a {parent} row that does not exist; the store was left as it was"
        )


MIGRATIONS: tuple[Migration, ...] = (
    _first_release,
    # steps carry their tasks' resource limits (empty: the service's defaults)
    _adding(("steps", "memory_mib", "INTEGER"), ("steps", "vcpus", "REAL")),
    # frame checks: a job's settings and flagged count, a step's reference frame, a frame's flags
    # (an older job checks with the default settings, its frames carry no flags yet)
    _adding(
        ("jobs", "frame_checks", "TEXT"),
        ("jobs", "fps", "REAL"),
        ("jobs", "frames_flagged", "INTEGER NOT NULL DEFAULT 0"),
        ("steps", "frame_ref", "TEXT"),
        ("frames", "flags", "TEXT"),
        ("frames", "luma", "REAL"),
    ),
    # counted resources and licence back-off
    _adding(
        ("steps", "amounts", "TEXT"),
        ("steps", "waiting_for", "TEXT"),
        ("tasks", "licence_retries", "INTEGER NOT NULL DEFAULT 0"),
        ("tasks", "retry_at", "REAL"),
    ),
    _add_references,
    # a task's status line (the last ``openjd_status`` it printed), a step script's embeddedFiles
    _adding(("tasks", "status", "TEXT"), ("steps", "files", "TEXT")),
    # the OpenJD environments a step's tasks run in (empty: none)
    _adding(("steps", "environments", "TEXT")),
    # the worker groups (Slurm partitions, Swarm nodes) a step's host requirements place it on
    _adding(("steps", "placement", "TEXT")),
)
LATEST = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> None:
    """Bring the store on ``db`` (an autocommit connection) to LATEST, one transaction per migration.

    Foreign keys are off while migrating (a rebuild drops a table others refer to; SQLite ignores
    the pragma inside a transaction) and on afterwards. Raises SchemaTooNew for a newer store.
    """
    if version(db) == LATEST:  # the usual start: no write lock taken
        return
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                found = version(db)  # read under the write lock: no other writer can be migrating it too
                if found > LATEST:
                    raise SchemaTooNew(found, LATEST)
                if found < LATEST:
                    MIGRATIONS[found](db)
                    db.execute(f"PRAGMA user_version={found + 1}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if found >= LATEST - 1:
                return
    finally:
        db.execute("PRAGMA foreign_keys=ON")
