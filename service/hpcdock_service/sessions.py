"""Sessions: a step's OpenJD environments entered once, its tasks run one after another inside.

A session is one long-lived container on one of the engine's slots (a local container, a
Slurm job, a Swarm service). It runs a small agent (:data:`AGENT`, nothing but ``/bin/sh``) that
reads one line per action from ``ctl`` in the session's own directory, which the engine binds at
:data:`~.engines.base.SESSION_ROOT`. An action's output and exit code are files beside it, so a
task starts in milliseconds (a line written, a shell forked) instead of an engine round trip per
container or per ``exec`` (see docs/benchmarks.md), and the files outlive the service: a
restarted service finds each running task's output and, once it ended, its exit code, so a task
is followed to its end and never run twice to completion.

How a line reaches the agent depends on where the container runs (:class:`Channel`):

- **on the service's host** (the local engine: session directories under the state directory),
  ``ctl`` is a FIFO: the agent blocks on it, a line wakes it at once, and opening it for writing
  finds a reader exactly while the agent lives;
- **on another host** (the cluster engines: session directories in the engine's spool on the
  shared filesystem, :attr:`~.engines.base.Engine.session_root`), a FIFO carries nothing between
  hosts, so ``ctl`` is a regular file the service only appends whole lines to, and the agent
  follows it, looking for more every :data:`FOLLOW_CONTROL` seconds; whether the agent lives is
  whether the engine says the session's run (a Slurm job, a Swarm service) has not ended, asked
  at most every :data:`LIVENESS_TTL` seconds.

The environments (the job's, then the step's) are entered in order when the session opens:
each one's ``variables`` first, then its ``onEnter``, whose ``openjd_env``/``openjd_unset_env``
lines change what later environments and every task see (OpenJD's rule: only an environment's
actions set variables). They exit in reverse order when the session ends, each ``onExit`` with
the variables as they stood once its environment was entered. A failing ``onEnter`` fails the
session's tasks, naming the environment and showing the end of its output, and its
environments entered so far are exited; a failing task does not end the session.

An environment's embedded files (``{{Env.File.NAME}}``) and a task's (``{{Task.File.NAME}}``)
are written by the service before each action that uses them, where openjd-sessions writes them:
``embedded_files`` under the session's working directory (:data:`FILES_DIRECTORY`). That
directory is the container's to change, so every write goes through directory file descriptors
that follow no link, into a new file renamed into place (:meth:`Session.put_files`).

What the environments print entering the session goes at the head of the log of the task that
opened it, marked as theirs; a failing ``onExit`` is logged by the service and appended to the
log of the session's last task.

A session holds its step's counted amounts and GPUs for its whole life: the scheduler grants
them when the session is made for its first task (under :attr:`Session.key`, the session's own,
never a task's), the container is created with the GPUs exactly as a cold task's is (attached and
verified by the engine), and the scheduler gives them back once the session has ended, whether it
ended after its last task, a failed ``onEnter``, a cancel, or as a session a restarted service
found lost; a restarted service holds a living session's again before it grants any.

The ``openjd-sessions`` package does not run the actions: it runs them as local subprocesses
(optionally as another user), while here every action runs inside the session's container. Its
grammar of ``openjd_env`` lines is used (through :class:`.logparse.LogParser`), and its rules
for embedded files (through :mod:`.taskfiles`).

:class:`Session` is a :class:`~.engines.base.Runs`: a task's runner drives a task in a session
exactly as it drives a container of its own, so logs, progress, frames, retries, timeouts and
cancel work the same way.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import secrets
import shlex
import shutil
import stat
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

from .engines.base import (
    LABEL_SESSION,
    SESSION_ROOT,
    ContainerFile,
    ContainerRequest,
    Engine,
    EngineError,
    EngineUnreachable,
    GpuGrant,
    LogStream,
    RunState,
    RunStatus,
)
from .logparse import LogParser, OpenJDEnv, OpenJDMalformed, OpenJDUnsetEnv
from .taskfiles import ResolvedEnvironment

log = logging.getLogger(__name__)

WORKING_DIRECTORY = f"{SESSION_ROOT}/work"  # {{Session.WorkingDirectory}} inside the container
FILES_DIRECTORY = f"{WORKING_DIRECTORY}/embedded_files"  # where its embedded files are written
POLL = 0.005  # seconds between looks at an action's exit code
FOLLOW_POLL = 0.02  # seconds between reads of a running action's output
AGENT_START_TIMEOUT = 60.0  # seconds a new session's agent may take to say it is ready, once it runs
AGENT_STATUS_POLL = 0.25  # seconds between asking the engine how a starting session's run stands
TAIL_BYTES = 64 * 1024  # how far back a log's last lines are looked for
FAILURE_TAIL = 2000  # characters of a failed onEnter's output quoted in its tasks' error
CONTROL_READ_LIMIT = 16 << 20  # bytes of a control file looked through after a restart
ENVIRONMENT_LOG = 64 * 1024  # characters of each onEnter's output kept for its task's log

FOLLOW_CONTROL = 0.05  # seconds a remote agent waits before it looks at its control file again
LIVENESS_TTL = 1.0  # seconds an engine's word that a remote session's run lives is taken as true

# The agent, given the session's directory as $1: one line per action from ``ctl`` ("run NAME
# SCRIPT", "kill NAME GRACE", "exit"). A run's output goes to NAME.out and its exit code, once
# known, to NAME.rc; the action runs in a session (process group) of its own where ``setsid``
# exists, so a kill reaches all it started. A FIFO is opened read-write: it never sees an end of
# file, and the service's non-blocking open finds a reader as long as the agent lives. A regular
# file is followed: at its end the agent keeps what it read of a line the service is still
# writing and looks again after $2 seconds.
AGENT = r"""
cd "$1" || exit 70
mkdir -p work
HPCDOCK_NL='
'
export HPCDOCK_NL
SETSID=
command -v setsid >/dev/null 2>&1 && SETSID=setsid
if [ -p ctl ]; then
  exec 3<>ctl
  next() { IFS= read -r line <&3; }
