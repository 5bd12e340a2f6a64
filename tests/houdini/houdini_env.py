"""Shared helpers for the Houdini adapter tests: paths, the submit node built from its
DialogScript, and a recording client.

Import it explicitly (``from tests.houdini.houdini_env import ...``). Importing it installs
nothing: the fake ``hou`` is put into ``sys.modules`` only while a Houdini test runs (see the
``hou`` fixture in this directory's conftest.py), and ``hpcdock.houdini`` is imported afresh
against it through :func:`adapter`.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

from tests.houdini import dialogscript, fake_hou

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLUGIN = os.path.join(ROOT, "houdini_plugin")
PYLIBS = os.path.join(PLUGIN, "python3.9libs")
HDA = os.path.join(PLUGIN, "otls", "hpcdock_submit.hda")
TYPE_DIR = os.path.join(HDA, "Driver_1hpcdock__submit")

if PYLIBS not in sys.path:  # where hpcdock is not installed; an installed copy still wins
    sys.path.append(PYLIBS)

# Modules that hold a reference to the ``hou`` they were imported with.
ADAPTER_MODULES = ("hpcdock.houdini",)


def adapter():
    """``hpcdock.houdini``, imported against the fake ``hou`` (only inside a Houdini test)."""
    if sys.modules.get("hou") is not fake_hou:
        raise RuntimeError("the fake hou is not installed: use the 'hou' fixture")
    return importlib.import_module("hpcdock.houdini")


def forget_adapter() -> Dict[str, Any]:
    """Drop the adapter modules from ``sys.modules`` and their package; return what was there."""
    removed: Dict[str, Any] = {}
    for name in ADAPTER_MODULES:
        module = sys.modules.pop(name, None)
        if module is not None:
            removed[name] = module
        parent_name, _, attr = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and getattr(parent, attr, None) is not None:
            removed.setdefault(name, getattr(parent, attr))
            delattr(parent, attr)
    return removed


def restore_adapter(removed: Dict[str, Any]) -> None:
    for name, module in removed.items():
        sys.modules[name] = module
        parent_name, _, attr = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None:
            setattr(parent, attr, module)


def _submit_template():
    with open(os.path.join(TYPE_DIR, "DialogScript")) as f:
        return dialogscript.parms(dialogscript.parse(f.read()))


def _default(p: dialogscript.Parm) -> Any:
    if p.type in ("integer", "toggle", "button", "ordinal"):
        return int(p.defaults[0]) if p.defaults else 0
    if p.type == "float":
        return float(p.defaults[0]) if p.defaults else 0.0
    return p.defaults[0] if p.defaults else ""


def make_submit_node(path: str = "/out/hpcdock_submit1", rops: Sequence = (), **values: Any):
    """An HPC Dock Submit node whose parms are exactly those its DialogScript declares.

    ``rops``: ROP nodes or paths for its "ROPs to Submit" list.
    """
    parms: Dict[str, Any] = {}
    for p in _submit_template():
        if p.kind == "multiparm":
            parms[p.name] = int(p.defaults[0]) if p.defaults else 0
            for i in range(1, parms[p.name] + 1):
                parms.update({c.name.replace("#", str(i)): _default(c) for c in p.children})
        elif p.baseparm:
            if p.name == "trange":
                parms["trange"] = 0  # the CreateScript sets "Render Current Frame"
            elif p.name == "f":
                parms["f"] = (1.0, 240.0, 1.0)  # $FSTART, $FEND of a new scene
            else:
                parms[p.name] = 0
        else:
            parms[p.name] = _default(p)
    for k, v in values.items():
        if k not in parms and not (k == "f"):
            raise KeyError(f"the DialogScript declares no parm {k!r}")
        parms[k] = v
    node = fake_hou.fake_create(path, "hpcdock_submit", parms)
    set_multiparm(node, "rops", [{"rop#": r if isinstance(r, str) else r.path()} for r in rops])
    return node


def set_multiparm(node, name: str, rows: List[Dict[str, Any]]) -> None:
    template = next(p for p in _submit_template() if p.name == name)
    node.fake_set_parm(name, len(rows))
    for i, row in enumerate(rows, 1):
        for child in template.children:
            value = row.get(child.name, _default(child))
            node.fake_set_parm(child.name.replace("#", str(i)), value)


class FakeClient:
    calls: List[dict] = []
    fail: Optional[Exception] = None

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None) -> None:
        self.url = url

    def submit(self, bundle_dir: str, parameter_values: Optional[dict] = None) -> dict:
        if FakeClient.fail is not None:
            raise FakeClient.fail
        FakeClient.calls.append({"url": self.url, "bundle_dir": bundle_dir})
        return {"id": 42, "state": "queued"}


def soho_runner(monkeypatch) -> Callable[[Any, float], None]:
    """Runs a ROP's SOHO program from houdini_plugin/soho as Houdini would for one frame.

    The ``soho`` module it sees answers ``getDefaultedFloat("state:time", ...)`` with the time of
    the frame being rendered (SOHO's intrinsic; frame = time * $FPS + 1); ``hou.pwd()`` is the ROP.
    """

    def run(rop, frame: float) -> None:
        soho = types.ModuleType("soho")
        fps = float(fake_hou.fake_state().vars["FPS"])

        def get_defaulted_float(name: str, default: list) -> list:
            return [(frame - 1.0) / fps] if name == "state:time" else list(default)

        soho.getDefaultedFloat = get_defaulted_float  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "soho", soho)
        fake_hou.fake_state().pwd = rop
        try:
            runpy.run_path(os.path.join(PLUGIN, "soho", rop.parm("soho_program").evalAsString()))
        finally:
            fake_hou.fake_state().pwd = None

    return run


class FakeDefer:
    """``hdefereval`` (graphical Houdini only): ``executeDeferred(callable, *args)`` runs later."""

    def __init__(self) -> None:
        self.pending: List[tuple] = []

    def executeDeferred(self, callable_object: Callable, *args: Any) -> None:
        self.pending.append((callable_object, args))

    def fake_run_pending(self) -> list:
        done, self.pending = self.pending, []
        return [c(*a) for c, a in done]


def karma_scene(rop_range=(1, 4, 1), **submit: Any):
    """A Geometry ROP into a Karma ROP, the Karma ROP listed on a submit node.

    The Karma ROP renders the USD Render ROP of its own LOP network (the fake's
    ``fake_inner``), which writes the USD ("lopoutput") and, with "runcommand" on, runs husk.
    """
    f = tuple(float(v) for v in rop_range)
    geo = fake_hou.fake_create(
        "/out/geo1",
        "geometry",
        {"trange": 1, "f": f, "sopoutput": "$HIP/geo/$HIPNAME.$F4.bgeo.sc"},
        output_parm="sopoutput",
    )
    karma = fake_hou.fake_create(
        "/out/karma1", "karma", {"trange": 1, "f": f, "picture": "$HIP/render/k.$F4.exr"}, inputs=[geo]
    )
    karma.fake_inner = fake_hou.fake_create(
        "/out/karma1/lopnet/karma/rop_usdrender",
        "usdrender_rop",
        {
            "trange": 1,
            "f": f,
            "runcommand": 1,
            "lopoutput": "$HIP/usd/$OS.usd",
            "savetodirectory_directory": "",
            "outputimage": "",
        },
        output_parm="lopoutput",
        category="Lop",
    )
    values: Dict[str, Any] = {"image": "hpcdock/houdini:20.5", "frames_per_task": 2}
    values.update(submit)
    return geo, karma, make_submit_node(rops=[karma], **values)


# A ``hou`` module for another process: the fake, reporting at exit (one JSON line appended to
# $FAKE_HOU_REPORT) the scenes it loaded, the frames it rendered and the $HIP it ended with.
_HOU_SHIM = """import atexit, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_hou import *  # noqa: F403
from fake_hou import fake_state


@atexit.register
def _report():
    state = fake_state()
    report = {"pid": os.getpid(), "loads": state.loads, "rendered": state.rendered, "HIP": state.vars["HIP"]}
    with open(os.environ["FAKE_HOU_REPORT"], "a") as f:
        f.write(json.dumps(report) + "\\n")
"""

# hython for the render server's tests: counts its start in $FAKE_HOU_REPORT.starts, takes
# $FAKE_HYTHON_START seconds to start (a scene load), then runs Python with the fake as ``hou``.
_HYTHON = """#!/bin/sh
echo "start $$" >> "$FAKE_HOU_REPORT.starts"
sleep "${{FAKE_HYTHON_START:-0}}"
PYTHONPATH="$(dirname "$0")" exec {python} "$@"
"""


def write_stand_in_hython(directory: str, python: str) -> str:
    """A stand-in ``hython`` in ``directory`` (with the fake ``hou`` beside it, so it also runs in a
    container that mounts the directory); returns its path. ``python`` runs the scripts."""
    os.makedirs(directory, exist_ok=True)
    with (
        open(os.path.join(HERE, "fake_hou.py")) as src,
        open(os.path.join(directory, "fake_hou.py"), "w") as dst,
    ):
        dst.write(src.read())
    with open(os.path.join(directory, "hou.py"), "w") as f:
        f.write(_HOU_SHIM)
    hython = os.path.join(directory, "hython")
    with open(hython, "w") as f:
        f.write(_HYTHON.format(python=python))
    os.chmod(hython, 0o755)
    return hython


def hou_reports(report: str) -> List[Dict[str, Any]]:
    """What each stand-in hython that exited cleanly reported (see :func:`write_stand_in_hython`)."""
    if not os.path.exists(report):
        return []
    with open(report) as f:
        return [json.loads(line) for line in f]


def hython_starts(report: str) -> int:
    if not os.path.exists(report + ".starts"):
        return 0
    with open(report + ".starts") as f:
        return len(f.read().splitlines())


def mantra_scene(hou, initsim=0):
    """A geometry ROP writing $HIP/geo and a Mantra ROP depending on it, both frames 1-4."""
    geo = hou.fake_create(
        "/out/geo1",
        "geometry",
        {"trange": 1, "f": (1.0, 4.0, 1.0), "sopoutput": "$HIP/geo/$HIPNAME.$F4.bgeo.sc", "initsim": initsim},
        output_parm="sopoutput",
    )
    mantra = hou.fake_create(
        "/out/mantra1",
        "ifd",
        {"trange": 1, "f": (1.0, 4.0, 1.0), "vm_picture": "$HIP/render/ball.$F4.exr"},
        inputs=[geo],
        output_parm="vm_picture",
    )
    return mantra
