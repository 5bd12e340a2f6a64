"""The service's bundle loader: OpenJD expansion, hpcdock.yaml rules, refusals by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service.bundle_loader import load_bundle, prepare_output_dirs
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import MountPolicy


def bundle(
    root: Path, template: dict[str, Any] = None, settings: dict[str, Any] = None, values: Any = None
) -> str:
    root.mkdir(parents=True, exist_ok=True)
    t = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "shot",
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": "1-12"}],
        "steps": [
            {
                "name": "render",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {
                            "name": "Frame",
                            "type": "CHUNK[INT]",
                            "range": "{{Param.Frames}}",
                            "chunks": {"defaultTaskCount": 5, "rangeConstraint": "CONTIGUOUS"},
                        }
                    ]
                },
                "script": {"actions": {"onRun": {"command": "render", "args": ["{{Task.Param.Frame}}"]}}},
            }
        ],
    }
    t.update(template or {})
    s = {"image": "img:1", "frames": {"parameter": "Frame", "output": "out/b.{frame:04d}.png"}}
    s.update(settings or {})
    (root / "template.yaml").write_text(yaml.safe_dump(t))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump(s))
    if values is not None:
        (root / "parameter_values.yaml").write_text(yaml.safe_dump(values))
    return str(root)


def policy(*roots: str) -> MountPolicy:
    return MountPolicy.build(roots)


def load(path: str, **kw: Any):
    return load_bundle(path, mount_policy=policy(str(Path(path).parent)), **kw)


def test_chunks_frames_and_outputs(tmp_path: Path) -> None:
    plan = load(bundle(tmp_path / "b"))
    (step,) = plan.steps
    assert [t.frames for t in step.tasks] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert [t.params for t in step.tasks] == [{"Frame": "1-4"}, {"Frame": "5-8"}, {"Frame": "9-12"}]
    assert step.output == str(tmp_path / "b" / "out" / "b.{frame:04d}.png")
    assert plan.frames_total == 12
    mounts = {(m.source, m.readonly) for m in plan.container.mounts}
    assert (str(tmp_path / "b"), True) in mounts and (str(tmp_path / "b" / "out"), False) in mounts
    assert not (tmp_path / "b" / "out").exists()  # nothing is created before the job is accepted
    prepare_output_dirs(plan, policy(str(tmp_path)))
    assert (tmp_path / "b" / "out").is_dir()


def test_parameter_values_file_and_overrides(tmp_path: Path) -> None:
    path = bundle(
        tmp_path / "b",
        values={
            "parameterValues": [
                {"name": "Frames", "value": "1-3"},
                {"name": "deadline:priority", "value": 50},
            ]
        },
    )
    assert load(path).frames_total == 3
    assert load(path, parameter_values={"Frames": "10,20"}).frames_total == 2


@pytest.mark.parametrize(
    "template,settings,values,field,reason",
    [
        ({"extensions": ["FANCY"]}, None, None, "template.yaml", "FANCY"),
        (None, {"image": ""}, None, "hpcdock.yaml: image", "required"),
        (None, {"priority": 101}, None, "hpcdock.yaml: priority", "0 to 100"),
        (None, {"max_attempts": 0}, None, "hpcdock.yaml: max_attempts", "1 to 100"),
        (None, {"colour": "red"}, None, "hpcdock.yaml: colour", "unknown key"),
        (None, {"cap_add": ["SYS_ADMIN"]}, None, "hpcdock.yaml: cap_add", "capabilities"),
        (None, {"pid_mode": "host"}, None, "hpcdock.yaml: pid_mode", "host PID"),
        (None, {"env": {"A": {"b": 1}}}, None, "hpcdock.yaml: env.A", "scalar"),
        (None, {"mounts": [{"source": "relative", "target": "/x"}]}, None, "mounts[0].source", "absolute"),
        (
            None,
            {"mounts": [{"source": "/", "target": "/x", "mode": "rw"}]},
            None,
            "mounts[0].mode",
            "unknown",
        ),
        (None, {"frames": {"parameter": "Frame", "output": "out/b.png"}}, None, "frames.output", "{frame}"),
        (
            None,
            {"frames": {"parameter": "Frame", "output": "out/b.{shot}.png"}},
            None,
            "frames.output",
            "only {frame}",
        ),
        (
            None,
            {"frames": {"parameter": "Frame", "output": "/etc/b.{frame}.png"}},
            None,
            "frames.output",
            "outside the allowed roots",
        ),
        (
            None,
            {"frames": {"parameter": "Nope", "output": "out/{frame}.png"}},
            None,
            "frames.parameter",
            "Nope",
        ),
        (None, None, {"parameterValues": "x"}, "parameterValues", "list"),
        (None, None, {"parameterValues": [{"name": "Frames", "value": "9-x"}]}, "parameter_values", "9-x"),
    ],
)
def test_refusals_name_the_field(tmp_path: Path, template, settings, values, field, reason) -> None:
    path = bundle(tmp_path / "b", template, settings, values)
    with pytest.raises(BadInput) as err:
        load(path)
    assert field in err.value.field, err.value
    assert reason in err.value.message, err.value


def test_bundle_outside_allowed_roots_and_missing_files(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b")
    with pytest.raises(BadInput, match="outside the allowed roots"):
        load_bundle(path, mount_policy=policy("/nonexistent-root"))
    (tmp_path / "b" / "hpcdock.yaml").unlink()
    with pytest.raises(BadInput, match="missing"):
        load(path)
    with pytest.raises(BadInput, match="absolute"):
        load_bundle("relative/dir", mount_policy=policy("/"))


def test_engine_and_gpu_checks_are_consulted(tmp_path: Path) -> None:
    path = bundle(
        tmp_path / "b",
        template={
            "steps": [
                {
                    "name": "render",
                    "hostRequirements": {"amounts": [{"name": "amount.worker.gpu", "min": 2}]},
                    "script": {"actions": {"onRun": {"command": "render"}}},
                }
            ]
        },
        settings={"frames": None},
    )
    with pytest.raises(BadInput) as err:
        load(path, image_exists=lambda image: False)
    assert err.value.field == "hpcdock.yaml: image" and "does not exist" in err.value.message
    with pytest.raises(BadInput) as err:
        load(path, image_exists=lambda image: True, gpu_check=lambda n: f"asks for {n} GPUs")
    assert "asks for 2 GPUs" in err.value.message and "hostRequirements" in err.value.field
    plan = load(path, image_exists=lambda image: True, gpu_check=lambda n: None)
    assert plan.steps[0].gpus == 2 and len(plan.steps[0].tasks) == 1


def test_memory_and_vcpu_amounts_become_the_steps_limits(tmp_path: Path) -> None:
    def plan(amounts: list[dict[str, Any]]):
        path = bundle(
            tmp_path / "b",
            template={
                "steps": [
                    {
                        "name": "render",
                        "hostRequirements": {"amounts": amounts},
                        "script": {"actions": {"onRun": {"command": "render"}}},
                    }
                ]
            },
            settings={"frames": None},
        )
        return load(path).steps[0]

    step = plan(
        [{"name": "amount.worker.memory", "min": 2048, "max": 4096}, {"name": "amount.worker.vcpu", "min": 2}]
    )
    assert (step.memory_mib, step.vcpus) == (4096, 2.0)  # the most the step may use, else what it needs
    step = plan([{"name": "amount.worker.memory", "min": 1024}])
    assert (step.memory_mib, step.vcpus) == (1024, None)
    with pytest.raises(BadInput) as err:
        plan([{"name": "amount.worker.disk.scratch", "min": 10}])
    assert "hostRequirements.amounts" in err.value.field and "amount.worker.disk.scratch" in err.value.message