else
  exec 3<ctl || exit 70
  next() {
    part=
    while ! IFS= read -r line <&3; do part=$part$line; sleep "$2"; done
    line=$part$line
  }
fi
: > ready
while next "$@"; do
  op=${line%% *}; rest=${line#* }; name=${rest%% *}; arg=${rest#* }
  case $op in
    run)
      ( cd work && $SETSID sh -c "$arg" > "../$name.out" 2>&1 < /dev/null &
        echo $! > "$name.pid"; wait $!; echo $? > "$name.rc" ) &
      ;;
    kill)
      ( i=0; while [ ! -s "$name.pid" ] && [ $i -lt 100 ]; do sleep 0.01; i=$((i+1)); done
        p=$(cat "$name.pid" 2>/dev/null) || exit 0
        kill -TERM -"$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
        sleep "$arg"
        [ -e "$name.rc" ] || kill -KILL -"$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null ) &
      ;;
    exit) exit 0 ;;
  esac
done
"""


def agent_command() -> list[str]:
    """The session container's command: the agent, in the directory the engine binds."""
    return ["/bin/sh", "-c", AGENT, "hpcdock-agent", SESSION_ROOT, f"{FOLLOW_CONTROL:g}"]


class Channel(str, Enum):
    """How lines reach a session's agent (see the module's docstring)."""

    FIFO = "fifo"  # the container runs on the service's host
    FILE = "file"  # it may run on another host that shares only the session's directory


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def apply_env_messages(output: str, env: dict[str, str]) -> Optional[str]:
    """Apply an environment action's ``openjd_env``/``openjd_unset_env`` lines to ``env``, in order
    (read by :class:`.logparse.LogParser`, with openjd-sessions' own grammar); returns why the
    action fails when a line is one the reference runtime fails an environment's action for."""
    parser = LogParser()
    for update in [*parser.feed(output), *parser.close()]:
        if isinstance(update, OpenJDEnv):
            env[update.name] = update.value
        elif isinstance(update, OpenJDUnsetEnv):
            env.pop(update.name, None)
        elif isinstance(update, OpenJDMalformed):
            return update.reason
    return None


def _quote(value: str) -> str:
    """Shell-quote ``value`` on one line (the agent reads one line per action): a newline in a
    value becomes the agent's ``$HPCDOCK_NL``."""
    return shlex.quote(value).replace("\n", "'\"$HPCDOCK_NL\"'")


def action_script(command: Sequence[str], env: Mapping[str, str], workdir: Optional[str] = None) -> str:
    """One action as one line of shell: its variables exported, then the command exec'd."""
    parts = []
    if workdir:
        parts.append(f"cd {_quote(workdir)}")
    names = [name for name in env if _ENV_NAME.match(name)]
    if names:
        parts.append("export " + " ".join(f"{name}={_quote(env[name])}" for name in names))
    parts.append("exec " + " ".join(_quote(part) for part in command))
    return " && ".join(parts)


COLD_WORKING_DIRECTORY = "/tmp/hpcdock-session"  # {{Session.WorkingDirectory}} of a cold task

# What a cold task's container runs first: its own copy of the session's rules, in shell.
_COLD_PRELUDE = r"""HPCDOCK_NL='
'
hpcdock_env() {
  while IFS= read -r l; do
    case $l in
      "openjd_env: "*) kv=${l#openjd_env: }; export "${kv%%=*}=${kv#*=}" ;;
      "openjd_unset_env: "*) unset "${l#openjd_unset_env: }" ;;
    esac
  done < "$1"
}
"""


