"""One set of scenarios every engine must pass: written once, run on each engine this machine has.

The engines are listed in :mod:`tests.engine.engine_kinds`; each scenario runs a real
``hpcdock-service`` on one of them and judges it only by what the service's API, its command
line and the engine seam (``leftovers``) say, so the same assertions hold for a local container,
a Slurm job or a Swarm service. An engine ``HPCDOCK_EXPECT_ENGINES`` names fails here when it
is missing instead of being skipped.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hpcdock.client import ServiceError
from hpcdock.protocol import JOB_FINAL
from hpcdock_service.engines.base import LABEL_STORE, ContainerFile, ContainerRequest, RunState

from tests.engine.engine_kinds import EXPECT_ENGINES, KINDS, EngineKind, by_name, expected
from tests.engine.session_bundles import failures, lines, session_bundle
from tests.engine.test_bad_input import CASES as BAD_BUNDLES
from tests.engine.test_frames_events import assert_frames_never_go_back, drain
from tests.helpers import (
    TEST_IMAGE,
    ServiceProcess,
    engine_of,
    make_bundle,
    remove_leftovers,
    store_id_of,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.engine


@pytest.fixture(params=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> EngineKind:
    kind = by_name(request.param)
    why = kind.unavailable()
    if why:
        if kind.name in expected():
            pytest.fail(f"{EXPECT_ENGINES}={os.environ[EXPECT_ENGINES]} expects {kind.name}, but {why}")
        pytest.skip(f"{kind.name}: {why}")
    return kind


@pytest.fixture
def service(kind: EngineKind, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    selection = kind.select(request)
    svc = ServiceProcess(
        tmp_path / "svc",
        selection.engine_url,
        config=selection.config,
        extra_env={"HPCDOCK_KEEPALIVE": "1"},  # drain() reads the event log up to a heartbeat
    ).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


def runs_left(svc: ServiceProcess) -> list[str]:
    """The names of the runs of this service's store the engine still has."""
    engine = engine_of(svc)
    try:
        return [run.name for run in engine.leftovers(store_id_of(svc) or "")]
    finally:
        engine.close()


def no_runs_left(svc: ServiceProcess) -> None:
    wait_for(lambda: not runs_left(svc), 30, what="no run of the service's store left on the engine")


def test_every_expected_engine_has_an_entry() -> None:
    """A name in HPCDOCK_EXPECT_ENGINES that no entry answers to would expect nothing."""
    assert expected() <= {kind.name for kind in KINDS}, (expected(), [kind.name for kind in KINDS])


# -- the seam itself: what a restarted service relies on --------------------------------------


def _request(store_id: str, name: str, command: list[str]) -> ContainerRequest:
    return ContainerRequest(
        name=name,
        image=TEST_IMAGE,
        command=command,
        env={},
        workdir="/",
        mounts=[],
        network=False,
        labels={LABEL_STORE: store_id},
    )


def test_a_run_prepared_but_never_started_is_not_found_and_is_gone(service: ServiceProcess) -> None:
    """Recovery puts such a task back to pending without spending an attempt: find must say None."""
    store_id = store_id_of(service)
    assert store_id is not None
    name = f"hpcdock-{store_id}-t999-a1"
    engine = engine_of(service)
    try:
        engine.create(_request(store_id, name, ["true"]))
        assert [run.name for run in engine.leftovers(store_id)] == [name]  # it exists, as a leftover
        assert engine.find(name) is None
        assert engine.leftovers(store_id) == []
    finally:
        for run in engine.leftovers(store_id):
            engine.remove(run.handle)
        engine.close()


def test_a_started_run_is_found_by_name_with_its_state_and_exit_code(service: ServiceProcess) -> None:
    store_id = store_id_of(service)
    assert store_id is not None
    name = f"hpcdock-{store_id}-t998-a1"
    engine = engine_of(service)
    try:
        handle = engine.create(_request(store_id, name, ["sh", "-c", "echo started; sleep 2; exit 3"]))
        engine.start(handle)
        running = engine.find(name)
        assert running is not None and running.handle == handle and running.name == name, running
        assert running.state in (RunState.QUEUED, RunState.RUNNING) and running.exit_code is None, running
        assert engine.wait(handle, timeout=120) == 3
        exited = engine.find(name)
        assert exited is not None and exited.state is RunState.EXITED and exited.exit_code == 3, exited
        assert engine.status(handle) == exited and not exited.oom_killed
        assert b"started" in b"".join(engine.logs(handle, follow=False))
        engine.remove(handle)
        assert engine.find(name) is None and engine.leftovers(store_id) == []
    finally:
        for run in engine.leftovers(store_id):
            engine.remove(run.handle)
        engine.close()


