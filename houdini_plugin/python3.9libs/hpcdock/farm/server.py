"""The render server's hand-off: frame requests and their answers as files in one directory.

A step rendered with the render server loads its scene once per session instead of once per
task. The step environment's ``onEnter`` runs ``render.py start``, which starts ``hython
render.py serve`` in the background and returns once the server says the scene is loaded; each
task runs ``render.py request`` in a plain Python, which hands its frames to the server and
prints what the server prints while rendering them; ``onExit`` runs ``render.py stop``. All of
them meet in one directory under ``{{Session.WorkingDirectory}}``, which the environment's
actions and every task of the session share. Files rather than FIFOs, because a file survives
whoever is not there yet: a request waits for a busy server, an answer for a slow reader, and
nothing blocks on an open.

The directory (:class:`ServerDir`)::

    server.lock         held (flock) by the living server: released by the kernel when it dies
    server.pid          its pid (its process group: the launcher starts it in a session of its own)
    ready               written once the scene is loaded
    server.log          what the server prints between requests
    command.json        how it was started (a request whose server died starts it again)
    stop                asks it to stop
    requests/NAME.req   a request: the frames, as an OpenJD range; renamed NAME.taken once taken,
                        so a request is rendered at most once
    requests/NAME.lock  held (flock) by the task that asked, while it waits: the server drops a
                        request whose task is gone (canceled, timed out) before its next frame
    requests/NAME.out   what the server printed while rendering it (its stdout and stderr, the
                        renderer's included): the task prints it as it grows
    requests/NAME.rc    the request's exit status, once it is done

A server that dies leaves its lock free and no answer: the waiting task fails at once, naming
the frames it did not render and quoting the end of the server's log, instead of waiting
forever. Pure stdlib, Python 3.9; ``fcntl`` is imported where a lock is taken, since the
submitter imports the farm package on workstations that have none (Windows).
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Callable, List, Optional, Sequence

try:  # inside the plugin package
    from hpcdock.markers import FRAME_DONE, FRAME_FAILED, format_marker, parse_marker
except ImportError:  # copied into <bundle>/hpcdock_farm/ next to markers.py
    from markers import (  # type: ignore[no-redef,import-not-found]
        FRAME_DONE,
        FRAME_FAILED,
        format_marker,
        parse_marker,
    )

POLL = 0.05  # seconds between looks at the directory (the server's requests, a task's answer)
STOP_GRACE = 30.0  # seconds ``stop`` waits for the server to finish before it is killed
LOG_TAIL = 3000  # characters of the server's log quoted when it failed

# A request's frames are rendered as render.py renders a chunk: ``render_chunk(frames, abandon)``
# prints the markers and returns the exit status; ``abandon()`` is asked before each frame and
# returns why to stop (None: go on).
RenderChunk = Callable[[List[int], Callable[[], Optional[str]]], int]


class ServerDir:
    """The paths of one render server's directory."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.requests = os.path.join(self.path, "requests")
        self.lock = os.path.join(self.path, "server.lock")
        self.pid = os.path.join(self.path, "server.pid")
        self.ready = os.path.join(self.path, "ready")
        self.log = os.path.join(self.path, "server.log")
        self.command = os.path.join(self.path, "command.json")
        self.stop = os.path.join(self.path, "stop")

    def request(self, name: str, suffix: str) -> str:
        return os.path.join(self.requests, name + suffix)

    def log_tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
                return f.read().decode("utf-8", "replace").strip() or "(empty)"
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------- files and locks


