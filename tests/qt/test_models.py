"""The panel's item models and event pump, fed synthetic events (no service)."""

import queue

import pytest
from fakes import PNG, make_frame, make_job, make_task
from hpcdock.client import Event
from hpcdock.panel.models import (
    OBJECT_ROLE,
    PROGRESS_ROLE,
    THUMB_ROLE,
    FramesModel,
    JobsModel,
    ThumbnailCache,
    format_duration,
    job_eta,
    job_progress,
    ranges,
)
from hpcdock.panel.qt import BACKGROUND, DISPLAY, TOOLTIP, QtGui, binding_problem
from hpcdock.panel.worker import EventPump, decode_thumbnail

pytestmark = pytest.mark.qt


class Spy:
    """Counts a model's structural signals (resets must not happen per event)."""

    def __init__(self, model):
        self.resets = 0
        self.inserted = []
        self.changed = []
        model.modelReset.connect(self._reset)
        model.rowsInserted.connect(lambda parent, first, last: self.inserted.append((first, last)))
        model.dataChanged.connect(lambda tl, br, roles=(): self.changed.append((tl.row(), br.row())))

    def _reset(self):
        self.resets += 1


def test_format_helpers():
    assert format_duration(None) == ""
    assert format_duration(5.4) == "5s"
    assert format_duration(65) == "1m 05s"
    assert format_duration(3 * 3600 + 120) == "3h 02m"
    assert ranges([5, 1, 2, 3, 200], gap=1) == [(1, 3), (5, 5), (200, 200)]
    assert ranges([1, 3, 9], gap=8) == [(1, 9)]


def test_job_progress_and_eta():
    job = make_job(frames_total=100, frames_done=25, started_at=1000.0)
    assert job_progress(job) == 25.0
    assert job_eta(job, now=1100.0) == pytest.approx(300.0)  # 100 s for 25 frames, 75 to go
    assert job_eta(dict(job, state="succeeded"), now=1100.0) is None
    assert job_eta(dict(job, frames_done=0), now=1100.0) is None
    assert job_progress(make_job(frames_total=0, tasks_total=4, tasks_done=1)) == 25.0


def test_jobs_model_inserts_newest_first_and_updates_in_place(qtbot):
    model = JobsModel(clock=lambda: 1060.0)
    spy = Spy(model)
    model.apply([make_job(1, "a"), make_job(3, "c")])
    model.apply([make_job(2, "b")])
    assert [model.job(r)["id"] for r in range(3)] == [3, 2, 1]
    assert model.index(0, JobsModel.NAME).data() == "c  #3"
    model.apply([make_job(2, "b", frames_done=24)], event_ids=[10])
    assert spy.resets == 0
    assert spy.changed[-1] == (1, 1)
    assert model.index(1, JobsModel.PROGRESS).data(PROGRESS_ROLE) == 50.0
    assert model.index(1, JobsModel.FRAMES).data() == "24/48"
    assert model.index(1, JobsModel.ELAPSED).data() == "1m 00s"
    assert model.index(1, JobsModel.ETA).data() == "1m 00s"
    assert "bundle" in model.index(1, 0).data(TOOLTIP)
    # a snapshot taken before event 10 does not roll job 2 back
    model.apply([make_job(2, "b", frames_done=3), make_job(1, "a", state="failed")], anchor=5)
    assert model.job_by_id(2)["frames_done"] == 24
    assert model.job_by_id(1)["state"] == "failed"
    changed_before = len(spy.changed)
    model.tick()
    assert len(spy.changed) > changed_before  # time columns of running jobs refresh


