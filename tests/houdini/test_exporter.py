"""The exporter (hpcdock.houdini) against the fake hou: bundles, errors, frame rules, render hook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from openjd.model import (
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)

from tests.houdini.houdini_env import FakeDefer, karma_scene, make_submit_node, set_multiparm, soho_runner


def _scene(hou, rop_range=(1, 10, 1), **submit):
    geo = hou.fake_create(
        "/out/geo1",
        "geometry",
        {"trange": 1, "f": tuple(float(v) for v in rop_range), "sopoutput": "$HIP/geo/$HIPNAME.$F4.bgeo.sc"},
        output_parm="sopoutput",
    )
    mantra = hou.fake_create(
        "/out/mantra1",
        "ifd",
        {"trange": 1, "f": tuple(float(v) for v in rop_range), "vm_picture": "$HIP/render/ball.$F4.exr"},
        inputs=[geo],
        output_parm="vm_picture",
    )
    values = {"image": "hpcdock/houdini:20.5", "frames_per_task": 4, "gpus_per_task": 1}
    values.update(submit)
    node = make_submit_node(rops=[mantra], **values)
    return geo, mantra, node


def _load(bundle: Path):
    def read(name):
        return json.loads((bundle / name).read_text())

    return read("template.json"), read("parameter_values.json"), read("hpcdock.yaml")


def _openjd(bundle: Path):
    """Validate and expand the bundle the way hpcdock-service does."""
    template, values, _ = _load(bundle)
    jt = decode_job_template(template=template, supported_extensions=["TASK_CHUNKING"])
    params = preprocess_job_parameters(
        job_template=jt,
        job_parameter_values={v["name"]: str(v["value"]) for v in values["parameterValues"]},
        job_template_dir=bundle,
        current_working_dir=bundle,
    )
    job = create_job(job_template=jt, job_parameter_values=params)
    tasks = {}
    for step in job.steps:
        tasks[step.name] = [
            {k: v.value for k, v in t.items()} for t in StepParameterSpaceIterator(space=step.parameterSpace)
        ]
    return job, tasks


def _hython_args(step: dict) -> list:
    """What hython runs for a step of the template: the render server its environment starts
    (the command after ``--`` of its onEnter), or its task's command."""
    (environment,) = step.get("stepEnvironments") or [None]
    if environment is None:
        on_run = step["script"]["actions"]["onRun"]
        return [on_run["command"], *on_run["args"]]
    enter = environment["script"]["actions"]["onEnter"]["args"]
    return enter[enter.index("--") + 1 :]


def _frames(expr: str):
    from hpcdock.farm.render import parse_frames

    return parse_frames(expr)


# --------------------------------------------------------------------------- the main case


