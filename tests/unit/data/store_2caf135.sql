-- The store schema of the last release before numbered migrations (commit 2caf135, service/hpcdock_service/store.py
-- SCHEMA), verbatim: what it created for a new store.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL,
    bundle_dir TEXT NOT NULL, container TEXT NOT NULL, params TEXT NOT NULL,
    max_attempts INTEGER NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
    frame_checks TEXT, fps REAL, frames_flagged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
    depends_on TEXT NOT NULL, gpus INTEGER NOT NULL, command TEXT NOT NULL,
    timeout REAL, cancel_grace REAL NOT NULL, output TEXT, memory_mib INTEGER, vcpus REAL, frame_ref TEXT,
    amounts TEXT, waiting_for TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, idx INTEGER NOT NULL,
    params TEXT NOT NULL, frames TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    container TEXT, exit_code INTEGER, progress REAL NOT NULL DEFAULT 0, error TEXT,
    started_at REAL, finished_at REAL, gpus TEXT, log_offset INTEGER NOT NULL DEFAULT 0,
    licence_retries INTEGER NOT NULL DEFAULT 0, retry_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job_id, step_idx, state);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);
CREATE TABLE IF NOT EXISTS frames (
    job_id INTEGER NOT NULL, step_idx INTEGER NOT NULL, frame INTEGER NOT NULL,
    task_id INTEGER NOT NULL, state TEXT NOT NULL, output TEXT, error TEXT,
    started_at REAL, finished_at REAL, thumbnail TEXT, flags TEXT, luma REAL,
    PRIMARY KEY (job_id, step_idx, frame)
);
CREATE INDEX IF NOT EXISTS frames_by_task ON frames (task_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER, kind TEXT NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
