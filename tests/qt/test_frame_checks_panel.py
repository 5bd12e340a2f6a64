"""Flagged frames in the panel: badge and reasons, full-size view, flipbook, retry just these frames."""

import pytest
from fakes import FakeService, make_frame, make_job, make_task, png_bytes
from hpcdock.panel import Host
from hpcdock.panel.models import FLAGS_ROLE, FramesModel, JobsModel, frame_spans, job_fps
from hpcdock.panel.qt import TOOLTIP, QtCore, QtGui, qenum
from hpcdock.panel.viewers import FlipbookWindow, FrameImage
from hpcdock.panel.widgets import BADGE_COLOR, CELL, FrameView, MonitorPanel, badge_rect

pytestmark = pytest.mark.qt

BLACK = {
    "check": "black",
    "reason": "all pixels are black (max luminance 0.000 <= 0.001)",
    "values": {"max_luminance": 0.0},
}
NAN = {"check": "nan", "reason": "1204 pixels are NaN or Inf (0.52%)", "values": {"bad_pixels": 1204}}


class RecordingHost(Host):
    """A host with a viewer of its own (MPlay inside Houdini)."""

    viewer_name = "MPlay"

    def __init__(self):
        self.opened = []

    def open_frames(self, paths, current=None, fps=None):
        self.opened.append((list(paths), current, fps))
        return True


def select_rows(view, rows):
    flags = qenum(QtCore.QItemSelectionModel, "SelectionFlag", "Select")
    view.selectionModel().clearSelection()
    for row in rows:
        view.selectionModel().select(view.model().index(row), flags)


@pytest.fixture
def frames_dir(tmp_path):
    """Six real PNG outputs, each its own size (so a test can tell which one a window shows)."""
    out = tmp_path / "out"
    out.mkdir()
    for f in range(1, 7):
        (out / f"render.{f:04d}.png").write_bytes(png_bytes(100 + f, 50 + f, (10 * f, 20, 30)))
    return out


@pytest.fixture
def fake(frames_dir):
    service = FakeService()
    service.put_job(
        make_job(
            1,
            "ball",
            state="succeeded",
            frames_total=6,
            frames_done=5,
            frames_flagged=2,
            fps=12.0,
            tasks_total=2,
        ),
        emit=False,
    )
    service.put_task(make_task(1, frames=(1, 2, 3), state="succeeded"), emit=False)
    service.put_task(make_task(2, frames=(4, 5, 6), state="failed"), emit=False)
    flags = {2: [BLACK], 5: [BLACK, NAN]}
    for f in range(1, 7):
        state = "failed" if f == 6 else "done"
        service.put_frame(
            make_frame(
                f,
                state=state,
                task_id=1 if f <= 3 else 2,
                flags=flags.get(f, []),
                output=str(frames_dir / f"render.{f:04d}.png") if state == "done" else None,
            ),
            emit=False,
        )
    yield service
    service.stop()


def make_panel(qtbot, fake, host):
    panel = MonitorPanel(client_factory=fake.client, host=host, pump_interval_ms=20)
    qtbot.addWidget(panel)
    panel.resize(1000, 700)
    panel.show()
    qtbot.waitUntil(lambda: panel.frames_model.rowCount() == 6, timeout=5000)
    return panel


@pytest.fixture
def panel(qtbot, fake):
    widget = make_panel(qtbot, fake, Host())  # standalone: no viewer of the host's own
    yield widget
    widget.shutdown()


def test_flags_in_tooltip_role_and_job_list():
    model = FramesModel()
    model.set_job(1, ["render"])
    model.apply([make_frame(1, state="done"), make_frame(2, state="done", flags=[BLACK, NAN])])
    clean, flagged = model.index(0), model.index(1)
    assert model.data(clean, FLAGS_ROLE) == [] and "⚠" not in model.data(clean, TOOLTIP)
    assert model.data(flagged, FLAGS_ROLE) == [BLACK, NAN]
    tip = model.data(flagged, TOOLTIP)
    assert f"⚠ black: {BLACK['reason']}" in tip and f"⚠ nan: {NAN['reason']}" in tip
    assert model.flagged_count() == 1
    model.apply([make_frame(2, state="running", attempt=2)])  # retried: the new attempt has no flags yet
    assert model.flagged_count() == 0 and model.counts() == {"done": 1, "running": 1}
    model.apply(
        [make_frame(2, state="done", attempt=2, flags=[NAN]), make_frame(1, state="done", flags=[NAN])]
    )
    assert model.flagged_count() == 2 and model.counts() == {"done": 2}
    model.apply([make_frame(2, state="done", attempt=2, flags=[NAN])])  # the same again: counted once
    assert model.flagged_count() == 2
    jobs = JobsModel()
    jobs.apply(
        [
            make_job(1, frames_total=6, frames_done=5, frames_failed=1, frames_flagged=3),
            make_job(2, frames_total=6, frames_done=6),
        ]
    )
    assert jobs.index(1, JobsModel.FRAMES).data() == "5/6 (1 failed, 3 flagged)"
    assert "frames flagged by the output checks: 3" in jobs.index(1, 0).data(TOOLTIP)
    assert jobs.index(0, JobsModel.FRAMES).data() == "6/6"  # a clean job says nothing more


