"""An engine that runs nothing, for the tests of what lies above the engine (the API, the service).

It speaks the engine protocol of service/hpcdock_service/engines/base.py: every run it is given
exits 0 at once, with no log, and it has no GPUs. That containers really run, on every engine,
is proven by tests/engine; these tests never start the scheduler, so nothing is dispatched here
unless a test does it by hand.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from hpcdock_service.config import ServiceConfig
from hpcdock_service.engines.base import ContainerRequest, GpuGrant, RunState, RunStatus
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.service import Service


class NoGpus:
    """The GPU placement of a machine without GPUs."""

    def check(self, count: int) -> Optional[str]:
        return f"this engine has no GPUs; the step asks for {count}" if count else None

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        return GpuGrant(0) if count == 0 else None

    def restore(self, task_id: int, grant: GpuGrant) -> None:
        pass

    def release(self, task_id: int) -> None:
        pass

    def to_json(self) -> list[dict[str, Any]]:
        return []

    def inventory_json(self) -> dict[str, Any]:
        return {"gpus": []}


class FakeEngine:
    mount_policy: MountPolicy

    def __init__(self, slots: int = 2, images: tuple[str, ...] = ()) -> None:
        self.slots = slots
        self.gpus = NoGpus()
        self.images = set(images)  # empty: every image exists
        self.runs: dict[str, RunStatus] = {}
        self.requests: dict[str, ContainerRequest] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"engine": "fake", "version": "0", "socket": None, "rootless": True, "limits": {}}

    def ping(self) -> None:
        pass

    def image_exists(self, image: str) -> bool:
        return not self.images or image in self.images

    def create(self, request: ContainerRequest) -> str:
        with self._lock:
            handle = f"fake-{next(self._ids)}"
            self.runs[handle] = RunStatus(handle, request.name, RunState.QUEUED, labels=dict(request.labels))
            self.requests[handle] = request
        return handle

    def start(self, handle: str) -> None:
        with self._lock:
            run = self.runs[handle]
            self.runs[handle] = RunStatus(handle, run.name, RunState.EXITED, 0, labels=run.labels)

    def status(self, handle: str) -> RunStatus:
        return self.runs[handle]

    def find(self, name: str) -> Optional[RunStatus]:
        return next((r for r in self.runs.values() if r.name == name and r.state != RunState.QUEUED), None)

    def leftovers(self, store_id: str) -> list[RunStatus]:
        return [r for r in self.runs.values() if r.labels.get("hpcdock.store") == store_id]

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> Iterator[bytes]:
        return iter(())

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        return self.runs[handle].exit_code or 0

    def stop(self, handle: str, grace: float = 0) -> None:
        self.start(handle)

    def remove(self, handle: str) -> None:
        with self._lock:
            self.runs.pop(handle, None)

    def close(self) -> None:
        pass


def fake_service(root: Path, **settings: Any) -> Service:
    """A Service on a FakeEngine with its state, token and allowed root under ``root`` (not started)."""
    config = ServiceConfig(
        state_dir=str(root / "state"),
        token_file=str(root / "token"),
        slots=1,
        allowed_roots=[str(root)],
        **settings,
    )
    return Service(config, engine=FakeEngine())
