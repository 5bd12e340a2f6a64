"""hpcdock.bundle_writer: the pure-Python bundle writer (no hou)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hpcdock import bundle_writer as B
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.mounts import MountPolicy
from openjd.model import (
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)


def _job(**kw):
    steps = (
        kw.pop("steps")
        if "steps" in kw
        else [
            B.StepSpec("sim", "/out/sim", list(range(1, 6)), output_pattern="/p/sim.{frame:04d}.bgeo.sc"),
            B.StepSpec(
                "beauty", "/out/mantra1", list(range(1, 6)), ["sim"], "/p/render/b.{frame:04d}.exr", gpus=2
            ),
        ]
    )
    base = dict(
        name="shot", image="img:1", steps=steps, hip_name="shot.hip", project_dir="/p", frames_per_task=2
    )
    base.update(kw)
    return B.JobSpec(**base)


@pytest.mark.parametrize(
    "frames,expr",
    [
        ([3], "3"),
        ([1, 2, 3], "1-3"),
        ([1, 3, 5], "1-5:2"),
        ([5, 1, 2, 3], "1-3,5"),
        ([1, 2, 5, 7, 8], "1-2,5,7-8"),
    ],
)
def test_frames_to_range(frames, expr):
    assert B.frames_to_range(frames) == expr


def test_frame_range_errors():
    assert B.frame_range(1, 5, 2) == [1, 3, 5]
    with pytest.raises(B.BundleError, match="empty frame range"):
        B.frame_range(5, 1, 1)
    with pytest.raises(B.BundleError, match="fractional"):
        B.frame_range(1, 2, 0.5)
    with pytest.raises(B.BundleError, match="positive"):
        B.frame_range(1, 2, 0)


def test_infer_frame_pattern():
    assert (
        B.infer_frame_pattern({1: "/p/v001/b.0001.exr", 2: "/p/v001/b.0002.exr"})
        == "/p/v001/b.{frame:04d}.exr"
    )
    assert B.infer_frame_pattern({9: "b9.exr", 10: "b10.exr"}) == "b{frame}.exr"
    assert B.infer_frame_pattern({1: "/p/{x}/b.1.exr", 2: "/p/{x}/b.2.exr"}) == "/p/{{x}}/b.{frame}.exr"
    assert B.infer_frame_pattern({1: "/p/cache.abc", 2: "/p/cache.abc"}) is None
    with pytest.raises(ValueError):
        B.infer_frame_pattern({1: "x.1"})


def test_relative_to_bundle():
    assert B.relative_to_bundle("/b/out/x.{frame}.png", "/b") == "out/x.{frame}.png"
    assert B.relative_to_bundle("/bb/x.{frame}.png", "/b") == "/bb/x.{frame}.png"
    assert B.relative_to_bundle("out/x.{frame}.png", "/b") == "out/x.{frame}.png"


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(image=" "), "no container image"),
        (dict(steps=[]), "nothing to render"),
        (dict(priority=101), "priority"),
        (dict(max_attempts=0), "max attempts"),
        (dict(frames_per_task=0), "frames per task"),
        (dict(env={"BAD-NAME": "1"}), "environment variable"),
        (dict(hip_name="a/b.hip"), "scene file name"),
    ],
)
def test_validate(change, message):
    with pytest.raises(B.BundleError, match=message):
        B.validate(_job(**change))


def test_write_bundle_is_valid_openjd(tmp_path):
    written = []
    out = B.write_bundle(
        _job(), str(tmp_path / "b"), lambda p: (written.append(p), Path(p).write_text("hip"))
    )
    root = Path(out)
    assert written == [str(root / "hip" / "shot.hip")]
    template = json.loads((root / "template.json").read_text())
    values = json.loads((root / "parameter_values.json").read_text())
    settings = json.loads((root / "hpcdock.yaml").read_text())
    assert values == {
        "parameterValues": [
            {"name": "BundleDir", "value": "."},  # the render server's actions run outside it
            {"name": "HipFile", "value": "hip/shot.hip"},
            {"name": "ProjectDir", "value": "/p"},
            {"name": "OutputDir0", "value": "/p"},  # each step's output directory, dataFlow OUT
            {"name": "OutputDir1", "value": "/p/render"},
        ]
    }
    flows = {
        p["name"]: (p["type"], p.get("objectType"), p["dataFlow"]) for p in template["parameterDefinitions"]
    }
    assert flows == {
        "BundleDir": ("PATH", "DIRECTORY", "NONE"),
        "HipFile": ("PATH", "FILE", "IN"),
        "ProjectDir": ("PATH", "DIRECTORY", "NONE"),
        "OutputDir0": ("PATH", "DIRECTORY", "OUT"),
        "OutputDir1": ("PATH", "DIRECTORY", "OUT"),
    }
    assert settings["frames"] == {
        "parameter": "Frame",
        "output": "/p/render/b.{frame:04d}.exr",
        "steps": {"sim": "/p/sim.{frame:04d}.bgeo.sc"},
    }
    jt = decode_job_template(template=template, supported_extensions=["TASK_CHUNKING"])
    params = preprocess_job_parameters(
        job_template=jt,
        job_parameter_values={v["name"]: v["value"] for v in values["parameterValues"]},
        job_template_dir=root,
        current_working_dir=root,
    )
    job = create_job(job_template=jt, job_parameter_values=params)
    assert [s.name for s in job.steps] == ["sim", "beauty"]
    assert job.steps[1].hostRequirements.amounts[0].min == 2
    chunks = [t["Frame"].value for t in StepParameterSpaceIterator(space=job.steps[1].parameterSpace)]
    assert len(chunks) == 3
    with pytest.raises(B.BundleError, match="not empty"):
        B.write_bundle(_job(), out)


def test_bundle_is_json_that_yaml_readers_and_the_service_read_alike(tmp_path):
    """The writer needs no YAML library; the service, which reads YAML, gets the same data."""
    job = _job(
        name="plan é ✓",
        env={"GREETING": "grüße 🎬", "QUOTE": 'say "hi": \\ \t'},
        project_dir=str(tmp_path / "proj"),
        steps=[B.StepSpec("beauty", "/out/mantra1", [1, 2, 3, 4])],
    )
    root = Path(B.write_bundle(job, str(tmp_path / "b"), lambda p: Path(p).write_text("hip")))
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [
        "hpcdock.yaml",
        "parameter_values.json",
        "template.json",
    ]
    for name in ("hpcdock.yaml", "parameter_values.json", "template.json"):
        text = (root / name).read_text(encoding="utf-8")
        assert yaml.safe_load(text) == json.loads(text), name
    settings = json.loads((root / "hpcdock.yaml").read_text(encoding="utf-8"))
    assert settings["env"] == {"GREETING": "grüße 🎬", "QUOTE": 'say "hi": \\ \t'}
    plan = load_bundle(str(root), mount_policy=MountPolicy.build([str(tmp_path)]))
    assert plan.name == "plan é ✓" and plan.container.env["GREETING"] == "grüße 🎬"
    # PATH parameters: a relative value is the bundle's, as OpenJD resolves it
    assert plan.params["HipFile"] == str(root / "hip" / "shot.hip")
    assert plan.params["ProjectDir"] == str(tmp_path / "proj")
    assert plan.params["BundleDir"] == str(root)
    assert [t.params["Frame"] for t in plan.steps[0].tasks] == ["1-2", "3-4"]
