"""The farm-side render script with the fake hou: markers, $HIP, failures, husk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hpcdock.farm import render
from hpcdock.farm.husk import husk_argv
from hpcdock.markers import parse_marker

from tests.houdini.houdini_env import HERE, adapter, karma_scene, make_submit_node, mantra_scene


def _export(hou, project, tmp_path, fail=None, error=None, initsim=0):
    mantra = mantra_scene(hou, initsim)
    if fail:
        mantra.fake_fail_frames[fail[0]] = fail[1]
    if error:
        mantra.fake_error_frames[error[0]] = error[1]
    node = make_submit_node(rops=[mantra], image="img")
    houdini = adapter()
    bundle, job, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "bundle")
    )
    return Path(bundle), job


def _markers(out: str):
    return [(m.kind, m.frame, m.detail) for m in map(parse_marker, out.splitlines()) if m]


def _run_in_container(hou, bundle: Path, args):
    """Like the container: a fresh session, the bundle as working directory."""
    hou.fake_reset()
    cwd = os.getcwd()
    os.chdir(bundle)
    try:
        return render.main(args, hou_module=hou)
    finally:
        os.chdir(cwd)


def test_renders_chunk_with_markers_and_outputs_under_the_project(hou, project, tmp_path, capsys):
    bundle, job = _export(hou, project, tmp_path)
    step = job.steps[1]
    rc = _run_in_container(
        hou,
        bundle,
        ["--hip", "hip/shot.hip", "--hip-dir", str(project), "--rop", step.rop, "--frames", "2-4"],
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert _markers(out) == [
        ("frame-start", 2, ""),
        ("frame-done", 2, f"{project}/render/ball.0002.exr"),
        ("frame-start", 3, ""),
        ("frame-done", 3, f"{project}/render/ball.0003.exr"),
        ("frame-start", 4, ""),
        ("frame-done", 4, f"{project}/render/ball.0004.exr"),
    ]
    assert [ln for ln in out.splitlines() if ln.startswith("ALF_PROGRESS")] == [
        "ALF_PROGRESS 33%",
        "ALF_PROGRESS 67%",
        "ALF_PROGRESS 100%",
    ]
    for f in (2, 3, 4):
        assert (project / "render" / f"ball.{f:04d}.exr").is_file()
        assert step.output_pattern.format(frame=f) == f"{project}/render/ball.{f:04d}.exr"
    # $HIP was pointed back at the project, not left at the snapshot's directory.
    assert not (bundle / "hip" / "render").exists()
    assert hou.fake_state().vars["HIP"] == str(project)
    assert hou.fake_state().vars["HIPNAME"] == "shot"
    assert [r["ignore_inputs"] for r in hou.fake_state().renders] == [True, True, True]
    assert [r["frame_range"] for r in hou.fake_state().renders] == [(2, 2), (3, 3), (4, 4)]


def test_a_rop_set_to_render_the_current_frame_renders_the_chunk(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path)
    hou.fake_reset()
    hou.hipFile.load(str(bundle / "hip" / "shot.hip"))
    hou.node("/out/mantra1").parm("trange").set(0)  # "Render Current Frame" in the saved scene
    snapshot = hou.hipFile.saveAsBackup()
    rc = _run_in_container(
        hou,
        bundle,
        ["--hip", snapshot, "--hip-dir", str(project), "--rop", "/out/mantra1", "--frames", "2-3"],
    )
    assert rc == 0, capsys.readouterr().out
    assert [r for r in hou.fake_state().rendered] == [("/out/mantra1", 2), ("/out/mantra1", 3)]
    assert hou.node("/out/mantra1").parm("trange").eval() == 1


def test_a_simulation_chunk_renders_in_one_go_in_order(hou, project, tmp_path, capsys):
    bundle, job = _export(hou, project, tmp_path, initsim=1)
    step = job.steps[0]
    assert step.sequential
    rc = _run_in_container(
        hou,
        bundle,
        [
            "--hip",
            "hip/shot.hip",
            "--hip-dir",
            str(project),
            "--rop",
            step.rop,
            "--frames",
            "1-4",
            "--sequential",
        ],
    )
    assert rc == 0
    assert [r["frame_range"] for r in hou.fake_state().renders] == [(1, 4, 1)]
    assert hou.fake_state().rendered == [("/out/geo1", f) for f in (1, 2, 3, 4)]
    assert _markers(capsys.readouterr().out) == [
        m
        for f in (1, 2, 3, 4)
        for m in (("frame-start", f, ""), ("frame-done", f, f"{project}/geo/shot.{f:04d}.bgeo.sc"))
    ]
    assert (
        _run_in_container(
            hou, bundle, ["--hip", "hip/shot.hip", "--rop", step.rop, "--frames", "1,2,4", "--sequential"]
        )
        == 2
    )
    assert "evenly spaced" in capsys.readouterr().out


def test_hip_dir_is_passed_to_hscript_literally(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path)
    odd = tmp_path / "$JOB dir"
    odd.mkdir()
    assert (
        _run_in_container(
            hou,
            bundle,
            ["--hip", "hip/shot.hip", "--hip-dir", str(odd), "--rop", "/out/geo1", "--frames", "1"],
        )
        == 0
    )
    assert hou.fake_state().vars["HIP"] == str(odd)
    assert (odd / "geo" / "shot.0001.bgeo.sc").is_file()
    quote = tmp_path / "o'brien"
    assert (
        _run_in_container(
            hou,
            bundle,
            ["--hip", "hip/shot.hip", "--hip-dir", str(quote), "--rop", "/out/geo1", "--frames", "1"],
        )
        == 2
    )
    assert "single quote" in capsys.readouterr().out


def test_a_failed_frame_stops_the_chunk_and_exits_non_zero(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path, fail=(3, "mantra: license\nnot found"))
    rc = _run_in_container(
        hou,
        bundle,
        ["--hip", "hip/shot.hip", "--hip-dir", str(project), "--rop", "/out/mantra1", "--frames", "1-4"],
    )
    assert rc == 1
    markers = _markers(capsys.readouterr().out)
    assert markers[-1] == ("frame-failed", 3, "mantra: license not found")
    assert ("frame-start", 4, "") not in markers
    assert [m[1] for m in markers if m[0] == "frame-done"] == [1, 2]


def test_node_errors_after_render_fail_the_frame(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path, error=(2, "cannot open camera"))
    rc = _run_in_container(
        hou,
        bundle,
        ["--hip", "hip/shot.hip", "--hip-dir", str(project), "--rop", "/out/mantra1", "--frames", "2"],
    )
    assert rc == 1
    assert _markers(capsys.readouterr().out)[-1] == ("frame-failed", 2, "cannot open camera")


def test_missing_output_fails_the_frame(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path)
    hou.fake_reset()
    rc = render.main(
        [
            "--hip",
            str(bundle / "hip" / "shot.hip"),
            "--hip-dir",
            str(project),
            "--rop",
            "/out/mantra1",
            "--frames",
            "1",
        ],
        hou_module=_NoWriteHou(hou),
    )
    assert rc == 1
    assert _markers(capsys.readouterr().out)[-1] == (
        "frame-failed",
        1,
        f"output not written: {project}/render/ball.0001.exr",
    )


class _NoWriteHou:
    """The fake hou, but the loaded ROP writes no file."""

    def __init__(self, hou):
        self._hou = hou

    def __getattr__(self, name):
        return getattr(self._hou, name)

    def node(self, path):
        n = self._hou.node(path)
        n._output_parm = None
        return n


def test_scene_that_will_not_load_fails_every_frame(hou, tmp_path, capsys):
    rc = render.main(
        ["--hip", str(tmp_path / "missing.hip"), "--rop", "/out/x", "--frames", "1-2"], hou_module=hou
    )
    assert rc == 2
    assert [m[:2] for m in _markers(capsys.readouterr().out)] == [("frame-failed", 1), ("frame-failed", 2)]


def test_missing_rop_and_bad_arguments(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path)
    assert (
        _run_in_container(hou, bundle, ["--hip", "hip/shot.hip", "--rop", "/out/nope", "--frames", "1"]) == 2
    )
    assert render.main(["--frames", "1"], hou_module=hou) == 2
    assert render.main(["--hip", "x", "--rop", "/out/x", "--frames", "3-1"], hou_module=hou) == 2


@pytest.mark.parametrize(
    "expr,frames",
    [
        ("7", [7]),
        ("1-4", [1, 2, 3, 4]),
        ("1-9:4", [1, 5, 9]),
        ("1-2,5,8-9", [1, 2, 5, 8, 9]),
        ("-2--1", [-2, -1]),
    ],
)
def test_parse_frames(expr, frames):
    assert render.parse_frames(expr) == frames


@pytest.mark.parametrize("bad", ["", "a", "1-", "5-1", "1-9:0"])
def test_parse_frames_rejects(bad):
    with pytest.raises(ValueError):
        render.parse_frames(bad)


def test_bundle_copy_runs_standalone_without_the_plugin(hou, project, tmp_path):
    """``hython hpcdock_farm/render.py`` in the container: no hpcdock package, a hou module."""
    bundle, _ = _export(hou, project, tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "hou.py").write_text(f"import sys\nsys.path.insert(0, {HERE!r})\nfrom fake_hou import *\n")
    env = dict(os.environ, PYTHONPATH=str(shim))
    # -S: no site-packages, so the installed hpcdock package cannot be imported.
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "hpcdock_farm/render.py",
            "--hip",
            "hip/shot.hip",
            "--hip-dir",
            str(project),
            "--rop",
            "/out/geo1",
            "--frames",
            "1-2",
        ],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert _markers(proc.stdout)[-1] == ("frame-done", 2, f"{project}/geo/shot.0002.bgeo.sc")
    assert (project / "geo" / "shot.0002.bgeo.sc").is_file()


def test_husk_argv():
    assert husk_argv(
        "scene.usd", 12, output="/r/b.0012.exr", renderer="BRAY_HdKarma", settings="/Render/rs"
    ) == [
        "husk",
        "--frame",
        "12",
        "--frame-count",
        "1",
        "--frame-inc",
        "1",
        "--renderer",
        "BRAY_HdKarma",
        "--settings",
        "/Render/rs",
        "--output",
        "/r/b.0012.exr",
        "scene.usd",
    ]
    with pytest.raises(ValueError):
        husk_argv("", 1)


# A stand-in husk: records its arguments (one JSON line per call) and writes the --output file.
STAND_IN_HUSK = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["HUSK_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if "--output" in args:
    with open(args[args.index("--output") + 1], "w") as out:
        out.write("image rendered from " + args[-1] + "\\n")
sys.exit(int(os.environ.get("HUSK_EXIT", "0")))
"""


