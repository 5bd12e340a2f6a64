"""Session rules that need no engine: openjd_env lines, one-line action scripts, the cold wrapper
(run here by the host's /bin/sh, as a container's shell would), environments planned from bundles,
embedded files written without following what a container put in their way; and sessions driven
by the scheduler on a fake engine whose "containers" are host processes speaking the agent's
protocol over the real FIFO: embedded files of environments and tasks, GPUs a session holds, the
environments' output in the opening task's log, a failing onExit told. That it all holds in real
containers is tests/engine/test_warm_sessions.py's to prove."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hpcdock.protocol import JOB_FINAL
from hpcdock_service.bundle_loader import Environment, load_bundle
from hpcdock_service.config import LicenceRetry
from hpcdock_service.engines.base import (
    SESSION_ROOT,
    ContainerFile,
    ContainerRequest,
    EngineError,
    GpuGrant,
    RunState,
    RunStatus,
)
from hpcdock_service.model import Job
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.resources import Pool
from hpcdock_service.scheduler import Scheduler
from hpcdock_service.sessions import (
    FILES_DIRECTORY,
    WORKING_DIRECTORY,
    Session,
    SessionPool,
    action_script,
    apply_env_messages,
    cold_command,
)
from hpcdock_service.store import Store
from hpcdock_service.taskfiles import ResolvedEnvironment, cold_env_files_dir, resolve_environment

from tests.unit.test_bundle_loader import bundle, load
from tests.unit.test_scheduler import FakeGpus, submit, write_bundle


def test_env_messages_set_and_unset_in_order() -> None:
    env = {"KEEP": "1", "DROP": "x"}
    why = apply_env_messages(
        "noise\nopenjd_env: A=b=c d\nopenjd_unset_env: DROP\nopenjd_env: A=again\nopenjd_envX: B=1\n", env
    )
    assert why is None
    assert env == {"KEEP": "1", "A": "again"}


def test_a_malformed_env_message_fails_the_environment() -> None:
    env: dict[str, str] = {}
    assert apply_env_messages("openjd_env: 1BAD=no\n", env)
    assert env == {}


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    # The agent exports HPCDOCK_NL; a newline in a value needs it.
    return subprocess.run(
        ["/bin/sh", "-c", "HPCDOCK_NL='\n'; export HPCDOCK_NL; " + script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_action_script_is_one_line_and_keeps_every_value(tmp_path: Path) -> None:
    value = 'it\'s a "value" with $HOME, `ticks`\nand a second line'
    script = action_script(
        ["sh", "-c", 'printf %s "$NAME"; pwd', value], {"NAME": value, "bad-name": "x"}, str(tmp_path)
    )
    assert "\n" not in script and "bad-name" not in script
    printed = sh(script, Path("/"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == value + str(tmp_path) + "\n"


def env(name: str, enter: str, exit: str, **variables: str) -> ResolvedEnvironment:
    return ResolvedEnvironment(
        name, ["sh", "-c", enter] if enter else [], ["sh", "-c", exit] if exit else [], variables, None, []
    )


def test_cold_wrapper_enters_runs_and_exits_in_order(tmp_path: Path) -> None:
    scratch, log = tmp_path / "scratch", tmp_path / "order.log"
    envs = [
        env(
            "job",
            f"echo enter-job >> {log}; echo openjd_env: FROM_JOB=j",
            f"echo exit-job >> {log}",
            COLOUR="red",
        ),
        env(
            "step",
            f'echo enter-step >> {log}; echo made > "$PWD/marker"; echo openjd_env: FROM_STEP="$FROM_JOB"s',
            f"echo exit-step >> {log}",
        ),
    ]
    task = ["sh", "-c", f'echo "task $COLOUR $FROM_JOB $FROM_STEP $(cat {scratch}/marker)" >> {log}; exit 4']
    command = cold_command(envs, task, str(tmp_path), scratch=str(scratch))
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 4, result
    assert log.read_text().splitlines() == [
        "enter-job",
        "enter-step",
        "task red j js made",
        "exit-step",
        "exit-job",
    ]


def test_cold_wrapper_fails_on_enter_and_exits_what_it_entered(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    envs = [
        env("job", f"echo enter-job >> {log}", f"echo exit-job >> {log}"),
        env("step", "echo no licence; exit 3", f"echo exit-step >> {log}"),
    ]
    command = cold_command(
        envs,
        ["sh", "-c", f"echo task >> {log}"],
        str(tmp_path),
        scratch=str(tmp_path / "s"),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "no licence" in result.stdout and "environment 'step': onEnter exited with code 3" in result.stdout
    assert log.read_text().splitlines() == ["enter-job", "exit-job"]


def test_environments_are_planned_job_first_then_step(tmp_path: Path) -> None:
    on_enter = {
        "onEnter": {"command": "sh", "args": ["-c", "echo {{Param.Frames}} {{Session.WorkingDirectory}}"]}
    }
    path = bundle(tmp_path / "b", template={"jobEnvironments": [{"name": "job", "variables": {"A": "1"}}]})
    template = yaml.safe_load((tmp_path / "b" / "template.yaml").read_text())
    template["steps"][0]["stepEnvironments"] = [{"name": "step", "script": {"actions": on_enter}}]
    (tmp_path / "b" / "template.yaml").write_text(yaml.safe_dump(template))
    step = load(path).steps[0]
    assert [e.name for e in step.environments] == ["job", "step"]
    assert step.environments[0].variables == {"A": "1"} and step.environments[0].enter == ()
    assert step.environments[1].enter == ("sh", "-c", "echo {{Param.Frames}} {{Session.WorkingDirectory}}")


# -- embedded files, written safely -------------------------------------------------------------


def bare_session(tmp_path: Path) -> Session:
    root = tmp_path / "sessions" / "s"
    root.mkdir(parents=True)
    return Session(AgentEngine(), root, "s", 1, 0)


def test_files_are_written_where_openjd_sessions_puts_them_with_their_modes(tmp_path: Path) -> None:
    session = bare_session(tmp_path)
    session.put_files(
        [
            ContainerFile(f"{FILES_DIRECTORY}/run.sh", b"echo hi\n", 0o755),
            ContainerFile(f"{FILES_DIRECTORY}/data", b"x", 0o644),
        ]
    )
    files = session.root / "work" / "embedded_files"
    assert (files / "run.sh").read_bytes() == b"echo hi\n" and (files / "data").read_bytes() == b"x"
    assert stat.S_IMODE((files / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((files / "data").stat().st_mode) == 0o644
    assert sorted(p.name for p in files.iterdir()) == ["data", "run.sh"]  # no temporary left behind
    with pytest.raises(EngineError, match="is not a file of"):
        session.put_files([ContainerFile(f"{WORKING_DIRECTORY}/elsewhere", b"x")])
    with pytest.raises(EngineError, match="is not a file of"):
        session.put_files([ContainerFile(f"{FILES_DIRECTORY}/../../ctl", b"x")])


def test_what_the_container_put_in_the_way_is_replaced_never_followed(tmp_path: Path) -> None:
    session = bare_session(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    session.put_files([ContainerFile(f"{FILES_DIRECTORY}/run.sh", b"1")])
    files = session.root / "work" / "embedded_files"
    (files / "run.sh").unlink()
    (files / "run.sh").symlink_to(outside / "secret")  # a link at the file's name
    (files / "hard").unlink(missing_ok=True)
    os.link(outside / "secret", files / "hard")  # a hard link at another's
    session.put_files(
        [ContainerFile(f"{FILES_DIRECTORY}/run.sh", b"2"), ContainerFile(f"{FILES_DIRECTORY}/hard", b"3")]
    )
    assert (outside / "secret").read_text() == "keep"
    assert not (files / "run.sh").is_symlink() and (files / "run.sh").read_bytes() == b"2"
    assert (files / "hard").read_bytes() == b"3"
    shutil.rmtree(files)
    files.symlink_to(outside)  # the directory itself a link
    with pytest.raises(EngineError, match="cannot write the embedded file"):
        session.put_files([ContainerFile(f"{FILES_DIRECTORY}/run.sh", b"4")])
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    files.unlink()
    (session.root / "work").rename(session.root / "old")
    (session.root / "work").symlink_to(outside)  # or the working directory
    with pytest.raises(EngineError, match="cannot write the embedded file"):
        session.put_files([ContainerFile(f"{FILES_DIRECTORY}/run.sh", b"5")])
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_environment_files_resolve_through_env_file_like_openjd_sessions(tmp_path: Path) -> None:
    script = {
        "actions": {
            "onEnter": {"command": "{{Env.File.Setup}}", "args": ["{{Env.File.Data}}"]},
            "onExit": {"command": "{{Env.File.Setup}}", "args": ["bye"]},
        },
        "embeddedFiles": [
            {
                "name": "Setup",
                "type": "TEXT",
                "runnable": True,
                "filename": "setup.sh",
                "data": "cat {{Env.File.Data}}\r\n",
            },
            {"name": "Data", "type": "TEXT", "data": "shot {{Param.Frames}} in {{Session.WorkingDirectory}}"},
        ],
    }
    path = bundle(tmp_path / "b", template={"jobEnvironments": [{"name": "job", "script": script}]})
    (planned,) = load(path).steps[0].environments
    assert Environment.from_json(planned.to_json()) == planned
    resolved = resolve_environment(planned, {"Frames": "1-3"}, WORKING_DIRECTORY, FILES_DIRECTORY)
    setup, data = resolved.files
    assert setup.path == f"{FILES_DIRECTORY}/setup.sh" and setup.mode == 0o755
    assert re.fullmatch(f"{FILES_DIRECTORY}/tmp[0-9a-f]{{16}}", data.path) and data.mode == 0o644
    assert setup.data == f"cat {data.path}\n".encode()  # AUTO line ends on Linux: LF
    assert data.data == f"shot 1-3 in {WORKING_DIRECTORY}".encode()
    assert resolved.enter == [setup.path, data.path] and resolved.exit == [setup.path, "bye"]
    cold = resolve_environment(planned, {"Frames": "1-3"}, "/tmp/s", cold_env_files_dir(0))
    assert cold.files[0].path == "/openjd/environment_files/0/setup.sh"


# -- sessions on a fake engine ----------------------------------------------------------------


class AgentEngine:
    """Session "containers" as host processes: ``start`` runs the agent's protocol (one line per
    action from the real FIFO ``ctl``, each action's output, pid and exit code as files beside it)
    in a thread, with the paths a container sees under SESSION_ROOT found in the session's directory.
    It runs sessions only; GPUs are :class:`FakeGpus`', and each session container keeps its request."""

    runs_sessions = True

    def __init__(self, slots: int = 1, gpus: Optional[FakeGpus] = None) -> None:
        self.slots = slots
        self.gpus = gpus or FakeGpus(0)
        self.mount_policy = MountPolicy.build([])
        self.requests: dict[str, ContainerRequest] = {}
        self.agents: dict[str, threading.Thread] = {}
        self.actions: dict[str, subprocess.Popen] = {}
        self.dead: set[Path] = set()  # the session directories of containers that died
        self.lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"engine": "agent"}

    def ping(self) -> None:
        pass

    def image_exists(self, image: str) -> bool:
        return True

    def create(self, request: ContainerRequest) -> str:
        assert request.session_dir, "this engine runs sessions only"
        self.requests[request.name] = request
        return request.name

    def start(self, handle: str) -> None:
        root = Path(self.requests[handle].session_dir or "")
        thread = threading.Thread(target=self._agent, args=(root,), daemon=True)
        self.agents[handle] = thread
        thread.start()

    def _agent(self, root: Path) -> None:
        (root / "work").mkdir(exist_ok=True)
        with open(os.open(root / "ctl", os.O_RDWR)) as ctl:
            (root / "ready").write_text("")
            for line in ctl:
                op, _, rest = line.rstrip("\n").partition(" ")
                name, _, arg = rest.partition(" ")
                if op == "run":
                    threading.Thread(target=self._run, args=(root, name, arg), daemon=True).start()
                elif op == "kill":
                    with self.lock:
                        action = self.actions.get(f"{root}/{name}")
                    if action is not None:
                        _kill(action)
                elif op == "exit":
                    return

    def _run(self, root: Path, name: str, script: str) -> None:
        with open(root / f"{name}.out", "wb") as out:
            action = subprocess.Popen(
                ["/bin/sh", "-c", script.replace(SESSION_ROOT, str(root))],
                cwd=root / "work",
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ["PATH"], "HPCDOCK_NL": "\n"},
                start_new_session=True,
            )
            with self.lock:
                self.actions[f"{root}/{name}"] = action
            (root / f"{name}.pid").write_text(f"{action.pid}\n")
            code = action.wait()
        if root.exists() and root not in self.dead:  # a dead container's agent writes nothing
            (root / f"{name}.rc").write_text(f"{code if code >= 0 else 128 - code}\n")

    def kill(self, handle: str) -> None:
        """The container dies, its agent and every action with it (what a lost session is)."""
        root = Path(self.requests[handle].session_dir or "")
        self.dead.add(root)
        try:
            fd = os.open(root / "ctl", os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"exit\n")
            os.close(fd)
        except OSError:  # (its agent exited already)
            pass
        self.agents[handle].join(5)
        with self.lock:
            actions = [a for key, a in self.actions.items() if key.startswith(f"{root}/")]
        for action in actions:
            _kill(action)

    def status(self, handle: str) -> RunStatus:
        alive = self.agents[handle].is_alive()
        return RunStatus(handle, handle, RunState.RUNNING if alive else RunState.EXITED, None if alive else 0)

    def find(self, name: str) -> Optional[RunStatus]:
        return self.status(name) if name in self.agents else None

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> Iterator[bytes]:
        return iter(())

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        self.agents[handle].join(timeout)
        return 0

    def stop(self, handle: str, grace: float = 0) -> None:
        if self.agents[handle].is_alive():
            self.kill(handle)

    def remove(self, handle: str) -> None:
        self.agents.pop(handle, None)

    def leftovers(self, store_id: str) -> list[RunStatus]:
        return [self.status(h) for h in self.agents]

    def close(self) -> None:
        pass


