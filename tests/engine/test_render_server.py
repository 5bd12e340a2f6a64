"""The Houdini render server in warm sessions on a real rootless engine: a bundle the plugin's
writer exports, run by the service, with a stand-in hython that takes 3 s to start (its scene
load) and then renders with the real farm script and the fake ``hou`` (tests/houdini), in the
OpenJD lane's Debian image (python3; ``images/openjd``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hpcdock import bundle_writer as B
from hpcdock.protocol import parse_frame_list

from tests.engine import test_openjd_oracle
from tests.engine.test_conformance import no_runs_left
from tests.helpers import ServiceProcess, wait_for, wait_job
from tests.houdini import fake_hou
from tests.houdini.houdini_env import hou_reports, hython_starts, write_stand_in_hython

pytestmark = pytest.mark.engine

openjd_image = test_openjd_oracle.openjd_image  # the image with python3, built once per run

START_SECONDS = "3"


def export(root: Path, image: str, frames: int, snapshot: str) -> tuple[Path, Path]:
    """The bundle of a Geometry ROP rendered one frame per task through the render server; the
    stand-in hython reports to the project's log directory. Returns the bundle and the report."""
    project = root / "proj"
    (project / "log").mkdir(parents=True)
    report = project / "log" / "hou.jsonl"
    bundle = root / "bundle"
    hython = str(bundle / "standin" / "hython")
    job = B.JobSpec(
        name="served",
        image=image,
        steps=[
            B.StepSpec(
                "geo1",
                "/out/geo1",
                list(range(1, frames + 1)),
                output_pattern=f"{project}/geo/shot.{{frame:04d}}.bgeo",
            )
        ],
        hip_name="shot.hip",
        project_dir=str(project),
        env={"FAKE_HOU_REPORT": str(report), "FAKE_HYTHON_START": START_SECONDS},
        mounts=[B.Mount(str(project), str(project), readonly=False)],
        max_attempts=1,
        frames_per_task=1,
        hython=hython,
        python="python3",
    )
    B.write_bundle(job, str(bundle), write_snapshot=lambda path: Path(path).write_text(snapshot))
    write_stand_in_hython(str(bundle / "standin"), "python3")
    return bundle, report


def geometry_scene() -> str:
    """A saved fake scene (plain values, so another process loads it): one Geometry ROP."""
    fake_hou.fake_reset()
    try:
        fake_hou.fake_create(
            "/out/geo1",
            "geometry",
            {"trange": 1, "f": (1.0, 12.0, 1.0), "sopoutput": "$HIP/geo/$HIPNAME.$F4.bgeo"},
            output_parm="sopoutput",
        )
        return Path(fake_hou.hipFile.saveAsBackup()).read_text()
    finally:
        fake_hou.fake_reset()


def failures(client: Any, job_id: int) -> list[tuple[Any, str]]:
    return [(t["error"], client.log(t["id"])[0]) for t in client.tasks(job_id) if t["state"] == "failed"]


def test_the_scene_loads_once_per_slot_and_every_frame_renders_once(
    service: ServiceProcess, tmp_path: Path, openjd_image: str
) -> None:
    frames = 12
    bundle, report = export(tmp_path, openjd_image, frames, geometry_scene())
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"], timeout=240)
    assert job["state"] == "succeeded", failures(client, job["id"])

    starts = hython_starts(str(report))
    assert 1 <= starts <= service.slots, starts  # the 3-s start once per session, never once per task
    # onExit stopped each server: a stand-in hython reports only when it exits cleanly.
    wait_for(
        lambda: len(hou_reports(str(report))) == starts, 30, what="every render server stopped by onExit"
    )
    reports = hou_reports(str(report))
    assert all(len(r["loads"]) == 1 for r in reports), reports  # one scene load per server
    rendered = sorted(tuple(frame) for r in reports for frame in r["rendered"])
    assert rendered == [("/out/geo1", f) for f in range(1, frames + 1)]  # every frame exactly once
    assert {r["HIP"] for r in reports} == {str(tmp_path / "proj")}

    tasks = client.tasks(job["id"])
    assert len(tasks) == frames
    for task in tasks:
        (frame,) = parse_frame_list(task["params"]["Frame"])  # a chunk of one frame: "7-7"
        log, _ = client.log(task["id"])
        assert log.count("::hpcdock::frame-start") == 1 and f"::hpcdock::frame-start {frame}\n" in log, log
        assert f"::hpcdock::frame-done {frame} {tmp_path}/proj/geo/shot.{frame:04d}.bgeo" in log, log
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * frames
    no_runs_left(service)  # the session containers, and the servers in them, are gone
    assert hython_starts(str(report)) == starts  # and nothing started one again


def test_a_scene_that_will_not_load_fails_the_tasks_with_the_server_log(
    service: ServiceProcess, tmp_path: Path, openjd_image: str
) -> None:
    bundle, report = export(tmp_path, openjd_image, 2, json.dumps({"not": "a scene"}))
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"], timeout=240)
    assert job["state"] == "failed", job
    for task in client.tasks(job["id"]):
        assert task["state"] == "failed"
        assert f"environment '{B.SERVER_ENVIRONMENT}': onEnter exited with code 1" in task["error"], task
        assert "could not load scene" in task["error"], task  # the server's own words
    reports = hou_reports(str(report))  # each server that failed to load, none that rendered
    assert 1 <= len(reports) == hython_starts(str(report)) <= service.slots, reports
    assert all(r["rendered"] == [] for r in reports), reports
    no_runs_left(service)