def _say(text: str) -> str:
    """A line of shell printing ``text`` (one of the service's own lines in a cold task's log)."""
    return f"printf '%s\\n' {_quote(text)}"


def cold_command(
    environments: Sequence[ResolvedEnvironment],
    command: Sequence[str],
    workdir: str,
    scratch: str = COLD_WORKING_DIRECTORY,
) -> list[str]:
    """A task of a step with environments, in a container of its own (an engine without sessions):
    the container enters the environments, runs the task and exits them in reverse order, each
    action's output marked as its environment's; a failing onEnter ends it with its code, after
    exiting what it entered. The environments' files are the container's (see :mod:`.taskfiles`)."""
    lines = [_COLD_PRELUDE, f"mkdir -p {_quote(scratch)} || exit 70"]
    exits: list[str] = []
    for i, env in enumerate(environments):
        for key, value in env.variables.items():
            if _ENV_NAME.match(key):
                lines.append(f"export {key}={_quote(value)}")
        if env.enter:
            out = _quote(f"{scratch}/.enter{i}")
            run = action_script(env.enter, {}, scratch)
            failed = f"environment {env.name!r}: onEnter exited with code"
            lines += [
                _say(f"--- environment {env.name!r}: onEnter"),
                f"( {run} ) > {out} 2>&1; rc=$?; cat {out}",
                f'if [ $rc -ne 0 ]; then echo {_quote(failed)} "$rc"; {"; ".join(reversed(exits)) or ":"}; exit $rc; fi',
                f"hpcdock_env {out}",
            ]
        if env.exit:
            failed = f"--- environment {env.name!r}: onExit exited with code"
            exits.append(
                f"{_say(f'--- environment {env.name!r}: onExit')}; "
                f'( {action_script(env.exit, {}, scratch)} ) || echo {_quote(failed)} "$?"'
            )
    lines.append(f"( {action_script(command, {}, workdir)} ); rc=$?")
    lines += list(reversed(exits))
    lines.append("exit $rc")
    return ["/bin/sh", "-c", "\n".join(lines)]


class SessionState(str, Enum):
    NEW = "new"  # its container not made yet
    OPEN = "open"  # environments entered: tasks may run
    FAILED = "failed"  # an environment's onEnter failed: its tasks fail with why
    ENDED = "ended"  # environments exited, container gone


