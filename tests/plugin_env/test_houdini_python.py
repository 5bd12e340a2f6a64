"""The plugin in a Python like Houdini's: the standard library, one Qt binding, and the
``PYTHONPATH`` that ``package.json`` sets; nothing installed.

``make test`` runs this file in ``.venv`` (checking PySide6) and in ``.venv-pyside2``
(checking PySide2): each run checks the binding its own interpreter has, linked alone into
an otherwise empty folder next to the plugin.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple, Optional

import pytest

from tests.plugin_env.houdini_package import ROOT, package_env

HERE = Path(__file__).resolve().parent
PYLIBS = Path(ROOT) / "houdini_plugin" / "python3.9libs"
FAKE_HOU = Path(ROOT) / "tests" / "houdini" / "fake_hou.py"
SHIBOKEN = {"PySide6": "shiboken6", "PySide2": "shiboken2"}
QT_NAMES = {"PySide2", "PySide6", "PyQt5", "PyQt6", "qtpy", "shiboken2", "shiboken6"}


def _binding() -> str:
    """The binding this interpreter has (the one ``hpcdock.panel.qt`` picks), as the lane expects."""
    found = [name for name in SHIBOKEN if importlib.util.find_spec(name) is not None]
    assert found, "no Qt binding (PySide6 or PySide2) in this interpreter"
    expected = os.environ.get("HPCDOCK_EXPECT_QT")
    assert expected is None or expected in found, f"HPCDOCK_EXPECT_QT={expected} but this Python has {found}"
    return expected or found[0]


class HoudiniPython(NamedTuple):
    """``python -S`` (no site-packages) with package.json's PYTHONPATH plus a folder holding only the binding."""

    env: Dict[str, str]
    binding: str
    qt_dir: Path

    def check(self, pylibs: Path = PYLIBS, *extra: str, pythonpath: Optional[str] = None) -> dict:
        """Run ``bare_check.py`` in this Python; its JSON report."""
        env = dict(self.env, PYTHONPATH=pythonpath) if pythonpath else self.env
        proc = subprocess.run(
            [sys.executable, "-S", "-s", str(HERE / "bare_check.py"), str(pylibs), str(self.qt_dir), *extra],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.splitlines()[-1])
        assert report["site"] is False and report["binding"] == self.binding
        return report


@pytest.fixture(scope="module")
def houdini_python(tmp_path_factory) -> HoudiniPython:
    binding = _binding()
    qt_dir = tmp_path_factory.mktemp("binding-only")
    for name in (binding, SHIBOKEN[binding]):
        spec = importlib.util.find_spec(name)
        (qt_dir / name).symlink_to(Path(next(iter(spec.submodule_search_locations))))
    home = tmp_path_factory.mktemp("home")
    env = package_env()
    assert set(env) == {"HPCDOCK", "PYTHONPATH"} and env["PYTHONPATH"] == str(PYLIBS)
    env.update(
        PYTHONPATH=env["PYTHONPATH"] + os.pathsep + str(qt_dir),
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home),
        QT_QPA_PLATFORM="offscreen",
        PATH=os.defpath,
    )
    return HoudiniPython(env, binding, qt_dir)


def test_every_plugin_module_imports_and_the_panel_builds(houdini_python):
    report = houdini_python.check()
    assert report["failures"] == {"hpcdock.houdini": "ModuleNotFoundError: No module named 'hou'"}
    assert report["panel"] == "built"
    assert report["foreign"] == [] and report["entry_points"] == {}


def test_houdini_entry_points_run_with_hou_added(houdini_python):
    """The same Python plus a stand-in ``hou``: the pane, shelf, HDA and SOHO entry points."""
    report = houdini_python.check(PYLIBS, str(FAKE_HOU))
    assert report["failures"] == {}  # hpcdock.houdini imports once hou exists
    assert report["entry_points"] == {
        "pypanel": "ok",
        "soho": "ok",
        "PythonModule": "ok",
        "shelf hpcdock_submit_selected": "ok",
        "shelf hpcdock_open_monitor": "ok",
    }
    assert report["foreign"] == []


def test_the_check_sees_modules_that_need_more_than_houdini_has(houdini_python, tmp_path):
    # a plugin tree of its own: the real package plus a module importing a third-party library and
    # one importing a module from a folder that is neither the plugin's nor the binding's
    pkg = tmp_path / "plugin" / "hpcdock"
    shutil.copytree(PYLIBS / "hpcdock", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "needs_yaml.py").write_text("import yaml\n")
    (pkg / "needs_outside.py").write_text("import outside\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outside.py").write_text("")
    report = houdini_python.check(
        pkg.parent,
        pythonpath=os.pathsep.join(
            [str(pkg.parent), str(houdini_python.qt_dir), str(tmp_path / "elsewhere")]
        ),
    )
    assert report["failures"]["hpcdock.needs_yaml"] == "ModuleNotFoundError: No module named 'yaml'"
    assert "hpcdock.needs_outside" not in report["failures"]
    assert report["foreign"] == [f"outside ({tmp_path / 'elsewhere' / 'outside.py'})"]


def test_farm_script_starts_in_a_bare_python(tmp_path):
    from hpcdock import bundle_writer as B

    job = B.JobSpec(
        name="shot",
        image="img",
        hip_name="shot.hip",
        project_dir=str(tmp_path),
        steps=[B.StepSpec("beauty", "/out/mantra1", [1, 2])],
    )
    root = Path(B.write_bundle(job, str(tmp_path / "bundle")))
    # as in the container: the bundle's own copy, no PYTHONPATH, no site-packages at all
    script = root / B.FARM_DIR / "render.py"
    run = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exc:\n    print('exit', exc.code, file=sys.stderr)\n"
        "print(sorted(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", run, str(script)],
        cwd=root,
        env={},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--frames" in proc.stdout and "exit 0" in proc.stderr, proc.stderr
    files = [f for f in ast.literal_eval(proc.stdout.splitlines()[-1]) if f]
    stdlib = os.path.dirname(os.__file__)
    outside = [f for f in files if not f.startswith(stdlib + os.sep)]
    assert sorted(os.path.basename(f) for f in outside) == [
        "husk.py",
        "markers.py",
        "protocol.py",
        "server.py",
    ]  # render.py ran as __main__
    assert all(os.path.dirname(f) == str(script.parent) for f in outside)


def test_farm_script_runs_from_package_json_pythonpath():
    proc = subprocess.run(
        [sys.executable, "-S", "-s", "-m", "hpcdock.farm.render", "--help"],
        env=package_env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--frames" in proc.stdout, proc.stderr


def test_only_panel_qt_names_a_qt_binding():
    offenders = []
    for path in sorted(PYLIBS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            if any(n.split(".")[0] in QT_NAMES for n in names):
                offenders.append(str(path.relative_to(PYLIBS)))
    assert offenders == []  # panel/qt.py imports its binding by name, through importlib


def test_pyproject_asks_for_no_qtpy():
    text = (Path(ROOT) / "pyproject.toml").read_text(encoding="utf-8")
    assert "qtpy" not in text.lower()
