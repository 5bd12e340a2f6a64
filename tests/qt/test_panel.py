"""The whole panel against an in-memory service (``fakes.FakeService``): no engine needed."""

import os
import re
import stat
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import hpcdock
import pytest
from fakes import FakeService, make_frame, make_job, make_task
from hpcdock.panel import Host, create_panel
from hpcdock.panel import service as launcher
from hpcdock.panel.qt import QtCore, QtWidgets
from hpcdock.panel.widgets import MonitorPanel

pytestmark = pytest.mark.qt
ROOT = Path(__file__).resolve().parents[2]


class RecordingHost(Host):
    viewer_name = "the test viewer"

    def __init__(self):
        self.opened = []

    def open_frames(self, paths, current=None, fps=None):
        self.opened.append((list(paths), current, fps))
        return True


@pytest.fixture
def fake():
    service = FakeService()
    service.put_job(
        make_job(1, "ball", frames_total=6, frames_done=2, tasks_total=2, tasks_running=1), emit=False
    )
    service.put_task(
        make_task(1, frames=(1, 2, 3), state="running", progress=50.0, status="tiling 3/8"), emit=False
    )
    service.put_task(make_task(2, frames=(4, 5, 6), state="pending"), emit=False)
    for f in range(1, 7):
        state = "done" if f <= 2 else ("running" if f == 3 else "waiting")
        service.put_frame(make_frame(f, state=state, task_id=1 if f <= 3 else 2), emit=False)
    service.append_log(1, "frame 1\nframe 2\n")
    yield service
    service.stop()


@pytest.fixture
def panel(qtbot, fake):
    host = RecordingHost()
    widget = MonitorPanel(client_factory=fake.client, host=host, pump_interval_ms=20)
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    yield widget
    widget.shutdown()


def wait(qtbot, condition, timeout=5000):
    qtbot.waitUntil(condition, timeout=timeout)


def test_panel_shows_jobs_frames_and_thumbnails(qtbot, panel, fake):
    wait(qtbot, lambda: panel.connection_state == "connected")
    assert "connected" in panel.conn_label.text()
    assert not panel.start_button.isVisible()
    wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    assert panel.selected_job()["id"] == 1  # the newest job is shown by itself
    assert panel.cancel_button.isEnabled()
    # the done frames' thumbnails are fetched off the GUI thread once painted
    wait(qtbot, lambda: len(panel.cache) == 2)
    thumbs = sorted(c[1] for c in fake.calls if c[0] == "thumbnail")
    assert thumbs == [(1, "render", 1), (1, "render", 2)]
    tooltip = panel.frames_model.tooltip(panel.frames_model.frame(2))
    assert "task 1, attempt 1 (running, 50%)" in tooltip and "status: tiling 3/8" in tooltip
    assert "6 frames" not in panel.frames_label.text() and "2 done" in panel.frames_label.text()
    # live events: frame 3 finishes, the job moves on
    fake.put_frame(make_frame(3, state="done", task_id=1))
    fake.put_job(make_job(1, "ball", frames_total=6, frames_done=3))
    wait(qtbot, lambda: panel.frames_model.frame(2)["state"] == "done")
    wait(qtbot, lambda: panel.jobs_model.job_by_id(1)["frames_done"] == 3)
    wait(qtbot, lambda: len(panel.cache) == 3)
    assert panel.jobs_model.index(0, 3).data() == "3/6"
    # the stream started from the id the service reported: no replay of history
    assert fake.stream_requests[0] == 0


def test_new_job_is_followed_when_the_shown_one_is_finished(qtbot, panel, fake):
    wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    fake.put_job(make_job(1, "ball", state="succeeded", frames_total=6, frames_done=6))
    wait(qtbot, lambda: panel.selected_job()["state"] == "succeeded")
    fake.put_job(make_job(2, "next", state="queued", frames_total=2))
    fake.put_frame(make_frame(1, job_id=2))
    wait(qtbot, lambda: panel.frames_model.job_id == 2)
    wait(qtbot, lambda: panel.frames_model.rowCount() == 1)
    assert [panel.jobs_model.job(r)["id"] for r in range(2)] == [2, 1]


