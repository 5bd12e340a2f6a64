"""Faults outside the tasks: a store locked by another process, a corrupted store, and the
engine's API going away mid-job (an external Podman service, and the embedded one).

Real parts throughout: a real ``hpcdock-service`` process, real rootless Podman, a real
second process holding SQLite's lock, and Podman API processes killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hpcdock.client import ServiceError
from hpcdock_service.engines.base import RunState

from tests.helpers import (
    ServiceProcess,
    make_bundle,
    remove_leftovers,
    socket_answers,
    store_id_of,
    wait_for,
    wait_job,
)

LOCK_SECONDS = 12  # long against tasks of a few seconds: several finish while it is held


def _containers(engine_url: str, svc: ServiceProcess) -> list[str]:
    """Names of the containers the service's store has on that engine."""
    from hpcdock_service.engines.local import LocalEngine

    eng = LocalEngine(engine_url)
    try:
        return [c.name for c in eng.leftovers(store_id_of(svc))]
    finally:
        eng.close()


def _rendering(client, job_id: int, count: int):
    def check() -> bool:
        running = [t for t in client.tasks(job_id) if t["state"] == "running"]
        return len(running) == count and all("frame-start" in client.log(t["id"])[0] for t in running)

    return check


def _assert_each_frame_once(client, job: dict) -> list[dict]:
    """The job succeeded on its first attempts, and every frame rendered exactly once."""
    assert job["state"] == "succeeded", job
    tasks = client.tasks(job["id"])
    assert [t["attempt"] for t in tasks] == [1] * len(tasks), [
        (t["id"], t["attempt"], t["error"]) for t in tasks
    ]
    frames = client.frames(job["id"])
    assert [f["state"] for f in frames] == ["done"] * len(frames) and frames
    for t in tasks:
        log, _ = client.log(t["id"])
        for frame in t["frames"]:
            assert log.count(f"::hpcdock::frame-start {frame}\n") == 1, log
    return tasks


# -- the store -------------------------------------------------------------------------------------


def test_store_locked_by_another_process_delays_results_but_loses_none(
    service: ServiceProcess, tmp_path: Path, engine
) -> None:
    client = service.client()
    store_id = store_id_of(service)
    bundle = make_bundle(tmp_path / "locked", frames="1-4", chunk=1, env={"FRAME_SLEEP": "3"})
    job = client.submit(str(bundle))
    wait_for(_rendering(client, job["id"], 2), 60, what="two tasks rendering")

    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "db.execute('COMMIT')\n",
            str(service.state_dir / "hpcdock.db"),
            str(LOCK_SECONDS),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        slowest, states, kept = 0.0, set(), set()
        while locker.poll() is None:
            t0 = time.monotonic()
            health = client.health()
            slowest = max(slowest, time.monotonic() - t0)
            states.add(health["store"]["state"])
            tasks = client.tasks(job["id"])  # reads answer too
            assert not [t for t in tasks if t["state"] == "failed"], tasks
            kept |= {c.name for c in engine.leftovers(store_id) if c.state is not RunState.RUNNING}
            time.sleep(0.5)
        assert locker.returncode == 0
    finally:
        locker.kill()
        locker.wait()
    assert slowest < 3.0, f"/v1/health took {slowest:.1f}s while the store was locked"
    assert "busy" in states, states
    # tasks ended while the lock was held; their containers stayed until their results were recorded
    assert kept, "no task finished during the lock: the test proves nothing"

    job = wait_job(client, job["id"], timeout=120)
    _assert_each_frame_once(client, job)
    assert client.health()["store"]["state"] == "ok"
    wait_for(lambda: not engine.leftovers(store_id), 30, what="containers removed")