def test_geometry_into_mantra_exports_a_valid_two_step_bundle(hou, houdini, project, client, tmp_path):
    geo, mantra, node = _scene(hou)
    result = houdini.submit_node(node)

    assert result == {"id": 42, "state": "queued"}
    assert len(client.calls) == 1
    bundle = Path(client.calls[0]["bundle_dir"])
    assert bundle.parent == project / "hpcdock_jobs"

    job, tasks = _openjd(bundle)
    assert [s.name for s in job.steps] == ["geo1", "mantra1"]
    assert job.steps[0].dependencies is None
    assert [d.dependsOn for d in job.steps[1].dependencies] == ["geo1"]
    for step in job.steps:
        assert step.hostRequirements.amounts[0].name == "amount.worker.gpu"
        assert step.hostRequirements.amounts[0].min == 1

    template, _, settings = _load(bundle)
    for step in template["steps"]:
        (param,) = step["parameterSpace"]["taskParameterDefinitions"]
        assert param["type"] == "CHUNK[INT]"
        assert param["chunks"] == {"defaultTaskCount": 4, "rangeConstraint": "CONTIGUOUS"}
        args = _hython_args(step)
        assert args[:4] == ["hython", "hpcdock_farm/render.py", "serve", "--dir"]
        assert "--rop" in args and args[args.index("--rop") + 1] == f"/out/{step['name']}"
        assert step["script"]["actions"]["onRun"]["args"][1:2] == ["request"]

    # Chunks: contiguous, at most 4 frames, together exactly frames 1-10, per step.
    for name in ("geo1", "mantra1"):
        chunks = [_frames(t["Frame"]) for t in tasks[name]]
        assert all(1 <= len(c) <= 4 and c == list(range(c[0], c[-1] + 1)) for c in chunks)
        assert sorted(f for c in chunks for f in c) == list(range(1, 11))

    # Per-frame outputs: the final step's pattern is the default, the cache step overrides.
    assert settings["image"] == "hpcdock/houdini:20.5"
    assert settings["frames"]["parameter"] == "Frame"
    assert settings["frames"]["output"] == f"{project}/render/ball.{{frame:04d}}.exr"
    assert settings["frames"]["steps"] == {"geo1": f"{project}/geo/shot.{{frame:04d}}.bgeo.sc"}
    for f in range(1, 11):
        assert settings["frames"]["output"].format(frame=f) == mantra.parm("vm_picture").evalAsStringAtFrame(
            f
        )
        assert settings["frames"]["steps"]["geo1"].format(frame=f) == geo.parm(
            "sopoutput"
        ).evalAsStringAtFrame(f)

    assert settings["mounts"] == [{"source": str(project), "target": str(project), "readonly": False}]
    assert settings["network"] is False
    assert settings["priority"] == 50 and settings["max_attempts"] == 2
    assert settings["name"] == "shot"

    # The farm script and markers travel with the bundle; the snapshot keeps the scene's name.
    assert (bundle / "hpcdock_farm" / "render.py").is_file()
    assert (bundle / "hpcdock_farm" / "markers.py").is_file() and (
        bundle / "hpcdock_farm" / "protocol.py"
    ).is_file()
    assert (bundle / "hpcdock_farm" / "husk.py").is_file()
    assert (bundle / "hip" / "shot.hip").is_file()
    # The artist's file is untouched, still current, and no backup is left behind.
    assert hou.hipFile.path() == str(project / "shot.hip")
    assert (project / "shot.hip").read_text() == "artist's file\n"
    assert os.listdir(project / "backup") == []

    assert hou.fake_state().messages[-1]["severity"] is hou.severityType.Message
    assert "Submitted job 42" in hou.fake_state().messages[-1]["text"]


def test_save_bundle_writes_without_submitting(hou, houdini, project, client):
    _scene(hou)
    bundle = houdini.save_bundle(hou.node("/out/hpcdock_submit1"))
    assert bundle and os.path.isfile(os.path.join(bundle, "template.json"))
    assert client.calls == []
    _openjd(Path(bundle))


def _job(houdini, node):
    return houdini.build_job(houdini.listed_rops(node), houdini.read_settings(node))


# --------------------------------------------------------------------------- errors


def _assert_refused(hou, client, project, text):
    msg = hou.fake_state().messages[-1]
    assert msg["severity"] is hou.severityType.Error
    assert text in msg["text"], msg["text"]
    assert client.calls == []
    assert not (project / "hpcdock_jobs").exists()


def test_unsaved_scene_is_refused(hou, houdini, project, client):
    *_, node = _scene(hou)
    hou.fake_state().new_file = True
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, "Save the scene first")


def test_missing_image_is_refused(hou, houdini, project, client):
    *_, node = _scene(hou, image="")
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, "No container image is set")


def test_empty_frame_range_is_refused(hou, houdini, project, client):
    *_, node = _scene(hou, rop_range=(10, 1, 1))
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, "Nothing to render")


def test_cycle_in_rop_graph_is_refused(hou, houdini, project, client):
    geo, mantra, node = _scene(hou)
    geo.setInput(0, mantra)
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, "Dependency loop")
    assert "/out/geo1" in hou.fake_state().messages[-1]["text"]


