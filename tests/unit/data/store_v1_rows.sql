-- Rows as the first release (baaf33d) wrote them, in its columns: job 1 ran (frame 1 done, frame 2 failed),
-- job 2 waits with two pending tasks and no frame output.
INSERT INTO meta (key, value)
    VALUES ('store_id', 'oldstore0001');
INSERT INTO jobs (id, name, state, priority, bundle_dir, container, params, max_attempts, created_at, started_at, finished_at, error)
    VALUES (1, 'shot010', 'failed', 50, '/tmp/hpcdock-old/shot010',
    '{"image": "img", "env": {}, "network": false, "mounts": [], "workdir": null}', '{"Frames": "1-2"}',
    2, 1764350000.0, 1764350001.0, 1764350030.0, '1 task(s) failed');
INSERT INTO jobs (id, name, state, priority, bundle_dir, container, params, max_attempts, created_at, started_at, finished_at, error)
    VALUES (2, 'shot020', 'queued', 60, '/tmp/hpcdock-old/shot020',
    '{"image": "img", "env": {}, "network": false, "mounts": [], "workdir": null}', '{"Frames": "3-4"}',
    1, 1764350040.0, NULL, NULL, NULL);
INSERT INTO steps (job_id, idx, name, depends_on, gpus, command, timeout, cancel_grace, output)
    VALUES (1, 0, 'render', '[]', 0, '["sh", "-c", "render {{Task.Param.Frame}}"]', NULL, 10.0,
    '/tmp/hpcdock-old/out/f.{frame:04d}.png');
INSERT INTO steps (job_id, idx, name, depends_on, gpus, command, timeout, cancel_grace, output)
    VALUES (2, 0, 'sim', '[]', 0, '["sh", "-c", "sim {{Task.Param.Frame}}"]', 600.0, 10.0, NULL);
INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, attempt, max_attempts, container, exit_code, progress, error, started_at, finished_at, gpus, log_offset)
    VALUES (1, 1, 0, 0, '{"Frame": "1"}', '[[1, 1]]', 'succeeded', 1, 2, 'hpcdock-1-1', 0, 100.0,
    NULL, 1764350001.0, 1764350010.0, '[]', 812);
INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, attempt, max_attempts, container, exit_code, progress, error, started_at, finished_at, gpus, log_offset)
    VALUES (2, 1, 0, 1, '{"Frame": "2"}', '[[2, 2]]', 'failed', 2, 2, 'hpcdock-2-2', 1, 40.0,
    'exit code 1', 1764350011.0, 1764350030.0, '[]', 377);
INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, attempt, max_attempts, container, exit_code, progress, error, started_at, finished_at, gpus, log_offset)
    VALUES (3, 2, 0, 0, '{"Frame": "3"}', '[[3, 3]]', 'pending', 0, 1, NULL, NULL, 0.0,
    NULL, NULL, NULL, NULL, 0);
INSERT INTO tasks (id, job_id, step_idx, idx, params, frames, state, attempt, max_attempts, container, exit_code, progress, error, started_at, finished_at, gpus, log_offset)
    VALUES (4, 2, 0, 1, '{"Frame": "4"}', '[[4, 4]]', 'pending', 0, 1, NULL, NULL, 0.0,
    NULL, NULL, NULL, NULL, 0);
INSERT INTO frames (job_id, step_idx, frame, task_id, state, output, error, started_at, finished_at, thumbnail)
    VALUES (1, 0, 1, 1, 'done', '/tmp/hpcdock-old/out/f.0001.png', NULL, 1764350002.0,
    1764350009.0, NULL);
INSERT INTO frames (job_id, step_idx, frame, task_id, state, output, error, started_at, finished_at, thumbnail)
    VALUES (1, 0, 2, 2, 'failed', '/tmp/hpcdock-old/out/f.0002.png', 'exit code 1', 1764350012.0,
    1764350030.0, NULL);
INSERT INTO events (id, job_id, kind, data, ts)
    VALUES (1, 1, 'job', '{"job": {"id": 1, "state": "queued"}}', 1764350000.0);
INSERT INTO events (id, job_id, kind, data, ts)
    VALUES (2, 1, 'task', '{"task": {"id": 1, "state": "running"}}', 1764350001.0);
INSERT INTO events (id, job_id, kind, data, ts)
    VALUES (3, 1, 'frame', '{"frame": {"frame": 1, "state": "done"}}', 1764350009.0);
INSERT INTO events (id, job_id, kind, data, ts)
    VALUES (4, 1, 'job', '{"job": {"id": 1, "state": "failed"}}', 1764350030.0);
INSERT INTO events (id, job_id, kind, data, ts)
    VALUES (5, 2, 'job', '{"job": {"id": 2, "state": "queued"}}', 1764350040.0);
