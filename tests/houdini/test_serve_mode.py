"""The render server: a served step's bundle, its environment's and tasks' commands run as the
template says, with a stand-in hython (a Python whose ``hou`` is the fake) as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hpcdock import bundle_writer as B
from hpcdock.farm import server
from hpcdock.markers import parse_marker

from tests.houdini.houdini_env import (
    adapter,
    hou_reports,
    hython_starts,
    make_submit_node,
    mantra_scene,
    write_stand_in_hython,
)


def _markers(out: str):
    return [(m.kind, m.frame, m.detail) for m in map(parse_marker, out.splitlines()) if m]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Served:
    """A served step of an exported bundle, run as a session would: onEnter, tasks, onExit."""

    def __init__(self, bundle: Path, step: dict, values: dict, env: dict) -> None:
        self.bundle = bundle
        self.step = step
        self.values = values
        self.env = env
        self.session = Path(values["Session.WorkingDirectory"])
        self.dir = server.ServerDir(str(self.session / "hpcdock_render"))
        self.report = env["FAKE_HOU_REPORT"]

    def argv(self, action: dict, frames: str = "") -> list:
        values = {**self.values, "Task.Param.Frame": frames}
        return [action["command"]] + [
            re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], a) for a in action["args"]
        ]

    def _environment(self, action: str) -> subprocess.CompletedProcess:
        (environment,) = self.step["stepEnvironments"]
        argv = self.argv(environment["script"]["actions"][action])
        # an environment's actions run in the session's working directory
        return subprocess.run(
            argv, cwd=self.session, env=self.env, capture_output=True, text=True, timeout=60
        )

    def enter(self) -> subprocess.CompletedProcess:
        return self._environment("onEnter")

    def exit(self) -> subprocess.CompletedProcess:
        return self._environment("onExit")

    def task(self, frames: str, wait: bool = True):
        argv = self.argv(self.step["script"]["actions"]["onRun"], frames)
        if not wait:
            return subprocess.Popen(
                argv, cwd=self.bundle, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        return subprocess.run(argv, cwd=self.bundle, env=self.env, capture_output=True, text=True, timeout=60)

    def server_pid(self) -> int:
        return int(Path(self.dir.pid).read_text())

    def waiting_requests(self) -> list:
        return [n for n in os.listdir(self.dir.requests) if n.endswith(".req")]


def _scene(hou, fail_frame=None, **submit):
    mantra = mantra_scene(hou)
    if fail_frame is not None:
        mantra.fake_fail_frames[fail_frame] = "mantra: out of memory"
    return make_submit_node(rops=[mantra], image="img", frames_per_task=2, **submit)


@pytest.fixture
def served(hou, project, tmp_path):
    """Export ``_scene`` with a stand-in hython; returns a function making the mantra1 step's :class:`Served`."""
    hython = write_stand_in_hython(str(tmp_path / "standin"), sys.executable)

    def make(**kw) -> Served:
        node = _scene(hou, hython=hython, python=sys.executable, **kw)
        houdini = adapter()
        bundle, _, _ = houdini.export(
            houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "bundle")
        )
        bundle = Path(bundle)
        template = json.loads((bundle / B.TEMPLATE_FILE).read_text())
        step = next(s for s in template["steps"] if s["name"] == "mantra1")
        session = tmp_path / "session"
        session.mkdir()
        values = {
            "Param.BundleDir": str(bundle),
            "Param.HipFile": str(bundle / "hip" / "shot.hip"),
            "Param.ProjectDir": str(project),
            "Session.WorkingDirectory": str(session),
        }
        env = dict(os.environ, FAKE_HOU_REPORT=str(tmp_path / "hou.jsonl"))
        env.pop("PYTHONPATH", None)  # the task's Python knows no hpcdock: the bundle's copy runs
        return Served(bundle, step, values, env)

    return make