def test_nothing_listed_is_refused(hou, houdini, project, client):
    node = make_submit_node(image="img")
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, "Nothing to render: add ROPs to 'ROPs to Submit'")


@pytest.mark.parametrize(
    "path,text",
    [
        ("../nope", "'../nope', which does not exist"),
        ("/obj/geo1", "/obj/geo1, which is not a ROP"),
        ("../hpcdock_submit2", "another HPC Dock Submit node"),
    ],
)
def test_bad_rop_paths_are_refused(hou, houdini, project, client, path, text):
    hou.fake_create("/obj/geo1", "geo", {}, rop=False, category="Object")
    make_submit_node("/out/hpcdock_submit2", image="img")
    node = make_submit_node(rops=[path], image="img")
    assert houdini.submit_node(node) is None
    _assert_refused(hou, client, project, text)


def test_service_down_keeps_the_bundle_and_says_how_to_submit_later(hou, houdini, project, client):
    *_, node = _scene(hou)
    client.fail = ConnectionError("connection refused")
    assert houdini.submit_node(node) is None
    msg = hou.fake_state().messages[-1]
    assert msg["severity"] is hou.severityType.Error and "hpcdock submit" in msg["text"]
    assert len(os.listdir(project / "hpcdock_jobs")) == 1


def test_without_ui_errors_are_printed(hou, houdini, project, client, capsys):
    *_, node = _scene(hou, image="")
    hou.fake_state().ui = False
    assert houdini.submit_node(node) is None
    assert "No container image is set" in capsys.readouterr().out


# --------------------------------------------------------------------------- frame rules: Houdini's


def test_frames_follow_houdinis_request_rule(hou, houdini, project, client):
    geo, mantra, node = _scene(hou, rop_range=(5, 8, 1))
    geo.parm("trange").set(2)  # strict: only its own 1-6
    geo.fake_set_parm("f", (1.0, 6.0, 1.0))
    job, _ = _job(houdini, node)
    assert {s.name: s.frames for s in job.steps} == {"geo1": [5, 6], "mantra1": [5, 6, 7, 8]}
    geo.fake_set_parm("f", (20.0, 30.0, 1.0))  # strict, nothing asked of it in range: it renders nothing
    job, _ = _job(houdini, node)
    assert {s.name: s.frames for s in job.steps} == {"mantra1": [5, 6, 7, 8]}


def test_render_current_frame(hou, houdini, project, client):
    _, mantra, node = _scene(hou)
    mantra.parm("trange").set(0)
    hou.setFrame(17)
    job, _ = _job(houdini, node)
    assert {s.name: s.frames for s in job.steps} == {"geo1": [17], "mantra1": [17]}


def test_frame_increment_and_fractional_frames(hou, houdini, project, client, tmp_path):
    _, mantra, node = _scene(hou, rop_range=(1, 9, 2))
    bundle, job, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "b")
    )
    assert job.steps[0].frames == [1, 3, 5, 7, 9]
    _, tasks = _openjd(Path(bundle))
    assert sorted(f for t in tasks["mantra1"] for f in _frames(t["Frame"])) == [1, 3, 5, 7, 9]
    mantra.fake_set_parm("f", (1.0, 2.0, 0.5))
    with pytest.raises(houdini.SubmitError, match="fractional"):
        _job(houdini, node)


