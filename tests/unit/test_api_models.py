"""The values the service answers with and the models its OpenAPI contract declares are one shape:
each value's ``to_json`` validates as its model, which refuses a field more and misses none."""

from __future__ import annotations

import json

import pytest
from hpcdock.protocol import EventKind, FrameState, JobState, TaskState, event_data
from hpcdock_service.api.schemas import EventData, FrameOut, JobOut, StepOut, TaskOut
from hpcdock_service.framecheck import Flag, FrameCheckSettings
from hpcdock_service.model import Frame, Job, Step, Task
from pydantic import BaseModel, ValidationError

STEP = Step("render", ("sim",), 1, "/out/f.{frame:04d}.exr", {"licence.karma": 1.0}, "GPUs")
JOB = Job(
    7, "ball", JobState.RUNNING, 50, "/b", 2, 1.0, 2.0, None, None, FrameCheckSettings(), 24.0, 1,
    *(8, 3, 0, 2, 48, 17, 0), (STEP,),
)  # fmt: skip
TASK = Task(
    31, 7, 0, {"Frame": "13-18"}, (13, 14), TaskState.RUNNING, 1, 2, "hpcdock-x", None, 40.0, "tiling", None,
    *(3.0, None, (0,), 0, None, "render", None, 2),
)  # fmt: skip
FRAME = Frame(
    7, "render", 13, 31, 1, FrameState.DONE, "/out/f.0013.exr", None, 3.0, 4.25,
    (Flag("black", "all black", {"max": 0.0}),), True,
)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "model"), [(STEP, StepOut), (JOB, JobOut), (TASK, TaskOut), (FRAME, FrameOut)]
)
def test_each_value_is_its_declared_model(value: object, model: type[BaseModel]) -> None:
    wire = value.to_json()  # type: ignore[attr-defined]
    assert set(wire) == set(model.model_fields)
    assert model.model_validate(wire).model_dump(mode="json") == json.loads(json.dumps(wire))
    with pytest.raises(ValidationError):
        model.model_validate({**wire, "surprise": 1})


def test_the_wire_names_of_what_the_values_derive() -> None:
    assert TASK.to_json()["index"] == 2 and "idx" not in TASK.to_json()
    frame = FRAME.to_json()
    assert frame["thumbnail_url"] == "/v1/jobs/7/frames/13/thumbnail?step=render"
    assert frame["render_time"] == 1.25 and frame["flags"] == [
        {"check": "black", "reason": "all black", "values": {"max": 0.0}}
    ]
    assert JOB.to_json()["state"] == "running" and JOB.to_json()["frame_checks"]["policy"] == "warn"


@pytest.mark.parametrize(
    ("kind", "value"), [(EventKind.JOB, JOB), (EventKind.TASK, TASK), (EventKind.FRAME, FRAME)]
)
def test_an_event_carries_its_object_under_its_kind(kind: EventKind, value: object) -> None:
    data = json.loads(json.dumps(event_data(kind, value.to_json())))  # type: ignore[attr-defined]
    assert list(data) == [kind.value]
    EventData.model_validate(data)
    with pytest.raises(ValidationError):
        EventData.model_validate(
            {"job": data[kind.value]} if kind != EventKind.JOB else {"task": data["job"]}
        )
