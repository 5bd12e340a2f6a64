"""How lines reach a session's agent: the FIFO on the service's host, the followed control file on
another host that shares only the session's directory.

The agent is the real :data:`~hpcdock_service.sessions.AGENT` run by this host's ``/bin/sh``; the
"engine" below only starts it as a process with the session's directory where a container would
have it bound, and says whether that process runs, as a cluster engine says whether a session's
job or service does (tests/engine/test_conformance.py runs sessions on the real engines).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
from hpcdock_service import sessions
from hpcdock_service.engines.base import SESSION_ROOT, ContainerRequest, EngineError, RunState, RunStatus
from hpcdock_service.sessions import Channel, Session, SessionPlan, SessionPool, SessionState
from hpcdock_service.taskfiles import ResolvedEnvironment


class ProcessEngine:
    """Runs a session's command as a host process (its session directory where SESSION_ROOT is
    named); ``queued_for`` seconds pass first, as a run waits in a cluster's queue, and the run
    is still called queued for ``lag`` seconds once it runs, as a cluster's listing lags."""

    runs_sessions = True

    def __init__(self, session_root: Optional[Path], queued_for: float = 0.0, lag: float = 0.0) -> None:
        self.session_root = session_root
        self.queued_for = queued_for
        self.lag = lag
        self.ran_at = 0.0  # when the last run's process started
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.stopped: list[str] = []  # runs that had to be stopped (not ended by their agent)

    def create(self, request: ContainerRequest) -> str:
        assert request.session_dir is not None
        self.command = [request.session_dir if part == SESSION_ROOT else part for part in request.command]
        return request.name

    def start(self, handle: str) -> None:
        self.started_at[handle] = time.monotonic()

    def _proc(self, handle: str) -> Optional[subprocess.Popen]:
        if handle not in self.procs and time.monotonic() - self.started_at[handle] >= self.queued_for:
            self.procs[handle] = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
            self.ran_at = time.monotonic()
        return self.procs.get(handle)

    def status(self, handle: str) -> RunStatus:
        proc = self._proc(handle)
        if proc is None or time.monotonic() - self.ran_at < self.lag:
            return RunStatus(handle, handle, RunState.QUEUED)
        code = proc.poll()
        state = RunState.RUNNING if code is None else RunState.EXITED
        return RunStatus(handle, handle, state, exit_code=code)

    def find(self, name: str) -> Optional[RunStatus]:
        return self.status(name) if name in self.started_at else None

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        proc = self._proc(handle)
        assert proc is not None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(handle) from None

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> list[bytes]:
        return []

    def stop(self, handle: str, grace: float = 0) -> None:
        proc = self.procs.get(handle)
        if proc is not None and proc.poll() is None:
            self.stopped.append(handle)
            proc.kill()
            proc.wait()

    def remove(self, handle: str) -> None:
        self.stop(handle)
        self.procs.pop(handle, None)
        self.started_at.pop(handle, None)


def plan(tmp_path: Path) -> SessionPlan:
    enter = 'echo from-enter > marker && echo "openjd_env: GREETING=hello there"'
    environment = ResolvedEnvironment(
        "warm", ["sh", "-c", enter], ["sh", "-c", f"echo bye >> {tmp_path}/exits"], {}, None, []
    )
    request = ContainerRequest("s1", "img", [], {}, "/", [], False, {})
    return SessionPlan(request, [environment])


def task(session: Session, name: str, script: str) -> str:
    request = ContainerRequest(
        name, "img", ["sh", "-c", script], {}, str(session.root / "work"), [], False, {}
    )
    handle = session.create(request)
    session.start(handle)
    return handle


def output(session: Session, handle: str) -> str:
    return b"".join(session.logs(handle, follow=False)).decode()


@pytest.fixture
def opened(tmp_path: Path, request: pytest.FixtureRequest):
    """An open session on the channel the test is parametrised with, ended afterwards."""
    remote = request.param is Channel.FILE
    engine = ProcessEngine(tmp_path / "shared" if remote else None)
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    assert session.channel is request.param
    yield engine, pool, session
    session.end(grace=1)