def _write_atomic(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _remove(d: ServerDir, name: str) -> None:
    """A request's files, once its task has its answer (or is gone)."""
    for suffix in (".req", ".out", ".rc", ".lock"):
        try:
            os.unlink(d.request(name, suffix))
        except FileNotFoundError:
            pass


def _hold(path: str) -> Optional[int]:
    """An fd holding an exclusive flock on ``path``; None when another process holds it."""
    import fcntl  # Unix only: see the module's docstring

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited (PEP 446): a child never holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _held(path: str) -> bool:
    """Whether a living process holds the lock on ``path``."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    fd = _hold(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def server_alive(d: ServerDir) -> bool:
    return _held(d.lock)


# --------------------------------------------------------------------------- the server


def _next_request(d: ServerDir) -> Optional[str]:
    """Take the oldest waiting request (renamed, so no one takes it twice); its name."""
    try:
        names = [n[: -len(".req")] for n in os.listdir(d.requests) if n.endswith(".req")]
    except FileNotFoundError:
        return None
    waiting = []
    for name in names:
        try:
            waiting.append((os.stat(d.request(name, ".req")).st_mtime, name))
        except FileNotFoundError:
            continue
    for _, name in sorted(waiting):
        try:
            os.rename(d.request(name, ".req"), d.request(name, ".taken"))
        except FileNotFoundError:
            continue
        return name
    return None


def _answer(d: ServerDir, name: str, render_chunk: RenderChunk, parse: Callable[[str], List[int]]) -> None:
    """Render one request with this process's stdout and stderr (and so the renderer's) going to
    its ``.out``, then write its exit status."""

    def abandon() -> Optional[str]:
        if os.path.exists(d.stop):
            return "the render server is stopping"
        if not _held(d.request(name, ".lock")):
            return "the task that asked for this frame is gone"
        return None

    out = os.open(d.request(name, ".out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out, 1)
    os.dup2(out, 2)
    try:
        try:
            frames = parse((_read(d.request(name, ".taken")) or "").strip())
        except ValueError as exc:
            print(f"hpcdock: {exc}", file=sys.stderr)
            rc = 2
        else:
            rc = render_chunk(frames, abandon)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, out):
            os.close(fd)
    _write_atomic(d.request(name, ".rc"), f"{rc}\n")
    os.unlink(d.request(name, ".taken"))
    if not _held(d.request(name, ".lock")):  # no one reads the answer: leave nothing behind
        _remove(d, name)


def serve(
    directory: str,
    load: Callable[[], RenderChunk],
    parse: Callable[[str], List[int]],
    poll: float = POLL,
) -> int:
    """Load the scene once (``load()`` raises ValueError with the reason when it cannot), then
    answer requests one at a time until asked to stop. Exit status 0 when stopped, 2 when the
    scene would not load or another server holds the directory."""
    d = ServerDir(directory)
    os.makedirs(d.requests, exist_ok=True)
    lock = _hold(d.lock)
    if lock is None:
        print(f"hpcdock: a render server already runs in {d.path}", file=sys.stderr)
        return 2
    _write_atomic(d.pid, f"{os.getpid()}\n")
    started = time.monotonic()
    try:
        render_chunk = load()
    except ValueError as exc:
        print(f"hpcdock: {exc}", file=sys.stderr)
        return 2
    _write_atomic(d.ready, f"{os.getpid()}\n")
    print(
        f"hpcdock: render server ready in {time.monotonic() - started:.1f}s (pid {os.getpid()})", flush=True
    )
    while not os.path.exists(d.stop):
        name = _next_request(d)
        if name is None:
            time.sleep(poll)
            continue
        _answer(d, name, render_chunk, parse)
    os.unlink(d.ready)
    print("hpcdock: render server stopped", flush=True)
    os.close(lock)
    return 0


# --------------------------------------------------------------------------- start and stop


def launch(
    directory: str, workdir: str, command: Sequence[str], timeout: float = 0, poll: float = POLL
) -> int:
    """Start ``command`` (``hython render.py serve ...``) in the background in ``workdir`` and
    wait until it says its scene is loaded: 0. When it exits first (or ``timeout`` seconds pass,
    0: no limit) print why with the end of its log and return 1."""
    d = ServerDir(directory)
    os.makedirs(d.requests, exist_ok=True)
    if server_alive(d):
        print(f"hpcdock: a render server already runs in {d.path}", file=sys.stderr)
        return 2
    for stale in (d.ready, d.stop):
        if os.path.exists(stale):
            os.unlink(stale)
    _write_atomic(d.command, json.dumps({"workdir": workdir, "command": list(command)}))
    print(f"hpcdock: starting the render server: {' '.join(command)}", flush=True)
    started = time.monotonic()
    with open(d.log, "ab") as log:
        try:  # a session of its own: stop reaches its renderers too, and a task's cancel does not reach it
            proc = subprocess.Popen(
                list(command),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            print(f"hpcdock: could not start the render server: {exc}", file=sys.stderr)
            return 1
    while True:
        if (_read(d.ready) or "").strip() == str(proc.pid):
            print(f"hpcdock: render server ready after {time.monotonic() - started:.1f}s (pid {proc.pid})")
            return 0
        code = proc.poll()
        if code is not None:
            print(
                f"hpcdock: the render server exited with status {code} before its scene was loaded; its log:"
            )
            print(d.log_tail(), flush=True)
            return 1
        if timeout and time.monotonic() - started > timeout:
            _kill(proc.pid, signal.SIGKILL)
            print(f"hpcdock: the render server did not load its scene within {timeout:g}s; its log:")
            print(d.log_tail(), flush=True)
            return 1
        time.sleep(poll)


def _kill(pid: int, sig: int) -> None:
    """Signal the server and what it started (its process group, when it leads one)."""
    try:
        os.killpg(pid, sig)
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop(directory: str, grace: float = STOP_GRACE, poll: float = POLL) -> int:
    """Ask the server to stop after the frame it renders, wait ``grace`` seconds for it, then kill
    it; 0 once no server runs (also when none ran), 1 when it had to be killed."""
    d = ServerDir(directory)
    if not server_alive(d):
        print(f"hpcdock: no render server was running in {d.path}")
        return 0
    _write_atomic(d.stop, "stop\n")
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not server_alive(d):
            print("hpcdock: render server stopped")
            return 0
        time.sleep(poll)
    pid = int((_read(d.pid) or "0").strip() or 0)
    print(f"hpcdock: the render server (pid {pid}) did not stop within {grace:g}s; killed. Its log:")
    print(d.log_tail(), flush=True)
    if pid > 0:
        _kill(pid, signal.SIGKILL)
    return 1


# --------------------------------------------------------------------------- a task's request


class _Echo:
    """Prints a request's ``.out`` as it grows and remembers which frames finished."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""
        self.finished: set = set()

    def drain(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self.offset += len(data)
        text = self.decoder.decode(data)
        sys.stdout.write(text)
        sys.stdout.flush()
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            marker = parse_marker(line)
            if marker is not None and marker.kind in (FRAME_DONE, FRAME_FAILED):
                self.finished.add(marker.frame)


def _restart(d: ServerDir) -> int:
    """Start the server again as ``launch`` last started it; 2 when it never was."""
    text = _read(d.command)
    if text is None:
        print(
            f"hpcdock: no render server runs in {d.path} (the step environment's onEnter starts it)",
            file=sys.stderr,
        )
        return 2
    spec = json.loads(text)
    print("hpcdock: the render server is not running; starting it again", flush=True)
    return launch(d.path, spec["workdir"], spec["command"])


def _fail(frames: Sequence[int], reason: str) -> None:
    for frame in frames:
        sys.stdout.write(format_marker(FRAME_FAILED, frame, reason) + "\n")
    sys.stdout.flush()


def request(directory: str, frames: Sequence[int], text: str, poll: float = POLL) -> int:
    """Hand ``frames`` (``text``: as the task got them) to the server and print its answer as it
    comes; the answer's exit status. When no server runs it is started again (the previous one
    died); when the server dies before answering, the frames it did not finish fail."""
    d = ServerDir(directory)
    if not server_alive(d):
        started = _restart(d)
        if started != 0:
            _fail(frames, "the render server could not start")
            return 2
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    alive = _hold(d.request(name, ".lock"))  # released when this task ends, however it ends
    if alive is None:  # a fresh name: only a foreign process in the directory holds it
        print(f"hpcdock: {d.request(name, '.lock')} is held by another process", file=sys.stderr)
        return 2
    _write_atomic(d.request(name, ".req"), text + "\n")
    echo = _Echo(d.request(name, ".out"))
    try:
        while True:
            rc = _read(d.request(name, ".rc"))
            echo.drain()
            if rc is not None and rc.endswith("\n"):
                return int(rc)
            if not server_alive(d) and _read(d.request(name, ".rc")) is None:
                echo.drain()
                left = [f for f in frames if f not in echo.finished]
                print(
                    f"hpcdock: the render server stopped before it finished frames {left}; "
                    f"the end of its log:\n{d.log_tail()}",
                    file=sys.stderr,
                )
                _fail(left[:1], "the render server died while rendering this frame")
                return 1
            time.sleep(poll)
    finally:
        os.close(alive)
        _remove(d, name)
