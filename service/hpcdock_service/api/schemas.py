"""The API's bodies as declared in its OpenAPI contract: what requests may hold, what answers hold.

Answers are written from the values' ``to_json`` (:mod:`..model`), not through these models: a
100,000-frame listing is streamed as it is read, never validated row by row. These models
declare the same objects (field for field; tests/unit/test_api_models.py validates real answers
against them, extra fields refused), so the committed docs/openapi.json says what clients get.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from hpcdock.protocol import FrameState, JobState, TaskState
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from ..bundle import MAX_FRAME
from ..errors import text_problem

MAX_ID = 2**63 - 1  # ids and event ids are SQLite integers


# -- requests -----------------------------------------------------------------------------------


def _clean_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[StrictStr, AfterValidator(_clean_text)]


def _param_value(value: Any) -> Union[str, int, float]:
    """A job parameter value: a string or a number (not a bool, list or mapping)."""
    if isinstance(value, str) and len(value) <= 65536:
        return _clean_text(value)
    if isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and -MAX_ID - 1 <= value <= MAX_ID
    ):
        return value
    raise ValueError("must be a string (at most 65536 characters) or a number")


ParamValue = Annotated[
    Union[str, int, float],
    PlainValidator(_param_value),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 65536}, {"type": "number"}]}),
]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle_dir: Text = Field(
        description="Absolute path of the job bundle directory on this machine", max_length=4096
    )
    parameter_values: Optional[dict[Annotated[Text, Field(max_length=1024)], ParamValue]] = Field(
        None, description="Overrides of job parameters, by name", max_length=1000
    )
    priority: Optional[StrictInt] = Field(None, ge=0, le=100)
    name: Optional[Annotated[Text, Field(max_length=1024)]] = None


class RetryFrames(BaseModel):
    """Which frames to render again; no body at all retries the job's failed and canceled tasks."""

    model_config = ConfigDict(extra="forbid")
    frames: Optional[list[Annotated[StrictInt, Field(ge=-MAX_FRAME, le=MAX_FRAME)]]] = Field(
        None, description="Frame numbers to render again (only these)", min_length=1, max_length=100000
    )
    flagged: bool = Field(False, description="Render again every frame a check flagged")
    step: Optional[Annotated[Text, Field(max_length=1024)]] = Field(
        None, description="The step whose frames these are (default: the last step that has each frame)"
    )


# -- answers ------------------------------------------------------------------------------------


class _Answer(BaseModel):
    """An object the service sends: every field always present (null where unknown)."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Answer):
    field: str = Field(description="What was refused: a request field, header, or a bundle file and key")
    message: str = Field(description="Why, in words")


class ErrorBody(_Answer):
    error: ErrorDetail


class FrameChecks(_Answer):
    """The job's ``frame_checks:`` settings (see docs/api.md)."""

    policy: str = Field(description="warn: a flagged frame is done; fail: it fails")
    black_max: float
    constant_max: float
    flicker_k: float
    flicker_floor: float
    flicker: bool


class StepOut(_Answer):
    name: str
    depends_on: list[str]
    gpus: int
    output: Optional[str] = Field(description="Each frame's output path, with {frame}")
    amounts: dict[str, float] = Field(description="Counted resources each task takes")
    waiting_for: Optional[str] = Field(description="Why its pending tasks wait, while they do")


class JobOut(_Answer):
    id: int
    name: str
    state: JobState
    priority: int
    bundle_dir: str
    max_attempts: int
    created_at: float = Field(description="Unix seconds")
    started_at: Optional[float]
    finished_at: Optional[float]
    error: Optional[str]
    frame_checks: FrameChecks
    fps: Optional[float]
    frames_flagged: int
    tasks_total: int
    tasks_done: int
    tasks_failed: int
    tasks_running: int
    frames_total: int
    frames_done: int
    frames_failed: int
    steps: list[StepOut]


class TaskOut(_Answer):
    id: int
    job_id: int
    step_idx: int
    params: dict[str, str] = Field(description="The OpenJD task parameters")
    frames: list[int]
    state: TaskState
    attempt: int
    max_attempts: int
    container: Optional[str]
    exit_code: Optional[int]
    progress: float = Field(description="0 to 100")
    status: Optional[str] = Field(
        description="The task's status line: the last `openjd_status:` message its current or last attempt printed"
    )
    error: Optional[str]
    started_at: Optional[float]
    finished_at: Optional[float]
    gpus: list[int]
    licence_retries: int
    retry_at: Optional[float] = Field(description="When a licence back-off ends (Unix seconds)")
    step: str
    waiting_for: Optional[str]
    index: int = Field(description="The task's index within its step")


class FlagOut(_Answer):
    check: str = Field(description="black, constant, nan, size, channels, flicker, unreadable, empty")
    reason: str
    values: dict[str, float]


class FrameOut(_Answer):
    job_id: int
    frame: int
    task_id: int
    state: FrameState
    output: Optional[str]
    error: Optional[str]
    started_at: Optional[float]
    finished_at: Optional[float]
    flags: list[FlagOut]
    step: str
    attempt: int
    thumbnail_url: Optional[str]
    render_time: Optional[float] = Field(description="Seconds from the frame's start to its end")


class JobList(_Answer):
    jobs: list[JobOut]


class TaskList(_Answer):
    tasks: list[TaskOut]


class FrameList(_Answer):
    frames: list[FrameOut]


class JobEvent(_Answer):
    job: JobOut


class TaskEvent(_Answer):
    task: TaskOut


class FrameEvent(_Answer):
    frame: FrameOut


class EventData(RootModel[Union[JobEvent, TaskEvent, FrameEvent]]):
    """The `data:` of an event, keyed by its kind (the `event:` line: job, task or frame): the
    whole current object, as GET answers it."""


class Ok(_Answer):
    ok: bool


class Proof(_Answer):
    proof: str = Field(description="HMAC-SHA256 of the nonce and this address under the token, hex")


class EngineHealth(BaseModel):
    """Whether the engine answers, and what it says of itself: each engine adds its own fields
    (its name and version, its socket, whether it is rootless, how it enforces limits)."""

    model_config = ConfigDict(extra="allow")
    state: str = Field(description="up or down")


class StoreHealthOut(_Answer):
    state: str = Field(description="ok, or busy while another process holds the write lock")
    busy_for: Optional[float] = None
    message: Optional[str] = None


class GpuOut(_Answer):
    index: int
    uuid: Optional[str]
    name: Optional[str]
    task: Optional[int] = Field(description="The task holding it, if one does")


class Health(_Answer):
    ok: bool = Field(description="false while the engine is unreachable or the store is locked")
    version: str
    engine: EngineHealth
    store: StoreHealthOut
    embedded_engine: bool
    gpus: list[GpuOut]
    slots: int
    running: int
    last_event_id: Optional[int] = Field(description="Where to follow /events from after a snapshot")
