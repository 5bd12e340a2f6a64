"""Hostile bundles: size and count limits, non-regular files, JSON bundles, and the inputs that
used to escape as a 500 or fail only at run time. Each is refused by name before anything is
expanded or created."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service.config import SubmitLimits, load_config
from hpcdock_service.errors import BadInput
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_bundle_loader import bundle, load

# 516 bytes: nine levels of nine aliases each, 9**9 strings once expanded.
BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    + "parameterValues: [{name: Frames, value: *i}]\n"
)


def refused(path: str, field: str, reason: str, **kw: Any) -> BadInput:
    with pytest.raises(BadInput) as err:
        load(path, **kw)
    assert field in err.value.field, err.value
    assert reason in err.value.message, err.value
    assert 400 <= err.value.status < 500
    return err.value


def test_billion_laughs_parameter_values_are_refused(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b")
    (tmp_path / "b" / "parameter_values.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    refused(path, "parameter_values.yaml", "limits.max_yaml_nodes")


def test_yaml_alias_count_is_limited(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b")
    aliases = "x: &x 1\nmore: [" + ", ".join(["*x"] * 50) + "]\nparameterValues: []\n"
    (tmp_path / "b" / "parameter_values.yaml").write_text(aliases)
    refused(
        path, "parameter_values.yaml", "limits.max_yaml_aliases", limits=SubmitLimits(max_yaml_aliases=20)
    )
    assert load(path).frames_total == 12  # within the default limits, aliases are fine


@pytest.mark.parametrize(
    "name,text",
    [
        ("hpcdock.yaml", "image: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("template.json", '{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("parameter_values.json", '{"parameterValues": ' + "[" * 100 + "]" * 100 + "}"),
    ],
)
def test_deep_nesting_is_refused(tmp_path: Path, name: str, text: str) -> None:
    path = bundle(tmp_path / "b")
    if name == "template.json":
        (tmp_path / "b" / "template.yaml").unlink()
    (tmp_path / "b" / name).write_text(text)
    refused(path, name, "nested")


def test_frame_and_task_counts_are_checked_before_anything_is_expanded(tmp_path: Path) -> None:
    # 100 million frames in 20 million chunks: openjd-model would list them all (gigabytes)
    path = bundle(tmp_path / "b", values={"parameterValues": [{"name": "Frames", "value": "1-100000000"}]})
    refused(path, "parameter_values", "limits.max_tasks_per_job")
    big_chunks = bundle(
        tmp_path / "c",
        template={
            "steps": [
                {
                    "name": "render",
                    "parameterSpace": {
                        "taskParameterDefinitions": [
                            {
                                "name": "Frame",
                                "type": "CHUNK[INT]",
                                "range": "{{Param.Frames}}",
                                "chunks": {"defaultTaskCount": 1000, "rangeConstraint": "CONTIGUOUS"},
                            }
                        ]
                    },
                    "script": {"actions": {"onRun": {"command": "render", "args": ["{{Task.Param.Frame}}"]}}},
                }
            ]
        },
        values={"parameterValues": [{"name": "Frames", "value": "1-10000000"}]},
    )
    refused(big_chunks, "parameter_values", "limits.max_frames_per_job")
    # exactly at the limit is accepted; the counts are exact for contiguous chunks with gaps
    ok = bundle(
        tmp_path / "d", values={"parameterValues": [{"name": "Frames", "value": "1-7,10-12,20-30:5"}]}
    )
    plan = load(ok, limits=SubmitLimits(max_tasks_per_job=6, max_frames_per_job=13))
    assert len(plan.steps[0].tasks) == 6 and plan.frames_total == 13
    refused(ok, "parameter_values", "6 tasks", limits=SubmitLimits(max_tasks_per_job=5))
    refused(ok, "parameter_values", "13 frames", limits=SubmitLimits(max_frames_per_job=12))


def test_task_count_multiplies_over_a_product_of_parameters(tmp_path: Path) -> None:
    path = bundle(
        tmp_path / "b",
        template={
            "steps": [
                {
                    "name": "render",
                    "parameterSpace": {
                        "taskParameterDefinitions": [
                            {"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"},
                            {"name": "Layer", "type": "STRING", "range": ["a", "b", "c"]},
                        ]
                    },
                    "script": {"actions": {"onRun": {"command": "render", "args": ["{{Task.Param.Frame}}"]}}},
                }
            ]
        },
    )
    plan = load(path, limits=SubmitLimits(max_tasks_per_job=36, max_frames_per_job=36))
    assert len(plan.steps[0].tasks) == 36 and plan.frames_total == 36
    refused(path, "parameter_values", "36 tasks", limits=SubmitLimits(max_tasks_per_job=35))


def test_step_count_and_file_sizes_are_limited(tmp_path: Path) -> None:
    step = {"name": "s0", "script": {"actions": {"onRun": {"command": "true"}}}}
    many = bundle(
        tmp_path / "b",
        template={"steps": [{**step, "name": f"s{i}"} for i in range(30)]},
        settings={"frames": None},
    )
    refused(many, "template.yaml: steps", "limits.max_steps", limits=SubmitLimits(max_steps=29))
    assert len(load(many, limits=SubmitLimits(max_steps=30)).steps) == 30
    size = (tmp_path / "b" / "template.yaml").stat().st_size
    refused(
        many, "template.yaml", "limits.max_template_bytes", limits=SubmitLimits(max_template_bytes=size - 1)
    )
    refused(
        many,
        "hpcdock.yaml",
        "limits.max_parameter_file_bytes",
        limits=SubmitLimits(max_parameter_file_bytes=10),
    )


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b")
    template = tmp_path / "b" / "template.yaml"
    template.unlink()
    template.symlink_to("/dev/zero")
    refused(path, "template.yaml", "symbolic link")
    template.unlink()
    template.symlink_to(tmp_path / "elsewhere.yaml")  # even a symlink to a real file: it could be swapped
    refused(path, "template.yaml", "symbolic link")
    template.unlink()
    os.mkfifo(template)
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(BadInput, load, path).value))
    reader.daemon = True  # old code blocked here for good, waiting for a writer
    reader.start()
    reader.join(10)
    assert result, "reading a FIFO template blocked"
    assert result[0].field == "template.yaml" and "not a regular file" in result[0].message


def test_json_bundles_are_read_like_yaml(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b", values={"parameterValues": [{"name": "Frames", "value": "1-3"}]})
    expected = load(path)
    b = tmp_path / "b"
    for stem in ("template", "parameter_values", "hpcdock"):
        (b / f"{stem}.json").write_text(json.dumps(yaml.safe_load((b / f"{stem}.yaml").read_text())))
        (b / f"{stem}.yaml").unlink()
    plan = load(path)
    assert plan.frames_total == 3 and plan.steps == expected.steps and plan.container == expected.container
    (b / "template.json").write_text(json.dumps({"specificationVersion": "jobtemplate-2023-09", "steps": []}))
    refused(path, "template.json", "steps")  # errors name the file the bundle really has


@pytest.mark.parametrize("stem", ["template", "parameter_values", "hpcdock"])
def test_yaml_and_json_of_one_file_are_refused(tmp_path: Path, stem: str) -> None:
    path = bundle(tmp_path / "b", values={"parameterValues": []})
    (tmp_path / "b" / f"{stem}.json").write_text("{}")
    err = refused(path, f"{stem}.yaml and {stem}.json", "both present")
    assert err.field == f"{stem}.yaml and {stem}.json"


@pytest.mark.parametrize(
    "hpc,field,reason",
    [
        (
            {"frames": {"parameter": "Frame", "output": "out/{frame.real.bogus}.png"}},
            "frames.output",
            "only {frame}",
        ),
        ({"frames": {"parameter": "Frame", "output": "out/{frame[0]}.png"}}, "frames.output", "only {frame}"),
        ({"frames": {"parameter": "Frame", "output": "out/{frame!r}.png"}}, "frames.output", "only {frame}"),
        (
            {"frames": {"parameter": "Frame", "output": "out/{frame:>999999999}.png"}},
            "frames.output",
            "width",
        ),
        (
            {"frames": {"parameter": "Frame", "output": "out/{frame:{frame}}.png"}},
            "frames.output",
            "only {frame}",
        ),
        ({"frames": {"parameter": "Frame", "output": "out/{frame:s}.png"}}, "frames.output", "only {frame}"),
        ({"image": "img:1; rm -rf /"}, "hpcdock.yaml: image", "not an image reference"),
        ({"image": "Img:1"}, "hpcdock.yaml: image", "not an image reference"),
        ({"image": "img:1\n--privileged"}, "hpcdock.yaml: image", "not an image reference"),
        ({"image": "../img"}, "hpcdock.yaml: image", "not an image reference"),
        ({"env": {"A\0B": "1"}}, "hpcdock.yaml: env", "NUL"),
        ({"env": {"A": "x\0y"}}, "hpcdock.yaml: env.A", "NUL"),
        ({"env": {"1A": "x"}}, "hpcdock.yaml: env", "not a variable name"),
        ({"env": {"A-B": "x"}}, "hpcdock.yaml: env", "not a variable name"),
        ({"env": {"A=B": "x"}}, "hpcdock.yaml: env", "not a variable name"),
        ({"env": {"": "x"}}, "hpcdock.yaml: env", "not a variable name"),
        ({"mounts": [{"source": "ASSETS", "target": "/proc"}]}, "mounts[0].target", "/proc"),
        ({"mounts": [{"source": "ASSETS", "target": "/sys/fs/cgroup"}]}, "mounts[0].target", "/sys"),
        ({"mounts": [{"source": "ASSETS", "target": "/dev/./shm"}]}, "mounts[0].target", "/dev"),
        ({"mounts": [{"source": "ASSETS", "target": "/etc"}]}, "mounts[0].target", "/etc"),
        ({"mounts": [{"source": "ASSETS", "target": "/usr/lib/"}]}, "mounts[0].target", "/usr/lib"),
        ({"mounts": [{"source": "ASSETS", "target": "/"}]}, "mounts[0].target", "hide"),
        ({"name": "shot\udc80"}, "hpcdock.yaml: name", "surrogate"),
        ({"mounts": 1}, "hpcdock.yaml: mounts", "must be a list"),
        ({"mounts": "/data"}, "hpcdock.yaml: mounts", "must be a list"),
        ({"outputs": 1.5}, "hpcdock.yaml: outputs", "must be a list"),
    ],
)
def test_inputs_that_used_to_fail_late_are_refused_by_name(tmp_path: Path, hpc, field, reason) -> None:
    for mount in hpc["mounts"] if isinstance(hpc.get("mounts"), list) else []:
        mount["source"] = str(tmp_path)  # inside the allowed roots: only the target is wrong
    path = bundle(tmp_path / "b", settings=hpc)
    refused(path, field, reason)


def test_mounts_at_ordinary_targets_are_still_accepted(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    path = bundle(
        tmp_path / "b",
        settings={
            "mounts": [
                {"source": str(tmp_path / "assets"), "target": "/mnt/a"},
                {"source": str(tmp_path / "assets"), "target": "/usr/local/x"},
            ]
        },
    )
    targets = [m.target for m in load(path).container.mounts]
    assert "/mnt/a" in targets and "/usr/local/x" in targets


@pytest.mark.parametrize(
    "image",
    [
        "img:1",
        "localhost/hpcdock-test:latest",
        "registry.example:5000/a/b_c.d-e:1.0",
        "img@sha256:" + "a" * 64,
        "0123456789ab",
    ],
)
def test_valid_image_references_pass(tmp_path: Path, image: str) -> None:
    assert load(bundle(tmp_path / "b", settings={"image": image})).container.image == image


@pytest.mark.parametrize(
    "frames,field",
    [
        ("9223372036854775808", "parameterSpace.Frame"),
        ("-2147483648-1", "parameterSpace.Frame"),
        ("1-9223372036854775808", "parameter_values"),
    ],
)
def test_frame_numbers_out_of_range_are_refused(tmp_path: Path, frames: str, field: str) -> None:
    path = bundle(tmp_path / "b", values={"parameterValues": [{"name": "Frames", "value": frames}]})
    refused(path, field, "out of range")


def test_nul_and_surrogates_in_template_strings_and_bundle_dir(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b", template={"name": "shot\0"})
    refused(path, "template.yaml: name", "NUL")
    (tmp_path / "b" / "template.yaml").unlink()
    (tmp_path / "b" / "template.json").write_text('{"name": "\\ud800"}')
    refused(path, "template.json: name", "surrogate")
    for bad in (str(tmp_path / "b") + "\0", str(tmp_path) + "/\udc80"):
        with pytest.raises(BadInput) as err:
            load(bad)
        assert err.value.field == "bundle_dir"


@pytest.mark.parametrize("line", ["name: " + "9" * 5000, "name: 2001-13-45", "name: !!float xyz"])
def test_scalars_yaml_cannot_build_are_refused(tmp_path: Path, line: str) -> None:
    path = bundle(tmp_path / "b")
    with open(tmp_path / "b" / "hpcdock.yaml", "a") as fh:
        fh.write(line + "\n")
    refused(path, "hpcdock.yaml", "cannot be read")


@pytest.mark.parametrize("kind,values", [("FLOAT", ["1.5", "2"]), ("STRING", ["a", "b"])])
def test_frame_parameter_must_hold_whole_numbers(tmp_path: Path, kind: str, values: list[str]) -> None:
    path = bundle(
        tmp_path / "b",
        template={
            "steps": [
                {
                    "name": "render",
                    "parameterSpace": {
                        "taskParameterDefinitions": [{"name": "Frame", "type": kind, "range": values}]
                    },
                    "script": {"actions": {"onRun": {"command": "render", "args": ["{{Task.Param.Frame}}"]}}},
                }
            ]
        },
    )
    refused(path, "parameterSpace.Frame", "whole numbers")


def test_parameter_value_must_be_a_scalar(tmp_path: Path) -> None:
    path = bundle(tmp_path / "b", values={"parameterValues": [{"name": "Frames", "value": [1, 2]}]})
    refused(path, "parameterValues[0].value", "string or a number")


def test_limits_are_read_from_service_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "service.yaml"
    cfg.write_text("limits: {max_frames_per_job: 10, max_steps: 3}\n")
    limits = load_config(cfg).limits
    assert (limits.max_frames_per_job, limits.max_steps) == (10, 3)
    assert limits.max_tasks_per_job == SubmitLimits().max_tasks_per_job
    for text, field in (
        ("limits: {max_frame: 1}\n", "limits.max_frame"),
        ("limits: {max_steps: 0}\n", "max_steps"),
        ("limits: {max_steps: true}\n", "max_steps"),
        ("limits: 3\n", "limits"),
    ):
        cfg.write_text(text)
        with pytest.raises(BadInput) as err:
            load_config(cfg)
        assert field in err.value.field


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["/", "/tmp", "out/{frame}.png", "Frame", "{frame:04d}", "img:1", "render"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                ["source", "target", "readonly", "parameter", "output", "steps", "render", "A", "x"]
            ),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=8,
)
_settings = st.dictionaries(
    st.sampled_from(
        ["image", "env", "network", "mounts", "frames", "priority", "max_attempts", "name", "outputs"]
    ),
    _values,
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=_settings)
def test_any_hpcdock_yaml_is_accepted_or_refused_by_name(tmp_path: Path, extra: dict[str, Any]) -> None:
    """Whatever hpcdock.yaml holds, the loader answers with a plan or a BadInput, never another error."""
    root = tmp_path / "fuzz"
    if root.exists():
        shutil.rmtree(root)
    path = bundle(root, settings=extra)
    try:
        load(path)
    except BadInput as exc:
        assert exc.field and exc.message