def test_bypass_merge_and_fetch(hou, houdini, project, client):
    a = hou.fake_create(
        "/out/a", "geometry", {"trange": 1, "f": (1.0, 2.0, 1.0), "sopoutput": "$HIP/a.$F.bgeo"}
    )
    b = hou.fake_create(
        "/out/b", "geometry", {"trange": 1, "f": (1.0, 2.0, 1.0), "sopoutput": "$HIP/b.$F.bgeo"}, inputs=[a]
    )
    b.bypass(True)  # renders nothing, passes on
    merge = hou.fake_create("/out/merge1", "merge", {}, inputs=[b, None])
    hou.fake_create(
        "/obj/geo1/rop_alembic1",
        "rop_alembic",
        {"trange": 1, "f": (1.0, 2.0, 1.0), "filename": "$HIP/cache.abc"},
        category="Sop",
    )
    fetch = hou.fake_create("/out/fetch1", "fetch", {"source": "/obj/geo1/rop_alembic1"})
    final = hou.fake_create(
        "/out/karma1",
        "karma",
        {"trange": 1, "f": (1.0, 2.0, 1.0), "picture": "$HIP/render/k.$F4.exr"},
        inputs=[merge, fetch],
    )
    node = make_submit_node(rops=[final], image="img", husk_step=0)  # the husk split has tests of its own
    job, warnings = _job(houdini, node)
    assert [(s.name, s.rop, s.dependencies) for s in job.steps] == [
        ("a", "/out/a", []),
        ("rop_alembic1", "/obj/geo1/rop_alembic1", []),
        ("karma1", "/out/karma1", ["a", "rop_alembic1"]),
    ]
    # One Alembic file for all frames: no per-frame pattern, and no default that it could inherit.
    assert any("does not change with the frame" in w for w in warnings)
    settings = houdini.B.build_hpcdock(job, "/nonexistent")
    assert "output" not in settings["frames"]
    assert settings["frames"]["steps"] == {
        "a": f"{project}/a.{{frame}}.bgeo",
        "karma1": f"{project}/render/k.{{frame:04d}}.exr",
    }


def test_locked_rops_and_what_is_above_them_are_left_out(hou, houdini, project, client):
    geo, mantra, node = _scene(hou)
    geo.setLocked(True)
    job, warnings = _job(houdini, node)
    assert [s.name for s in job.steps] == ["mantra1"]
    assert warnings == [
        "/out/geo1 is locked: Houdini renders neither it nor the ROPs above it, so neither does "
        "the job (unlock it to include them)"
    ]
    houdini.submit_node(node)
    assert "/out/geo1 is locked" in hou.fake_state().messages[-1]["details"]
    mantra.setLocked(True)
    assert houdini.submit_node(node) is None
    assert "Nothing to render" in hou.fake_state().messages[-1]["text"]


def test_file_cache_writes_its_file_parm(hou, houdini, project, client):
    hou.fake_create(
        "/obj/geo1/filecache1",
        "filecache::2.0",
        {"trange": 1, "f": (1.0, 3.0, 1.0), "file": "$HIP/cache/$OS.$F4.bgeo.sc"},
        category="Sop",
    )
    fetch = hou.fake_create("/out/fetch_cache", "fetch", {"source": "/obj/geo1/filecache1"})
    job, warnings = _job(houdini, make_submit_node(rops=[fetch], image="img"))
    assert warnings == []
    assert [(s.rop, s.output_pattern) for s in job.steps] == [
        ("/obj/geo1/filecache1", f"{project}/cache/filecache1.{{frame:04d}}.bgeo.sc")
    ]


def test_usd_render_from_stage_range_is_refused(hou, houdini, project, client):
    rop = hou.fake_create(
        "/stage/usdrender_rop1",
        "usdrender_rop",
        {"trange": 3, "f": (1.0, 3.0, 1.0), "outputimage": "$HIP/r/u.$F4.exr"},
        category="Lop",
    )
    assert houdini.submit_node(make_submit_node(rops=[rop], image="img")) is None
    _assert_refused(hou, client, project, "'Render Frame Range From Stage'")


def _simulation_bundle(hou, houdini, tmp_path):
    geo, _, node = _scene(hou)
    geo.fake_set_parm("initsim", 1)
    return houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "b")
    )