def test_corrupted_store_is_refused_clearly_and_can_be_set_aside(tmp_path: Path, engine_url: str) -> None:
    svc = ServiceProcess(tmp_path / "svc", engine_url)
    svc.state_dir.mkdir(parents=True)
    db = svc.state_dir / "hpcdock.db"
    garbage = b"this is not a database, whatever its name says\n" * 200
    db.write_bytes(garbage)
    args = [
        sys.executable,
        "-m",
        "hpcdock_service.main",
        "--state-dir",
        str(svc.state_dir),
        "--engine-socket",
        engine_url,
        "--check",
    ]

    refused = subprocess.run(args, env=svc.env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused
    assert "Traceback" not in refused.stderr, refused.stderr
    assert str(db) in refused.stderr and "corrupted" in refused.stderr and "--reset-store" in refused.stderr
    assert db.read_bytes() == garbage  # nothing touched without being asked

    reset = subprocess.run(args + ["--reset-store"], env=svc.env, capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr
    kept = list(svc.state_dir.glob("hpcdock.db.corrupt-*"))
    assert [p.read_bytes() for p in kept] == [garbage], kept
    again = subprocess.run(args, env=svc.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr  # the new store is a healthy one


# -- the engine ------------------------------------------------------------------------------------


class PodmanService:
    """A ``podman system service`` of the test's own, on a socket of its own, to kill and start again."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.url = f"unix://{sock}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PodmanService:
        self.proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", self.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: socket_answers(self.sock), 30, 0.05, what="podman system service to listen")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def own_podman(tmp_path: Path, engine_url: str) -> Iterator[PodmanService]:
    pod = PodmanService(tmp_path / "engine" / "podman.sock")
    pod.sock.parent.mkdir()
    yield pod.start()
    pod.stop()


def test_engine_api_killed_mid_job_tasks_wait_and_the_job_finishes(
    tmp_path: Path, own_podman: PodmanService
) -> None:
    svc = ServiceProcess(tmp_path / "svc", own_podman.url).start()
    try:
        client = svc.client()
        bundle = make_bundle(tmp_path / "lost", frames="1-6", chunk=2, env={"FRAME_SLEEP": "2"})
        job = client.submit(str(bundle))
        wait_for(_rendering(client, job["id"], 2), 60, what="two tasks rendering")

        own_podman.kill()
        health = wait_for(
            lambda: (lambda h: h if h["engine"]["state"] == "down" else None)(client.health()),
            15,
            what="/v1/health to report the engine down",
        )
        assert health["ok"] is False
        with pytest.raises(ServiceError) as refused:  # a job cannot be checked against the engine now
            client.submit(str(make_bundle(tmp_path / "meanwhile", frames="1")))
        assert refused.value.status == 503 and refused.value.field == "engine", refused.value
        time.sleep(5)  # the containers go on under conmon; some finish while nobody can ask
        tasks = client.tasks(job["id"])
        assert client.job(job["id"])["state"] == "running"
        assert {t["state"] for t in tasks} <= {"running", "pending"}, tasks
        assert all(t["attempt"] <= 1 for t in tasks), tasks

        own_podman.start()  # the same socket
        job = wait_job(client, job["id"], timeout=120)
        tasks = _assert_each_frame_once(client, job)
        assert "re-adopted after the engine came back" in "".join(client.log(t["id"])[0] for t in tasks)
        assert client.health()["engine"]["state"] == "up"
        wait_for(lambda: not _containers(own_podman.url, svc), 30, what="no container left")
    finally:
        if not own_podman.alive():  # the test failed while the engine was down: clean up through it
            own_podman.start()
        svc.stop()
        remove_leftovers(svc)


def test_cancel_while_the_engine_is_down_stops_the_container_once_it_is_back(
    tmp_path: Path, own_podman: PodmanService
) -> None:
    svc = ServiceProcess(tmp_path / "svc", own_podman.url).start()
    try:
        client = svc.client()
        bundle = make_bundle(tmp_path / "long", frames="1", chunk=1, env={"FRAME_SLEEP": "600"})
        job = client.submit(str(bundle))
        wait_for(_rendering(client, job["id"], 1), 60, what="the task rendering")
        own_podman.kill()
        wait_for(lambda: client.health()["engine"]["state"] == "down", 15, what="the engine down")

        t0 = time.monotonic()
        assert client.cancel(job["id"])["state"] == "canceled"
        assert time.monotonic() - t0 < 10  # the answer does not wait for the engine

        own_podman.start()
        (task,) = wait_for(
            lambda: (lambda ts: ts if ts[0]["state"] != "running" else None)(client.tasks(job["id"])),
            60,
            what="the task to end",
        )
        assert task["state"] == "canceled" and task["attempt"] == 1, task
        assert "frame-done" not in client.log(task["id"])[0]  # stopped, not run to its end
        wait_for(lambda: not _containers(own_podman.url, svc), 30, what="no container left")
    finally:
        if not own_podman.alive():
            own_podman.start()
        svc.stop()
        remove_leftovers(svc)


def _embedded_podman_pid(service_pid: int) -> int | None:
    """The ``podman system service`` the service process started (a child of it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == service_pid and cmdline[1:3] == [b"system", b"service"]:
            return int(entry.name)
    return None


def test_embedded_podman_killed_mid_job_is_started_again(tmp_path: Path, engine_url: str) -> None:
    # No engine socket to find (the helper's own runtime directory, no DOCKER_HOST): the service
    # starts its embedded Podman.
    svc = ServiceProcess(tmp_path / "svc", engine_url=None, extra_env={"DOCKER_HOST": ""}).start()
    try:
        client = svc.client()
        assert client.health()["embedded_engine"] is True
        assert svc.proc is not None
        first = _embedded_podman_pid(svc.proc.pid)
        assert first is not None
        bundle = make_bundle(tmp_path / "emb", frames="1-4", chunk=2, env={"FRAME_SLEEP": "2"})
        job = client.submit(str(bundle))
        wait_for(_rendering(client, job["id"], 2), 60, what="two tasks rendering")

        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: (lambda e: e["state"] == "up" and e["restarts"] == 1)(client.health()["engine"]),
            30,
            what="the embedded podman service to be started again",
        )
        second = _embedded_podman_pid(svc.proc.pid)
        assert second is not None and second != first
        job = wait_job(client, job["id"], timeout=120)
        _assert_each_frame_once(client, job)
        own = f"unix://{svc.state_dir / 'podman' / 'podman.sock'}"
        wait_for(lambda: not _containers(own, svc), 30, what="no container left")
    finally:
        svc.stop()
        remove_leftovers(svc)
