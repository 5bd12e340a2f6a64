"""An in-memory stand-in for hpcdock-service, shaped like ``hpcdock.client.Client``.

Used by the model/panel tests that run without a service (and by the benchmark). The
state lives in ``FakeService``; each worker thread gets its own ``FakeClient`` on it, as
the panel's ``client_factory`` does with real clients.
"""

import struct
import threading
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

from hpcdock.client import Event, ServiceError, ServiceUnavailable


def png_bytes(width: int = 64, height: int = 48, rgb: Tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A valid RGB PNG, written with the standard library."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


PNG = png_bytes()


def make_job(
    job_id: int = 1,
    name: str = "ball",
    state: str = "running",
    frames_total: int = 48,
    frames_done: int = 0,
    **kw: Any,
) -> Dict[str, Any]:
    job = {
        "id": job_id,
        "name": name,
        "state": state,
        "priority": 50,
        "bundle_dir": "/tmp/b",
        "created_at": 1000.0,
        "started_at": 1000.0 if state != "queued" else None,
        "finished_at": None,
        "error": None,
        "tasks_total": 8,
        "tasks_done": 0,
        "tasks_failed": 0,
        "tasks_running": 0,
        "frames_total": frames_total,
        "frames_done": frames_done,
        "frames_failed": 0,
        "frames_flagged": 0,
        "fps": None,
        "steps": [{"name": "render", "depends_on": [], "gpus": 0}],
    }
    job.update(kw)
    return job


def make_frame(
    frame: int,
    job_id: int = 1,
    state: str = "waiting",
    step: str = "render",
    task_id: int = 1,
    attempt: int = 1,
    **kw: Any,
) -> Dict[str, Any]:
    done = state == "done"
    obj = {
        "job_id": job_id,
        "step": step,
        "frame": frame,
        "task_id": task_id,
        "attempt": attempt,
        "state": state,
        "output": f"/out/{step}.{frame:04d}.png" if done else None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "render_time": 1.5 if done else None,
        "thumbnail_url": f"/v1/jobs/{job_id}/frames/{frame}/thumbnail?step={step}" if done else None,
        "flags": [],
    }
    obj.update(kw)
    return obj


def make_task(
    task_id: int, job_id: int = 1, state: str = "running", frames: Tuple[int, ...] = (1,), **kw: Any
) -> Dict[str, Any]:
    task = {
        "id": task_id,
        "job_id": job_id,
        "step": "render",
        "index": task_id - 1,
        "state": state,
        "attempt": 1,
        "max_attempts": 2,
        "frames": list(frames),
        "params": {},
        "progress": 0.0,
        "status": None,
        "exit_code": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "container": None,
        "gpus": [],
    }
    task.update(kw)
    return task


class FakeService:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: List[Event] = []
        self.jobs: Dict[int, Dict[str, Any]] = {}
        self.tasks: Dict[int, Dict[str, Any]] = {}
        self.frames: Dict[Tuple[int, str, int], Dict[str, Any]] = {}
        self.logs: Dict[int, str] = {}
        self.up = True
        self.generation = 0  # bumped on restart: open streams end
        self.calls: List[Tuple[str, Any]] = []
        self.stream_requests: List[Optional[int]] = []  # last_event_id of every stream opened
        self.delivered: List[int] = []  # ids handed out by streams, in order
        self.thumbnail_data = PNG
        self.thumbnails: Dict[Tuple[int, str, int], bytes] = {}  # per frame, else thumbnail_data
        self.last_event_id_in_health = True

    # -- changing state (the "service side") --------------------------------------------
    def _emit(self, kind: str, obj: Dict[str, Any]) -> None:
        with self.cond:
            eid = len(self.events) + 1
            self.events.append(Event(eid, kind, {kind: dict(obj)}))
            self.cond.notify_all()

    def put_job(self, job: Dict[str, Any], emit: bool = True) -> None:
        self.jobs[job["id"]] = dict(job)
        if emit:
            self._emit("job", job)

    def put_task(self, task: Dict[str, Any], emit: bool = True) -> None:
        self.tasks[task["id"]] = dict(task)
        if emit:
            self._emit("task", task)

    def put_frame(self, frame: Dict[str, Any], emit: bool = True) -> None:
        self.frames[(frame["job_id"], frame["step"], frame["frame"])] = dict(frame)
        if emit:
            self._emit("frame", frame)

    def append_log(self, task_id: int, text: str) -> None:
        self.logs[task_id] = self.logs.get(task_id, "") + text

    def stop(self) -> None:
        with self.cond:
            self.up = False
            self.generation += 1
            self.cond.notify_all()

    def start(self) -> None:
        with self.cond:
            self.up = True
            self.cond.notify_all()

    def client(self) -> "FakeClient":
        return FakeClient(self)


class FakeClient:
    url = "http://fake"

    def __init__(self, service: FakeService) -> None:
        self.s = service

    def _check(self) -> None:
        if not self.s.up:
            raise ServiceUnavailable("no hpcdock-service at http://fake")

    def health(self) -> Dict[str, Any]:
        self._check()
        out: Dict[str, Any] = {"ok": True, "version": "fake"}
        if self.s.last_event_id_in_health:
            out["last_event_id"] = len(self.s.events)
        return out

    def jobs(self) -> List[Dict[str, Any]]:
        self._check()
        return sorted((dict(j) for j in self.s.jobs.values()), key=lambda j: -j["id"])

    def job(self, job_id: int) -> Dict[str, Any]:
        self._check()
        return dict(self.s.jobs[job_id])

    def tasks(self, job_id: int) -> List[Dict[str, Any]]:
        self._check()
        return [dict(t) for t in self.s.tasks.values() if t["job_id"] == job_id]

    def frames(self, job_id: int) -> List[Dict[str, Any]]:
        self._check()
        self.s.calls.append(("frames", job_id))
        return [dict(f) for k, f in sorted(self.s.frames.items()) if k[0] == job_id]

    def thumbnail(self, job_id: int, frame: int, step: Optional[str] = None) -> bytes:
        self._check()
        self.s.calls.append(("thumbnail", (job_id, step, frame)))
        f = self.s.frames.get((job_id, step or "render", frame))
        if not f or f["state"] != "done":
            raise ServiceError("no thumbnail", 404, "frame")
        return self.s.thumbnails.get((job_id, step or "render", frame), self.s.thumbnail_data)

    def log(self, task_id: int, offset: int = 0) -> Tuple[str, int]:
        self._check()
        data = self.s.logs.get(task_id, "").encode()
        return data[offset:].decode(), len(data)

    def cancel(self, job_id: int) -> Dict[str, Any]:
        self._check()
        self.s.calls.append(("cancel", job_id))
        job = dict(self.s.jobs[job_id], state="canceled", finished_at=time.time())
        self.s.put_job(job)
        return job

    def retry(self, job_id: int, frames: Optional[List[int]] = None, flagged: bool = False) -> Dict[str, Any]:
        self._check()
        self.s.calls.append(("retry", (job_id, None if frames is None else list(frames), flagged)))
        return dict(self.s.jobs[job_id])

    def events(
        self, job: Optional[int] = None, last_event_id: Optional[int] = None, reconnect: bool = True
    ) -> Iterator[Event]:
        self._check()
        s = self.s
        s.stream_requests.append(last_event_id)
        generation = s.generation
        pos = last_event_id or 0
        while True:
            with s.cond:
                while pos >= len(s.events) and s.generation == generation and s.up:
                    s.cond.wait(0.2)
                if s.generation != generation or not s.up:
                    raise ConnectionError("stream dropped")
                batch = s.events[pos:]
            for event in batch:
                pos = event.id
                if job is not None and _job_of(event) != job:
                    continue
                s.delivered.append(event.id)
                yield event


def _job_of(event: Event) -> Any:
    obj = event.data.get(event.kind) or {}
    return obj.get("id") if event.kind == "job" else obj.get("job_id")
