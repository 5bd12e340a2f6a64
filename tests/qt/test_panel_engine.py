"""The panel against a real ``hpcdock-service`` running small real jobs on the rootless engine.

Uses the suite's ``service`` fixture (tests/conftest.py): a real service process with its own
state and token, and ``make_bundle`` (tests/helpers.py): a job whose test renderer writes PNG
frames and prints hpcdock's frame markers.
"""

import pytest
from hpcdock.panel import Host
from hpcdock.panel.widgets import MonitorPanel

from tests.helpers import make_bundle

pytestmark = [pytest.mark.engine, pytest.mark.qt]

TIMEOUT_MS = 180_000


@pytest.fixture
def make_panel(qtbot):
    panels = []

    def make(service):
        panel = MonitorPanel(url=service.url, token=service.token, host=Host())
        qtbot.addWidget(panel)
        panel.resize(1000, 700)
        panel.show()
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.shutdown()


def wait_connected(qtbot, panel, timeout=30_000):
    try:
        qtbot.waitUntil(lambda: panel.connection_state == "connected", timeout=timeout)
    except Exception:
        raise AssertionError(
            f"panel not connected: {panel.connection_state} {panel.connection_detail}"
        ) from None


def job_in_panel(panel, job_id):
    return panel.jobs_model.job_by_id(job_id) or {}


def test_frames_appear_with_thumbnails_and_logs(qtbot, service, tmp_path, make_panel):
    panel = make_panel(service)
    wait_connected(qtbot, panel)
    bundle = make_bundle(tmp_path / "ball", frames="1-6", chunk=3, png=True, env={"FRAME_SLEEP": "0.3"})
    job = service.client().submit(str(bundle))
    # the new job is shown by itself, its frames arrive from the event stream
    qtbot.waitUntil(lambda: panel.frames_model.job_id == job["id"], timeout=30_000)
    qtbot.waitUntil(lambda: panel.frames_model.counts().get("done") == 6, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: job_in_panel(panel, job["id"]).get("state") == "succeeded", timeout=60_000)
    assert panel.jobs_model.index(panel.jobs_model.row_of(job["id"]), 3).data() == "6/6"
    # thumbnails of the done frames, fetched by the panel from the service
    qtbot.waitUntil(lambda: len(panel.cache) >= 6, timeout=60_000)
    image = panel.cache.get((job["id"], "render", 1, 1))
    assert image is not None and not image.isNull() and max(image.width(), image.height()) <= 72
    frame = panel.frames_model.frame(0)
    assert frame["output"].endswith("f.0001.png")
    assert "attempt 1" in panel.frames_model.tooltip(frame)
    # the log of the frame's task
    panel.frames_view.setCurrentIndex(panel.frames_model.index(0))
    qtbot.waitUntil(lambda: "::hpcdock::frame-done 1" in panel.log_view.toPlainText(), timeout=30_000)
    assert panel.copy_output_path() == frame["output"]  # the selected frame
    # a rendered frame at full size in the panel's own window (this host has no viewer), and the
    # flipbook over the job's frames at the default rate (the job sets no fps)
    panel.frames_view.doubleClicked.emit(panel.frames_model.index(0))
    assert panel.image_window.item.path == frame["output"]
    pixmap = panel.image_window.picture.pixmap()
    assert (pixmap.width(), pixmap.height()) == (640, 360)
    assert panel.play_flipbook()
    assert [item.frame for item in panel.flipbook.frames] == [1, 2, 3, 4, 5, 6]
    assert panel.flipbook.timer.interval() == round(1000 / 24)
    assert panel.flipbook.picture.pixmap() is not None and not panel.flipbook.picture.pixmap().isNull()


def test_cancel_from_the_panel(qtbot, service, tmp_path, make_panel):
    panel = make_panel(service)
    bundle = make_bundle(tmp_path / "long", frames="1-40", chunk=2, png=False, env={"FRAME_SLEEP": "3"})
    job = service.client().submit(str(bundle))
    qtbot.waitUntil(lambda: job_in_panel(panel, job["id"]).get("state") == "running", timeout=TIMEOUT_MS)
    panel.select_job(job["id"])
    qtbot.waitUntil(lambda: panel.cancel_button.isEnabled(), timeout=10_000)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: job_in_panel(panel, job["id"]).get("state") == "canceled", timeout=120_000)
    assert service.client().job(job["id"])["state"] == "canceled"
    qtbot.waitUntil(lambda: panel.retry_button.isEnabled(), timeout=10_000)


def test_panel_survives_a_service_restart_and_catches_up(qtbot, service, tmp_path, make_panel):
    panel = make_panel(service)
    bundle = make_bundle(tmp_path / "restart", frames="1-8", chunk=2, png=True, env={"FRAME_SLEEP": "1"})
    job = service.client().submit(str(bundle))
    qtbot.waitUntil(lambda: panel.frames_model.job_id == job["id"], timeout=30_000)
    qtbot.waitUntil(lambda: panel.frames_model.counts().get("done", 0) >= 1, timeout=TIMEOUT_MS)
    service.stop()
    qtbot.waitUntil(lambda: panel.connection_state == "disconnected", timeout=30_000)
    assert panel.start_button.isVisible()
    service.start()
    wait_connected(qtbot, panel)
    qtbot.waitUntil(lambda: job_in_panel(panel, job["id"]).get("state") == "succeeded", timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: panel.frames_model.counts().get("done") == 8, timeout=30_000)
    # what the panel shows is what the service has
    truth = {(f["step"], f["frame"]): f["state"] for f in service.client().frames(job["id"])}
    shown = {(f["step"], f["frame"]): f["state"] for f in panel.frames_model.frames()}
    assert shown == truth
    assert (
        job_in_panel(panel, job["id"])["frames_done"] == service.client().job(job["id"])["frames_done"] == 8
    )
