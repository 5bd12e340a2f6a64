"""Warm sessions on a real rootless engine: OpenJD environments entered once per session, a step's
tasks run one after another inside its container, environments exited as often as entered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hpcdock_service.bundle_loader import EmbeddedFile, Environment
from hpcdock_service.engines.base import LABEL_STORE, ContainerRequest
from hpcdock_service.sessions import COLD_WORKING_DIRECTORY, cold_command
from hpcdock_service.taskfiles import cold_env_files_dir, resolve, resolve_environment

from tests.engine.session_bundles import TASK, failures, lines, session_bundle
from tests.engine.test_conformance import no_runs_left
from tests.helpers import TEST_IMAGE, ServiceProcess, engine_of, store_id_of, wait_for, wait_job

pytestmark = pytest.mark.engine


def test_step_environment_entered_once_per_slot_and_seen_by_every_task(
    service: ServiceProcess, tmp_path: Path
) -> None:
    root = tmp_path / "warm"
    bundle = session_bundle(root)
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    enters = lines(root / "out" / "enters.log")
    assert 1 <= enters <= service.slots, enters  # once per session, never once per task
    wait_for(lambda: lines(root / "out" / "exits.log") == enters, 30, what="onExit as often as onEnter")
    tasks = client.tasks(job["id"])
    assert len(tasks) == 12
    for task in tasks:
        log, _ = client.log(task["id"])
        assert "from-enter" in log and "greeting=hello world colour=blue gone=unset" in log, log
        assert log.count("::hpcdock::frame-start") == 1, log
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 12
    time.sleep(0.5)
    assert lines(root / "out" / "exits.log") == enters  # and not once more
    no_runs_left(service)


def test_failing_on_enter_fails_the_tasks_with_its_output(service: ServiceProcess, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    bundle = session_bundle(
        root, frames="1-2", enter="echo the licence file is missing >&2; exit 3", attempts=1
    )
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "failed", job
    for task in client.tasks(job["id"]):
        assert task["state"] == "failed"
        assert "environment 'warm': onEnter exited with code 3" in task["error"], task
        assert "the licence file is missing" in task["error"], task
    assert lines(root / "out" / "exits.log") == 0  # an environment whose onEnter failed was never entered
    no_runs_left(service)


def test_a_failing_task_does_not_end_the_session(service: ServiceProcess, tmp_path: Path) -> None:
    root = tmp_path / "onefails"
    task = '[ "{{Task.Param.Frame}}" != 2 ] && ' + TASK
    bundle = session_bundle(root, frames="1-6", task=task, attempts=1)
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "failed", job
    states = sorted(t["state"] for t in client.tasks(job["id"]))
    assert states == ["failed"] + ["succeeded"] * 5, states
    assert lines(root / "out" / "enters.log") <= service.slots
    no_runs_left(service)


def test_cancel_stops_the_task_and_exits_the_environment(service: ServiceProcess, tmp_path: Path) -> None:
    root = tmp_path / "cancel"
    bundle = session_bundle(root, frames="1-4", task="sleep 300")
    client = service.client()
    job = client.submit(str(bundle))
    wait_for(lambda: client.job(job["id"])["tasks_running"] == 2, 60, what="two running tasks")
    job = client.cancel(job["id"])
    assert job["state"] == "canceled"
    assert {t["state"] for t in client.tasks(job["id"])} == {"canceled"}
    enters = lines(root / "out" / "enters.log")
    assert enters == 2
    wait_for(lambda: lines(root / "out" / "exits.log") == enters, 30, what="onExit after cancel")
    no_runs_left(service)


def test_a_session_lost_while_the_service_was_down_ends_and_its_task_runs_again(
    service: ServiceProcess, tmp_path: Path
) -> None:
    root = tmp_path / "lost"
    bundle = session_bundle(root, frames="1-4", env={"FRAME_SLEEP": "3"})
    client = service.client()
    job = client.submit(str(bundle))

    def rendering() -> bool:
        running = [t for t in client.tasks(job["id"]) if t["state"] == "running"]
        return len(running) == 2 and all("frame-start" in client.log(t["id"])[0] for t in running)

    wait_for(rendering, 60, what="two tasks rendering in sessions")
    service.kill()
    engine = engine_of(service)
    try:
        lost = engine.leftovers(store_id_of(service) or "")
        assert len(lost) == 2, lost  # the two sessions' containers, nothing else
        for run in lost:
            engine.remove(run.handle)  # gone with their tasks, before those could finish
    finally:
        engine.close()
    service.start()
    client = service.client()
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 4
    logs = "".join(client.log(t["id"])[0] for t in client.tasks(job["id"]))
    for frame in range(1, 5):
        assert logs.count(f"::hpcdock::frame-start {frame}\n") == 1, logs
    # The lost sessions could not exit; every session opened since did.
    wait_for(
        lambda: lines(root / "out" / "exits.log") == lines(root / "out" / "enters.log") - 2,
        30,
        what="onExit for every session but the two lost",
    )
    no_runs_left(service)


def test_embedded_files_of_the_environment_and_the_tasks_reach_them_warm(
    service: ServiceProcess, tmp_path: Path
) -> None:
    """{{Env.File.*}} written before onEnter, {{Task.File.*}} before each task, in the session's
    working directory, runnable ones executable; such a step runs warm, and the environment's
    output heads the log of each session's opening task. A link the container put where a file
    goes is replaced, never written through (its target is a host path the container cannot see)."""
    root = tmp_path / "files"
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "victim").write_text("keep\n")
    enter = (
        f'echo enter >> {root}/out/enters.log && "{{{{Env.File.Setup}}}}" && '
        f'ln -s {trap}/victim "{{{{Session.WorkingDirectory}}}}/embedded_files/run.sh"'
    )
    bundle = session_bundle(root, frames="1-6", enter=enter)
    template = yaml.safe_load((bundle / "template.yaml").read_text())
    step = template["steps"][0]
    step["stepEnvironments"][0]["script"]["embeddedFiles"] = [
        {
            "name": "Setup",
            "type": "TEXT",
            "runnable": True,
            "filename": "setup.sh",
            "data": '#!/bin/sh\necho "made by {{Env.File.Setup}}" > "{{Session.WorkingDirectory}}/marker"\n'
            "echo openjd_env: GREETING=hello world\necho VALUE entered\n",
        }
    ]
    step["script"] = {
        "embeddedFiles": [
            {
                "name": "Run",
                "type": "TEXT",
                "runnable": True,
                "filename": "run.sh",
                "data": '#!/bin/sh\necho "VALUE frame={{Task.Param.Frame}} data=$(cat "{{Task.File.Data}}") '
                'greeting=$GREETING self=$0 x=$([ -x "$0" ] && echo yes)"\n'
                'cat "{{Session.WorkingDirectory}}/marker"\nsh render.sh "{{Task.Param.Frame}}"\n',
            },
            {"name": "Data", "type": "TEXT", "data": "data of {{Task.Param.Frame}}"},
        ],
        "actions": {"onRun": {"command": "{{Task.File.Run}}"}},
    }
    (bundle / "template.yaml").write_text(yaml.safe_dump(template))
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    enters = lines(root / "out" / "enters.log")
    assert 1 <= enters <= service.slots, enters  # warm: embedded files no longer mean cold
    opened = 0
    for task in client.tasks(job["id"]):
        log, _ = client.log(task["id"])
        frame = task["params"]["Frame"]
        run = "/hpcdock-session/work/embedded_files/run.sh"
        assert f"VALUE frame={frame} data=data of {frame} greeting=hello world self={run} x=yes" in log, log
        assert "made by /hpcdock-session/work/embedded_files/setup.sh" in log, log
        if "VALUE entered" in log:  # the environment's output, in the log of the task that opened it
            opened += 1
            head = log.splitlines()[1:5]
            assert head == [
                "--- environment 'warm': onEnter",
                "openjd_env: GREETING=hello world",
                "VALUE entered",
                "--- environment 'warm': onEnter exited with code 0",
            ], log
    assert opened == enters
    assert (trap / "victim").read_text() == "keep\n"
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 6
    wait_for(lambda: lines(root / "out" / "exits.log") == enters, 30, what="onExit as often as onEnter")
    no_runs_left(service)


def test_a_failing_on_exit_is_told_in_the_last_tasks_log(service: ServiceProcess, tmp_path: Path) -> None:
    root = tmp_path / "badexit"
    bundle = session_bundle(root, frames="1")
    template = yaml.safe_load((bundle / "template.yaml").read_text())
    actions = template["steps"][0]["stepEnvironments"][0]["script"]["actions"]
    actions["onExit"]["args"] = ["-c", "echo the licence server went away; exit 3"]
    (bundle / "template.yaml").write_text(yaml.safe_dump(template))
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "succeeded", failures(client, job["id"])
    (task,) = client.tasks(job["id"])
    wait_for(
        lambda: "onExit exited with code 3: the licence server went away" in client.log(task["id"])[0],
        30,
        what="the failing onExit in the task's log",
    )
    assert "onExit exited with code 3" in service.log_path.read_text()
    no_runs_left(service)


def test_a_cold_task_enters_its_environments_with_their_files(
    service: ServiceProcess, tmp_path: Path
) -> None:
    """Where sessions do not apply (an engine without them): the task's container gets the task's
    and each environment's files before it starts, built as the runner builds it, and enters,
    runs and exits in order."""
    setup = EmbeddedFile(
        "Setup", '#!/bin/sh\necho "openjd_env: FROM_ENV=$(cat {{Env.File.Data}})"\n', "setup.sh", True
    )
    environments = [
        Environment(
            "tools",
            ("{{Env.File.Setup}}",),
            ("sh", "-c", "echo bye from {{Env.File.Setup}}"),
            {},
            files=(setup, EmbeddedFile("Data", "{{Param.Shot}} data")),
        )
    ]
    task = EmbeddedFile(
        "Run", '#!/bin/sh\necho "task sees $FROM_ENV and $(cat {{Task.File.Data}})"\n', "run.sh", True
    )
    command, files = resolve(
        ["{{Task.File.Run}}"],
        [task, EmbeddedFile("Data", "task data")],
        {"Shot": "sh010"},
        {},
        COLD_WORKING_DIRECTORY,
    )
    resolved = [
        resolve_environment(env, {"Shot": "sh010"}, COLD_WORKING_DIRECTORY, cold_env_files_dir(i))
        for i, env in enumerate(environments)
    ]
    store_id = store_id_of(service) or "cold"
    request = ContainerRequest(
        name="hpcdock-cold-environments",
        image=TEST_IMAGE,
        command=cold_command(resolved, command, "/"),
        env={},
        workdir="/",
        mounts=[],
        network=False,
        labels={LABEL_STORE: store_id},
        files=files + [f for env in resolved for f in env.files],
    )
    engine = engine_of(service)
    try:
        handle = engine.create(request)
        engine.start(handle)
        assert engine.wait(handle, timeout=120) == 0
        output = b"".join(engine.logs(handle, follow=False)).decode()
        engine.remove(handle)
    finally:
        for run in engine.leftovers(store_id):
            engine.remove(run.handle)
        engine.close()
    assert output.splitlines() == [
        "--- environment 'tools': onEnter",
        "openjd_env: FROM_ENV=sh010 data",
        "task sees sh010 data and task data",
        "--- environment 'tools': onExit",
        "bye from /openjd/environment_files/0/setup.sh",
    ], output
