"""The values the store hands out and the API answers with: jobs, their steps, tasks, frames, events.

Each is immutable (what the store held at one snapshot) and typed with the states of the shared
protocol module. They are named tuples rather than frozen dataclasses: a listing builds 100,000
of them, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs
about seven times a tuple's. ``to_json`` gives the object of docs/api.md, with the field names the client,
the command line and the panel read; the same object is what an event of its kind carries. The
API's response models (:mod:`.api.schemas`) declare that shape in the OpenAPI contract, and
tests/unit/test_api_models.py holds the two to each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from hpcdock.protocol import EventKind, FrameState, JobState, TaskState

from .bundle_loader import MEMORY_AMOUNT, VCPU_AMOUNT, EmbeddedFile, Environment
from .engines.base import ContainerLimits
from .framecheck import Flag, FrameCheckSettings
from .tasklog import MIB

JSON = dict[str, Any]


class Step(NamedTuple):
    """A job's step as a job shows it: what it runs after, needs, writes and waits for."""

    name: str
    depends_on: tuple[str, ...]
    gpus: int
    output: Optional[str]  # the pattern of each frame's output path, with {frame}
    amounts: Mapping[str, float]  # counted resources per task ("licence.karma": 1)
    waiting_for: Optional[str]  # why its pending tasks wait ("resource lic", "GPUs"), if they do

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "depends_on": list(self.depends_on),
            "gpus": self.gpus,
            "output": self.output,
            "amounts": dict(self.amounts),
            "waiting_for": self.waiting_for,
        }


class StepRun(NamedTuple):
    """What each task of a step runs with: its command, timeout and limits. A :class:`Step` is the
    step as a job shows it; this is the part only the scheduler and a task's runner read."""

    job_id: int
    idx: int
    name: str
    gpus: int
    command: tuple[str, ...]  # OpenJD format strings, resolved per task when its container is made
    timeout: Optional[float]  # seconds (onRun.timeout); None: no limit
    cancel_grace: float  # seconds between a timed-out task's stop signal and its kill
    memory_mib: Optional[int]  # its tasks' memory limit; None: the service's default
    vcpus: Optional[float]  # its tasks' vCPU limit; None: the service's default
    amounts: Mapping[str, float]
    files: tuple[
        EmbeddedFile, ...
    ] = ()  # the step script's embeddedFiles, written into each task's container
    # The environments its tasks run in, entered in this order (none: each task runs cold).
    environments: tuple[Environment, ...] = ()
    # The worker groups its host requirements place it on (see bundle_loader.StepPlan.placement).
    placement: Optional[tuple[str, ...]] = None

    @property
    def reserve(self) -> ContainerLimits:
        """What each task declared it needs of a worker (the min of its vCPU and memory amounts),
        for a cluster engine to pack its nodes by."""
        memory = self.amounts.get(MEMORY_AMOUNT)
        return ContainerLimits(
            memory=int(memory) * MIB if memory else None, vcpus=self.amounts.get(VCPU_AMOUNT)
        )


class ReadyStep(NamedTuple):
    """A step of an active job with pending tasks and every step it depends on succeeded: what a
    dispatch round needs to start its tasks."""

    job_id: int
    step_idx: int
    gpus: int
    amounts: Mapping[str, float]


class Job(NamedTuple):
    id: int
    name: str
    state: JobState
    priority: int
    bundle_dir: str
    max_attempts: int
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    error: Optional[str]
    frame_checks: FrameCheckSettings
    fps: Optional[float]
    frames_flagged: int
    tasks_total: int
    tasks_done: int
    tasks_failed: int
    tasks_running: int
    frames_total: int
    frames_done: int
    frames_failed: int
    steps: tuple[Step, ...]

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "priority": self.priority,
            "bundle_dir": self.bundle_dir,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "frame_checks": self.frame_checks.to_json(),
            "fps": self.fps,
            "frames_flagged": self.frames_flagged,
            "tasks_total": self.tasks_total,
            "tasks_done": self.tasks_done,
            "tasks_failed": self.tasks_failed,
            "tasks_running": self.tasks_running,
            "frames_total": self.frames_total,
            "frames_done": self.frames_done,
            "frames_failed": self.frames_failed,
            "steps": [s.to_json() for s in self.steps],
        }


class Task(NamedTuple):
    """One task of a step: a container run per attempt, rendering ``frames``."""

    id: int
    job_id: int
    step_idx: int
    params: Mapping[str, str]  # the OpenJD task parameters, as the container gets them
    frames: tuple[int, ...]
    state: TaskState
    attempt: int
    max_attempts: int
    container: Optional[str]  # the current (or last) attempt's run name
    exit_code: Optional[int]
    progress: float  # 0 to 100
    status: Optional[str]  # the last ``openjd_status`` line of its current or last attempt
    error: Optional[str]
    started_at: Optional[float]
    finished_at: Optional[float]
    gpus: tuple[int, ...]
    licence_retries: int
    retry_at: Optional[float]  # a licence back-off's end (Unix seconds)
    step: str
    waiting_for: Optional[str]
    idx: int  # its index within its step ("index" on the wire; a tuple's own index() is taken)

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "step_idx": self.step_idx,
            "params": dict(self.params),
            "frames": list(self.frames),
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "container": self.container,
            "exit_code": self.exit_code,
            "progress": self.progress,
            "status": self.status,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "gpus": list(self.gpus),
            "licence_retries": self.licence_retries,
            "retry_at": self.retry_at,
            "step": self.step,
            "waiting_for": self.waiting_for,
            "index": self.idx,
        }


class Frame(NamedTuple):
    """One frame of a step's output sequence, and the task that renders it."""

    job_id: int
    step: str
    frame: int
    task_id: int
    attempt: int  # of the task, when this frame was last set
    state: FrameState
    output: Optional[str]
    error: Optional[str]
    started_at: Optional[float]
    finished_at: Optional[float]
    flags: tuple[Flag, ...]  # what the frame checks found (empty: clean, or not checked)
    has_thumbnail: bool

    @property
    def thumbnail_url(self) -> Optional[str]:
        if not self.has_thumbnail:
            return None
        return f"/v1/jobs/{self.job_id}/frames/{self.frame}/thumbnail?step={self.step}"

    @property
    def render_time(self) -> Optional[float]:
        start, end = self.started_at, self.finished_at
        return round(end - start, 3) if start and end else None

    def to_json(self) -> JSON:
        return {
            "job_id": self.job_id,
            "frame": self.frame,
            "task_id": self.task_id,
            "state": self.state.value,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "flags": [f.to_json() for f in self.flags],
            "step": self.step,
            "attempt": self.attempt,
            "thumbnail_url": self.thumbnail_url,
            "render_time": self.render_time,
        }


class Event(NamedTuple):
    """One entry of the event log. ``data`` is the JSON text stored with it,
    ``{kind: object}``, sent on the stream as it is."""

    id: int
    kind: EventKind
    data: str
