"""The node side of the Slurm engine: one task attempt's container, run by the batch job.

``python -m hpcdock_service.engines.node_run SPEC.json`` is the whole batch script (see
:func:`.slurm.sbatch_command`). It runs as the job's user on the node Slurm picked and:

1. connects to this node's rootless Podman (the user's socket, ``DOCKER_HOST``, or a
   ``podman system service`` it starts detached on a socket of its own, which later jobs on the
   node reuse and which exits after :data:`SERVICE_IDLE` seconds without calls);
2. loads the task's image from the shared image store when the node lacks it (once per node,
   under a lock, however many jobs start at once);
3. creates, proves and starts the container with :class:`~.local.LocalEngine`, the code local
   tasks run with (security defaults, labels, limits, mount walk and proof, and the GPUs Slurm
   allocated, attached and verified);
   A session's job (:mod:`..sessions`) is the same with the session's agent as its command
   and the session's directory (in this spool) bound into the container;
4. copies the container's output to its own stdout (the job's output file), writes the exit
   status next to it (``<name>.exit``), removes the container and exits with its exit code.

SIGTERM (``scancel``) stops the container within the grace the service wrote to
``<name>.stop``, removes it and records the stop, so a canceled job leaves no container.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from .. import mounts
from .base import ContainerFile, ContainerLimits, ContainerRequest, EngineError, GpuGrant
from .discovery import candidate_sockets
from .local import LocalEngine
from .slurm import ExitRecord, Spool, write_atomically

SERVICE_IDLE = 600  # seconds a node's Podman service started here lives on without calls
TAIL_CHECK_LINES = 20
LOG_DRAIN_SECONDS = 0.05  # how long an exited container's log stream may idle before it is ended


def allocated_gpus(env: dict[str, str]) -> tuple[int, ...]:
    """The GPU indices Slurm gave this job (``SLURM_JOB_GPUS``, else ``CUDA_VISIBLE_DEVICES``)."""
    for key in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = env.get(key, "").strip()
        if value and all(part.strip().isdigit() for part in value.split(",")):
            return tuple(int(part) for part in value.split(","))
    return ()


def request_from_spec(spec: dict[str, Any], gpus: tuple[int, ...]) -> ContainerRequest:
    req = spec["request"]
    count = int(req.get("gpus") or 0)
    return ContainerRequest(
        name=req["name"],
        image=req["image"],
        command=list(req["command"]),
        env=dict(req["env"]),
        workdir=req["workdir"],
        mounts=[mounts.Mount(m["source"], m["target"], bool(m["readonly"])) for m in req["mounts"]],
        network=bool(req["network"]),
        labels=dict(req["labels"]),
        gpus=GpuGrant(count, gpus[:count] if gpus else ()) if count else None,
        limits=ContainerLimits(**req["limits"]),
        files=[
            ContainerFile(f["path"], base64.b64decode(f["data"]), int(f["mode"]))
            for f in req.get("files", [])
        ],
        session_dir=req.get("session_dir"),
    )


def runtime_dir() -> Path:
    """The user's runtime directory; a private one under /tmp where the node gave none."""
    given = os.environ.get("XDG_RUNTIME_DIR")
    if given and os.path.isdir(given) and os.access(given, os.W_OK):
        return Path(given)
    path = Path(f"/tmp/hpcdock-runtime-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    return path


class NodeEngine(LocalEngine):
    """The local engine, reading what this node's Podman service says of itself once per service.

    Its version and info calls cost about half a second, on every job otherwise; the answers are
    kept beside the node runner's files, keyed by the socket's inode and time (a service started
    again makes a new socket, and is asked again).
    """

    def _probe(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        try:
            sock = os.stat(self.base_url[len("unix://") :])
        except OSError:  # not a Unix socket, or not there (yet): ask the engine
            return super()._probe()
        key = [sock.st_ino, sock.st_mtime_ns]
        digest = hashlib.sha256(self.base_url.encode()).hexdigest()[:16]
        cache = runtime_dir() / "hpcdock-node" / f"facts-{digest}.json"
        try:
            facts = json.loads(cache.read_text())
            if facts["key"] == key:
                return facts["version"], facts["info"], facts["host"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        version, info, host = super()._probe()
        cache.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomically(cache, json.dumps({"key": key, "version": version, "info": info, "host": host}))
        return version, info, host


def connect_podman() -> NodeEngine:
    """This node's rootless engine: one that answers, or a Podman service started here."""
    for url in candidate_sockets():
        path = url[len("unix://") :] if url.startswith("unix://") else None
        if path is not None and not os.path.exists(path):
            continue
        engine = _answering(url)
        if engine is not None:
            return engine
    own = runtime_dir() / "hpcdock-node"
    own.mkdir(mode=0o700, exist_ok=True)
    url = f"unix://{own / 'podman.sock'}"
    with open(own / "podman.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # of many jobs starting at once on a node, one starts the service
        engine = _answering(url)
        if engine is not None:
            return engine
        podman = shutil.which("podman")
        if podman is None:
            raise EngineError("podman is not installed on this node")
        with open(own / "podman.log", "ab") as out:
            proc = subprocess.Popen(  # podman replaces a stale socket file itself
                [podman, "system", "service", f"--time={SERVICE_IDLE}", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this job: the next one on this node reuses it
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            engine = _answering(url)
            if engine is not None:
                return engine
            time.sleep(0.05)
        raise EngineError(f"podman system service did not answer on this node; see {own / 'podman.log'}")


def _answering(url: str) -> Optional[NodeEngine]:
    try:
        return NodeEngine(url)
    except EngineError:
        return None


def ensure_image(engine: LocalEngine, image: str, image_id: str, archive: str) -> None:
    """Load the task's image from the shared store unless this node has that very image."""
    if _node_image_id(engine, image) == image_id:
        return
    with open(archive + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _node_image_id(engine, image) == image_id:
            return  # another job on this node loaded it meanwhile
        done = subprocess.run(["podman", "load", "--quiet", "-i", archive], capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(f"cannot load image {image} from {archive} on this node: {done.stderr.strip()}")
        loaded = _node_image_id(engine, image)
        if loaded != image_id:
            tagged = subprocess.run(["podman", "tag", image_id, image], capture_output=True, text=True)
            if tagged.returncode != 0:
                raise EngineError(f"image {image} loaded from {archive} is {loaded}, not {image_id}")


def _node_image_id(engine: LocalEngine, image: str) -> Optional[str]:
    try:
        return str(engine.client.api.inspect_image(image)["Id"]).removeprefix("sha256:")
    except Exception:  # not there (or not readable): load it
        return None


class NodeRun:
    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self.spool = Spool(spec_path.parent)
        self.name = spec_path.name[: -len(".json")]
        self.job_id = os.environ.get("SLURM_JOB_ID", "")
        self.engine: Optional[LocalEngine] = None
        self.container: Optional[str] = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self.written = 0

    def record(self, record: ExitRecord) -> None:
        sys.stdout.buffer.flush()
        write_atomically(self.spool.exit(self.name), record.to_json())

    def check_session_dir(self, session_dir: Optional[str]) -> None:
        """A session's directory is bound outside the mount policy: only one the service made
        in this spool's ``sessions`` (no symlink on the way) is."""
        if session_dir is None:
            return
        sessions = os.path.realpath(self.spool.root / "sessions")
        parent = os.path.realpath(os.path.dirname(session_dir))
        if parent != sessions or os.path.islink(session_dir) or not os.path.isdir(session_dir):
            raise EngineError(f"session directory {session_dir} refused: not a directory of {sessions}")

    def on_term(self, signum: int, frame: Any) -> None:
        self.stopped.set()
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        try:
            grace = float(self.spool.stop(self.name).read_text().strip() or 0)
        except (OSError, ValueError):
            grace = 0.0
        with self._lock:
            if self.engine is not None and self.container is not None:
                self.engine.stop(self.container, grace=grace)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        try:
            spec = json.loads(self.spec_path.read_text())
            request = request_from_spec(spec, allocated_gpus(dict(os.environ)))
            self.check_session_dir(request.session_dir)
            engine = connect_podman()
            engine.mount_policy = mounts.MountPolicy.build(
                spec["policy"]["roots"],
                [*spec["policy"]["protected"], str(runtime_dir()), str(self.spool.root)],
            )
            ensure_image(engine, request.image, spec["image_id"], spec["archive"])
            with self._lock:
                self.engine = engine
                if self.stopped.is_set():
                    raise EngineError("stopped before the container was created")
                self.container = engine.create(request)
            if self.stopped.is_set():
                raise EngineError("stopped before the container started")
            engine.start(self.container)
        except EngineError as exc:
            self._remove()
            self.record(ExitRecord(None, str(exc), job_id=self.job_id, stopped=self.stopped.is_set()))
            print(f"hpcdock: {exc}", file=sys.stderr)
            return 125
        code = self._follow(engine, self.container)
        oom = code != 0 and engine.status(self.container).oom_killed  # one call less for every success
        if self.stopped.is_set():
            self._remove()  # a canceled job leaves no container behind once it is recorded
            self.record(ExitRecord(code, None, oom, True, self.job_id))
        else:
            self.record(ExitRecord(code, None, oom, False, self.job_id))
            self._remove()
        return code

    def _follow(self, engine: LocalEngine, container: str) -> int:
        out = sys.stdout.buffer
        stream = engine.logs(container, follow=True)
        outcome: dict[str, Any] = {}
        drained = threading.Event()

        def wait() -> None:
            # Podman ends a follow stream up to a quarter of a second after the container exits
            # (as long as a short task): once it exited and the stream idles, end the stream.
            try:
                outcome["code"] = engine.wait(container)
            except Exception as exc:  # raised below, in the reading thread
                outcome["error"] = exc
            seen = self.written
            while not drained.wait(LOG_DRAIN_SECONDS):
                if self.written == seen:
                    stream.close()
                    return
                seen = self.written

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        for chunk in stream:
            self._write(out, chunk)
        drained.set()
        waiter.join()
        if "error" in outcome:
            raise outcome["error"]
        code = int(outcome["code"])
        # Podman may end a follow stream before it delivered everything: compare the log's end.
        theirs = b"".join(engine.logs(container, follow=False, tail=TAIL_CHECK_LINES))
        if not b"".join(self._tail).endswith(theirs):
            skip = self.written
            for chunk in engine.logs(container, follow=False):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                self._write(out, chunk[skip:])
                skip = 0
        out.flush()
        return code

    def _write(self, out: Any, chunk: bytes) -> None:
        out.write(chunk)
        out.flush()
        self.written += len(chunk)
        self._tail.append(chunk)
        self._tail_bytes += len(chunk)
        while self._tail_bytes - len(self._tail[0]) >= 64 * 1024:
            self._tail_bytes -= len(self._tail.popleft())

    def _remove(self) -> None:
        with self._lock:
            if self.engine is not None and self.container is not None:
                try:
                    self.engine.remove(self.container)
                except EngineError as exc:
                    print(f"hpcdock: {exc}", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].endswith(".json"):
        print("usage: python -m hpcdock_service.engines.node_run SPOOL/NAME.json", file=sys.stderr)
        return 2
    run = NodeRun(Path(args[0]))
    try:
        return run.run()
    except Exception as exc:  # recorded, so the service names it instead of guessing from Slurm's state
        run._remove()
        run.record(ExitRecord(None, f"the node runner failed: {exc!r}", job_id=run.job_id))
        raise


if __name__ == "__main__":
    sys.exit(main())