def test_a_simulation_renders_in_one_task(hou, houdini, project, client, tmp_path):
    bundle, job, _ = _simulation_bundle(hou, houdini, tmp_path)
    assert [(s.name, s.sequential) for s in job.steps] == [("geo1", True), ("mantra1", False)]
    _, tasks = _openjd(Path(bundle))
    assert [_frames(t["Frame"]) for t in tasks["geo1"]] == [list(range(1, 11))]
    assert len(tasks["mantra1"]) == 3


def test_the_service_runs_a_simulation_as_one_task(hou, houdini, project, client, tmp_path):
    # The service's own loader (absent from the Houdini-like PySide2 lane) makes the same single task.
    load_bundle = pytest.importorskip("hpcdock_service.bundle_loader").load_bundle
    policy = pytest.importorskip("hpcdock_service.mounts").MountPolicy.build([str(tmp_path)])
    bundle, _, _ = _simulation_bundle(hou, houdini, tmp_path)
    plan = load_bundle(bundle, mount_policy=policy)
    assert [[t.frames for t in s.tasks] for s in plan.steps][0] == [list(range(1, 11))]
    assert "--sequential" in plan.steps[0].command


# --------------------------------------------------------------------------- export then render with husk


def _steps_by_name(template):
    return {s["name"]: s for s in template["steps"]}


def test_a_karma_rop_exports_with_hython_then_renders_with_husk(hou, houdini, project, client):
    _, karma, node = karma_scene()
    assert houdini.submit_node(node) == {"id": 42, "state": "queued"}
    bundle = Path(client.calls[0]["bundle_dir"])

    job, tasks = _openjd(bundle)  # openjd-model accepts the custom amounts
    assert [(s.name, [d.dependsOn for d in s.dependencies or []]) for s in job.steps] == [
        ("geo1", []),
        ("karma1_usd", ["geo1"]),
        ("karma1", ["karma1_usd"]),
    ]
    # OpenJD dependencies are whole steps; the chunks of both steps are the same frames.
    assert (
        [t["Frame"] for t in tasks["karma1_usd"]] == [t["Frame"] for t in tasks["karma1"]] == ["1-2", "3-4"]
    )

    template, _, settings = _load(bundle)
    steps = _steps_by_name(template)
    usd = "usd/karma1_usd/karma1.{frame:04d}.usd"
    export, render = steps["karma1_usd"], steps["karma1"]
    assert export["hostRequirements"] == {"amounts": [{"name": "amount.houdini_engine", "min": 1}]}
    assert render["hostRequirements"] == {"amounts": [{"name": "amount.karma_render", "min": 1}]}
    assert "hostRequirements" not in steps["geo1"]
    assert _hython_args(export) == [
        "hython",
        "hpcdock_farm/render.py",
        "serve",
        "--dir",
        "{{Session.WorkingDirectory}}/hpcdock_render",
        "--hip",
        "{{Param.HipFile}}",
        "--hip-dir",
        "{{Param.ProjectDir}}",
        "--rop",
        "/out/karma1",
        "--export-usd",
        usd,
    ]
    assert export["script"]["actions"]["onRun"] == {
        "command": "python3",
        "args": [
            "{{Param.BundleDir}}/hpcdock_farm/render.py",
            "request",
            "--dir",
            "{{Session.WorkingDirectory}}/hpcdock_render",
            "--frames",
            "{{Task.Param.Frame}}",
        ],
    }
    assert "stepEnvironments" not in render  # husk starts once per frame: nothing to keep loaded
    image = f"{project}/render/k.{{frame:04d}}.exr"
    assert render["script"]["actions"]["onRun"] == {
        "command": "python3",
        "args": [
            "hpcdock_farm/render.py",
            "--husk",
            usd,
            "--frames",
            "{{Task.Param.Frame}}",
            "--husk-bin",
            "husk",
            "--output",
            image,
        ],
    }
    # Each step's frames: the USD files (inside the bundle, mounted writable) and the images.
    assert settings["frames"]["output"] == image
    assert settings["frames"]["steps"] == {
        "geo1": f"{project}/geo/shot.{{frame:04d}}.bgeo.sc",
        "karma1_usd": usd,
    }