def test_the_scene_is_loaded_once_for_every_task_of_the_session(served, project):
    s = served()
    entered = s.enter()
    assert entered.returncode == 0, entered.stdout + entered.stderr
    assert "render server ready" in entered.stdout
    outputs = {f: f"{project}/render/ball.{f:04d}.exr" for f in (1, 2, 3, 4)}
    for frames, expected in (("1-2", [1, 2]), ("3-4", [3, 4])):
        task = s.task(frames)
        assert task.returncode == 0, task.stdout + task.stderr
        assert _markers(task.stdout) == [
            m for f in expected for m in (("frame-start", f, ""), ("frame-done", f, outputs[f]))
        ]
        assert "ALF_PROGRESS 100%" in task.stdout
    exited = s.exit()
    assert exited.returncode == 0 and "render server stopped" in exited.stdout, exited.stdout
    assert not server.server_alive(s.dir)
    (report,) = hou_reports(s.report)  # one hython, which exited cleanly
    assert hython_starts(s.report) == 1
    assert report["loads"] == [s.values["Param.HipFile"]]  # loaded once, for both tasks
    assert report["rendered"] == [["/out/mantra1", f] for f in (1, 2, 3, 4)]  # each frame once, no inputs
    assert report["HIP"] == str(project)
    assert all(Path(p).is_file() for p in outputs.values())
    assert os.listdir(s.dir.requests) == []  # every request's files went with its answer


def test_a_failed_frame_fails_its_task_and_the_server_renders_on(served):
    s = served(fail_frame=3)
    assert s.enter().returncode == 0
    task = s.task("3-4")
    assert task.returncode == 1
    assert _markers(task.stdout) == [("frame-start", 3, ""), ("frame-failed", 3, "mantra: out of memory")]
    task = s.task("1-2")
    assert task.returncode == 0, task.stdout + task.stderr
    assert [m[:2] for m in _markers(task.stdout)] == [
        ("frame-start", 1),
        ("frame-done", 1),
        ("frame-start", 2),
        ("frame-done", 2),
    ]
    assert s.exit().returncode == 0
    (report,) = hou_reports(s.report)
    assert len(report["loads"]) == 1
    assert report["rendered"] == [["/out/mantra1", f] for f in (3, 1, 2)]


def test_a_scene_that_will_not_load_fails_on_enter_with_the_server_log(served):
    s = served()
    os.unlink(s.values["Param.HipFile"])
    entered = s.enter()
    assert entered.returncode == 1
    assert "exited with status 2 before its scene was loaded" in entered.stdout
    assert "could not load scene" in entered.stdout  # the server's own words, from its log
    # A task in that session starts the server again, which fails the same way: its frames fail.
    task = s.task("1-2")
    assert task.returncode == 2
    assert _markers(task.stdout)[-2:] == [
        ("frame-failed", 1, "the render server could not start"),
        ("frame-failed", 2, "the render server could not start"),
    ]
    assert "could not load scene" in task.stdout
    assert hython_starts(s.report) == 2


def test_a_server_that_dies_fails_the_waiting_task_and_the_next_task_starts_it_again(served):
    s = served()
    assert s.enter().returncode == 0
    pid = s.server_pid()
    os.kill(pid, signal.SIGSTOP)  # it takes no request while stopped
    waiting = s.task("1-2", wait=False)
    try:
        _wait(lambda: s.waiting_requests(), 10, "the task's request")
        os.kill(pid, signal.SIGKILL)
        out, err = waiting.communicate(timeout=10)  # fails at once: it does not hang
    finally:
        waiting.kill()
    assert waiting.returncode == 1
    assert "the render server stopped before it finished frames [1, 2]" in err
    assert _markers(out) == [("frame-failed", 1, "the render server died while rendering this frame")]
    task = s.task("1-2")
    assert task.returncode == 0, task.stdout + task.stderr
    assert "starting it again" in task.stdout
    assert s.exit().returncode == 0
    assert hython_starts(s.report) == 2
    (report,) = hou_reports(s.report)  # the first one was killed: only the second reports
    assert report["rendered"] == [["/out/mantra1", 1], ["/out/mantra1", 2]]


