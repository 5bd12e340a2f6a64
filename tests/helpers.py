"""Test helpers: a real ``hpcdock-service`` process, bundle builders, waiting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from hpcdock.protocol import JOB_FINAL

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE = os.environ.get("HPCDOCK_TEST_IMAGE", "localhost/hpcdock-test:latest")


# -- engine -----------------------------------------------------------------------------------


def rootless_podman_unusable() -> Optional[str]:
    if os.environ.get("DOCKER_HOST"):
        return None
    if os.geteuid() == 0:
        return "engine tests need the rootless engine user: run `make test` (or set DOCKER_HOST)"
    if shutil.which("podman") is None:
        return "podman is not installed: run `make test`, which installs it"
    return None


# -- the service ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """A real ``hpcdock-service`` in its own process, restartable and killable like the real one.

    It listens where a user's service listens by default, a private Unix socket under
    ``$XDG_RUNTIME_DIR``, with a runtime directory of its own; ``tcp=True`` makes it listen on
    a free loopback port instead.
    """

    def __init__(
        self,
        root: Path,
        engine_url: Optional[str],
        slots: int = 2,
        extra_env: Optional[dict[str, str]] = None,
        config: Optional[dict[str, Any]] = None,
        tcp: bool = False,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config_home = root / "config"
        self.state_dir = root / "state"
        self.runtime_dir = root / "run"
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        self.engine_url = engine_url
        self.slots = slots
        self.listen = f"tcp://127.0.0.1:{_free_port()}" if tcp else None
        self.url = (
            f"http://{self.listen[len('tcp://') :]}"
            if self.listen
            else f"unix://{self.runtime_dir / 'hpcdock' / 'service.sock'}"
        )
        self.extra_env = extra_env or {}
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = root / "service.log"
        if config:
            (self.config_home / "hpcdock").mkdir(parents=True, exist_ok=True)
            (self.config_home / "hpcdock" / "service.yaml").write_text(yaml.safe_dump(config))

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "HPCDOCK_URL": self.url,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if os.geteuid() == 0:
            env["HPCDOCK_ALLOW_ROOT"] = "1"  # only when a developer points root at a user's engine
        return env

    def command(self) -> list[str]:
        """The service's command line: its defaults, but for the state and the engine of the test."""
        args = [
            sys.executable,
            "-m",
            "hpcdock_service.main",
            "--state-dir",
            str(self.state_dir),
            "--slots",
            str(self.slots),
        ]
        if self.listen:
            args += ["--listen", self.listen]
        if self.engine_url:
            args += ["--engine-socket", self.engine_url]
        return args

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")  # closed with the process
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        from hpcdock.client import ServiceError

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hpcdock-service exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.client().health()
                return self
            except (ServiceError, OSError):  # no socket yet, or no token yet
                pass
            time.sleep(0.1)
        raise RuntimeError("hpcdock-service did not answer within 60 s")

    def client(self):
        from hpcdock.client import Client

        return Client(url=self.url, token=self.token)

    @property
    def token(self) -> str:
        return (self.config_home / "hpcdock" / "token").read_text().strip()

    def raw(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Optional[dict[str, Any]] = None,
        headers: Optional[dict[str, str]] = None,
        auth: bool = True,
    ):
        """One hand-made request, answered whatever its status (a ``hpcdock.client.Response``)."""
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        return self.client().send(method, path, params=params, body=body, headers=headers, auth=auth)

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> ServiceProcess:
        self.stop()
        return self.start()

    @staticmethod
    def cli_command(*args: str) -> list[str]:
        return [sys.executable, "-m", "hpcdock.cli", *args]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cli_command(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )


