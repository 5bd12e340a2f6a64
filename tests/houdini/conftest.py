"""Houdini adapter tests: the fake ``hou`` is installed for each test that asks for it
(the ``hou`` or ``houdini`` fixture) and removed after it; the pure planner's tests need none.

Nothing here touches ``sys.modules`` at import time, so collecting these tests next to
others (tests/qt asserts that ``hou`` is never imported) changes nothing for them. The
shared helpers live in ``houdini_env.py``; import them from there, never from ``conftest``.
"""

from __future__ import annotations

import sys
import types

import pytest

from tests.houdini import fake_hou
from tests.houdini.houdini_env import FakeClient, adapter, forget_adapter, restore_adapter


@pytest.fixture
def hou(monkeypatch):
    """The fake ``hou`` as ``sys.modules["hou"]``, with a fresh ``hpcdock.houdini`` bound to it."""
    before = forget_adapter()  # an hpcdock.houdini imported elsewhere holds another hou
    monkeypatch.setitem(sys.modules, "hou", fake_hou)
    fake_hou.fake_reset()
    try:
        yield fake_hou
    finally:
        fake_hou.fake_reset()
        forget_adapter()  # imported against the fake: never leave it behind
        restore_adapter(before)
    # monkeypatch (torn down after this fixture) then removes "hou" again.


@pytest.fixture
def houdini(hou):
    """``hpcdock.houdini`` imported against the fake ``hou``."""
    return adapter()


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