def test_a_request_whose_task_is_gone_is_not_rendered(served):
    s = served()
    assert s.enter().returncode == 0
    pid = s.server_pid()
    os.kill(pid, signal.SIGSTOP)
    gone = s.task("1-2", wait=False)
    try:
        _wait(lambda: s.waiting_requests(), 10, "the task's request")
    finally:
        gone.kill()  # canceled: SIGKILL leaves it no time to say so
        gone.communicate(timeout=10)
    os.kill(pid, signal.SIGCONT)
    task = s.task("3-4")
    assert task.returncode == 0, task.stdout + task.stderr
    assert s.exit().returncode == 0
    (report,) = hou_reports(s.report)
    assert report["rendered"] == [["/out/mantra1", 3], ["/out/mantra1", 4]]
    assert os.listdir(s.dir.requests) == []


def test_stop_kills_a_server_that_does_not_stop(served):
    s = served()
    assert s.enter().returncode == 0
    pid = s.server_pid()
    os.kill(pid, signal.SIGSTOP)
    argv = s.argv(s.step["stepEnvironments"][0]["script"]["actions"]["onExit"]) + ["--grace", "0.3"]
    stopped = subprocess.run(argv, env=s.env, capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 1 and "did not stop within 0.3s; killed" in stopped.stdout
    _wait(lambda: not server.server_alive(s.dir), 10, "the server's end")
    assert hou_reports(s.report) == []  # killed, not stopped cleanly


def test_one_server_per_directory_and_bad_requests(served):
    s = served()
    assert s.enter().returncode == 0
    again = s.enter()
    assert again.returncode == 2 and "a render server already runs" in again.stderr
    bad = s.task("4-1")
    assert bad.returncode == 2 and "bad frame range" in bad.stderr
    assert s.exit().returncode == 0
    assert s.exit().stdout.startswith("hpcdock: no render server was running")
    assert hython_starts(s.report) == 1


def test_on_enter_waits_for_the_scene_and_a_timeout_fails_it(served, monkeypatch):
    s = served()
    s.env["FAKE_HYTHON_START"] = "1"
    started = time.monotonic()
    assert s.enter().returncode == 0
    assert time.monotonic() - started >= 1  # it returned once the scene was loaded, not before
    assert s.exit().returncode == 0
    s.env["FAKE_HYTHON_START"] = "30"
    argv = s.argv(s.step["stepEnvironments"][0]["script"]["actions"]["onEnter"])
    argv[argv.index("--") : argv.index("--")] = ["--timeout", "0.5"]
    slow = subprocess.run(argv, cwd=s.session, env=s.env, capture_output=True, text=True, timeout=30)
    assert slow.returncode == 1 and "did not load its scene within 0.5s" in slow.stdout
    _wait(lambda: not server.server_alive(s.dir), 10, "the killed server's end")


# --------------------------------------------------------------------------- what the writer writes


def _job(**kw):
    steps = [
        B.StepSpec("sim", "/out/sim", [1, 2, 3], sequential=True),
        B.StepSpec("beauty", "/out/mantra1", [1, 2, 3, 4], ["sim"], "/p/render/b.{frame:04d}.exr"),
        B.StepSpec("usd", "/out/k", [1, 2], mode=B.MODE_EXPORT_USD, usd_pattern="usd/k.{frame:04d}.usd"),
        B.StepSpec("k", "/out/k", [1, 2], ["usd"], mode=B.MODE_HUSK, usd_pattern="usd/k.{frame:04d}.usd"),
    ]
    spec = {"name": "shot", "image": "img", "steps": steps, "hip_name": "shot.hip", "project_dir": "/p"}
    return B.JobSpec(**{**spec, **kw})


def test_only_hython_steps_rendered_chunk_by_chunk_are_served():
    template = B.build_template(_job(timeout=600))
    environments = {s["name"]: s.get("stepEnvironments") for s in template["steps"]}
    assert environments["sim"] is None  # a simulation is one task: nothing to keep loaded
    assert environments["k"] is None  # husk: one process per frame whatever runs it
    (beauty,) = environments["beauty"]
    assert beauty["name"] == B.SERVER_ENVIRONMENT
    actions = beauty["script"]["actions"]
    script = "{{Param.BundleDir}}/hpcdock_farm/render.py"
    assert actions["onEnter"] == {
        "command": "python3",
        "args": [
            script,
            "start",
            "--dir",
            B.SERVER_DIR,
            "--workdir",
            "{{Param.BundleDir}}",
            "--",
            "hython",
            "hpcdock_farm/render.py",
            "serve",
            "--dir",
            B.SERVER_DIR,
            "--hip",
            "{{Param.HipFile}}",
            "--hip-dir",
            "{{Param.ProjectDir}}",
            "--rop",
            "/out/mantra1",
        ],
        "timeout": 600,  # the scene's load is bounded as a task was
    }
    assert actions["onExit"] == {"command": "python3", "args": [script, "stop", "--dir", B.SERVER_DIR]}
    on_run = next(s for s in template["steps"] if s["name"] == "beauty")["script"]["actions"]["onRun"]
    assert on_run == {
        "command": "python3",
        "args": [script, "request", "--dir", B.SERVER_DIR, "--frames", "{{Task.Param.Frame}}"],
        "timeout": 600,
    }
    assert environments["usd"][0]["script"]["actions"]["onEnter"]["args"][-2:] == [
        "--export-usd",
        "usd/k.{frame:04d}.usd",
    ]


def test_without_the_render_server_every_task_starts_hython():
    template = B.build_template(_job(render_server=False))
    assert all("stepEnvironments" not in s for s in template["steps"])
    assert "BundleDir" not in [p["name"] for p in template["parameterDefinitions"]]
    beauty = next(s for s in template["steps"] if s["name"] == "beauty")
    assert beauty["script"]["actions"]["onRun"]["command"] == "hython"
    assert beauty["script"]["actions"]["onRun"]["args"][:2] == ["hpcdock_farm/render.py", "--hip"]


def test_the_node_toggle_turns_the_render_server_off(hou, project, tmp_path):
    houdini = adapter()
    on = houdini.read_settings(_scene(hou))
    assert on.render_server is True  # the default
    off = houdini.read_settings(make_submit_node("/out/hpcdock_submit2", image="img", render_server=0))
    assert off.render_server is False


def test_the_service_loads_a_served_step_as_a_session_environment(tmp_path):
    bundle_loader = pytest.importorskip("hpcdock_service.bundle_loader")  # absent from the PySide2 lane
    from hpcdock_service.mounts import MountPolicy

    job = _job(timeout=60, project_dir=str(tmp_path / "p"))
    job.steps[1].output_pattern = str(tmp_path / "p" / "render" / "b.{frame:04d}.exr")
    root = B.write_bundle(job, str(tmp_path / "b"), lambda p: Path(p).write_text("hip"))
    plan = bundle_loader.load_bundle(root, mount_policy=MountPolicy.build([str(tmp_path)]))
    steps = {s.name: s for s in plan.steps}
    assert plan.params["BundleDir"] == root
    (environment,) = steps["beauty"].environments
    assert environment.name == B.SERVER_ENVIRONMENT and environment.timeout == 60
    assert list(environment.enter[1:3]) == ["{{Param.BundleDir}}/hpcdock_farm/render.py", "start"]
    assert list(environment.exit[2:]) == ["stop", "--dir", B.SERVER_DIR]
    assert steps["beauty"].command[2] == "request"
    assert steps["sim"].environments == [] and steps["k"].environments == []
    assert (Path(root) / B.FARM_DIR / "server.py").is_file()