def test_log_tails_the_selected_frames_task(qtbot, panel, fake):
    wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    panel.frames_view.setCurrentIndex(panel.frames_model.index(2))  # frame 3, task 1
    wait(qtbot, lambda: "frame 2" in panel.log_view.toPlainText())
    assert "task 1" in panel.log_label.text() and "running" in panel.log_label.text()
    assert "tiling 3/8" in panel.log_label.text()  # the task's openjd_status line
    fake.append_log(1, "ALF_PROGRESS 75%\n")
    wait(qtbot, lambda: "ALF_PROGRESS 75%" in panel.log_view.toPlainText())
    tailer = panel.tailer
    fake.append_log(1, "the end\n")
    fake.put_task(make_task(1, frames=(1, 2, 3), state="succeeded", progress=100.0))
    wait(qtbot, lambda: "the end" in panel.log_view.toPlainText())
    wait(qtbot, lambda: not tailer.is_alive())  # stops polling once the task is over
    assert panel.log_view.toPlainText().count("frame 1") == 1
    # another task: the log starts over
    panel.frames_view.setCurrentIndex(panel.frames_model.index(4))
    fake.append_log(2, "task two\n")
    wait(qtbot, lambda: panel.log_view.toPlainText() == "task two\n")


def test_actions_cancel_retry_copy_open(qtbot, panel, fake):
    wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    panel.cancel_button.click()
    wait(qtbot, lambda: ("cancel", 1) in fake.calls)
    wait(qtbot, lambda: panel.selected_job()["state"] == "canceled")
    wait(qtbot, lambda: not panel.cancel_button.isEnabled() and panel.retry_button.isEnabled())
    wait(qtbot, lambda: "cancel requested" in panel.status_label.text())
    panel.retry_button.click()
    wait(qtbot, lambda: ("retry", (1, None, False)) in fake.calls)
    # copy: the job's output directory, then the selected frames' outputs
    assert panel.copy_output_path() == "/out"
    assert QtWidgets.QApplication.clipboard().text() == "/out"
    selection = panel.frames_view.selectionModel()
    flags = (
        QtCore.QItemSelectionModel.SelectionFlag.Select
        if hasattr(QtCore.QItemSelectionModel, "SelectionFlag")
        else QtCore.QItemSelectionModel.Select
    )
    selection.select(panel.frames_model.index(0), flags)
    selection.select(panel.frames_model.index(1), flags)
    assert panel.copy_output_path() == "/out/render.0001.png\n/out/render.0002.png"
    # open: the host's viewer gets the clicked frame, full size
    panel.frames_view.doubleClicked.emit(panel.frames_model.index(1))
    assert panel.host.opened == [(["/out/render.0002.png"], "/out/render.0002.png", None)]
    assert not panel.open_frame(panel.frames_model.frame(4))  # not done: nothing to open
    assert panel.image_window is None  # the host showed it: no window of the panel's own


def test_survives_a_service_restart_and_catches_up(qtbot, panel, fake):
    wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    fake.put_frame(make_frame(3, state="done", task_id=1))
    wait(qtbot, lambda: panel.frames_model.frame(2)["state"] == "done")
    fake.stop()
    wait(qtbot, lambda: panel.connection_state == "disconnected")
    assert panel.start_button.isVisible()
    # the job goes on while the panel cannot see it
    for f in (4, 5):
        fake.put_frame(make_frame(f, state="done", task_id=2))
    fake.put_job(make_job(1, "ball", frames_total=6, frames_done=5))
    fake.start()
    wait(qtbot, lambda: panel.connection_state == "connected")
    wait(qtbot, lambda: panel.frames_model.frame(4)["state"] == "done")
    wait(qtbot, lambda: panel.jobs_model.job_by_id(1)["frames_done"] == 5)
    # resumed from the last id it had seen: no gap, no duplicate
    assert fake.stream_requests[-1] == 1
    # and the shown job's frames were asked again, in case the outage lost a snapshot
    wait(qtbot, lambda: sum(1 for c in fake.calls if c == ("frames", 1)) >= 2)
    assert sorted(fake.delivered) == sorted(set(fake.delivered)) == list(range(1, len(fake.events) + 1))


def test_start_service_action(qtbot, panel, fake, monkeypatch):
    fake.stop()
    wait(qtbot, lambda: panel.connection_state == "disconnected")
    started = []

    def start_service():
        started.append(True)
        fake.start()
        return types.SimpleNamespace(pid=4242)

    monkeypatch.setattr(launcher, "start_service", start_service)
    panel.start_button.click()
    assert started and "pid 4242" in panel.status_label.text()
    wait(qtbot, lambda: panel.connection_state == "connected", timeout=3000)

    def broken():
        raise FileNotFoundError("hpcdock-service was found neither next to python nor on PATH")

    monkeypatch.setattr(launcher, "start_service", broken)
    assert not panel.start_service()
    assert "could not start" in panel.status_label.text()


def test_snapshot_without_cursor_replays_from_zero(qtbot, fake):
    fake.last_event_id_in_health = False
    fake.put_frame(make_frame(1, state="done"))  # event 1: old history
    panel = MonitorPanel(client_factory=fake.client, host=RecordingHost(), pump_interval_ms=20)
    qtbot.addWidget(panel)
    try:
        wait(qtbot, lambda: fake.stream_requests == [0])
        wait(qtbot, lambda: panel.frames_model.rowCount() == 6)
    finally:
        panel.shutdown()


