"""Background work of the panel: the event stream, one-off requests, thumbnails, log tails.

Worker threads never touch a Qt object that lives in the GUI thread. They put plain
messages (tuples) into one thread-safe ``queue.Queue``; the ``EventPump`` drains that queue
from a ``QTimer`` in the GUI thread every ~50 ms, coalesces repeated updates of the same
job/task/frame within a batch, and hands each batch to the panel. So a burst of 10,000
frame events costs the GUI thread a few short batches, never one long stall, and a worker
outliving its widget just writes into a queue nobody reads.

Messages (first element is the kind):

- ``("event", Event)``                       one event of the stream
- ``("conn", state, detail)``                connection state: connecting, connected, disconnected, error
- ``("jobs", anchor, [job, ...])``           snapshot of ``GET /jobs``
- ``("frames", job_id, anchor, [frame, ...])`` snapshot of ``GET /jobs/{id}/frames``
- ``("tasks", job_id, anchor, [task, ...])`` snapshot of ``GET /jobs/{id}/tasks``
- ``("thumb", key, QImage|None)``            a decoded thumbnail (None: the service has none)
- ``("log", task_id, text, generation)``     more log text of the tailed task
- ``("done", tag, result, error)``           a one-off request finished
"""

import queue
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..client import Client, ServiceError, ServiceUnavailable
from ..protocol import Backoff, EventKind, event_object
from .qt import QtCore, QtGui, Signal, qenum

ClientFactory = Callable[[], Client]

CONNECTING, CONNECTED, DISCONNECTED, ERROR = "connecting", "connected", "disconnected", "error"


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 300 else text[:297] + "..."