def socket_answers(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket at ``path`` (not just a file left there)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def run_check(svc: ServiceProcess, *args: str) -> subprocess.CompletedProcess:
    """``hpcdock-service --check`` on ``svc``'s settings and a state directory of its own."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcdock_service.main",
            "--check",
            "--state-dir",
            str(svc.root / "check-state"),
            *args,
        ],
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_report(svc: ServiceProcess, engine_url: str) -> dict[str, Any]:
    """What ``hpcdock-service --check`` prints for ``svc``'s settings."""
    proc = run_check(svc, "--engine-socket", engine_url)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def store_id_of(svc: ServiceProcess) -> Optional[str]:
    """The id the service's store labels its runs with (None before it made its store)."""
    db = svc.state_dir / "hpcdock.db"
    if not db.exists():
        return None
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
    return row[0] if row else None


def engine_of(svc: ServiceProcess):
    """The engine ``svc`` drives, opened here the way the service opens it (through the engine
    seam, from its service.yaml), for a test to ask what runs there. Close it after use."""
    from hpcdock_service.config import load_config
    from hpcdock_service.engines import open_engine

    overrides = {
        "engine_socket": svc.engine_url or os.environ.get("DOCKER_HOST"),
        "state_dir": str(svc.state_dir),
        "embedded_podman": False,  # only ever look at the engine the service uses
    }
    config = load_config(svc.config_home / "hpcdock" / "service.yaml", overrides)
    return open_engine(config, svc.state_dir)


def remove_leftovers(svc: ServiceProcess) -> None:
    """Runs a failed test left behind must not leak into the next test."""
    store_id = store_id_of(svc)
    if store_id is None:
        return
    engine = engine_of(svc)
    try:
        for run in engine.leftovers(store_id):
            engine.remove(run.handle)
    finally:
        engine.close()


# -- bundles ----------------------------------------------------------------------------------

RENDER_SH = textwrap.dedent("""\
    #!/bin/sh
    # Test "renderer": writes each frame of the chunk ($1 is "A-B" or "A") as a copy of src.png
    # (or a text file), printing hpcdock's frame markers and ALF progress like a real render script.
    chunk=$1; start=${chunk%%-*}; end=${chunk##*-}
    f=$start
    while [ "$f" -le "$end" ]; do
      echo "::hpcdock::frame-start $f"
      out=$(printf "$OUT_PATTERN" "$f")
      sleep "${FRAME_SLEEP:-0}"
      echo "ALF_PROGRESS 50%"
      if [ -n "$SKIP_FRAME" ] && [ "$f" = "$SKIP_FRAME" ]; then :;
      elif [ -f src.png ]; then cp src.png "$out"; else echo "frame $f" > "$out"; fi
      echo "ALF_PROGRESS 100%"
      echo "::hpcdock::frame-done $f $PWD/$out"
      f=$((f + 1))
    done
    """)


def make_bundle(
    root: Path,
    *,
    frames: str = "1-12",
    chunk: int = 5,
    command: Optional[list[str]] = None,
    settings: Optional[dict[str, Any]] = None,
    template_extra: Optional[dict[str, Any]] = None,
    png: bool = False,
    env: Optional[dict[str, str]] = None,
    steps: Optional[list] = None,
) -> Path:
    """Write a job bundle: one step rendering FRAMES in chunks of CHUNK with the test renderer."""
    root.mkdir(parents=True, exist_ok=True)
    ext = "png" if png else "txt"
    (root / "render.sh").write_text(RENDER_SH)
    if png:
        from PIL import Image

        # A picture, not one flat colour (which the frame checks rightly flag as constant).
        ramp = Image.linear_gradient("L").resize((640, 360))
        Image.merge(
            "RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("L", (640, 360), 30))
        ).save(root / "src.png")
    step = {
        "name": "render",
        "parameterSpace": {
            "taskParameterDefinitions": [
                {
                    "name": "Frame",
                    "type": "CHUNK[INT]",
                    "range": "{{Param.Frames}}",
                    "chunks": {"defaultTaskCount": chunk, "rangeConstraint": "CONTIGUOUS"},
                }
            ]
        },
        "script": {
            "actions": {
                "onRun": {
                    "command": (command or ["sh"])[0],
                    "args": (command or ["sh", "render.sh", "{{Task.Param.Frame}}"])[1:],
                }
            }
        },
    }
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": root.name,
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
        "steps": steps or [step],
        **(template_extra or {}),
    }
    (root / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    (root / "parameter_values.yaml").write_text(
        yaml.safe_dump({"parameterValues": [{"name": "Frames", "value": frames}]})
    )
    hpc = {
        "image": TEST_IMAGE,
        "env": {"OUT_PATTERN": f"out/f.%04d.{ext}", **(env or {})},
        "frames": {"parameter": "Frame", "output": f"out/f.{{frame:04d}}.{ext}"},
    }
    hpc.update(settings or {})
    (root / "hpcdock.yaml").write_text(yaml.safe_dump(hpc, sort_keys=False))
    return root


def wait_for(predicate, timeout: float = 120, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_job(client, job_id: int, timeout: float = 180) -> dict:
    return wait_for(
        lambda: (lambda j: j if j["state"] in JOB_FINAL else None)(client.job(job_id)),
        timeout,
        what=f"job {job_id} to finish",
    )


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