@pytest.fixture
def stand_in_husk(tmp_path, monkeypatch):
    """``husk`` on PATH; returns a function reading the argv of each call so far."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "husk").write_text(STAND_IN_HUSK)
    (bin_dir / "husk").chmod(0o755)
    log = tmp_path / "husk.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HUSK_LOG", str(log))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_husk_mode_runs_husk_per_frame_on_that_frames_usd(tmp_path, capsys, stand_in_husk, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for f in (1, 2):
        (tmp_path / f"k.{f:04d}.usd").write_text("#usda 1.0\n")
    out = tmp_path / "out" / "b.{frame:04d}.exr"
    rc = render.main(
        [
            "--husk",
            "k.{frame:04d}.usd",
            "--output",
            str(out),
            "--renderer",
            "BRAY_HdKarmaXPU",
            "--frames",
            "1-2",
        ]
    )
    assert rc == 0
    assert _markers(capsys.readouterr().out) == [
        ("frame-start", 1, ""),
        ("frame-done", 1, str(out).format(frame=1)),
        ("frame-start", 2, ""),
        ("frame-done", 2, str(out).format(frame=2)),
    ]
    assert stand_in_husk() == [
        [
            "--frame",
            str(f),
            "--frame-count",
            "1",
            "--frame-inc",
            "1",
            "--renderer",
            "BRAY_HdKarmaXPU",
            "--output",
            str(out).format(frame=f),
            f"k.{f:04d}.usd",
        ]
        for f in (1, 2)
    ]


def test_husk_mode_fails_the_frame_without_its_usd_or_when_husk_fails(
    tmp_path, capsys, stand_in_husk, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert render.main(["--husk", "k.{frame:04d}.usd", "--frames", "1-2"]) == 1
    assert _markers(capsys.readouterr().out) == [
        ("frame-start", 1, ""),
        ("frame-failed", 1, "no USD file to render: k.0001.usd"),
    ]
    assert stand_in_husk() == []
    (tmp_path / "k.0001.usd").write_text("#usda 1.0\n")
    monkeypatch.setenv("HUSK_EXIT", "3")
    assert render.main(["--husk", "k.{frame:04d}.usd", "--frames", "1"]) == 1
    assert "husk exited with status 3" in capsys.readouterr().out
    assert render.main(["--husk", "k.usd", "--export-usd", "k.{frame:04d}.usd", "--frames", "1"]) == 2


def _step_argv(bundle: Path, step: str, frames: str, project: Path):
    """The step's command line as the service runs it for the chunk ``frames``."""
    template = json.loads((bundle / "template.json").read_text())
    on_run = next(s for s in template["steps"] if s["name"] == step)["script"]["actions"]["onRun"]
    values = {
        "{{Param.HipFile}}": str(bundle / "hip" / "shot.hip"),  # a PATH parameter: absolute
        "{{Param.ProjectDir}}": str(project),
        "{{Task.Param.Frame}}": frames,
    }
    return on_run["command"], [values.get(a, a) for a in on_run["args"]]


