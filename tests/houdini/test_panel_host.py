"""The adapter's side of the monitor panel: the pane tab and the MPlay host (fake hou)."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.houdini import fake_hou


def test_open_monitor_pane_creates_a_floating_python_panel(houdini) -> None:
    tab = houdini.open_monitor_pane()
    assert tab.type() is fake_hou.paneTabType.PythonPanel
    assert fake_hou.fake_state().pane_tabs == [tab] and tab._interface == "hpcdock"


def test_mplay_command_uses_hfs_and_orders_frames(houdini, tmp_path: Path, monkeypatch) -> None:
    mplay = tmp_path / "hfs" / "bin" / "mplay"
    mplay.parent.mkdir(parents=True)
    mplay.write_text("#!/bin/sh\n")
    mplay.chmod(mplay.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("HFS", str(tmp_path / "hfs"))
    assert houdini.mplay_command(["/r/b.0002.exr", "/r/b.0001.exr"]) == [
        str(mplay),
        "/r/b.0001.exr",
        "/r/b.0002.exr",
    ]
    assert houdini.mplay_command(["/r/b.0002.exr", "/r/b.0001.exr"], fps=12.5) == [
        str(mplay),
        "-r",
        "12.5",
        "/r/b.0001.exr",
        "/r/b.0002.exr",
    ]  # the flipbook plays at the job's rate
    assert houdini.mplay_command([]) is None
    monkeypatch.setenv("HFS", str(tmp_path / "nowhere"))
    assert houdini.mplay_command(["/r/b.0001.exr"]) is None


def test_panel_host_says_mplay_and_parents_to_houdini(houdini) -> None:
    host = houdini.panel_host()
    assert host.viewer_name == "MPlay"
    assert host.parent_window() is fake_hou.qt.mainWindow()
