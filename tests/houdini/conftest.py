"""Houdini adapter tests: install the fake ``hou`` before anything imports hpcdock.houdini."""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Dict, List, Optional, Sequence

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLUGIN = os.path.join(ROOT, "houdini_plugin")
PYLIBS = os.path.join(PLUGIN, "python3.9libs")
HDA = os.path.join(PLUGIN, "otls", "hpcdock_submit.hda")
TYPE_DIR = os.path.join(HDA, "Driver_1hpcdock__submit")

sys.path.insert(0, HERE)
if PYLIBS not in sys.path:
    sys.path.insert(0, PYLIBS)

import dialogscript  # noqa: E402
import fake_hou  # noqa: E402

sys.modules["hou"] = fake_hou


def _submit_template():
    with open(os.path.join(TYPE_DIR, "DialogScript")) as f:
        return dialogscript.parms(dialogscript.parse(f.read()))


def _default(p: dialogscript.Parm) -> Any:
    if p.type in ("integer", "toggle", "button", "ordinal"):
        return int(p.defaults[0]) if p.defaults else 0
    if p.type == "float":
        return float(p.defaults[0]) if p.defaults else 0.0
    return p.defaults[0] if p.defaults else ""


def _fstart(frame: float) -> float:
    return float(fake_hou.fake_state().vars["FSTART"])


def _fend(frame: float) -> float:
    return float(fake_hou.fake_state().vars["FEND"])


def make_submit_node(path: str = "/out/hpcdock_submit1", inputs: Sequence = (), **values: Any):
    """An HPC Dock Submit node whose parms are exactly those its DialogScript declares."""
    parms: Dict[str, Any] = {}
    for p in _submit_template():
        if p.kind == "multiparm":
            parms[p.name] = int(p.defaults[0]) if p.defaults else 0
        elif p.baseparm:
            if p.name == "trange":
                parms["trange"] = 1  # the CreateScript sets "Render Frame Range"
            elif p.name == "f":
                parms["f"] = (_fstart, _fend, 1.0)
            else:
                parms[p.name] = 0
        else:
            parms[p.name] = _default(p)
    for k, v in values.items():
        if k not in parms and not (k == "f"):
            raise KeyError(f"the DialogScript declares no parm {k!r}")
        parms[k] = v
    return fake_hou.fake_create(path, "hpcdock_submit", parms, inputs)


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


@pytest.fixture(autouse=True)
def hou():
    fake_hou.fake_reset()
    yield fake_hou
    fake_hou.fake_reset()


@pytest.fixture
def client(monkeypatch):
    FakeClient.calls = []
    FakeClient.fail = None
    module = types.ModuleType("hpcdock.client")
    module.Client = FakeClient  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hpcdock.client", module)
    return FakeClient


@pytest.fixture
def project(tmp_path, hou):
    """A saved scene at <tmp>/proj/shot.hip."""
    proj = tmp_path / "proj"
    proj.mkdir()
    hou.fake_open_scene(str(proj / "shot.hip"))
    (proj / "shot.hip").write_text("artist's file\n")
    return proj
