"""Frame flags in the store (real SQLite, real images): recording, policy, flicker in any order,
and retrying just the chosen frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.errors import BadInput
from hpcdock_service.framecheck import FrameCheck, FrameCheckSettings, inspect
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.store import Store

from tests.unit.test_framecheck import png, scene
from tests.unit.test_scheduler import step


def plan(tmp_path: Path, frames: str = "1-12", chunk: int = 1, **settings: Any):
    root = tmp_path / "bundle"
    root.mkdir(parents=True, exist_ok=True)
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "seq",
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
        "steps": [step("render", "echo", chunk=chunk)],
    }
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    hpc = {
        "image": "img",
        "frames": {"parameter": "Frame", "output": str(tmp_path / "out" / "f.{frame:04d}.png")},
        **settings,
    }
    (root / "hpcdock.yaml").write_text(yaml.safe_dump(hpc))
    return load_bundle(str(root), mount_policy=MountPolicy.build([str(tmp_path)]))


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "hpcdock.db")
    yield s
    s.close()


def render(store: Store, job_id: int, frames: dict[int, FrameCheck]) -> None:
    """Run every task of the job as the runner would: each frame checked and recorded, then the task's end."""
    for t in store.tasks(job_id):
        if t.state != "pending":
            continue
        store.start_task(t.id, f"c{t.id}", [], 0)
        failed = []
        for f in t.frames:
            state, _ = store.set_frame(job_id, 0, f, "done", check=frames[f])
            failed += [f] if state == "failed" else []
        store.finish_task(t.id, 0, f"frame {failed[0]} failed its checks" if failed else None)


def checked(tmp_path: Path, frames: range, bad: dict[int, np.ndarray] | None = None) -> dict[int, FrameCheck]:
    out = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in frames:
        rgb = (bad or {}).get(i, scene(i, (160, 90)))
        out[i] = inspect(
            png(tmp_path / f"src{i}.png", rgb), tmp_path / "thumbs" / f"{i}.png", FrameCheckSettings()
        )
    return out


def flags_by_frame(store: Store, job_id: int) -> dict[int, list[str]]:
    return {f.frame: [fl.check for fl in f.flags] for f in store.frames(job_id) if f.flags}


def test_flags_are_recorded_counted_and_listed(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, fps=25))
    assert job.fps == 25.0 and job.frames_flagged == 0 and job.frame_checks.policy == "warn"
    frames = checked(
        tmp_path,
        range(1, 13),
        {4: np.zeros((90, 160, 3)), 8: scene(8, (80, 45)), 10: scene(10, (160, 90)) * 1.7},
    )
    render(store, job.id, frames)
    job = store.read_job(job.id)
    assert job.state == "succeeded" and job.frames_done == 12
    assert flags_by_frame(store, job.id) == {4: ["black"], 8: ["size"], 10: ["flicker"]}
    assert job.frames_flagged == 3
    size = next(f for f in store.frames(job.id) if f.frame == 8).flags[0]
    assert size.values == {"width": 80, "height": 45, "expected_width": 160, "expected_height": 90}
    assert "luma" not in store.frames(job.id)[0].to_json()


def test_fail_policy_fails_the_frame_and_its_task_with_the_reasons(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, "1-3", chunk=3, frame_checks={"policy": "fail"}, max_attempts=1))
    render(store, job.id, checked(tmp_path, range(1, 4), {2: np.zeros((90, 160, 3))}))
    frames = {f.frame: f for f in store.frames(job.id)}
    assert [frames[i].state for i in (1, 2, 3)] == ["done", "failed", "done"]
    assert (frames[2].error or "").startswith("all black")
    assert store.read_job(job.id).state == "failed"


def test_flicker_verdicts_do_not_depend_on_the_order_frames_land(store: Store, tmp_path: Path) -> None:
    frames = checked(tmp_path, range(1, 21), {7: scene(7, (160, 90)) * 1.6, 15: scene(15, (160, 90)) * 0.4})
    results = []
    for order in (
        list(range(1, 21)),
        list(range(20, 0, -1)),
        [7, 15, 1, 20, 8, 6, 14, 16, *range(2, 6), *range(9, 14), *range(17, 20)],
    ):
        job = store.create_job(plan(tmp_path, "1-20"))
        for t in store.tasks(job.id):
            store.start_task(t.id, f"c{t.id}", [], 0)
        for f in order:
            store.set_frame(job.id, 0, f, "done", check=frames[f])
        results.append(flags_by_frame(store, job.id))
    assert results[0] == {7: ["flicker"], 15: ["flicker"]}
    assert results[1] == results[0] and results[2] == results[0]


