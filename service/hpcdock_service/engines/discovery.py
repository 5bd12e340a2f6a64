"""Find the user's rootless engine, or start one, and refuse a rootful one.

Order: the configured socket, ``DOCKER_HOST``, the usual rootless sockets
(``$XDG_RUNTIME_DIR/podman/podman.sock``, ``$XDG_RUNTIME_DIR/docker.sock``), and
finally, when ``podman`` is installed, a ``podman system service`` the service starts
itself as the user (the embedded default) and stops on exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from .base import EngineError
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
            raise EngineError("no container engine found and podman is not installed "
                              "(install podman, or set engine.socket / DOCKER_HOST)")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        log_file = open(self.socket_path.with_suffix(".log"), "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([podman, "system", "service", "--time=0", self.url],
                                     stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket_path.exists():
                return
            if self.proc.poll() is not None:
                raise EngineError(f"podman system service exited with {self.proc.returncode}; "
                                  f"see {self.socket_path.with_suffix('.log')}")
            time.sleep(0.05)
        raise EngineError(f"podman system service did not create {self.socket_path} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def connect(configured: Optional[str], state_dir: Path, allow_rootful: bool = False,
            embedded: bool = True) -> tuple[LocalEngine, Optional[EmbeddedPodman]]:
    """Return a connected engine (and the embedded podman if we started one)."""
    tried = []
    own_socket = state_dir / "podman" / "podman.sock"
    for url in candidate_sockets(configured) + [f"unix://{own_socket}"]:
        path = url[len("unix://"):] if url.startswith("unix://") else None
        if path is not None and not os.path.exists(path):
            tried.append(f"{url} (absent)")
            continue
        try:
            engine = LocalEngine(url)
        except EngineError as exc:
            if url == configured:
                raise
            tried.append(f"{url} ({exc})")
            continue
        _check_rootless(engine, allow_rootful)
        return engine, None
    if not embedded:
        raise EngineError("no container engine found; tried " + "; ".join(tried))
    pod = EmbeddedPodman(own_socket)
    pod.start()
    log.info("started embedded podman service at %s", pod.url)
    try:
        engine = LocalEngine(pod.url)
        _check_rootless(engine, allow_rootful)
    except Exception:
        pod.stop()
        raise
    return engine, pod


def _check_rootless(engine: LocalEngine, allow_rootful: bool) -> None:
    if not engine.rootless and not allow_rootful:
        engine.close()
        raise EngineError(f"the {engine.kind} engine at {engine.base_url} runs as root; hpcdock only uses "
                          "rootless engines unless the config sets `allow_rootful: true`")