class _Thread(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_event = threading.Event()
        self._wake = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def wake(self) -> None:
        self._wake.set()

    def _put(self, inbox: "queue.Queue[Any]", msg: Any) -> bool:
        """Put into a bounded inbox, waiting while it is full (backpressure: a thread that
        parses a burst of events does not starve the GUI thread of the GIL); gives up once
        stopped, so a worker never hangs on a panel that was closed."""
        while not self.stopped:
            try:
                inbox.put(msg, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


class EventWorker(_Thread):
    """Follows ``/v1/events``: reports the connection state and resumes after drops.

    It drives the client's stream with ``reconnect=False`` so it can tell the panel when the
    connection is lost, and resumes with the last event id it saw (``Last-Event-ID``), so the
    panel misses nothing across a dropped connection or a service restart. Before the first
    stream it puts a jobs snapshot into the queue.
    """

    def __init__(
        self,
        client_factory: ClientFactory,
        inbox: "queue.Queue[Any]",
        last_event_id: Optional[int] = None,
        max_backoff: float = 3.0,
    ) -> None:
        super().__init__("hpcdock-events")
        self.client_factory = client_factory
        self.inbox = inbox
        self.last_event_id = last_event_id
        self.max_backoff = max_backoff
        self.events_seen = 0

    def run(self) -> None:
        client = self.client_factory()
        backoff = Backoff(maximum=self.max_backoff)
        state = None
        snapshot_needed = True
        while not self.stopped:
            try:
                if state != CONNECTED:
                    health = client.health()
                    if snapshot_needed:
                        cursor = self.last_event_id
                        if cursor is None:
                            cursor = _cursor_from(health)
                        jobs = client.jobs()
                        self._put(self.inbox, ("jobs", None, jobs))
                        if self.last_event_id is None:
                            self.last_event_id = cursor
                        snapshot_needed = False
                    state = CONNECTED
                    self._put(self.inbox, ("conn", CONNECTED, client.url))
                for event in client.events(last_event_id=self.last_event_id, reconnect=False):
                    if self.stopped:
                        return
                    self._put(self.inbox, ("event", event))
                    self.last_event_id = event.id
                    self.events_seen += 1
                    backoff.reset()
                    if self.events_seen & 31 == 0:
                        # a burst (a backlog after a reconnect) is parsed in pure Python and would
                        # hold the GIL for a whole switch interval (5 ms) at a time; every entry
                        # of the GUI thread into Python (a paint, a model's data()) would wait
                        # that long. Handing the GIL over every 32 events keeps those waits short.
                        time.sleep(0)
                # the service closed the stream (shutting down?): check it and resume
                state = None
            except ServiceUnavailable as exc:
                state = DISCONNECTED
                self._put(self.inbox, ("conn", DISCONNECTED, _describe(exc)))
            except ServiceError as exc:
                state = ERROR
                self._put(self.inbox, ("conn", ERROR, _describe(exc)))
            except Exception as exc:  # connection dropped mid-stream, timeouts, bad data
                state = DISCONNECTED
                self._put(self.inbox, ("conn", DISCONNECTED, _describe(exc)))
            if self.stopped:
                return
            self._sleep(backoff.next())


def _cursor_from(health: Dict[str, Any]) -> int:
    """Where to start the stream after a snapshot: the newest event id the service reports.

    A service that reports it (``last_event_id`` in ``/health``) lets the panel take a
    snapshot and follow from there without replaying history. Without it the stream
    starts at 0, which replays the whole event log: correct, only slower on a long-lived
    service.
    """
    value = health.get("last_event_id")
    return value if isinstance(value, int) else 0


class RequestWorker(_Thread):
    """Runs one-off requests (snapshots, cancel, retry) in order, off the GUI thread."""

    def __init__(self, client_factory: ClientFactory, inbox: "queue.Queue[Any]") -> None:
        super().__init__("hpcdock-requests")
        self.client_factory = client_factory
        self.inbox = inbox
        self.jobs: queue.Queue[Optional[Tuple[str, Callable[[Client], Any]]]] = queue.Queue()

    def submit(self, tag: str, fn: Callable[[Client], Any]) -> None:
        self.jobs.put((tag, fn))

    def stop(self) -> None:
        super().stop()
        self.jobs.put(None)

    def run(self) -> None:
        client = self.client_factory()
        while not self.stopped:
            item = self.jobs.get()
            if item is None or self.stopped:
                return
            tag, fn = item
            try:
                result = fn(client)
            except Exception as exc:
                self._put(self.inbox, ("done", tag, None, exc))
            else:
                if isinstance(result, tuple) and result and result[0] in ("jobs", "frames", "tasks"):
                    self._put(self.inbox, result)
                else:
                    self._put(self.inbox, ("done", tag, result, None))


def decode_thumbnail(data: bytes, max_w: int, max_h: int) -> Optional[QtGui.QImage]:
    """PNG bytes -> a QImage no larger than the grid cell (QImage is safe off the GUI thread)."""
    image = QtGui.QImage()
    if not image.loadFromData(data):
        return None
    if image.width() > max_w or image.height() > max_h:
        image = image.scaled(
            max_w,
            max_h,
            qenum(QtCore.Qt, "AspectRatioMode", "KeepAspectRatio"),
            qenum(QtCore.Qt, "TransformationMode", "SmoothTransformation"),
        )
    return image


class ThumbnailWorker(_Thread):
    """Fetches thumbnails newest request first (the cells just scrolled into view)."""

    def __init__(
        self, client_factory: ClientFactory, inbox: "queue.Queue[Any]", size: Tuple[int, int] = (128, 96)
    ) -> None:
        super().__init__("hpcdock-thumbnails")
        self.client_factory = client_factory
        self.inbox = inbox
        self.size = size
        self._lock = threading.Lock()
        self._wanted: List[Tuple[Any, ...]] = []
        self.fetched = 0

    def request(self, key: Tuple[Any, ...]) -> None:
        with self._lock:
            self._wanted.append(key)
        self.wake()

    def forget(self, job_id: Any) -> None:
        """Keep only the queued requests of the job now shown."""
        with self._lock:
            self._wanted = [k for k in self._wanted if k[0] == job_id]

    def run(self) -> None:
        client = self.client_factory()
        while not self.stopped:
            with self._lock:
                key = self._wanted.pop() if self._wanted else None
            if key is None:
                self._sleep(1.0)
                continue
            job_id, step, frame = key[0], key[1], key[2]
            try:
                data = client.thumbnail(job_id, frame, step=step)
                image = decode_thumbnail(data, *self.size)
            except ServiceUnavailable:
                with self._lock:
                    self._wanted.append(key)
                self._sleep(1.0)
                continue
            except Exception:
                image = None
            self.fetched += 1
            self._put(self.inbox, ("thumb", key, image))


class LogTailer(_Thread):
    """Polls ``GET /tasks/{id}/log?offset=N`` while the task runs, then reads the rest once."""

    def __init__(
        self,
        client_factory: ClientFactory,
        inbox: "queue.Queue[Any]",
        task_id: int,
        generation: int,
        running: bool = True,
        interval: float = 0.5,
        max_chunk_chars: int = 2_000_000,
    ) -> None:
        super().__init__(f"hpcdock-log-{task_id}")
        self.client_factory = client_factory
        self.inbox = inbox
        self.task_id = task_id
        self.generation = generation
        self.interval = interval
        self.offset = 0
        self.max_chunk_chars = max_chunk_chars
        self._running = threading.Event()
        if running:
            self._running.set()

    def set_running(self, running: bool) -> None:
        if running:
            self._running.set()
        else:
            self._running.clear()
            self.wake()

    def run(self) -> None:
        client = self.client_factory()
        while not self.stopped:
            running = self._running.is_set()
            try:
                text, self.offset = client.log(self.task_id, self.offset)
            except ServiceError as exc:
                if exc.status == 404:  # no log yet (task still pending)
                    text = ""
                elif isinstance(exc, ServiceUnavailable):
                    self._sleep(1.0)
                    continue
                else:
                    self._put(
                        self.inbox,
                        ("log", self.task_id, f"\n[log unavailable: {_describe(exc)}]\n", self.generation),
                    )
                    return
            except Exception as exc:
                self._put(
                    self.inbox,
                    ("log", self.task_id, f"\n[log unavailable: {_describe(exc)}]\n", self.generation),
                )
                return
            if text and not self.stopped:
                if len(text) > self.max_chunk_chars:
                    text = "[...]\n" + text[-self.max_chunk_chars :]
                self._put(self.inbox, ("log", self.task_id, text, self.generation))
            if not running and not text:
                return  # the task had ended before this read: all of it is in
            self._sleep(self.interval if running else 0.05)


class EventPump(QtCore.QObject):
    """Drains the inbox on a timer in the GUI thread and applies batches to a sink.

    ``sink`` has ``apply_batch(jobs, tasks, frames)`` taking lists of
    ``(event_id, object)`` with repeated updates of one object coalesced to the newest,
    and ``handle(message)`` for every other message, in queue order.
    """

    batchApplied = Signal(int)  # events in the batch

    def __init__(
        self,
        sink: Any,
        inbox: "Optional[queue.Queue[Any]]" = None,
        interval_ms: int = 50,
        budget_s: float = 0.008,
        max_events: int = 1500,
        busy_interval_ms: int = 8,
        parent: Optional[QtCore.QObject] = None,
    ) -> None:
        super().__init__(parent)
        # weak: the sink (the panel) usually owns the pump; a strong reference back would make a
        # reference cycle that Python's collector may free from a worker thread, and Qt objects
        # must be destroyed in the GUI thread
        self._sink = weakref.ref(sink)
        self.inbox: queue.Queue[Any] = inbox if inbox is not None else queue.Queue()
        self.budget_s = budget_s
        self.max_events = max_events
        self.interval_ms = interval_ms
        self.busy_interval_ms = busy_interval_ms
        self.last_event_id: Optional[int] = None
        self.events_applied = 0
        self.batches = 0
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.drain)

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    @property
    def sink(self) -> Any:
        return self._sink()

    def drain(self) -> int:
        """Apply what is queued, for at most ``budget_s`` of reading; returns events applied."""
        sink = self.sink
        if sink is None:
            self.timer.stop()
            return 0
        deadline = time.perf_counter() + self.budget_s
        jobs: Dict[Any, Tuple[int, Any]] = {}
        tasks: Dict[Any, Tuple[int, Any]] = {}
        frames: Dict[Any, Tuple[int, Any]] = {}
        count = 0
        get = self.inbox.get_nowait
        while True:
            try:
                msg = get()
            except queue.Empty:
                break
            if msg[0] == "event":
                event = msg[1]
                obj = event_object(event.kind, event.data)
                if event.kind == EventKind.FRAME:
                    frames[(obj.get("job_id"), obj.get("step"), obj.get("frame"))] = (event.id, obj)
                elif event.kind == EventKind.TASK:
                    tasks[obj.get("id")] = (event.id, obj)
                elif event.kind == EventKind.JOB:
                    jobs[obj.get("id")] = (event.id, obj)
                if self.last_event_id is None or event.id > self.last_event_id:
                    self.last_event_id = event.id
                count += 1
                # a batch is bounded by count and by reading time (the clock is read every 64
                # events), so applying it stays short; what is left goes in the next batch
                if count >= self.max_events or (count & 63 == 0 and time.perf_counter() > deadline):
                    break
            else:
                if jobs or tasks or frames:  # keep order: what came before applies first
                    self._apply(sink, jobs, tasks, frames)
                    jobs, tasks, frames = {}, {}, {}
                sink.handle(msg)
        if jobs or tasks or frames:
            self._apply(sink, jobs, tasks, frames)
        if count:
            self.events_applied += count
            self.batchApplied.emit(count)
        # a backlog is drained in short batches a few ms apart, so paints and input get in
        busy = not self.inbox.empty()
        wanted = self.busy_interval_ms if busy else self.interval_ms
        if self.timer.interval() != wanted:
            self.timer.setInterval(wanted)
        return count

    def _apply(
        self,
        sink: Any,
        jobs: Dict[Any, Tuple[int, Any]],
        tasks: Dict[Any, Tuple[int, Any]],
        frames: Dict[Any, Tuple[int, Any]],
    ) -> None:
        self.batches += 1
        sink.apply_batch(list(jobs.values()), list(tasks.values()), list(frames.values()))