def test_the_toggle_off_renders_a_karma_rop_in_one_hython_step(hou, houdini, project, client):
    _, _, node = karma_scene(husk_step=0, python="/opt/py/bin/python3")
    job, _ = _job(houdini, node)
    assert [(s.name, s.mode, s.amounts) for s in job.steps] == [
        ("geo1", "hython", {}),
        ("karma1", "hython", {}),
    ]


def test_the_python_and_husk_commands_come_from_the_node(hou, houdini, project, client, tmp_path):
    _, _, node = karma_scene(python="/opt/py/bin/python3", husk="/opt/hfs/bin/husk")
    bundle, _, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "b")
    )
    on_run = _steps_by_name(_load(Path(bundle))[0])["karma1"]["script"]["actions"]["onRun"]
    assert on_run["command"] == "/opt/py/bin/python3"
    assert on_run["args"][on_run["args"].index("--husk-bin") + 1] == "/opt/hfs/bin/husk"


def test_a_default_service_loads_the_export_and_render_steps(hou, houdini, project, client, tmp_path):
    service_bundle = pytest.importorskip(
        "hpcdock_service.bundle_loader"
    )  # absent from the Houdini-like PySide2 lane
    from hpcdock_service.config import ServiceConfig
    from hpcdock_service.mounts import MountPolicy
    from hpcdock_service.resources import capacity

    config = ServiceConfig()  # no resources: in service.yaml: the licence kinds the plugin asks for are known
    _, _, node = karma_scene()
    bundle, _, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "b")
    )
    plan = service_bundle.load_bundle(
        bundle,
        mount_policy=MountPolicy.build([str(tmp_path)]),
        capacity=capacity(config.resources, config.packing_machine),
    )
    assert [s.name for s in plan.steps] == ["geo1", "karma1_usd", "karma1"]
    assert [s.amounts for s in plan.steps] == [{}, {"amount.houdini_engine": 1}, {"amount.karma_render": 1}]
    assert "--export-usd" in plan.steps[1].environments[0].enter and "--husk" in plan.steps[2].command
    # The export step writes into the bundle's usd/ directory, which the service mounts writable.
    usd_dir = os.path.join(os.path.realpath(bundle), "usd", "karma1_usd")
    assert any(m.source == usd_dir and not m.readonly for m in plan.container.mounts)


def test_unknown_rop_type_is_submitted_with_a_warning(hou, houdini, project, client):
    shell = hou.fake_create("/out/shell1", "shell", {"trange": 1, "f": (1.0, 3.0, 1.0)})
    job, warnings = _job(houdini, make_submit_node(rops=[shell], image="img"))
    assert [s.name for s in job.steps] == ["shell1"] and job.steps[0].output_pattern is None
    assert warnings == ["/out/shell1: ROP type 'Driver/shell' is submitted without per-frame output paths"]


def test_single_step_mode_renders_inputs_in_the_task(hou, houdini, project, client, tmp_path):
    *_, node = _scene(hou, separate_steps=0)
    bundle, job, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "b")
    )
    assert [s.name for s in job.steps] == ["mantra1"]
    template, _, _ = _load(Path(bundle))
    assert _hython_args(template["steps"][0])[-1] == "--with-inputs"
    _openjd(Path(bundle))