def _kill(action: subprocess.Popen) -> None:
    """Kill an action's process group, as the agent does (one that ended already is fine)."""
    try:
        os.killpg(action.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class RecordingGpus(FakeGpus):
    """GPU placement that remembers, in order, under which keys it granted and restored GPUs."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.events: list[tuple[str, int]] = []

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        grant = super().acquire(task_id, count)
        if grant is not None:
            self.events.append(("acquire", task_id))
        return grant

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        super().restore(task_id, grant)
        self.events.append(("restore", task_id))


def session_step(out: Path, task: str, enter: str = "", exit: str = "", **extra: Any) -> dict[str, Any]:
    """A step of one-frame tasks whose environment runs ``enter``/``exit`` (shell) and counts them in ``out``."""
    actions = {
        "onEnter": {"command": "sh", "args": ["-c", f"echo enter >> {out}/enters; {enter}"]},
        "onExit": {"command": "sh", "args": ["-c", f"echo exit >> {out}/exits; {exit}"]},
    }
    return {
        "name": "r",
        "parameterSpace": {
            "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}]
        },
        "stepEnvironments": [{"name": "warm", "script": {"actions": actions, **extra.pop("env_script", {})}}],
        "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", task]}}, **extra.pop("script", {})},
        **extra,
    }


def count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def scheduler(tmp_path: Path, engine: AgentEngine) -> tuple[Store, Scheduler]:
    store = Store(tmp_path / "state" / "db.sqlite")
    return store, Scheduler(store, engine, state_dir=tmp_path / "state")


def wait_sessions_ended(sched: Scheduler, timeout: float = 20) -> None:
    assert sched.sessions is not None
    deadline = time.monotonic() + timeout
    while sched.sessions.count() and time.monotonic() < deadline:
        sched.wake()
        time.sleep(0.02)
    assert sched.sessions.count() == 0, sched.sessions.sessions


def run_job(store: Store, sched: Scheduler, path: str, timeout: float = 30) -> Job:
    job = submit(store, sched, path)
    sched.start()
    try:
        deadline = time.monotonic() + timeout
        while store.read_job(job.id).state not in JOB_FINAL and time.monotonic() < deadline:
            time.sleep(0.02)
        wait_sessions_ended(sched)
    finally:
        sched.stop()
    return store.read_job(job.id)


def logs(sched: Scheduler, store: Store, job: Job) -> list[str]:
    return [sched.log_path(t.id).read_text() for t in store.tasks(job.id)]


def test_embedded_files_of_environment_and_tasks_reach_them_in_one_warm_session(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env_script = {
        "embeddedFiles": [
            {
                "name": "Setup",
                "type": "TEXT",
                "runnable": True,
                "filename": "setup.sh",
                "data": 'echo "from {{Env.File.Setup}}" > marker\necho openjd_env: SHOT=sh010\n',
            }
        ],
        "actions": {
            "onEnter": {
                "command": "sh",
                "args": ["-c", f"echo enter >> {out}/enters; {{{{Env.File.Setup}}}}"],
            },
            "onExit": {
                "command": "sh",
                "args": [
                    "-c",
                    f"echo exit >> {out}/exits; [ -x {{{{Env.File.Setup}}}} ] && echo still-there >> {out}/exits",
                ],
            },
        },
    }
    script = {
        "embeddedFiles": [
            {
                "name": "Run",
                "type": "TEXT",
                "runnable": True,
                "filename": "run.sh",
                "data": 'echo "VALUE frame={{Task.Param.Frame}} data=$(cat "$1") shot=$SHOT marker=$(cat "$2")"\n',
            },
            {"name": "Data", "type": "TEXT", "data": "data of {{Task.Param.Frame}}"},
        ],
        # a host process does not see SESSION_ROOT in a file's data as a container would: paths come as
        # arguments (and the environment writes its marker relative to its working directory)
        "actions": {
            "onRun": {
                "command": "{{Task.File.Run}}",
                "args": ["{{Task.File.Data}}", "{{Session.WorkingDirectory}}/marker"],
            }
        },
    }
    step = {
        **session_step(out, "true"),
        "stepEnvironments": [{"name": "warm", "script": env_script}],
        "script": script,
    }
    engine = AgentEngine(slots=1)
    store, sched = scheduler(tmp_path, engine)
    job = run_job(store, sched, write_bundle(tmp_path / "b", [step], frames="1-3"))
    assert job.state == "succeeded", logs(sched, store, job)
    assert len(engine.requests) == 1  # one session ran every task: embedded files no longer mean cold
    assert count(out / "enters") == 1 and (out / "exits").read_text() == "exit\nstill-there\n"
    for task, text in zip(store.tasks(job.id), logs(sched, store, job)):
        frame = task.params["Frame"]
        expected = (
            f"VALUE frame={frame} data=data of {frame} shot=sh010 marker=from {FILES_DIRECTORY}/setup.sh"
        )
        assert expected in text, text


def test_the_environments_output_heads_the_opening_tasks_log_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    step = session_step(
        out, "echo task {{Task.Param.Frame}}", enter="echo VALUE from-enter; echo openjd_progress: 50"
    )
    store, sched = scheduler(tmp_path, AgentEngine(slots=1))
    job = run_job(store, sched, write_bundle(tmp_path / "b", [step], frames="1-3"))
    assert job.state == "succeeded"
    texts = logs(sched, store, job)
    opened = [t for t in texts if "VALUE from-enter" in t]
    assert len(opened) == 1, texts
    lines = opened[0].splitlines()
    assert lines[0].startswith("--- attempt 1: ")
    assert lines[1:5] == [
        "--- environment 'warm': onEnter",
        "VALUE from-enter",
        "openjd_progress: 50",
        "--- environment 'warm': onEnter exited with code 0",
    ]
    assert lines[5].startswith("task ")
    assert all(t.progress == 100.0 for t in store.tasks(job.id))


def test_a_failing_on_exit_is_told_in_the_last_tasks_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    step = session_step(out, "echo task {{Task.Param.Frame}}", exit="echo the licence server is gone; exit 3")
    store, sched = scheduler(tmp_path, AgentEngine(slots=1))
    with caplog.at_level(logging.WARNING, logger="hpcdock_service.sessions"):
        job = run_job(store, sched, write_bundle(tmp_path / "b", [step], frames="1-2"))
    assert job.state == "succeeded"
    failure = "environment 'warm': onExit exited with code 3: the licence server is gone"
    assert any(failure in r.getMessage() for r in caplog.records), caplog.text
    last = max(store.tasks(job.id), key=lambda t: t.finished_at or 0)
    assert sched.log_path(last.id).read_text().splitlines()[-1].endswith(f"ended: {failure}")
    assert sum(failure in t for t in logs(sched, store, job)) == 1


# -- GPUs held by a session -----------------------------------------------------------------------


def gpu_step(out: Path, task: str, **kw: str) -> dict[str, Any]:
    step = session_step(out, task, **kw)
    step["hostRequirements"] = {"amounts": [{"name": "amount.worker.gpu", "min": 1}]}
    return step


def test_a_gpu_step_runs_warm_holding_its_gpu_for_the_session(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    gpus = RecordingGpus(1)
    engine = AgentEngine(slots=2, gpus=gpus)
    store, sched = scheduler(tmp_path, engine)
    job = run_job(store, sched, write_bundle(tmp_path / "b", [gpu_step(out, "echo task")], frames="1-4"))
    assert job.state == "succeeded"
    (request,) = engine.requests.values()  # one GPU, so one session, which ran all four tasks
    assert request.gpus == GpuGrant(1, (0,))
    assert count(out / "enters") == 1 and count(out / "exits") == 1
    assert gpus.events == [("acquire", -1)]  # granted once, to the session (no task id)
    assert gpus.free == [0] and gpus.held == {}
    assert all(t.gpus == (0,) for t in store.tasks(job.id))


@pytest.mark.parametrize("how", ["onEnter fails", "canceled"])
def test_a_sessions_gpu_goes_back_when_it_fails_or_is_canceled(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    gpus = RecordingGpus(1)
    engine = AgentEngine(slots=1, gpus=gpus)
    store, sched = scheduler(tmp_path, engine)
    if how == "onEnter fails":
        step = gpu_step(out, "echo task", enter="exit 3")
        job = run_job(store, sched, write_bundle(tmp_path / "b", [step], frames="1-2", max_attempts=1))
        assert job.state == "failed"
        assert all("onEnter exited with code 3" in (t.error or "") for t in store.tasks(job.id))
        assert count(out / "exits") == 0
    else:
        job = submit(store, sched, write_bundle(tmp_path / "b", [gpu_step(out, "sleep 30")], frames="1-2"))
        sched.start()
        try:
            wait_until(lambda: store.read_job(job.id).tasks_running == 1, "a task running in its session")
            assert gpus.held == {-1: [0]}
            assert sched.cancel(job.id).state == "canceled"
            wait_sessions_ended(sched)
        finally:
            sched.stop()
        assert count(out / "exits") == 1  # cancel ran onExit
    assert gpus.free == [0] and gpus.held == {}
    assert len(gpus.events) == len(engine.requests)  # one grant per session, each given back


def wait_until(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("lost", [False, True])
def test_a_restarted_service_holds_a_living_sessions_gpu_again(tmp_path: Path, lost: bool) -> None:
    """What a service killed with -9 leaves: a session holding the GPU, a task running in it. The
    next service holds the GPU again before granting any (and never under the same key), follows
    the task to its end and gives the GPU back when the session ends; a session whose container
    died holds nothing, and its task runs again."""
    out = tmp_path / "out"
    out.mkdir()
    engine = AgentEngine(slots=2, gpus=RecordingGpus(1))
    store, old = scheduler(tmp_path, engine)
    first = submit(
        store, old, write_bundle(tmp_path / "a", [gpu_step(out, "sleep 1; echo ran-$((40 + 2))")], frames="1")
    )
    (task,) = store.tasks(first.id)
    pool = SessionPool(engine, tmp_path / "state" / "sessions")
    name, step = "hpcdock-old-session", store.step_run(first.id, 0)
    session = pool.new(
        name, first.id, 0, lambda: old._session_plan(step, name), engine.gpus.acquire(-1, 1), -1
    )
    run = f"hpcdock-{store.store_id}-t{task.id}-a1"
    store.start_task(task.id, run, [0], 0)
    session.start(
        session.create(
            ContainerRequest(
                run, "img", ["sh", "-c", "sleep 1; echo ran-$((40 + 2))"], {}, "/", [], False, {}
            )
        )
    )
    wait_until(lambda: session.find(run) is not None, "the task running in its session")
    if lost:
        engine.kill(name)
    second = submit(store, old, write_bundle(tmp_path / "b", [gpu_step(out, "echo second")], frames="1"))
    gpus = engine.gpus = RecordingGpus(1)  # the new process's placement: it knows no grant
    store, sched = scheduler(tmp_path, engine)
    sched.start()
    try:
        wait_until(lambda: all(store.read_job(j.id).state in JOB_FINAL for j in (first, second)), "both jobs")
        wait_sessions_ended(sched)
    finally:
        sched.stop()
    assert [store.read_job(j.id).state for j in (first, second)] == ["succeeded", "succeeded"]
    log = sched.log_path(task.id).read_text()
    assert store.read_task(task.id).attempt == 1 and log.count("ran-42") == 1, log
    if lost:
        # the lost session held nothing, and its key stays its own until it has ended
        assert gpus.events == [("acquire", -2), ("acquire", -3)]
        assert count(out / "enters") == 3 and count(out / "exits") == 2  # the lost one could not exit
    else:
        assert "re-adopted" in log
        assert gpus.events == [("restore", -1), ("acquire", -2)]  # held again first; a key of its own
        assert count(out / "enters") == 2 and count(out / "exits") == 2
    assert gpus.free == [0] and gpus.held == {}


def test_a_session_holds_its_steps_licence_until_it_has_ended(tmp_path: Path) -> None:
    """A session's container keeps what its environment started (a render server and its
    licence) between tasks and through onExit, so the step's counted amounts are the session's
    until it has ended: another job's task needing the same licence starts only after the
    session's onExit has run, never while it runs."""
    out = tmp_path / "out"
    out.mkdir()
    sizes = {"amount.lic": 1.0}
    licence = {"amounts": [{"name": "amount.lic", "min": 1}]}
    warm = session_step(out, "echo task", exit="sleep 1; echo done >> " + str(out / "exited"))
    warm["hostRequirements"] = licence
    (tmp_path / "out2").mkdir()
    other = session_step(tmp_path / "out2", f"test -s {out}/exited")
    other["hostRequirements"] = licence
    engine = AgentEngine(slots=2)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(store, engine, state_dir=tmp_path / "state", pool=Pool(sizes))
    policy = MountPolicy.build([str(tmp_path)])
    first = store.create_job(
        load_bundle(write_bundle(tmp_path / "a", [warm], frames="1-3"), mount_policy=policy, capacity=sizes)
    )
    second = store.create_job(
        load_bundle(
            write_bundle(tmp_path / "b", [other], frames="1", max_attempts=1),
            mount_policy=policy,
            capacity=sizes,
        )
    )
    sched.start()
    try:
        wait_until(
            lambda: sched.pool.to_json()["amount.lic"]["in_use"] == 1, "the session holding the licence"
        )
        wait_until(lambda: all(store.read_job(j.id).state in JOB_FINAL for j in (first, second)), "both jobs")
        wait_sessions_ended(sched)
    finally:
        sched.stop()
    assert [store.read_job(j.id).state for j in (first, second)] == ["succeeded", "succeeded"], logs(
        sched, store, second
    )
    assert count(out / "enters") == 1 and count(out / "exited") == 1  # one session ran all three tasks
    assert sched.pool.to_json()["amount.lic"]["in_use"] == 0


def test_an_on_enter_without_a_licence_backs_off_without_spending_an_attempt(tmp_path: Path) -> None:
    """A render server that finds no licence as its session opens is the task's licence failure:
    the task goes back to pending and, after the back-off, runs in a new session on attempt 1."""
    out = tmp_path / "out"
    out.mkdir()
    enter = (
        f"if [ ! -e {out}/licensed ]; then touch {out}/licensed; "
        "echo 'hython: No licenses could be found to run this application.'; exit 3; fi"
    )
    engine = AgentEngine(slots=1)
    store = Store(tmp_path / "state" / "db.sqlite")
    sched = Scheduler(
        store,
        engine,
        state_dir=tmp_path / "state",
        licence=LicenceRetry(backoff_s=0.05, backoff_max_s=1, retries=2),
    )
    job = run_job(
        store, sched, write_bundle(tmp_path / "b", [session_step(out, "echo task", enter=enter)], frames="1")
    )
    (task,) = store.tasks(job.id)
    assert job.state == "succeeded", task.error
    assert task.attempt == 1 and task.licence_retries == 1
    assert (
        count(out / "enters") == 2 and count(out / "exits") == 1
    )  # the failed session entered nothing to exit
