"""The OpenJD features the loader runs: embedded files, PATH parameters' mounts, host requirements."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service.bundle_loader import EmbeddedFile, load_bundle
from hpcdock_service.config import WorkerCapabilities, cpu_arch, load_config
from hpcdock_service.engines.local import _archive
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.taskfiles import FILES_DIR, resolve


def write(root: Path, steps: list[dict[str, Any]], params: Any = (), values: Any = None) -> str:
    root.mkdir(parents=True, exist_ok=True)
    template = {"specificationVersion": "jobtemplate-2023-09", "name": "j", "steps": steps}
    if params:
        template["parameterDefinitions"] = list(params)
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": "img:1"}))
    if values:
        entries = [{"name": k, "value": v} for k, v in values.items()]
        (root / "parameter_values.yaml").write_text(yaml.safe_dump({"parameterValues": entries}))
    return str(root)


def step(name: str = "s", **extra: Any) -> dict[str, Any]:
    return {"name": name, "script": {"actions": {"onRun": {"command": "true"}}}, **extra}


def load(path: str, **kw: Any):
    return load_bundle(path, mount_policy=MountPolicy.build([str(Path(path).parent)]), **kw)


# -- embedded files ------------------------------------------------------------------------


def test_embedded_files_resolve_through_task_file_like_openjd_sessions(tmp_path: Path) -> None:
    script = {
        "actions": {"onRun": {"command": "{{Task.File.run}}", "args": ["{{Task.File.data}}"]}},
        "embeddedFiles": [
            {
                "name": "run",
                "type": "TEXT",
                "runnable": True,
                "filename": "run.sh",
                "data": "cat {{Task.File.data}}\r\n",
            },
            {"name": "data", "type": "TEXT", "data": "frame {{Task.Param.F}} of {{Param.Shot}}"},
        ],
    }
    space = {"taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "3-4"}]}
    params = [{"name": "Shot", "type": "STRING", "default": "sh010"}]
    plan = load(write(tmp_path / "b", [step(script=script, parameterSpace=space)], params))
    files = plan.steps[0].files
    assert [f.name for f in files] == ["run", "data"] and files[0].runnable and files[0].filename == "run.sh"
    assert EmbeddedFile.from_json(files[1].to_json()) == files[1]
    command, written = resolve(plan.steps[0].command, files, plan.params, {"F": "4"}, "/w")
    run, data = f"{FILES_DIR}/run.sh", command[1]
    assert command[0] == run
    assert re.fullmatch(f"{FILES_DIR}/tmp[0-9a-f]{{16}}", data), data  # a name of the runtime's choosing
    assert [(w.path, w.data, w.mode) for w in written] == [
        (run, f"cat {data}\n".encode(), 0o755),  # AUTO line ends on Linux: LF
        (data, b"frame 4 of sh010", 0o644),
    ]


def test_the_files_archive_holds_each_file_and_only_new_directories(tmp_path: Path) -> None:
    _, written = resolve(["x"], [EmbeddedFile("a", "A", "a.sh", True)], {}, {}, "/w")
    with tarfile.open(fileobj=io.BytesIO(_archive(written))) as tar:
        members = {m.name: (m.isdir(), m.mode) for m in tar.getmembers()}
        assert tar.extractfile(f"{FILES_DIR.strip('/')}/a.sh").read() == b"A"  # type: ignore[union-attr]
    assert members == {
        "openjd": (True, 0o755),
        "openjd/embedded_files": (True, 0o755),
        "openjd/embedded_files/a.sh": (False, 0o755),
    }


# -- PATH parameters -------------------------------------------------------------------------


def path_param(name: str, object_type: str, flow: str) -> dict[str, Any]:
    return {"name": name, "type": "PATH", "objectType": object_type, "dataFlow": flow}


def test_path_parameters_mount_by_data_flow(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scene.hip").write_text("x")
    (tmp_path / "cache").mkdir()
    params = [
        path_param("Scene", "FILE", "IN"),
        path_param("Textures", "DIRECTORY", "IN"),
        path_param("Image", "FILE", "OUT"),
        path_param("Renders", "DIRECTORY", "OUT"),
        path_param("Cache", "DIRECTORY", "INOUT"),
        path_param("Elsewhere", "DIRECTORY", "NONE"),
    ]
    values = {
        "Scene": str(tmp_path / "in" / "scene.hip"),
        "Textures": str(tmp_path / "in"),
        "Image": str(tmp_path / "img" / "a.exr"),
        "Renders": str(tmp_path / "renders"),
        "Cache": str(tmp_path / "cache"),
        "Elsewhere": "/nowhere/at/all",
    }
    plan = load(write(tmp_path / "b", [step()], params, values))
    mounts = {m.source: m.readonly for m in plan.container.mounts if m.source != str(tmp_path / "b")}
    assert mounts == {
        str(tmp_path / "in" / "scene.hip"): True,
        str(tmp_path / "in"): True,
        str(tmp_path / "img"): False,  # an OUT file: its directory
        str(tmp_path / "renders"): False,
        str(tmp_path / "cache"): False,
    }
    assert all(m.source == m.target for m in plan.container.mounts)
    assert plan.params["Scene"] == values["Scene"]


@pytest.mark.parametrize(
    ("param", "value", "reason"),
    [
        (path_param("Scene", "FILE", "IN"), "{tmp}/missing.hip", "does not exist (dataFlow IN"),
        (path_param("Out", "DIRECTORY", "OUT"), "/etc/hpcdock-out", "outside the allowed roots"),
        (path_param("Keys", "DIRECTORY", "IN"), "{tmp}/.ssh", "hidden"),
    ],
)
def test_path_parameters_go_through_the_mount_rules(
    tmp_path: Path, param: dict[str, Any], value: str, reason: str
) -> None:
    (tmp_path / ".ssh").mkdir()
    policy = MountPolicy.build([str(tmp_path)])
    object.__setattr__(policy, "hidden_in", (str(tmp_path),))  # this test's home
    path = write(tmp_path / "b", [step()], [param], {param["name"]: value.format(tmp=tmp_path)})
    with pytest.raises(BadInput) as err:
        load_bundle(path, mount_policy=policy)
    assert f"parameter_values: {param['name']}" in str(err.value)
    assert reason in str(err.value)


# -- host requirements ------------------------------------------------------------------------

OTHER_ARCH = "arm64" if cpu_arch() == "x86_64" else "x86_64"
CAPS = WorkerCapabilities.build({"attr.custom.host_config": ["HostConfigA"]}, [24576, 16384])


@pytest.mark.parametrize(
    "requirements",
    [
        {"attributes": [{"name": "attr.worker.os.family", "anyOf": ["linux", "macos"]}]},
        {"attributes": [{"name": "attr.custom.host_config", "allOf": ["HostConfigA"]}]},
        {"amounts": [{"name": "amount.worker.gpu.memory", "min": 16384}]},
    ],
)
def test_requirements_the_workers_meet_are_accepted(tmp_path: Path, requirements: dict[str, Any]) -> None:
    plan = load(write(tmp_path / "b", [step(hostRequirements=requirements)]), capabilities=CAPS)
    assert plan.steps[0].name == "s"


@pytest.mark.parametrize(
    ("requirements", "named", "have"),
    [
        (
            {"attributes": [{"name": "attr.worker.os.family", "anyOf": ["windows"]}]},
            "attr.worker.os.family",
            "['linux']",
        ),
        (
            {"attributes": [{"name": "attr.worker.cpu.arch", "anyOf": [OTHER_ARCH]}]},
            "attr.worker.cpu.arch",
            "have attr.worker.cpu.arch",
        ),
        (
            {"attributes": [{"name": "attr.custom.host_config", "anyOf": ["HostConfigB"]}]},
            "attr.custom.host_config",
            "['HostConfigA']",
        ),
        (
            {"attributes": [{"name": "attr.custom.renderer", "anyOf": ["x"]}]},
            "attr.custom.renderer",
            "no worker of this service has",
        ),
        (
            {"amounts": [{"name": "amount.worker.gpu.memory", "min": 20000}]},
            "amount.worker.gpu.memory (min 20000)",
            "have 16384",
        ),
    ],
)
def test_requirements_no_worker_meets_are_refused_naming_them(
    tmp_path: Path, requirements: dict[str, Any], named: str, have: str
) -> None:
    with pytest.raises(BadInput) as err:
        load(write(tmp_path / "b", [step(hostRequirements=requirements)]), capabilities=CAPS)
    message = str(err.value)
    assert "steps[0].hostRequirements" in message and named in message and have in message
    assert err.value.status == 400


def test_gpu_memory_without_gpus_says_there_is_none(tmp_path: Path) -> None:
    requirements = {"amounts": [{"name": "amount.worker.gpu.memory", "min": 1024}]}
    with pytest.raises(BadInput, match="have no NVIDIA GPU"):
        load(write(tmp_path / "b", [step(hostRequirements=requirements)]), capabilities=WorkerCapabilities())


@pytest.mark.parametrize(
    ("capabilities", "field", "reason"),
    [
        ({"attr.worker.os.family": "windows"}, "capabilities.attr.worker.os.family", "measured"),
        ({"amount.worker.gpu.memory": 4}, "capabilities.amount.worker.gpu.memory", "measured"),
        ({"amount.houdini_engine": 4}, "capabilities.amount.houdini_engine", "resources"),
        ({"attr.custom.x": 4}, "capabilities.attr.custom.x", "string or a list"),
        ({"amount.worker.disk.scratch": -1}, "capabilities.amount.worker.disk.scratch", ">= 0"),
        ({"attr.Custom-X": "a"}, "capabilities.attr.Custom-X", "not a capability name"),
    ],
)
def test_bad_capabilities_are_refused_naming_them(
    tmp_path: Path, capabilities: dict[str, Any], field: str, reason: str
) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump({"capabilities": capabilities}))
    with pytest.raises(BadInput) as err:
        load_config(path)
    assert field in str(err.value) and reason in str(err.value)


def test_declared_capabilities_are_lowercased_and_join_the_measured_ones(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(
        yaml.safe_dump({"capabilities": {"attr.Custom.Site": "paris", "amount.worker.disk.scratch": 500}})
    )
    caps = WorkerCapabilities.build(load_config(path).capabilities, [])
    assert caps.attributes["attr.custom.site"] == ("paris",)
    assert caps.attributes["attr.worker.os.family"] == ("linux",)
    assert caps.amounts == {"amount.worker.disk.scratch": 500.0}