def test_retry_flagged_makes_new_tasks_for_just_those_frames(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, "1-12", chunk=4))
    render(
        store,
        job.id,
        checked(
            tmp_path,
            range(1, 13),
            {2: np.zeros((90, 160, 3)), 3: np.zeros((90, 160, 3)), 11: np.zeros((90, 160, 3))},
        ),
    )
    before = {f.frame: f for f in store.frames(job.id)}
    old_tasks = store.tasks(job.id)
    retried = store.retry_frames(job.id, flagged=True)
    assert retried.state == "queued" and retried.frames_flagged == 0
    tasks = store.tasks(job.id)
    assert tasks[:3] == old_tasks[:3]  # the old tasks keep their record
    new = [t for t in tasks if t.id not in {o.id for o in old_tasks}]
    assert [(t.frames, t.params, t.state, t.attempt) for t in new] == [
        ((2, 3), {"Frame": "2-3"}, "pending", 0),
        ((11,), {"Frame": "11"}, "pending", 0),
    ]
    after = {f.frame: f for f in store.frames(job.id)}
    for f in set(before) - {2, 3, 11}:
        assert after[f] == before[f], f  # untouched
    assert [after[f].state for f in (2, 3, 11)] == ["waiting"] * 3
    assert {after[f].task_id for f in (2, 3)} == {new[0].id}
    # The re-run frames come back clean: the job ends as it should, with no flag left.
    render(store, job.id, checked(tmp_path / "again", range(1, 13)))
    assert store.read_job(job.id).state == "succeeded" and flags_by_frame(store, job.id) == {}


def test_retry_frames_rechunks_and_replaces_a_failed_task(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, "1-10", chunk=5, max_attempts=1))
    tasks = store.tasks(job.id)
    store.start_task(tasks[0].id, "c", [], 0)
    store.finish_task(tasks[0].id, 0, None, {f: ("done", None, None) for f in range(1, 6)})
    store.start_task(tasks[1].id, "c", [], 0)
    store.set_frame(job.id, 0, 6, "done")
    store.finish_task(
        tasks[1].id, 1, "exited with code 1", {f: ("failed", "task exited", None) for f in range(7, 11)}
    )
    assert store.read_job(job.id).state == "failed"
    assert store.retry_frames(job.id, frames=[2, 3, 4, 9]).state == "queued"
    tasks = store.tasks(job.id)
    states = {t.id: t.state for t in tasks}
    assert states[tasks[1].id] == "replaced"  # its unfinished frames 7-10 all came along
    new = [t for t in tasks[2:]]
    assert [t.frames for t in new] == [(2, 3, 4), (7, 8, 9, 10)]
    frames = {f.frame: f.state for f in store.frames(job.id)}
    assert frames == {
        1: "done",
        2: "waiting",
        3: "waiting",
        4: "waiting",
        5: "done",
        6: "done",
        7: "waiting",
        8: "waiting",
        9: "waiting",
        10: "waiting",
    }
    for t in new:
        store.start_task(t.id, "c", [], 0)
        store.finish_task(t.id, 0, None, {f: ("done", None, None) for f in t.frames})
    assert store.read_job(job.id).state == "succeeded"


def test_retry_frames_refusals_name_the_field(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, "1-3"))
    with pytest.raises(BadInput) as err:
        store.retry_frames(job.id, frames=[1])
    assert err.value.status == 409  # still queued
    render(store, job.id, checked(tmp_path, range(1, 4)))
    for kwargs, field in (
        ({"frames": [99]}, "frames"),
        ({"flagged": True}, "flagged"),
        ({"frames": [1], "step": "nope"}, "step"),
        ({"frames": []}, "frames"),
    ):
        with pytest.raises(BadInput) as err:
            store.retry_frames(job.id, **kwargs)
        assert err.value.field == field, (kwargs, err.value)


def test_a_late_start_marker_does_not_reopen_a_finished_frame(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, "1-2"))
    task = store.tasks(job.id)[0]
    store.start_task(task.id, "c", [], 0)
    store.set_frame(job.id, 0, 1, "done")
    store.set_frame(job.id, 0, 1, "running")  # the engine's log delivered the start marker late
    assert store.frame(job.id, 1).state == "done"


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"frame_checks": {"blackmax": 0.1}}, "hpcdock.yaml: frame_checks.blackmax"),
        ({"frame_checks": {"policy": "halt"}}, "hpcdock.yaml: frame_checks.policy"),
        ({"fps": 0}, "hpcdock.yaml: fps"),
        ({"fps": "fast"}, "hpcdock.yaml: fps"),
    ],
)
def test_bundle_settings_are_refused_by_name(tmp_path: Path, settings: dict, field: str) -> None:
    with pytest.raises(BadInput) as err:
        plan(tmp_path, **settings)
    assert err.value.field == field


def test_bundle_settings_reach_the_job(store: Store, tmp_path: Path) -> None:
    job = store.create_job(plan(tmp_path, frame_checks={"policy": "fail", "flicker_k": 3}, fps=23.976))
    assert job.fps == 23.976
    assert job.frame_checks == FrameCheckSettings(policy="fail", flicker_k=3.0)
    assert store.frame_check_settings(job.id) == FrameCheckSettings(policy="fail", flicker_k=3.0)