@pytest.mark.parametrize("opened", [Channel.FIFO, Channel.FILE], indirect=True)
def test_tasks_run_in_the_session_and_see_what_its_environment_left(opened, tmp_path: Path) -> None:
    engine, pool, session = opened
    first = task(session, "t1", 'cat marker && echo "$GREETING"')
    assert session.state is SessionState.OPEN and session.enters == 1
    assert session.wait(first, timeout=10) == 0
    assert output(session, first) == "from-enter\nhello there\n"
    second = task(session, "t2", "exit 4")
    assert session.wait(second, timeout=10) == 4
    assert session.status(second).exit_code == 4
    where = tmp_path / ("shared" if session.channel is Channel.FILE else "state")
    assert session.root == where / "s1"
    fifo = (session.root / "ctl").is_fifo()
    assert fifo == (session.channel is Channel.FIFO)
    session.end(grace=5)
    assert (tmp_path / "exits").read_text() == "bye\n"
    assert engine.stopped == []  # its agent read "exit" and ended the run itself
    assert not session.root.exists()


def test_a_line_the_service_is_still_writing_is_read_once_whole(tmp_path: Path) -> None:
    """The agent that reaches the end of the control file mid-line keeps what it read and waits."""
    engine = ProcessEngine(tmp_path / "shared")
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    try:
        session.open(plan(tmp_path))
        line = b"run t1 echo one-piece && echo second\n"
        fd = os.open(session.root / "ctl", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line[:17])
            time.sleep(sessions.FOLLOW_CONTROL * 4)  # the agent has looked at least twice meanwhile
            assert not (session.root / "t1.rc").exists()
            os.write(fd, line[17:])
        finally:
            os.close(fd)
        assert session.wait("t1", timeout=10) == 0
        assert output(session, "t1") == "one-piece\nsecond\n"
    finally:
        session.end(grace=1)


def test_a_remote_agent_that_died_fails_its_task_instead_of_hanging(tmp_path: Path) -> None:
    engine = ProcessEngine(tmp_path / "shared")
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    try:
        handle = task(session, "t1", "sleep 30")
        assert session.status(handle).state is RunState.RUNNING
        engine.stop(session.handle or "")  # the node went away with the agent and its task
        time.sleep(sessions.LIVENESS_TTL)  # what the engine said a moment ago no longer holds
        with pytest.raises(EngineError, match="ended while the task ran"):
            session.wait(handle, timeout=10)
        assert session.find("t1") is None  # after a restart it runs again, it did not finish here
        # It takes no more tasks (each would fail in it in turn): the next dispatch ends it.
        assert session.state is SessionState.FAILED and pool.idle(1, 0) is None
    finally:
        session.end(grace=1)


def test_a_session_queued_by_its_cluster_waits_past_the_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and takes tasks while the engine's listing still calls its run queued."""
    monkeypatch.setattr(sessions, "AGENT_START_TIMEOUT", 0.5)
    engine = ProcessEngine(tmp_path / "shared", queued_for=1.5, lag=5.0)
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    try:
        handle = task(session, "t1", "echo ran")
        assert session.wait(handle, timeout=10) == 0
        assert output(session, handle) == "ran\n"
    finally:
        session.end(grace=1)


@pytest.mark.parametrize("remote", [False, True])
def test_an_agent_that_is_gone_refuses_the_line(tmp_path: Path, remote: bool) -> None:
    engine = ProcessEngine(tmp_path / "shared" if remote else None)
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    try:
        session.open(plan(tmp_path))
        engine.stop(session.handle or "")
        time.sleep(sessions.LIVENESS_TTL if remote else 0)  # the engine's word is asked again
        with pytest.raises(EngineError, match="agent is gone"):
            session._send("run t1 true")
        assert session.state is SessionState.FAILED and pool.idle(1, 0) is None
    finally:
        session.end(grace=1)


def test_a_task_handed_to_a_remote_agent_that_has_not_read_it_yet_is_followed_not_run_again(
    tmp_path: Path,
) -> None:
    """A shared filesystem may show an appended line to the agent's host seconds later. A service
    restarted in between finds the task by its line in the control file: running (followed to
    its end), not never-started (which would run it a second time elsewhere)."""
    engine = ProcessEngine(tmp_path / "shared")
    pool = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
    session = pool.new("s1", 1, 0, lambda: plan(tmp_path))
    try:
        session.open(plan(tmp_path))
        agent = engine.procs[session.handle or ""]
        os.kill(agent.pid, signal.SIGSTOP)  # it reads nothing more for now
        try:
            task(session, "t1", "echo once")
            assert not (session.root / "t1.out").exists()
            assert session.find("t9") is None  # a task never handed over is not claimed
            adopted = SessionPool(engine, tmp_path / "state")  # type: ignore[arg-type]
            adopted.recover()
            found = adopted.find_task("t1")
            assert found is not None and found[1].state is RunState.RUNNING
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        assert found[0].wait("t1", timeout=10) == 0
        assert output(found[0], "t1") == "once\n"
    finally:
        session.end(grace=1)
