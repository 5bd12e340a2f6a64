"""The core promises, against a real rootless engine and a real service process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import TEST_IMAGE, ServiceProcess, make_bundle, socket_answers, wait_for, wait_job

pytestmark = pytest.mark.engine


def test_twelve_frames_in_chunks_of_five_run_as_three_containers(
    service: ServiceProcess, tmp_path: Path, engine
) -> None:
    bundle = make_bundle(tmp_path / "twelve", frames="1-12", chunk=5)
    client = service.client()
    job = client.submit(str(bundle))
    assert job["tasks_total"] == 3 and job["frames_total"] == 12

    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", job
    tasks = client.tasks(job["id"])
    assert [t["state"] for t in tasks] == ["succeeded"] * 3
    assert sorted(f for t in tasks for f in t["frames"]) == list(range(1, 13))
    assert len({t["container"] for t in tasks}) == 3
    assert all(t["attempt"] == 1 and t["exit_code"] == 0 for t in tasks)
    frames = client.frames(job["id"])
    assert [f["state"] for f in frames] == ["done"] * 12
    for f in frames:
        assert Path(f["output"]).read_text() == f"frame {f['frame']}\n"
    text, _ = client.log(tasks[0]["id"])
    assert "::hpcdock::frame-done 1" in text
    store_id = service_store_id(service)  # containers are removed right after their result is recorded
    wait_for(lambda: engine.leftovers(store_id) == [], 30, what="containers removed")


def service_store_id(service: ServiceProcess) -> str:
    import sqlite3

    with sqlite3.connect(service.state_dir / "hpcdock.db") as conn:
        return conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0]


def test_failing_task_is_retried_then_fails_with_its_log_kept(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "fails",
        frames="1-2",
        chunk=2,
        command=["sh", "-c", "echo boom on attempt $HPCDOCK_ATTEMPT; exit 1"],
    )
    result = service.cli("submit", str(bundle), "--follow")
    assert result.returncode == 1, result.stdout + result.stderr
    client = service.client()
    job = client.jobs()[0]
    assert job["state"] == "failed"
    (task,) = client.tasks(job["id"])
    assert task["state"] == "failed" and task["attempt"] == 2 and task["exit_code"] == 1
    log, _ = client.log(task["id"])
    assert "boom on attempt 1" in log and "boom on attempt 2" in log
    assert all(f["state"] == "failed" for f in client.frames(job["id"]))


def test_cancel_mid_run_leaves_no_container(service: ServiceProcess, tmp_path: Path, engine) -> None:
    bundle = make_bundle(tmp_path / "long", frames="1-6", chunk=2, command=["sleep", "300"])
    client = service.client()
    job = client.submit(str(bundle))
    wait_for(lambda: client.job(job["id"])["tasks_running"] == 2, 60, what="two running tasks")
    job = client.cancel(job["id"])
    assert job["state"] == "canceled"
    assert {t["state"] for t in client.tasks(job["id"])} == {"canceled"}
    assert engine.leftovers(service_store_id(service)) == []
    time.sleep(1)
    assert client.job(job["id"])["tasks_running"] == 0


def test_submit_follow_shows_progress_and_exits_zero(service: ServiceProcess, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "follow", frames="1-4", chunk=2)
    result = service.cli("submit", str(bundle), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "frames 4/4" in result.stdout
    assert "frame     3 done" in result.stdout
    assert "succeeded" in result.stdout.splitlines()[-1]


def test_kill_minus_nine_mid_job_loses_nothing_and_runs_nothing_twice(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "restart", frames="1-8", chunk=2, env={"FRAME_SLEEP": "1.5"})
    client = service.client()
    job = client.submit(str(bundle))

    def rendering() -> bool:
        running = [t for t in client.tasks(job["id"]) if t["state"] == "running"]
        return len(running) == 2 and all("frame-start" in client.log(t["id"])[0] for t in running)

    wait_for(rendering, 60, what="two tasks rendering")
    service.kill()
    time.sleep(2)  # containers go on without the service; some frames finish meanwhile
    service.start()
    client = service.client()
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", job
    tasks = client.tasks(job["id"])
    assert all(t["attempt"] == 1 for t in tasks), [(t["id"], t["attempt"]) for t in tasks]
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 8
    for t in tasks:
        log, _ = client.log(t["id"])
        for frame in t["frames"]:
            assert log.count(f"::hpcdock::frame-start {frame}\n") == 1, log
    assert "re-adopted" in "".join(client.log(t["id"])[0] for t in tasks)


def test_embedded_podman_is_started_and_stopped(tmp_path: Path, engine_url: str) -> None:
    # The service's private runtime dir (XDG_RUNTIME_DIR) is also where its Podman keeps state.
    svc = ServiceProcess(tmp_path / "svc", engine_url=None, extra_env={"DOCKER_HOST": ""})
    svc.start()
    try:
        health = svc.client().health()
        assert health["embedded_engine"] is True
        assert health["engine"]["rootless"] is True
        assert str(svc.state_dir) in health["engine"]["socket"]
        bundle = make_bundle(tmp_path / "emb", frames="1-2", chunk=2)
        job = svc.client().submit(str(bundle))
        assert wait_job(svc.client(), job["id"])["state"] == "succeeded"
    finally:
        svc.stop()
    sock = svc.state_dir / "podman" / "podman.sock"
    wait_for(lambda: not socket_answers(sock), 20, what="embedded podman to stop")


def test_image_must_exist_and_health_reports_engine(service: ServiceProcess, tmp_path: Path) -> None:
    health = service.client().health()
    assert health["engine"]["engine"] == "podman" and health["engine"]["rootless"] is True
    assert TEST_IMAGE