def test_badge_is_painted_on_flagged_frames_only(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    view = FrameView()
    view.setModel(model)
    qtbot.addWidget(view)
    view.resize(CELL.width() * 4 + 20, CELL.height() * 2 + 10)
    view.show()
    qtbot.waitExposed(view)
    model.apply([make_frame(f, state="done", flags=[BLACK] if f in (2, 3) else []) for f in range(1, 5)])
    image = QtGui.QImage(view.viewport().size(), qenum(QtGui.QImage, "Format", "Format_RGB32"))
    view.viewport().render(image)
    badge = QtGui.QColor(BADGE_COLOR).rgb()

    def badge_pixel(row):  # inside the disc, left of the "!" drawn in its middle
        rect = badge_rect(view.visualRect(model.index(row)).adjusted(1, 1, -1, -1))
        return image.pixel(rect.center().x() - 4, rect.center().y())

    assert [badge_pixel(r) == badge for r in range(4)] == [False, True, True, False]


def test_job_list_and_frames_label_count_flagged(qtbot, panel):
    assert panel.jobs_model.index(0, JobsModel.FRAMES).data() == "5/6 (2 flagged)"
    qtbot.waitUntil(lambda: "⚠ 2 flagged" in panel.frames_label.text())
    panel.frames_view.setCurrentIndex(panel.frames_model.index(4))
    assert f"⚠ nan: {NAN['reason']}" in panel.frame_info.text()


def test_double_click_opens_the_image_window_standalone(qtbot, panel, frames_dir):
    panel.frames_view.doubleClicked.emit(panel.frames_model.index(4))  # frame 5, flagged twice
    window = panel.image_window
    assert window is not None and window.isVisible()
    assert window.item.path == str(frames_dir / "render.0005.png")
    pixmap = window.picture.pixmap()
    assert (pixmap.width(), pixmap.height()) == (105, 55)  # the file's own size: not scaled
    assert str(frames_dir / "render.0005.png") in window.caption.text()
    assert f"⚠ black: {BLACK['reason']}" in window.caption.text()
    # the same window shows the next double-clicked frame
    panel.frames_view.doubleClicked.emit(panel.frames_model.index(0))
    assert panel.image_window is window and window.item.path.endswith("render.0001.png")
    assert window.picture.pixmap().width() == 101
    assert not panel.open_frame(panel.frames_model.frame(5))  # failed: no output to open


def test_image_window_says_why_a_file_cannot_be_read(qtbot, panel, frames_dir):
    broken = frames_dir / "render.0003.png"
    broken.write_bytes(broken.read_bytes()[:30])  # truncated
    assert not panel.open_frame(panel.frames_model.frame(2))
    assert "could not read" in panel.image_window.picture.text()
    assert "could not read" in panel.status_label.text()


def test_inside_houdini_double_click_and_flipbook_go_to_mplay(qtbot, fake, frames_dir):
    host = RecordingHost()
    panel = make_panel(qtbot, fake, host)
    try:
        panel.frames_view.doubleClicked.emit(panel.frames_model.index(1))
        frame2 = str(frames_dir / "render.0002.png")
        assert host.opened == [([frame2], frame2, None)]
        assert panel.play_flipbook()
        assert host.opened[-1] == ([str(frames_dir / f"render.{f:04d}.png") for f in range(1, 6)], None, 12.0)
        assert panel.image_window is None and panel.flipbook is None  # nothing of the panel's own
        assert "MPlay" in panel.status_label.text()
    finally:
        panel.shutdown()


def test_flipbook_scales_big_frames_to_its_window(qtbot, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(2048, 1152))
    book = FlipbookWindow([FrameImage(1, str(path))], 24.0)
    qtbot.addWidget(book)
    book.show()
    qtbot.waitExposed(book)
    pixmap, fit = book.picture.pixmap(), book.picture.size()
    assert pixmap.width() <= fit.width() and pixmap.height() <= fit.height() and pixmap.width() < 2048
    assert abs(pixmap.width() / pixmap.height() - 16 / 9) < 0.02


def test_flipbook_plays_done_frames_in_order_at_the_jobs_rate(qtbot, panel, frames_dir):
    assert panel.flipbook_button.isEnabled()
    panel.flipbook_button.click()
    book = panel.flipbook
    assert book is not None and book.isVisible()
    assert [i.frame for i in book.frames] == [1, 2, 3, 4, 5]  # done frames only, failed 6 left out
    assert book.timer.interval() == round(1000 / 12.0)  # the job's fps
    assert book.timer.isActive() and book.play_button.text() == "Pause"
    shown = [book.position]
    for _ in range(6):
        book.step()  # what each timer tick does
        shown.append(book.position)
    assert [book.frames[i].frame for i in shown] == [1, 2, 3, 4, 5, 1, 2]  # in order, looping
    assert book.picture.pixmap().width() == 102  # frame 2's own file
    assert f"⚠ black: {BLACK['reason']}" in book.caption.text()
    book.play_button.click()
    assert not book.timer.isActive() and book.play_button.text() == "Play"
    book.slider.setValue(4)
    assert book.position == 4 and book.caption.text().startswith("frame 5:")


def test_flipbook_defaults_to_24_fps_and_reads_lazily(qtbot, tmp_path):
    assert job_fps({"fps": None}) == job_fps({}) == job_fps({"fps": "x"}) == job_fps({"fps": -1}) == 24.0
    assert job_fps({"fps": 29.97}) == 29.97
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(32, 18))
    frames = [FrameImage(f, str(path)) for f in range(1, 1001)]
    book = FlipbookWindow(frames, job_fps({}), cache_size=16)
    qtbot.addWidget(book)
    assert book.timer.interval() == 42
    assert book.reads == 0
    book.show()
    qtbot.waitExposed(book)
    assert book.reads == 1  # opening a 1000-frame flipbook reads one frame
    for _ in range(40):
        book.step()
    assert book.reads == 41 and book.cached() == 16  # read as shown, at most cache_size kept
    book.slider.setValue(999)
    assert book.position == 999 and book.reads == 42


