"""Wires config, store, engine, GPUs and scheduler into one running service.

The API layer talks to this object only; tests build one with a real engine and a
temporary state directory, and ``main`` builds one from the user's config.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .bundle import load_bundle, prepare_output_dirs
from .config import ServiceConfig
from .engines.base import Engine
from .engines.discovery import EmbeddedPodman, connect
from .gpu_broker import GpuBroker
from .scheduler import Scheduler
from .store import Row, Store

log = logging.getLogger(__name__)


def ensure_token(path: Path) -> str:
    """Read the bearer token, creating it (mode 0600, never world readable) on first start."""
    try:
        token = path.read_text().strip()
        if token:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


class Service:
    def __init__(self, config: ServiceConfig, engine: Optional[Engine] = None,
                 gpus: Optional[GpuBroker] = None) -> None:
        self.config = config
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = ensure_token(Path(config.token_file))
        self.embedded: Optional[EmbeddedPodman] = None
        if engine is None:
            engine, self.embedded = connect(config.engine_socket, self.state_dir,
                                            allow_rootful=config.allow_rootful, embedded=config.embedded_podman)
        self.engine = engine
        self.mount_policy = config.mount_policy(engine.describe().get("socket"))
        engine.mount_policy = self.mount_policy
        self.gpus = gpus if gpus is not None else GpuBroker.detect(engine, config.gpus, config.gpu_cdi_kind)
        self.store = Store(self.state_dir / "hpcdock.db")
        self.scheduler = Scheduler(self.store, engine, slots=config.slots, state_dir=self.state_dir,
                                   gpus=self.gpus)

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        """Stop dispatching and let go of the engine; running containers keep running."""
        self.scheduler.stop()
        self.store.close()
        self.engine.close()
        if self.embedded is not None:
            self.embedded.stop()

    def submit(self, bundle_dir: str, parameter_values: Optional[dict[str, Any]] = None,
               priority: Optional[int] = None, name: Optional[str] = None) -> Row:
        plan = load_bundle(
            bundle_dir,
            mount_policy=self.mount_policy,
            parameter_values=parameter_values,
            image_exists=self.engine.image_exists,
            gpu_check=self.gpus.check_request,
        )
        prepare_output_dirs(plan, self.mount_policy)
        job = self.store.add_job(plan, priority=priority, name=name)
        log.info("job %s (%s): %d task(s), %d frame(s)", job["id"], job["name"], job["tasks_total"],
                 job["frames_total"])
        self.scheduler.wake()
        return job

    def cancel(self, job_id: int) -> Row:
        return self.scheduler.cancel(job_id)

    def retry(self, job_id: int) -> Row:
        job = self.store.retry_job(job_id)
        self.scheduler.wake()
        return job

    def metrics_text(self) -> str:
        """Prometheus text exposition: what a farm admin graphs and alerts on."""
        lines = []
        for table, by_state in self.store.counts().items():
            lines.append(f"# TYPE hpcdock_{table} gauge")
            lines += [f'hpcdock_{table}{{state="{s}"}} {n}' for s, n in sorted(by_state.items())]
        lines += ["# TYPE hpcdock_slots gauge", f"hpcdock_slots {self.config.slots}",
                  "# TYPE hpcdock_running_tasks gauge", f"hpcdock_running_tasks {self.scheduler.running_count()}",
                  "# TYPE hpcdock_events_total counter", f"hpcdock_events_total {self.store.last_event_id()}"]
        return "\n".join(lines) + "\n"

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "version": __version__,
            "engine": self.engine.describe(),
            "embedded_engine": self.embedded is not None,
            "gpus": self.gpus.to_json(),
            "slots": self.config.slots,
            "running": self.scheduler.running_count(),
            "last_event_id": self.store.last_event_id(),
        }