def test_settings_env_mounts_network_priority(hou, houdini, project, client, tmp_path):
    *_, node = _scene(
        hou,
        network=1,
        priority=80,
        max_retries=3,
        task_timeout=600,
        gpus_per_task=0,
        service_url="http://127.0.0.1:9999",
        job_name="ballshot",
    )
    set_multiparm(
        node,
        "envvars",
        [{"envname#": "HOUDINI_LMINFO_VERBOSE", "envvalue#": "1"}, {"envname#": "", "envvalue#": "ignored"}],
    )
    set_multiparm(
        node, "mounts", [{"mountpath#": "/srv/textures"}, {"mountpath#": "/srv/cache", "mountro#": 0}]
    )
    houdini.submit_node(node)
    assert client.calls[0]["url"] == "http://127.0.0.1:9999"
    bundle = Path(client.calls[0]["bundle_dir"])
    assert bundle.name.startswith("ballshot-")
    template, _, settings = _load(bundle)
    assert settings["env"] == {"HOUDINI_LMINFO_VERBOSE": "1"}
    assert settings["mounts"][1:] == [
        {"source": "/srv/textures", "target": "/srv/textures", "readonly": True},
        {"source": "/srv/cache", "target": "/srv/cache", "readonly": False},
    ]
    assert settings["network"] is True and settings["priority"] == 80 and settings["max_attempts"] == 4
    assert all("hostRequirements" not in s for s in template["steps"])
    assert all(s["script"]["actions"]["onRun"]["timeout"] == 600 for s in template["steps"])
    _openjd(bundle)


# --------------------------------------------------------------------------- shelf and render hook


def test_shelf_submits_selected_rops_with_environment_defaults(hou, houdini, project, client, monkeypatch):
    geo, mantra, _ = _scene(hou)
    hou.fake_state().selected = [mantra]
    monkeypatch.delenv("HPCDOCK_IMAGE", raising=False)
    assert houdini.submit_selected() is None
    assert "HPCDOCK_IMAGE" in hou.fake_state().messages[-1]["text"] and client.calls == []
    monkeypatch.setenv("HPCDOCK_IMAGE", "img:1")
    assert houdini.submit_selected()["id"] == 42
    _, _, settings = _load(Path(client.calls[0]["bundle_dir"]))
    assert settings["image"] == "img:1"


def test_shelf_with_nothing_selected_warns(hou, houdini, project, client):
    hou.fake_state().selected = []
    assert houdini.submit_selected() is None
    assert hou.fake_state().messages[-1]["severity"] is hou.severityType.Warning


@pytest.fixture
def defer(monkeypatch):
    module = FakeDefer()
    monkeypatch.setitem(__import__("sys").modules, "hdefereval", module)
    return module


@pytest.mark.parametrize("multiframe,runs", [(0, 4), (1, 1)])
def test_rendering_the_node_submits_once_and_renders_nothing_locally(
    hou, project, client, monkeypatch, defer, multiframe, runs
):
    *_, node = _scene(hou, soho_multiframe=multiframe)
    node.parm("trange").set(1)
    node.fake_set_parm("f", (3.0, 6.0, 1.0))
    hou.fake_state().soho_runner = soho_runner(monkeypatch)
    hou.setFrame(1)  # the playbar is elsewhere; SOHO says which frame renders

    node.render()

    state = hou.fake_state()
    # Nothing but the submit node rendered on the workstation: the ROPs it lists did not.
    assert {path for path, _ in state.rendered} == {node.path()}
    assert len(state.rendered) == runs
    # Inside the render nothing was saved, shown or submitted; one submit waits for the event loop.
    assert (state.backup_count, state.messages, client.calls, len(defer.pending)) == (0, [], [], 1)
    assert defer.fake_run_pending()[0]["id"] == 42
    assert len(client.calls) == 1
    assert "Submitted job 42" in state.messages[-1]["text"]


def test_rendering_the_node_without_a_ui_submits_nothing_and_says_how(
    hou, project, client, monkeypatch, defer, capsys
):
    *_, node = _scene(hou)
    hou.fake_state().ui = False
    hou.fake_state().soho_runner = soho_runner(monkeypatch)
    node.render()
    assert defer.pending == [] and client.calls == []
    assert "hpcdock.rop.on_submit" in capsys.readouterr().out


def test_hda_callbacks_reach_the_exporter(hou, project, client):
    *_, node = _scene(hou)
    from hpcdock import rop

    assert rop.on_submit({"node": node})["id"] == 42
    assert rop.on_save_bundle({"node": node})
    assert len(client.calls) == 1