def test_retry_frames_sends_exactly_the_selected_frames(qtbot, panel, fake):
    assert not panel.retry_frames_button.isEnabled()  # nothing selected
    select_rows(panel.frames_view, [1, 3, 4, 5])  # frames 2, 4, 5, 6
    assert panel.retry_frames_button.isEnabled() and panel.retry_frames_button.text() == "Retry 4 frames"
    panel.retry_frames_button.click()
    qtbot.waitUntil(lambda: any(c[0] == "retry" for c in fake.calls), timeout=5000)
    assert [c for c in fake.calls if c[0] == "retry"] == [("retry", (1, [2, 4, 5, 6], False))]
    qtbot.waitUntil(lambda: "retrying frames 2, 4-6 of job 1" in panel.status_label.text(), timeout=5000)
    assert panel.retry_flagged_button.isEnabled()
    panel.retry_flagged_button.click()
    qtbot.waitUntil(lambda: ("retry", (1, None, True)) in fake.calls, timeout=5000)


def test_context_menu_offers_the_frame_actions(qtbot, panel, fake):
    panel.frames_view.setCurrentIndex(panel.frames_model.index(2))
    select_rows(panel.frames_view, [2])
    menu = panel.frame_menu()
    actions = {a.text(): a for a in menu.actions() if a.text()}
    assert {"Open full size", "Flipbook", "Retry 1 frame", "Retry flagged", "Copy output path"} <= set(
        actions
    )
    assert all(actions[t].isEnabled() for t in ("Open full size", "Flipbook", "Retry 1 frame"))
    actions["Retry 1 frame"].trigger()
    qtbot.waitUntil(lambda: ("retry", (1, [3], False)) in fake.calls, timeout=5000)
    actions["Open full size"].trigger()
    assert panel.image_window.item.frame == 3
    menu.deleteLater()


def test_a_clean_job_offers_no_retry_flagged(qtbot):
    service = FakeService()
    service.put_job(make_job(1, state="succeeded", frames_total=1, frames_done=1), emit=False)
    service.put_frame(make_frame(1, state="done"), emit=False)
    panel = MonitorPanel(client_factory=service.client, host=Host(), pump_interval_ms=20)
    qtbot.addWidget(panel)
    try:
        qtbot.waitUntil(lambda: panel.frames_model.rowCount() == 1, timeout=5000)
        assert panel.flipbook_button.isEnabled() and not panel.retry_flagged_button.isEnabled()
        assert "flagged" not in panel.frames_label.text()
    finally:
        panel.shutdown()
        service.stop()


def test_frame_spans():
    assert frame_spans([42, 17, 40, 41]) == "17, 40-42"
    assert frame_spans([3]) == "3"