def test_a_karma_chunk_exports_usd_with_hython_then_renders_it_with_husk(
    hou, project, tmp_path, capsys, stand_in_husk
):
    _, karma, node = karma_scene(render_server=0)  # each task its own hython: test_serve_mode.py serves
    houdini = adapter()
    bundle, _, _ = houdini.export(
        houdini.listed_rops(node), houdini.read_settings(node), bundle_dir=str(tmp_path / "bundle")
    )
    bundle = Path(bundle)

    # Export step, chunk 3-4: hython writes one USD file per frame and runs no husk.
    command, argv = _step_argv(bundle, "karma1_usd", "3-4", project)
    assert command == "hython"
    assert _run_in_container(hou, bundle, argv[1:]) == 0
    usd = [bundle / "usd" / "karma1_usd" / f"karma1.{f:04d}.usd" for f in (3, 4)]
    assert _markers(capsys.readouterr().out) == [
        ("frame-start", 3, ""),
        ("frame-done", 3, str(usd[0])),
        ("frame-start", 4, ""),
        ("frame-done", 4, str(usd[1])),
    ]
    assert all(p.is_file() for p in usd)
    inner = hou.node("/out/karma1/lopnet/karma/rop_usdrender")
    assert inner.parm("runcommand").eval() == 0
    assert inner.parm("savetodirectory_directory").eval() == str(bundle / "usd" / "karma1_usd")
    assert [r["node"] for r in hou.fake_state().renders] == ["/out/karma1", "/out/karma1"]  # not its inputs
    assert not (project / "render").exists()  # no image: that is the husk step's work

    # Render step, same chunk: a plain Python (-S: no site-packages, no hpcdock, no hou) runs husk per frame.
    command, argv = _step_argv(bundle, "karma1", "3-4", project)
    assert command == "python3"
    proc = subprocess.run(
        [sys.executable, "-S", *argv], cwd=bundle, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    images = [f"{project}/render/k.{f:04d}.exr" for f in (3, 4)]
    assert _markers(proc.stdout) == [
        ("frame-start", 3, ""),
        ("frame-done", 3, images[0]),
        ("frame-start", 4, ""),
        ("frame-done", 4, images[1]),
    ]
    assert stand_in_husk() == [
        [
            "--frame",
            str(f),
            "--frame-count",
            "1",
            "--frame-inc",
            "1",
            "--output",
            images[i],
            f"usd/karma1_usd/karma1.{f:04d}.usd",
        ]
        for i, f in enumerate((3, 4))
    ]
    assert all(os.path.isfile(i) for i in images)


def test_export_needs_usd_render_rop_parms(hou, project, tmp_path, capsys):
    bundle, _ = _export(hou, project, tmp_path)
    rc = _run_in_container(
        hou,
        bundle,
        [
            "--hip",
            "hip/shot.hip",
            "--rop",
            "/out/mantra1",
            "--frames",
            "1",
            "--export-usd",
            "usd/m/mantra1.{frame:04d}.usd",
        ],
    )
    assert rc == 2
    assert _markers(capsys.readouterr().out) == [
        (
            "frame-failed",
            1,
            "/out/mantra1 has no USD Render ROP parms (runcommand, lopoutput, savetodirectory_directory)",
        )
    ]
    assert not (bundle / "usd").exists()
    assert render.houdini_frame_pattern("usd/k/karma1.{frame:04d}.usd") == "usd/k/karma1.$F4.usd"
    for bad in ("usd/k/karma1.usd", "usd/k/karma1.{frame}.usd", "usd/{x}/karma1.{frame:04d}.usd"):
        with pytest.raises(ValueError, match="frame:04d"):
            render.houdini_frame_pattern(bad)