def test_a_requests_files_are_in_the_container_before_its_command_runs(service: ServiceProcess) -> None:
    """OpenJD embedded files: the command may itself be one of them (runnable), the others readable."""
    store_id = store_id_of(service)
    assert store_id is not None
    engine = engine_of(service)
    request = _request(store_id, f"hpcdock-{store_id}-t997-a1", ["/openjd/files/run.sh"])
    request.files = [
        ContainerFile(
            "/openjd/files/run.sh", b'#!/bin/sh\necho "data: $(cat /openjd/files/data.txt)"\n', 0o755
        ),
        ContainerFile("/openjd/files/data.txt", "grüße\n".encode(), 0o644),
    ]
    try:
        handle = engine.create(request)
        engine.start(handle)
        assert engine.wait(handle, timeout=120) == 0
        assert b"".join(engine.logs(handle, follow=False)) == "data: grüße\n".encode()
        engine.remove(handle)
    finally:
        for run in engine.leftovers(store_id):
            engine.remove(run.handle)
        engine.close()


# -- a job's life -------------------------------------------------------------------------------


def test_a_chunked_job_renders_every_frame_exactly_once(service: ServiceProcess, tmp_path: Path) -> None:
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
    for t in tasks:
        log, _ = client.log(t["id"])
        for frame in t["frames"]:
            assert log.count(f"::hpcdock::frame-done {frame} ") == 1, log
    no_runs_left(service)  # each run is removed right after its result is recorded


