"""Find the user's rootless engine, or start one, and refuse a rootful one.

Order: the configured socket, ``DOCKER_HOST``, the usual rootless sockets
(``$XDG_RUNTIME_DIR/podman/podman.sock``, ``$XDG_RUNTIME_DIR/docker.sock``), and
finally, when ``podman`` is installed, a ``podman system service`` the service starts
itself as the user (the embedded default), which the engine owns: it stops it when closed
and starts it again when it dies. :class:`EngineWatch` notices when any engine stops
answering, and when it answers again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .base import Engine, EngineError, EngineUnreachable
from .local import LocalEngine

log = logging.getLogger(__name__)


def candidate_sockets(configured: Optional[str] = None) -> list[str]:
    out: list[str] = []
    if configured:
        out.append(configured)
    if os.environ.get("DOCKER_HOST"):
        out.append(os.environ["DOCKER_HOST"])
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    out += [f"unix://{runtime}/podman/podman.sock", f"unix://{runtime}/docker.sock"]
    return out


class EmbeddedPodman:
    """A ``podman system service`` owned by hpcdock-service, for users who run no engine service."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.url = f"unix://{socket_path}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 20.0) -> None:
        podman = shutil.which("podman")
        if podman is None:
            raise EngineError(
                "no container engine found and podman is not installed "
                "(install podman, or set engine.socket / DOCKER_HOST)"
            )
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        log_file = open(self.socket_path.with_suffix(".log"), "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", self.url],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket_path.exists():
                return
            if self.proc.poll() is not None:
                raise EngineError(
                    f"podman system service exited with {self.proc.returncode}; "
                    f"see {self.socket_path.with_suffix('.log')}"
                )
            time.sleep(0.05)
        raise EngineError(f"podman system service did not create {self.socket_path} within {timeout}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def connect(
    configured: Optional[str],
    state_dir: Path,
    allow_rootful: bool = False,
    embedded: bool = True,
    **options: Any,
) -> LocalEngine:
    """Return a connected engine, owning the embedded podman if one had to be started.

    ``options`` are :class:`LocalEngine`'s own (its slots and GPUs)."""
    tried = []
    own_socket = state_dir / "podman" / "podman.sock"
    for url in candidate_sockets(configured) + [f"unix://{own_socket}"]:
        path = url[len("unix://") :] if url.startswith("unix://") else None
        if path is not None and not os.path.exists(path):
            tried.append(f"{url} (absent)")
            continue
        try:
            engine = LocalEngine(url, **options)
        except EngineError as exc:
            if url == configured:
                raise
            tried.append(f"{url} ({exc})")
            continue
        _check_rootless(engine, allow_rootful)
        return engine
    if not embedded:
        raise EngineError("no container engine found; tried " + "; ".join(tried))
    pod = EmbeddedPodman(own_socket)
    pod.start()
    log.info("started embedded podman service at %s", pod.url)
    try:
        engine = LocalEngine(pod.url, embedded=pod, **options)
        _check_rootless(engine, allow_rootful)
    except Exception:
        pod.stop()
        raise
    return engine


def _check_rootless(engine: LocalEngine, allow_rootful: bool) -> None:
    if not engine.rootless and not allow_rootful:
        engine.close()
        raise EngineError(
            f"the {engine.kind} engine at {engine.base_url} runs as root; hpcdock only uses "
            "rootless engines unless the config sets `allow_rootful: true`"
        )


class EngineWatch:
    """Whether the engine answers.

    A runner that loses the engine mid-task reports it here and waits (its container runs on
    under conmon); one thread pings the engine, every few seconds while it answers (so a loss
    nobody reported shows in ``/v1/health`` too) and twice a second while it does not. An
    engine that can bring itself back does so when pinged (see :meth:`.base.Engine.ping`).
    """

    UP_INTERVAL = 5.0
    DOWN_INTERVAL = 0.5

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._up = threading.Event()
        self._up.set()
        self._down_since: Optional[float] = None
        self._error: Optional[str] = None
        self._kick = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def lost(self, exc: Exception) -> None:
        """A call found the engine unreachable: look again now."""
        self._mark_down(exc)
        self._kick.set()

    def wait_up(self, timeout: Optional[float] = None) -> bool:
        return self._up.wait(timeout)

    def to_json(self) -> dict[str, Any]:
        if self.up:
            return {"state": "up"}
        return {
            "state": "down",
            "down_for": round(time.time() - (self._down_since or time.time()), 1),
            "error": self._error,
        }

    def _mark_down(self, exc: Exception) -> None:
        self._error = str(exc)
        if self._up.is_set():
            self._down_since = time.time()
            self._up.clear()
            log.warning("the engine is unreachable (%s); tasks wait for it", exc)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._kick.wait(self.UP_INTERVAL if self.up else self.DOWN_INTERVAL)
            self._kick.clear()
            if self._stopped.is_set():
                return
            try:
                self.engine.ping()
            except EngineUnreachable as exc:
                self._mark_down(exc)
                continue
            except Exception:  # a bug must not end the watch: waiting tasks depend on it
                log.exception("pinging the engine failed")
                continue
            if not self.up:
                log.warning(
                    "the engine answers again after %.0fs", time.time() - (self._down_since or time.time())
                )
                self._error = None
                self._up.set()