def test_find_and_start_service(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nobin" / "python"))
    assert launcher.find_service_executable() is None
    with pytest.raises(FileNotFoundError):
        launcher.start_service()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "hpcdock-service"
    marker = tmp_path / "started"
    exe.write_text(f'#!/bin/sh\necho started "$@" > {marker}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))  # next to the interpreter
    assert launcher.find_service_executable() == str(exe)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nobin" / "python"))
    monkeypatch.setenv("PATH", str(bindir))  # or on PATH
    assert launcher.find_service_executable() == str(exe)
    proc = launcher.start_service(args=["--port", "1"])
    assert proc.wait(10) == 0
    assert marker.read_text().strip() == "started --port 1"
    assert (tmp_path / "state" / "hpcdock" / "service-panel.log").exists()


def test_pypanel_builds_the_panel_through_the_host(qtbot, monkeypatch):
    path = ROOT / "houdini_plugin" / "python_panels" / "hpcdock.pypanel"
    root = ET.parse(path).getroot()
    assert root.tag == "pythonPanelDocument"
    interface = root.find("interface")
    assert interface.get("name") == "hpcdock"
    script = interface.find("script").text
    assert "class " not in script and "QtWidgets" not in script  # no panel code in the XML
    monkeypatch.setenv("HPCDOCK_URL", "http://127.0.0.1:9")
    fake_houdini = types.ModuleType("hpcdock.houdini")
    host = RecordingHost()
    fake_houdini.panel_host = lambda: host
    monkeypatch.setitem(sys.modules, "hpcdock.houdini", fake_houdini)
    monkeypatch.setattr(hpcdock, "houdini", fake_houdini, raising=False)
    namespace = {}
    exec(compile(script, str(path), "exec"), namespace)
    widget = namespace["onCreateInterface"]()
    qtbot.addWidget(widget)
    assert isinstance(widget, MonitorPanel) and widget.host is host
    namespace["onDestroyInterface"]()
    assert widget.events_worker is None
    # the script's functions and its globals form a reference cycle holding the widget: break
    # it here, so the collector never destroys a Qt widget from another thread
    namespace.clear()


def test_open_in_houdini_goes_through_the_adapter(monkeypatch):
    from hpcdock import panel as panel_pkg

    fake_houdini = types.ModuleType("hpcdock.houdini")
    opened = []
    fake_houdini.open_monitor_pane = lambda name: opened.append(name) or "pane"
    monkeypatch.setitem(sys.modules, "hpcdock.houdini", fake_houdini)
    monkeypatch.setattr(hpcdock, "houdini", fake_houdini, raising=False)
    assert panel_pkg.open_in_houdini() == "pane"
    assert opened == ["hpcdock"] == [panel_pkg.INTERFACE_NAME]
    del fake_houdini.open_monitor_pane
    with pytest.raises(NotImplementedError, match="open_monitor_pane"):
        panel_pkg.open_in_houdini()


def test_monitor_main_opens_a_window(qtbot, qapp, monkeypatch):
    from hpcdock import monitor

    monkeypatch.setenv("HPCDOCK_URL", "http://127.0.0.1:9")
    seen = {}

    def look_and_quit():
        windows = [
            w
            for w in QtWidgets.QApplication.topLevelWidgets()
            if isinstance(w, QtWidgets.QMainWindow) and w.windowTitle() == "hpcdock monitor"
        ]
        seen["windows"] = windows
        for w in windows:
            seen["panel"] = w.centralWidget()
            w.close()
        qapp.quit()

    # exactly one quit: closing the last window would post a second one, which Qt would deliver
    # to the next test's event loops and end them at once
    quit_on_close = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    QtCore.QTimer.singleShot(300, look_and_quit)
    try:
        assert monitor.main(["--job", "3", "--size", "800x500"]) == 0
    finally:
        qapp.setQuitOnLastWindowClosed(quit_on_close)
    assert seen["windows"] and isinstance(seen["panel"], MonitorPanel)
    assert seen["panel"].events_worker is None  # shut down on quit
    assert seen["panel"]._pending_select == 3


def test_panel_code_never_imports_hou():
    pkg = ROOT / "houdini_plugin" / "python3.9libs" / "hpcdock"
    for source in list((pkg / "panel").glob("*.py")) + [pkg / "monitor.py"]:
        lines = source.read_text().splitlines()
        assert not [line for line in lines if re.match(r"\s*(import hou\b|from hou\b)", line)], source
    assert "hou" not in sys.modules
    assert create_panel  # importable without Houdini
    assert os.path.exists(pkg / "panel" / "host.py")