@dataclass
class EnteredEnvironment:
    """An environment the session entered, the variables its onExit runs with, and the files
    written again before it (as openjd-sessions writes an environment's files before each action)."""

    name: str
    exit: list[str]  # resolved onExit command (empty: none)
    env: dict[str, str]
    timeout: Optional[float]
    files: list[ContainerFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exit": self.exit,
            "env": self.env,
            "timeout": self.timeout,
            # resolved from OpenJD format strings: text, as their data always is
            "files": [{"path": f.path, "data": f.data.decode(), "mode": f.mode} for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnteredEnvironment:
        return cls(
            str(data["name"]),
            [str(part) for part in data["exit"]],
            {str(k): str(v) for k, v in data["env"].items()},
            data.get("timeout"),
            [
                ContainerFile(str(f["path"]), str(f["data"]).encode(), int(f["mode"]))
                for f in data.get("files") or []
            ],
        )


@dataclass
class SessionPlan:
    """What a session needs to open: its container and its environments, resolved."""

    request: ContainerRequest  # the session container (its command is replaced by the agent)
    environments: list[ResolvedEnvironment]  # the job's, then the step's
    base_env: dict[str, str] = field(default_factory=dict)  # what every action starts from


class Session:
    """One session's container and the actions run in it; a :class:`~.engines.base.Runs` for tasks."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        name: str,
        job_id: int,
        step_idx: int,
        plan: Optional[Callable[[], SessionPlan]] = None,
        gpus: Optional[GpuGrant] = None,
        key: Optional[int] = None,
        channel: Channel = Channel.FIFO,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.plan = plan  # how to open it, asked by its first task (None: adopted after a restart)
        self.root = root
        self.name = name
        self.job_id = job_id
        self.step_idx = step_idx
        self.state = SessionState.NEW
        self.failure: Optional[str] = None
        self.handle: Optional[str] = None  # the container's
        self.env: dict[str, str] = {}  # what tasks run with: base, variables, openjd_env
        self.entered: list[EnteredEnvironment] = []
        self.task: Optional[int] = None  # the task running in it now
        self.last_task: Optional[int] = None  # the task that ran in it last (its log hears of onExit)
        self.gpus = gpus  # what its container holds for the whole session (None: no GPUs)
        # What it holds its GPUs and its step's counted amounts under, for its whole life (the
        # scheduler's pool and the engine's GPU placement know them by it; see SessionPool.new_key).
        self.key = key
        self.opened_by: Optional[str] = None  # the run of the task that opened it
        self.environment_log = ""  # what the environments printed entering it (for that task's log)
        self.exit_failures: list[str] = []  # each onExit that failed, and why
        self.idle_since = time.monotonic()
        self.enters = 0  # onEnter actions run (for tests and the log)
        self._lock = threading.Lock()
        self._scripts: dict[str, str] = {}  # created, not yet started
        self._root_fd: Optional[int] = None
        self._alive_at = -LIVENESS_TTL  # when the engine last said a remote session's run lives

    # -- files ------------------------------------------------------------------------
    def _open(self, name: str, flags: int) -> int:
        """A file directly in the session's directory, never through a symlink the container made."""
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd())

    def _dir_fd(self) -> int:
        if self._root_fd is None:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return self._root_fd

    def _read(self, name: str, limit: int = 1 << 20) -> Optional[bytes]:
        try:
            fd = self._open(name, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def _exit_code(self, name: str) -> Optional[int]:
        text = self._read(f"{name}.rc", 64)
        if not text or not text.endswith(b"\n"):
            return None  # not yet (or still being written)
        try:
            return int(text)
        except ValueError:
            return -1

    def put_files(self, files: Sequence[ContainerFile]) -> None:
        """Write embedded files into :data:`FILES_DIRECTORY` (EngineError naming the file when one
        cannot be). The container may have put links or anything else on the way: each directory
        is opened by the one before without following a link, and each file is made new (never
        opened where it stands: that could be a hard link) and renamed over whatever has its name."""
        for file in files:
            folder, name = posixpath.split(file.path)
            if folder != FILES_DIRECTORY or name in ("", ".", ".."):
                raise EngineError(f"session {self.name}: {file.path} is not a file of {FILES_DIRECTORY}")
            try:
                fd = self._files_dir()
                try:
                    _write_new(fd, name, file.data, file.mode)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise EngineError(
                    f"session {self.name}: cannot write the embedded file {file.path}: {exc}"
                ) from None

    def _files_dir(self) -> int:
        """A descriptor of the files directory, made where missing (the service makes it before
        the container starts; a task may remove it)."""
        fd = os.dup(self._dir_fd())
        try:
            for part in posixpath.relpath(FILES_DIRECTORY, SESSION_ROOT).split("/"):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _send(self, line: str) -> None:
        """Hand the agent one line; EngineError when it is certainly not there to read it."""
        fifo = self.channel is Channel.FIFO
        if not fifo and not self._agent_alive():  # a line appended now would never be read
            raise self._lost(f"session {self.name}: its agent is gone (its run ended)")
        try:
            # A FIFO without a reader refuses a non-blocking open (ENXIO: the container is gone).
            fd = self._open("ctl", os.O_WRONLY | (os.O_NONBLOCK if fifo else os.O_APPEND))
        except OSError as exc:
            raise self._lost(f"session {self.name}: its agent is gone ({exc.strerror})") from None
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) if fifo else stat.S_ISREG(mode)):
                raise EngineError(f"session {self.name}: its control {self.channel.value} was replaced")
            data = (line + "\n").encode()
            written = 0
            while written < len(data):
                try:
                    written += os.write(fd, data[written:])
                except BlockingIOError:
                    time.sleep(POLL)
        finally:
            os.close(fd)

    # -- opening and ending -----------------------------------------------------------
    def open(self, plan: SessionPlan) -> None:
        """Make the container, start the agent and enter the environments in order.

        A failing onEnter leaves the session FAILED (its tasks fail with :attr:`failure`) after
        exiting what it entered; an engine failure raises EngineError."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.channel is Channel.FIFO:
            os.mkfifo("ctl", 0o600, dir_fd=self._dir_fd())
        else:  # appended to, never rewritten: the agent follows it from where it is
            os.close(self._open("ctl", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.close(self._files_dir())  # made before the container can put anything in its way
        request = plan.request
        request.command = agent_command()
        request.session_dir = str(self.root)
        request.labels = {**request.labels, LABEL_SESSION: self.name}
        request.gpus = self.gpus  # attached and verified by the engine, as a cold task's
        self._save({"state": "opening"})
        self.handle = self.engine.create(request)
        self.engine.start(self.handle)
        self._await_agent(self.handle)
        self.env = dict(plan.base_env)
        for environment in plan.environments:
            self.env.update(environment.variables)
            if environment.enter:
                self.failure = self._enter(environment)
                if self.failure:
                    self.state = SessionState.FAILED
                    log.info("session %s: %s", self.name, self.failure)
                    self._save({"state": "failed"})
                    return
            self.entered.append(
                EnteredEnvironment(
                    environment.name, environment.exit, dict(self.env), environment.timeout, environment.files
                )
            )
        self.state = SessionState.OPEN
        self._save({"state": "open"})
        log.info("session %s: open, %d environment(s) entered", self.name, len(self.entered))

    def _enter(self, environment: ResolvedEnvironment) -> Optional[str]:
        """Write the environment's files and run its onEnter, its output kept for the log; why it
        failed, or None (its openjd_env lines applied)."""
        self.enters += 1
        head = f"--- environment {environment.name!r}: onEnter"
        try:
            self.put_files(environment.files)
        except EngineError as exc:
            self._log_environment(head, "", f"{head}: its embedded files could not be written")
            return f"environment {environment.name!r}: {exc}"
        code, output = self._run_action(f"enter{len(self.entered)}", environment.enter, environment.timeout)
        self._log_environment(head, output, f"{head} {_ended(code)}")
        if code != 0:
            return _action_failure(environment.name, "onEnter", code, output)
        malformed = apply_env_messages(output, self.env)
        return f"environment {environment.name!r}: onEnter: {malformed}" if malformed else None

    def _log_environment(self, head: str, output: str, tail: str) -> None:
        if len(output) > ENVIRONMENT_LOG:
            output = f"({len(output) - ENVIRONMENT_LOG} characters cut)\n" + output[-ENVIRONMENT_LOG:]
        if output and not output.endswith("\n"):
            output += "\n"
        self.environment_log += f"{head}\n{output}{tail}\n"

    def environment_log_of(self, handle: str) -> Optional[str]:
        """What the environments printed entering the session, marked as theirs, for the log of
        the run ``handle`` when that run's task opened it (None for every other run)."""
        return (
            self.environment_log.rstrip("\n") if handle == self.opened_by and self.environment_log else None
        )

    def _await_agent(self, handle: str) -> None:
        """Wait for the agent to say it reads its control channel.

        A cluster's queue may hold the session's run for as long as it likes: the start timeout
        counts only while the engine says it runs."""
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        asked = -AGENT_STATUS_POLL
        while self._read("ready") is None:
            now = time.monotonic()
            if now > deadline:
                raise EngineError(f"session {self.name}: its agent did not start")
            if now - asked >= AGENT_STATUS_POLL:
                asked = now
                state = self.engine.status(handle).state
                if state is RunState.EXITED:
                    logs = b"".join(self.engine.logs(handle, follow=False, tail=20)).decode(errors="replace")
                    raise EngineError(f"session {self.name}: its container exited at start: {logs.strip()}")
                if state is RunState.QUEUED:
                    deadline = now + AGENT_START_TIMEOUT
            time.sleep(POLL)

    def _save(self, extra: dict[str, object]) -> None:
        """What a restarted service needs to take the session over, written next to its files."""
        data = {
            "name": self.name,
            "job_id": self.job_id,
            "step_idx": self.step_idx,
            "env": self.env,
            "entered": [e.to_json() for e in self.entered],
            "opened_by": self.opened_by,
            "environment_log": self.environment_log,
            "key": self.key,
            "gpus": None
            if self.gpus is None
            else {"count": self.gpus.count, "indices": list(self.gpus.indices)},
            **extra,
        }
        tmp = self.root.parent / f".{self.name}.json"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.root.parent / f"{self.name}.json")

    def _run_action(
        self, name: str, command: list[str], timeout: Optional[float]
    ) -> tuple[Optional[int], str]:
        """Run an environment action to its end; its exit code (None: timed out) and output."""
        self._send(f"run {name} {action_script(command, self.env)}")
        try:
            code: Optional[int] = self.wait(name, timeout)
        except TimeoutError:
            self.stop(name, grace=0)
            code = None
            try:
                self.wait(name, 10.0)
            except TimeoutError:
                pass
        output = (self._read(f"{name}.out", 1 << 20) or b"").decode(errors="replace")
        self.remove(name)
        return code, output

    def end(self, grace: float = 10.0) -> None:
        """Exit the environments in reverse order, then remove the container and the directory
        (whatever failed on the way, it is ENDED: its container is gone or was asked to go, and
        the scheduler gives back what it held). Each failing onExit is logged and kept in
        :attr:`exit_failures`."""
        with self._lock:
            if self.state is SessionState.ENDED:
                return
            try:
                alive = self.handle is not None and self._agent_alive()
                for entered in reversed(self.entered if alive else []):
                    if entered.exit:
                        self._exit(entered)
                log.info("session %s: ended", self.name)
                if alive and self.handle is not None:
                    try:
                        self._send("exit")
                        # Its agent ends the run by itself; stopping it is the fallback.
                        self.engine.wait(self.handle, timeout=grace)
                    except (EngineError, TimeoutError):
                        pass
                if self.handle is not None:
                    try:
                        self.engine.stop(self.handle, grace=grace)
                        self.engine.remove(self.handle)
                    except EngineError as exc:
                        log.warning("session %s: %s", self.name, exc)
                self.forget()
            finally:
                self.state = SessionState.ENDED

    def _exit(self, entered: EnteredEnvironment) -> None:
        """Write the environment's files again and run its onExit with its variables."""
        self.env = entered.env
        try:
            self.put_files(entered.files)
        except EngineError as exc:
            code: Optional[int] = -1
            output = str(exc)
        else:
            code, output = self._run_action(f"exit{len(self.entered)}", entered.exit, entered.timeout)
        if code != 0:
            failure = _action_failure(entered.name, "onExit", code, output)
            log.warning("session %s: %s", self.name, failure)
            self.exit_failures.append(failure)

    def forget(self) -> None:
        """Remove the session's files (its container is gone)."""
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root.parent / f"{self.name}.json").unlink(missing_ok=True)

    def _lost(self, why: str) -> EngineError:
        """The error for a session whose agent is gone, which takes no more tasks: it ends at
        the next dispatch (not every task of its step failing in it, one after another)."""
        if self.state is SessionState.OPEN:
            self.state = SessionState.FAILED
            self.failure = why
        return EngineError(why)

    def _agent_alive(self) -> bool:
        """Whether the agent is there to read a line: a reader on the FIFO, or (remote) the
        engine's word that the session's run has not ended (a cluster may still call it queued
        for a moment after its agent said it was ready)."""
        if self.channel is Channel.FIFO:
            try:
                fd = self._open("ctl", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return False
            os.close(fd)
            return True
        if self.handle is None:
            return False
        if time.monotonic() - self._alive_at < LIVENESS_TTL:
            return True
        try:
            alive = self.engine.status(self.handle).state is not RunState.EXITED
        except EngineUnreachable:
            return True  # a cluster's runs go on while its controller is away
        except EngineError:
            return False
        if alive:
            self._alive_at = time.monotonic()
        return alive

    # -- a task's run (engines.base.Runs) ---------------------------------------------
    def create(self, request: ContainerRequest) -> str:
        """Open the session if this is its first task (in the task's runner, so its slot's thread
        waits for the environments, not dispatch), then prepare the task's action."""
        if self.state is SessionState.NEW and self.plan is not None:
            self.opened_by = request.name
            try:
                self.open(self.plan())
            except Exception as exc:
                self.state = SessionState.FAILED
                self.failure = f"session {self.name} could not open: {exc}"
                raise
        if self.state is SessionState.FAILED:
            raise EngineError(self.failure or f"session {self.name} failed")
        if self.state is not SessionState.OPEN:
            raise EngineError(f"session {self.name} is {self.state.value}")
        self.put_files(request.files)
        env = {**self.env, **request.env}
        self._scripts[request.name] = action_script(request.command, env, request.workdir)
        return request.name

    def start(self, handle: str) -> None:
        self._send(f"run {handle} {self._scripts.pop(handle)}")

    def status(self, handle: str) -> RunStatus:
        code = self._exit_code(handle)
        if code is None:
            if self._read(f"{handle}.pid", 64) is not None or self._agent_alive():
                return RunStatus(handle, handle, RunState.RUNNING)
            raise self._lost(f"the session {self.name} ended while the task ran")
        return RunStatus(handle, handle, RunState.EXITED, exit_code=code)

    def find(self, name: str) -> Optional[RunStatus]:
        """A task of this session: running while its agent lives, exited once its code is written;
        None when it never started, or when the container died under it (it runs again)."""
        code = self._exit_code(name)
        if code is not None:
            return RunStatus(name, name, RunState.EXITED, exit_code=code)
        if (self._read(f"{name}.out", 0) is not None or self._handed_over(name)) and self._agent_alive():
            return RunStatus(name, name, RunState.RUNNING)
        return None

    def _handed_over(self, name: str) -> bool:
        """Whether the control file holds a run line for ``name`` (the remote channel): its agent
        runs it once it reads that far, which a shared filesystem may show it seconds later, so a
        service restarted meanwhile follows the task instead of running it a second time."""
        if self.channel is not Channel.FILE:
            return False  # a FIFO's line is read within milliseconds of its write
        control = self._read("ctl", CONTROL_READ_LIMIT) or b""
        line = f"run {name} ".encode()
        return control.startswith(line) or b"\n" + line in control

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> LogStream:
        if follow:
            return _Follow(self, handle)
        return self._stored_log(handle, tail)

    def _stored_log(self, handle: str, tail: Optional[int]) -> Generator[bytes, None, None]:
        """The output so far in chunks, or its last ``tail`` lines (from at most its last 64 KiB)."""
        try:
            fd = self._open(f"{handle}.out", os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            if tail is not None:
                size = os.fstat(fd).st_size
                os.lseek(fd, max(0, size - TAIL_BYTES), os.SEEK_SET)
                end = os.read(fd, TAIL_BYTES)
                yield b"".join(end.splitlines(keepends=True)[-tail:])
                return
            while chunk := os.read(fd, 1 << 16):
                yield chunk
        finally:
            os.close(fd)

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        checked = time.monotonic()
        while True:
            code = self._exit_code(handle)
            if code is not None:
                return code
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"{handle} still running after {timeout}s")
            if now - checked > 1.0:  # a container that died leaves no exit code: do not wait forever
                checked = now
                if not self._agent_alive():
                    code = self._exit_code(handle)
                    if code is not None:
                        return code
                    raise self._lost(f"the session {self.name}'s container ended while the task ran")
            time.sleep(POLL)

    def stop(self, handle: str, grace: float = 0) -> None:
        try:
            self._send(f"kill {handle} {grace:g}")
        except EngineError:
            pass  # no agent: nothing of the task runs

    def remove(self, handle: str) -> None:
        self._scripts.pop(handle, None)
        for suffix in (".out", ".rc", ".pid"):
            try:
                os.unlink(f"{handle}{suffix}", dir_fd=self._dir_fd())
            except FileNotFoundError:
                pass


class _Follow:
    """A task's output as it grows, until its exit code is written; ``close()`` ends it early."""

    def __init__(self, session: Session, handle: str) -> None:
        self.session = session
        self.handle = handle
        self._closed = threading.Event()
        self._fd: Optional[int] = None
        self._chunks_left = self._chunks()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks_left)

    def close(self) -> None:
        self._closed.set()

    def _chunks(self) -> Iterator[bytes]:
        try:
            while not self._closed.is_set():
                if self._fd is None:
                    try:
                        self._fd = self.session._open(f"{self.handle}.out", os.O_RDONLY | os.O_NONBLOCK)
                    except FileNotFoundError:
                        if self.session._exit_code(self.handle) is not None:
                            return
                        self._closed.wait(FOLLOW_POLL)
                        continue
                chunk = os.read(self._fd, 1 << 16)
                if chunk:
                    yield chunk
                    continue
                if self.session._exit_code(self.handle) is not None:
                    while True:  # what was written before the exit code
                        chunk = os.read(self._fd, 1 << 16)
                        if not chunk:
                            return
                        yield chunk
                self._closed.wait(FOLLOW_POLL)
        finally:
            if self._fd is not None:
                os.close(self._fd)