def test_frames_model_10k_appends_once_then_updates_by_range(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    spy = Spy(model)
    model.apply([make_frame(f) for f in range(1, 10001)])
    assert model.rowCount() == 10000
    assert spy.inserted == [(0, 9999)]
    assert model.row_of("render", 5000) == 4999
    # a batch of updates: no reset, no insert, a few ranges
    updates = [make_frame(f, state="running") for f in range(100, 200)] + [make_frame(9000, state="done")]
    assert model.apply(updates, event_ids=list(range(1, 102))) == 101
    assert spy.resets == 0 and len(spy.inserted) == 1
    assert spy.changed == [(99, 198), (8999, 8999)]
    idx = model.index(8999)
    assert idx.data(DISPLAY) == "9000"
    assert idx.data(OBJECT_ROLE)["state"] == "done"
    assert isinstance(idx.data(BACKGROUND), QtGui.QColor)
    assert "attempt 1" in idx.data(TOOLTIP) and "render time" in idx.data(TOOLTIP)
    assert model.counts() == {"waiting": 9899, "running": 100, "done": 1}
    # other jobs' frames are ignored
    assert model.apply([make_frame(1, job_id=2, state="done")]) == 0


def test_frames_model_orders_steps_and_inserts_out_of_order(qtbot):
    model = FramesModel()
    model.set_job(1, ["sim", "render"])
    model.apply([make_frame(f, step="render") for f in (1, 2, 3)])
    spy = Spy(model)
    model.apply([make_frame(f, step="sim") for f in (1, 2)] + [make_frame(0, step="render")])
    keys = [(model.frame(r)["step"], model.frame(r)["frame"]) for r in range(model.rowCount())]
    assert keys == [("sim", 1), ("sim", 2), ("render", 0), ("render", 1), ("render", 2), ("render", 3)]
    assert spy.resets == 0 and spy.inserted == [(0, 2)]  # one group: sims and render 0 land together
    assert model.row_of("render", 3) == 5
    # many scattered inserts: one reset instead of hundreds of inserts
    model2 = FramesModel()
    model2.set_job(1, ["render"])
    model2.apply([make_frame(f) for f in range(0, 200, 2)])
    spy2 = Spy(model2)
    model2.apply([make_frame(f) for f in range(1, 200, 2)])
    assert spy2.resets == 1
    assert [model2.frame(r)["frame"] for r in range(200)] == list(range(200))
    assert model2.row_of("render", 151) == 151


def test_frames_snapshot_keeps_newer_event_state(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    model.apply([make_frame(5, state="done")], event_ids=[42])
    model.apply([make_frame(5, state="running"), make_frame(6, state="waiting")], anchor=40)
    assert model.frame(model.row_of("render", 5))["state"] == "done"
    assert model.frame(model.row_of("render", 6))["state"] == "waiting"
    model.apply([make_frame(5, state="failed")], anchor=42)  # snapshot newer than the event
    assert model.frame(model.row_of("render", 5))["state"] == "failed"


def test_thumbnails_requested_once_and_cached(qtbot):
    cache = ThumbnailCache(capacity=2)
    model = FramesModel(cache=cache)
    model.set_job(1, ["render"])
    wanted = []
    model.thumbnailWanted.connect(wanted.append)
    model.apply([make_frame(1, state="done"), make_frame(2, state="waiting")])
    assert model.index(0).data(THUMB_ROLE) is None
    assert model.index(0).data(THUMB_ROLE) is None
    assert model.index(1).data(THUMB_ROLE) is None
    assert wanted == [(1, "render", 1, 1)]  # one request, only for the done frame
    spy = Spy(model)
    image = decode_thumbnail(PNG, 32, 32)
    assert image is not None and image.width() <= 32 and image.height() <= 32
    model.set_thumbnail(wanted[0], image)
    assert spy.changed == [(0, 0)]
    assert model.index(0).data(THUMB_ROLE).size() == image.size()
    # LRU eviction
    cache.put(("x",), image)
    cache.put(("y",), image)
    assert wanted[0] not in cache and len(cache) == 2
    # a service without a thumbnail is not asked again until the frame is redone
    model.set_thumbnail((1, "render", 9, 1), None)
    assert (1, "render", 9, 1) in cache.missing
    assert decode_thumbnail(b"not a png", 10, 10) is None


def test_running_frames_show_task_progress(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    model.apply([make_frame(1, state="running", task_id=7)])
    assert model.index(0).data(PROGRESS_ROLE) is None
    rows = model.apply_tasks([make_task(7, frames=(1,), progress=40.0)])
    assert rows == [0]
    assert model.index(0).data(PROGRESS_ROLE) == 40.0
    assert "40%" in model.index(0).data(TOOLTIP)


def test_what_a_job_and_a_task_wait_for_is_shown(qtbot):
    jobs = JobsModel(clock=lambda: 1060.0)
    steps = [
        {"name": "export", "depends_on": [], "gpus": 0, "waiting_for": "resource houdini_engine"},
        {"name": "render", "depends_on": ["export"], "gpus": 0, "waiting_for": None},
    ]
    jobs.apply(
        [make_job(1, "lic", state="queued", steps=steps), make_job(2, "done", state="succeeded", steps=steps)]
    )
    by_id = {jobs.job(r)["id"]: r for r in range(2)}
    assert jobs.index(by_id[1], JobsModel.STATE).data() == "queued (waiting for resource houdini_engine)"
    assert "step export: waiting for resource houdini_engine" in jobs.index(by_id[1], 0).data(TOOLTIP)
    assert jobs.index(by_id[2], JobsModel.STATE).data() == "succeeded"  # a finished job waits for nothing

    frames = FramesModel()
    frames.set_job(1, ["render"])
    frames.apply([make_frame(1, task_id=7)])
    frames.apply_tasks([make_task(7, state="pending", waiting_for="licence back-off")])
    assert "(pending, waiting for licence back-off)" in frames.index(0).data(TOOLTIP)


class Sink:
    def __init__(self):
        self.batches = []
        self.messages = []

    def apply_batch(self, jobs, tasks, frames):
        self.batches.append((jobs, tasks, frames))

    def handle(self, msg):
        self.messages.append((msg, len(self.batches)))


def test_pump_coalesces_and_keeps_order(qtbot):
    sink = Sink()
    inbox = queue.Queue()
    pump = EventPump(sink, inbox)
    eid = 0

    def put(kind, obj):
        nonlocal eid
        eid += 1
        inbox.put(("event", Event(eid, kind, {kind: obj})))

    for state in ("waiting", "running", "done"):
        put("frame", make_frame(3, state=state))
    put("frame", make_frame(4, state="running"))
    put("job", make_job(1, frames_done=0))
    put("job", make_job(1, frames_done=1))
    inbox.put(("conn", "connected", "x"))
    put("task", make_task(2, state="succeeded"))
    assert pump.drain() == 7
    assert pump.last_event_id == 7
    assert len(sink.batches) == 2
    jobs, tasks, frames = sink.batches[0]
    assert [(i, f["frame"], f["state"]) for i, f in frames] == [(3, 3, "done"), (4, 4, "running")]
    assert [(i, j["frames_done"]) for i, j in jobs] == [(6, 1)]
    assert sink.messages == [(("conn", "connected", "x"), 1)]  # after the first batch, before the task
    assert sink.batches[1][1][0][1]["state"] == "succeeded"
    assert pump.drain() == 0


def test_pump_stops_at_its_budget(qtbot):
    sink = Sink()
    inbox = queue.Queue()
    pump = EventPump(sink, inbox, budget_s=0.0)
    for i in range(1, 1001):
        inbox.put(("event", Event(i, "frame", {"frame": make_frame(i)})))
    first = pump.drain()
    assert first == 64  # checks the clock every 64 events
    total = first
    while not inbox.empty():
        total += pump.drain()
    assert total == 1000 and pump.last_event_id == 1000


def test_known_bad_binding_is_named():
    assert "6.12.0" in binding_problem("PySide6", "6.12.0", (3, 11))
    assert binding_problem("PySide6", "6.12.0", (3, 12)) == ""
    assert binding_problem("PySide6", "6.11.3", (3, 11)) == ""
    assert binding_problem("PySide2", "5.15.8", (3, 11)) == ""


def test_task_snapshot_keeps_newer_event_state(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    model.apply_tasks([make_task(3, state="succeeded")], event_ids=[50])
    model.apply_tasks([make_task(3, state="running"), make_task(4, state="pending")], anchor=49)
    assert model.tasks[3]["state"] == "succeeded" and model.tasks[4]["state"] == "pending"