def test_a_failing_task_is_retried_once_per_attempt_and_follow_exits_non_zero(
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
    (job,) = client.jobs()
    assert job["state"] == "failed"
    (task,) = client.tasks(job["id"])
    assert task["state"] == "failed" and task["attempt"] == 2 and task["exit_code"] == 1
    log, _ = client.log(task["id"])
    assert log.count("boom on attempt 1\n") == 1 and log.count("boom on attempt 2\n") == 1, log
    assert "boom on attempt 3" not in log
    assert all(f["state"] == "failed" for f in client.frames(job["id"]))
    no_runs_left(service)


def test_follow_shows_progress_and_exits_zero(service: ServiceProcess, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "follow", frames="1-4", chunk=2)
    result = service.cli("submit", str(bundle), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "frames 4/4" in result.stdout
    assert "frame     3 done" in result.stdout
    assert "succeeded" in result.stdout.splitlines()[-1]


def test_cancel_mid_run_leaves_no_run_and_no_container(service: ServiceProcess, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "long", frames="1-6", chunk=2, command=["sleep", "300"])
    client = service.client()
    job = client.submit(str(bundle))

    # Two at a time locally (--slots 2); a cluster engine has every task queued or running.
    def each_running_task_a_run() -> bool:
        running = client.job(job["id"])["tasks_running"]
        return running >= 2 and len(runs_left(service)) == running

    wait_for(each_running_task_a_run, 60, what="two or more running tasks, each a run on the engine")
    job = client.cancel(job["id"])
    assert job["state"] == "canceled"
    assert {t["state"] for t in client.tasks(job["id"])} == {"canceled"}
    assert runs_left(service) == []
    # a canceled job is finished once its last running task has ended
    job = wait_for(
        lambda: (lambda j: j if j["finished_at"] is not None else None)(client.job(job["id"])),
        30,
        what="the canceled job to be finished",
    )
    assert job["state"] == "canceled" and job["tasks_running"] == 0 and runs_left(service) == []


def test_kill_minus_nine_mid_job_loses_nothing_and_runs_nothing_twice(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "restart", frames="1-8", chunk=2, env={"FRAME_SLEEP": "1.5"})
    client = service.client()
    job = client.submit(str(bundle))

    # Two at a time locally (--slots 2); a cluster engine may have more queued or running.
    def rendering() -> bool:
        running = [t for t in client.tasks(job["id"]) if t["state"] == "running"]
        return sum("frame-start" in client.log(t["id"])[0] for t in running) >= 2

    wait_for(rendering, 120, what="two tasks rendering")
    done_before = {f["frame"] for f in client.frames(job["id"]) if f["state"] == "done"}
    service.kill()

    def written_while_away() -> set[int]:
        return {int(p.name.split(".")[1]) for p in (bundle / "out").glob("f.*.txt")} - done_before

    # the runs go on without the service: frames they finish meanwhile are collected on restart
    finished_away = wait_for(written_while_away, 60, what="a frame finished while the service is down")
    service.start()
    client = service.client()
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", job
    tasks = client.tasks(job["id"])
    assert all(t["attempt"] == 1 for t in tasks), [(t["id"], t["attempt"]) for t in tasks]
    states = {f["frame"]: f["state"] for f in client.frames(job["id"])}
    assert states == dict.fromkeys(range(1, 9), "done")
    assert {states[f] for f in finished_away} == {"done"}  # collected, not rendered again (attempt 1)
    for t in tasks:
        log, _ = client.log(t["id"])
        for frame in t["frames"]:
            assert log.count(f"::hpcdock::frame-start {frame}\n") == 1, log
    assert "re-adopted" in "".join(client.log(t["id"])[0] for t in tasks)
    no_runs_left(service)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_a_bad_bundle_is_refused_by_name_and_changes_nothing(
    case: str, service: ServiceProcess, tmp_path: Path
) -> None:
    breaker, field, reason = BAD_BUNDLES[case]
    bundle = make_bundle(tmp_path / "bad")
    breaker(bundle)
    resp = service.raw("POST", "/v1/jobs", json_body={"bundle_dir": str(bundle)})
    assert 400 <= resp.status < 500, resp.body
    error = resp.json()["error"]
    assert field in error["field"], error
    assert reason in error["message"], error
    result = service.cli("submit", str(bundle))
    assert result.returncode == 1 and field.split(":")[0] in result.stderr
    assert "Traceback" not in result.stderr
    assert service.client().jobs() == []
    assert not (bundle / "out").exists() or case == "missing image"
    assert runs_left(service) == []


def test_a_gpu_job_on_an_engine_without_gpus_is_refused_at_submit_naming_gpus(
    service: ServiceProcess, tmp_path: Path
) -> None:
    client = service.client()
    assert client.health()["gpus"] == []  # the precondition: this engine has no GPU to give
    bundle = make_bundle(tmp_path / "gpu", frames="1-2")
    template = bundle / "template.yaml"
    template.write_text(
        template.read_text().replace(
            "  script:",
            "  hostRequirements:\n    amounts:\n    - {name: amount.worker.gpu, min: 1}\n  script:",
            1,
        )
    )
    with pytest.raises(ServiceError) as refused:
        client.submit(str(bundle))
    assert 400 <= refused.value.status < 500, refused.value
    assert "hostRequirements" in refused.value.field, refused.value
    assert "amount.worker.gpu" in refused.value.message and "GPU" in refused.value.message, refused.value
    assert client.jobs() == [] and runs_left(service) == []


# -- what a running job shows -------------------------------------------------------------------


def test_every_frame_done_with_thumbnail_and_progress_visible(
    service: ServiceProcess, tmp_path: Path
) -> None:
    from PIL import Image

    bundle = make_bundle(tmp_path / "thumbs", frames="1-6", chunk=3, png=True, env={"FRAME_SLEEP": "0.5"})
    client = service.client()
    job = client.submit(str(bundle))
    jid = job["id"]

    partial: list[float] = []

    def mid_task_progress() -> bool:
        for t in client.tasks(jid):
            if t["state"] == "running" and 0 < t["progress"] < 100:
                partial.append(t["progress"])
        return bool(partial) or client.job(jid)["state"] in JOB_FINAL

    wait_for(mid_task_progress, 60, interval=0.1, what="a running task with partial progress")
    assert partial, "no running task ever showed 0 < progress < 100 through GET /v1/jobs/{id}/tasks"

    job = wait_job(client, jid)
    assert job["state"] == "succeeded", job
    assert job["frames_done"] == job["frames_total"] == 6
    frames = client.frames(jid)
    assert [(f["frame"], f["state"]) for f in frames] == [(n, "done") for n in range(1, 7)]
    for f in frames:
        assert f["output"] == str(bundle / "out" / f"f.{f['frame']:04d}.png")
        assert f["thumbnail_url"] == f"/v1/jobs/{jid}/frames/{f['frame']}/thumbnail?step=render"
        assert f["render_time"] is not None and f["render_time"] >= 0
        data = client.thumbnail(jid, f["frame"])
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes the whole file: a truncated PNG fails here
            assert img.format == "PNG" and img.size == (256, 144)
        # the URL the events carry serves the same picture
        resp = service.raw("GET", f["thumbnail_url"])
        assert resp.status == 200 and resp.headers["content-type"] == "image/png"
        assert resp.body == data

    events = drain(service, job=jid)
    ids = [e[0] for e in events]
    assert ids == sorted(set(ids))
    done = {}
    for _, kind, data in events:
        if kind == "frame" and data["frame"]["state"] == "done":
            done[data["frame"]["frame"]] = data["frame"]
    assert sorted(done) == list(range(1, 7))
    for n, f in done.items():
        assert f["job_id"] == jid and f["attempt"] == 1 and f["task_id"]
        assert f["output"] == str(bundle / "out" / f"f.{n:04d}.png")
        assert f["thumbnail_url"] == f"/v1/jobs/{jid}/frames/{n}/thumbnail?step=render"
    running = [
        d["frame"]
        for k, d in ((e[1], e[2]) for e in events)
        if k == "frame" and d["frame"]["state"] == "running"
    ]
    assert {f["frame"] for f in running} == set(range(1, 7))
    task_events = [d["task"] for _, k, d in events if k == "task"]
    assert all("progress" in t and "attempt" in t for t in task_events)
    assert any(t["state"] == "running" and 0 < t["progress"] < 100 for t in task_events)
    assert {t["progress"] for t in task_events if t["state"] == "succeeded"} == {100.0}
    assert_frames_never_go_back(events)
    assert events[-1][1] == "job" and events[-1][2]["job"]["state"] == "succeeded"


def test_logs_are_readable_while_the_task_runs(service: ServiceProcess, tmp_path: Path) -> None:
    """``hpcdock logs -f`` prints what the task printed so far while it runs, and the rest as it comes."""
    release = tmp_path / "talk" / "release"  # in the bundle's directory, which the task sees
    script = f"echo first line; while [ ! -e {release} ]; do sleep 0.2; done; echo last line"
    bundle = make_bundle(
        release.parent,
        frames="1",
        command=["sh", "-c", script],
        settings={"frames": None},  # no output to check
    )
    client = service.client()
    job = client.submit(str(bundle))
    (task,) = client.tasks(job["id"])
    wait_for(lambda: "first line" in client.log(task["id"])[0], 60, what="the task's first line in its log")
    follower = subprocess.Popen(
        service.cli_command("logs", "-f", str(task["id"])), env=service.env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        lines = []
        while "first line" not in lines:
            line = follower.stdout.readline()
            assert line, "hpcdock logs -f ended before the task's first line"
            lines.append(line.rstrip("\n"))
        assert client.task(task["id"])["state"] == "running"  # read while it runs, not after
        release.touch()
        rest, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
        follower.wait()
    assert follower.returncode == 0
    assert "last line" in rest.splitlines(), rest
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", job


# -- sessions: a step's environments entered once, its tasks run inside ------------------------


def test_a_step_environment_is_entered_once_per_session_and_every_task_sees_its_file(
    service: ServiceProcess, tmp_path: Path
) -> None:
    """12 one-frame tasks in sessions on the service's two slots: onEnter at most once a slot (a
    cold task would enter it once a task), onExit as often, every task reading the file onEnter
    left in {{Session.WorkingDirectory}}, every frame rendered exactly once."""
    root = tmp_path / "warm"
    client = service.client()
    job = wait_job(client, client.submit(str(session_bundle(root)))["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    enters = lines(root / "out" / "enters.log")
    assert 1 <= enters <= service.slots, enters
    wait_for(lambda: lines(root / "out" / "exits.log") == enters, 60, what="onExit as often as onEnter")
    tasks = client.tasks(job["id"])
    assert len(tasks) == 12 and all(t["attempt"] == 1 for t in tasks), tasks
    for task in tasks:
        log, _ = client.log(task["id"])
        assert "from-enter" in log and "greeting=hello world colour=blue gone=unset" in log, log
        assert log.count("::hpcdock::frame-start") == 1, log
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 12
    no_runs_left(service)  # the sessions' runs too
    assert lines(root / "out" / "exits.log") == enters  # and not once more


def test_kill_minus_nine_mid_session_then_restart_runs_nothing_twice(
    service: ServiceProcess, tmp_path: Path
) -> None:
    root = tmp_path / "restart"
    client = service.client()
    job = client.submit(str(session_bundle(root, frames="1-8", env={"FRAME_SLEEP": "1.5"})))

    def rendering() -> bool:
        running = [t for t in client.tasks(job["id"]) if t["state"] == "running"]
        return len(running) == 2 and all("frame-start" in client.log(t["id"])[0] for t in running)

    wait_for(rendering, 120, what="two tasks rendering in sessions")
    service.kill()
    time.sleep(2)  # the tasks go on without the service, and end meanwhile
    service.start()
    client = service.client()
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    tasks = client.tasks(job["id"])
    assert all(t["attempt"] == 1 for t in tasks), [(t["id"], t["attempt"]) for t in tasks]
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 8
    logs = "".join(client.log(t["id"])[0] for t in tasks)
    for frame in range(1, 9):
        assert logs.count(f"::hpcdock::frame-start {frame}\n") == 1, logs
        assert logs.count(f"::hpcdock::frame-done {frame} ") == 1, logs
    assert "re-adopted" in logs
    enters = lines(root / "out" / "enters.log")
    assert 1 <= enters <= 2 * service.slots, enters  # the sessions before the kill, and after it
    # each session's environment output heads its opening task's log once, re-adopted or not
    assert logs.count("--- environment 'warm': onEnter\n") == enters, logs
    wait_for(lambda: lines(root / "out" / "exits.log") == enters, 60, what="onExit as often as onEnter")
    no_runs_left(service)