class SessionPool:
    """The service's sessions, by name.

    Their files live under ``root`` (the state directory), or under the engine's
    :attr:`~.engines.base.Engine.session_root` when its containers may run on another host;
    the channel to their agents follows from that (see the module's docstring)."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        shared: Optional[Path] = getattr(engine, "session_root", None)
        self.root = shared or root
        self.channel = Channel.FIFO if shared is None else Channel.FILE
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._ending: set[str] = set()
        self._key = 0  # the last key a session holds what it holds under

    def new(
        self,
        name: str,
        job_id: int,
        step_idx: int,
        plan: Callable[[], SessionPlan],
        gpus: Optional[GpuGrant] = None,
        key: Optional[int] = None,
    ) -> Session:
        session = Session(
            self.engine, self.root / name, name, job_id, step_idx, plan, gpus, key, self.channel
        )
        with self._lock:
            self.sessions[name] = session
            if key is not None:
                self._key = min(self._key, key)
        return session

    def new_key(self) -> int:
        """The key the next new session holds its GPUs and amounts under, one no task and no other
        session holds anything under: tasks hold theirs under their ids, sessions under negative
        numbers (what ``/v1/health`` shows as the holder), never one a session of a previous
        service process holds."""
        with self._lock:
            return self._key - 1

    def listed(self) -> list[Session]:
        with self._lock:
            return list(self.sessions.values())

    def count(self) -> int:
        """Sessions holding a slot: every one not yet ended (an ending one still has its container)."""
        with self._lock:
            return len(self.sessions)

    def idle(self, job_id: int, step_idx: int) -> Optional[Session]:
        """A session of the step that may take its next task now."""
        with self._lock:
            for session in self.sessions.values():
                if (
                    session.job_id == job_id
                    and session.step_idx == step_idx
                    and session.task is None
                    and session.name not in self._ending
                    and session.state in (SessionState.NEW, SessionState.OPEN)
                ):
                    return session
        return None

    def idle_names(self) -> set[str]:
        """The sessions without a task now."""
        with self._lock:
            return {s.name for s in self.sessions.values() if s.task is None}

    def end_idle(self, names: set[str], wait: bool = False) -> list[threading.Thread]:
        """End the sessions of ``names`` that are still without a task, each in a thread of its
        own (onExit may take a while); their slots free once they are gone."""
        with self._lock:
            ending = [
                s
                for s in self.sessions.values()
                if s.task is None and s.name in names and s.name not in self._ending
            ]
            self._ending.update(s.name for s in ending)
        threads = []
        for session in ending:
            thread = threading.Thread(
                target=self._end, args=(session,), name=f"end-{session.name}", daemon=True
            )
            thread.start()
            threads.append(thread)
        if wait:
            for thread in threads:
                thread.join()
        return threads

    def _end(self, session: Session) -> None:
        try:
            session.end()
        except Exception:
            log.exception("session %s: could not end it cleanly", session.name)
        finally:
            with self._lock:
                self.sessions.pop(session.name, None)
                self._ending.discard(session.name)
            self.on_ended(session)

    def on_ended(self, session: Session) -> None:
        """Called once a session is gone (the scheduler sets it to dispatch again, and to tell the
        session's last task of a failing onExit)."""

    def find_task(self, name: str) -> Optional[tuple[Session, RunStatus]]:
        """The session that ran the task's run ``name``, and where it stands (for re-adoption)."""
        with self._lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            status = session.find(name)
            if status is not None:
                return session, status
        return None

    def handles(self) -> set[str]:
        with self._lock:
            return {s.handle for s in self.sessions.values() if s.handle}

    def recover(self) -> None:
        """Take over the sessions a previous service process left: one whose container and agent
        live, with its environments entered, runs on (its running task is followed, it takes
        more); any other is kept only for its tasks' files and ends at the next dispatch."""
        for meta in sorted(self.root.glob("*.json")):
            if meta.name.startswith("."):
                continue
            try:
                data = json.loads(meta.read_text())
                name = str(data["name"])
                session = Session(
                    self.engine,
                    self.root / name,
                    name,
                    int(data["job_id"]),
                    int(data["step_idx"]),
                    channel=self.channel,
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("session state %s unreadable (%s); removed", meta, exc)
                meta.unlink(missing_ok=True)
                continue
            if not session.root.is_dir():
                meta.unlink(missing_ok=True)
                continue
            status = self.engine.find(name)
            session.handle = status.handle if status is not None else None
            session.opened_by = data.get("opened_by")
            session.environment_log = str(data.get("environment_log") or "")
            session.key = int(data["key"]) if data.get("key") is not None else self.new_key()
            self._key = min(self._key, session.key)
            grant = data.get("gpus")
            if grant and status is not None and status.state is not RunState.EXITED:
                # its container holds them until the session ends (one that died holds nothing)
                session.gpus = GpuGrant(int(grant["count"]), tuple(int(i) for i in grant["indices"]))
            if (
                data.get("state") == "open"
                and status is not None
                and status.state is RunState.RUNNING
                and session._agent_alive()
            ):
                session.state = SessionState.OPEN
                session.env = dict(data.get("env") or {})
                session.entered = [EnteredEnvironment.from_json(e) for e in data.get("entered") or []]
                log.info("session %s: re-adopted", name)
            else:
                session.state = SessionState.FAILED
                session.failure = f"session {name} was lost while the service was down"
                session.entered = [EnteredEnvironment.from_json(e) for e in data.get("entered") or []]
                log.info("session %s: lost while the service was down; it ends", name)
            with self._lock:
                self.sessions[name] = session


def _ended(code: Optional[int]) -> str:
    """How an environment action ended (None: its timeout stopped it)."""
    return "timed out" if code is None else f"exited with code {code}"


def _action_failure(environment: str, action: str, code: Optional[int], output: str) -> str:
    """Why an environment's action failed, with the end of what it printed."""
    return (
        f"environment {environment!r}: {action} {_ended(code)}: "
        f"{output[-FAILURE_TAIL:].strip() or '(no output)'}"
    )


def _write_new(folder: int, name: str, data: bytes, mode: int) -> None:
    """Write ``data`` as a new file in the directory ``folder`` and rename it to ``name``."""
    temp = f".hpcdock-{secrets.token_hex(8)}"
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder
    )
    try:
        try:
            os.fchmod(fd, mode)  # exactly: os.open's mode passes through the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=folder)
        except OSError:
            pass
        raise
