"""The monitor panel: jobs, the frame grid of the selected job, the log of a task, actions.

Pure Qt (through ``hpcdock.panel.qt``); it talks to the service only through ``hpcdock.client`` and
to its host application only through ``hpcdock.panel.host.Host``.
"""

import queue
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..client import Client
from ..protocol import JOB_ACTIVE, TASK_ACTIVE, frame_runs
from . import service as service_launcher
from .host import Host, default_host
from .models import (
    OBJECT_ROLE,
    PROGRESS_ROLE,
    STATE_COLORS,
    THUMB_ROLE,
    FramesModel,
    JobsModel,
    ThumbnailCache,
    flag_lines,
    frame_spans,
    job_fps,
)
from .qt import QtCore, QtGui, QtWidgets, Signal, qenum
from .viewers import FlipbookWindow, FrameImage, ImageWindow
from .worker import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    EventPump,
    EventWorker,
    LogTailer,
    RequestWorker,
    ThumbnailWorker,
)

QStyle = QtWidgets.QStyle
CELL = QtCore.QSize(72, 54)
INBOX_SIZE = 4000


_SELECTED = qenum(QStyle, "StateFlag", "State_Selected")
_KEEP_ASPECT = qenum(QtCore.Qt, "AspectRatioMode", "KeepAspectRatio")


def _state_selected(option: Any) -> bool:
    return bool(option.state & _SELECTED)


class ProgressDelegate(QtWidgets.QStyledItemDelegate):
    """Draws the job's progress as a bar (PROGRESS_ROLE, 0..100)."""

    def paint(self, painter: QtGui.QPainter, option: Any, index: QtCore.QModelIndex) -> None:
        value = index.data(PROGRESS_ROLE)
        if value is None:
            super().paint(painter, option, index)
            return
        bar = QtWidgets.QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 3, -2, -3)
        bar.minimum, bar.maximum = 0, 100
        bar.progress = int(round(value))
        bar.text = f"{value:.0f}%"
        bar.textVisible = True
        bar.state = option.state | qenum(QStyle, "StateFlag", "State_Horizontal")
        style = option.widget.style() if option.widget is not None else QtWidgets.QApplication.style()
        style.drawControl(qenum(QStyle, "ControlElement", "CE_ProgressBar"), bar, painter, option.widget)


BADGE_COLOR = "#ff9f1c"
BADGE_SIZE = 14


def badge_rect(cell: QtCore.QRect) -> QtCore.QRect:
    """Where a flagged frame's badge goes in its cell: the top right corner."""
    return QtCore.QRect(cell.right() - BADGE_SIZE - 2, cell.top() + 3, BADGE_SIZE, BADGE_SIZE)


class FrameDelegate(QtWidgets.QStyledItemDelegate):
    """One cell per frame: state colour, thumbnail once done, frame number, task progress,
    and a badge on a frame the service's output checks flagged (the reasons are in the tooltip)."""

    def __init__(self, parent: Optional[QtCore.QObject] = None, cell: QtCore.QSize = CELL) -> None:
        super().__init__(parent)
        self.cell = cell
        self._colors = {k: QtGui.QColor(v) for k, v in STATE_COLORS.items()}
        self._text = QtGui.QColor("#f0f0f0")
        self._highlight = QtGui.QColor("#f5c542")
        self._shade = QtGui.QColor(0, 0, 0, 150)
        self._badge = QtGui.QColor(BADGE_COLOR)
        self._badge_text = QtGui.QColor("#1a1a1a")

    def sizeHint(self, option: Any, index: QtCore.QModelIndex) -> QtCore.QSize:
        return self.cell

    def paint(self, painter: QtGui.QPainter, option: Any, index: QtCore.QModelIndex) -> None:
        model = index.model()
        if isinstance(model, FramesModel):  # direct access: no QVariant round trip per cell
            frame = model.frame(index.row()) or {}
            image = model.data(index, THUMB_ROLE)
            progress = model.data(index, PROGRESS_ROLE)
        else:
            frame = index.data(OBJECT_ROLE) or {}
            image = index.data(THUMB_ROLE)
            progress = index.data(PROGRESS_ROLE)
        rect = option.rect.adjusted(1, 1, -1, -1)
        color = self._colors.get(frame.get("state") or "", self._colors["waiting"])
        painter.save()
        painter.fillRect(rect, color)
        if image is not None and not image.isNull():
            inner = rect.adjusted(2, 2, -2, -2)
            size = image.size().scaled(inner.size(), _KEEP_ASPECT)
            x = inner.x() + (inner.width() - size.width()) // 2
            y = inner.y() + (inner.height() - size.height()) // 2
            painter.drawImage(QtCore.QRect(x, y, size.width(), size.height()), image)
        if progress:
            bar = QtCore.QRect(
                rect.x(), rect.bottom() - 3, int(rect.width() * min(progress, 100.0) / 100.0), 4
            )
            painter.fillRect(bar, QtGui.QColor("#9cc7ff"))
        label = str(frame.get("frame", ""))
        metrics = painter.fontMetrics()
        box = QtCore.QRect(
            rect.x() + 1,
            rect.bottom() - metrics.height() - 1,
            metrics.horizontalAdvance(label) + 6,
            metrics.height() + 1,
        )
        if image is not None:
            painter.fillRect(box, self._shade)  # keep the number readable over the picture
        painter.setPen(self._text)
        painter.drawText(box.adjusted(3, 0, 0, 0), _BOTTOM_LEFT, label)
        if frame.get("flags"):
            self._paint_badge(painter, badge_rect(rect))
        if _state_selected(option):
            pen = QtGui.QPen(self._highlight)
            pen.setWidth(2)
            painter.setPen(pen)
            painter.drawRect(rect.adjusted(1, 1, -1, -1))
        painter.restore()

    def _paint_badge(self, painter: QtGui.QPainter, badge: QtCore.QRect) -> None:
        """A filled disc with "!" in it: readable over any thumbnail, even a black one."""
        painter.setRenderHint(_ANTIALIAS, True)
        painter.setPen(QtGui.QPen(QtGui.QColor("#1a1a1a"), 1))
        painter.setBrush(self._badge)
        painter.drawEllipse(badge)
        painter.setPen(self._badge_text)
        font = painter.font()
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(badge, _CENTER, "!")
        painter.setBrush(QtGui.QBrush())
        painter.setRenderHint(_ANTIALIAS, False)


_BOTTOM_LEFT = qenum(QtCore.Qt, "AlignmentFlag", "AlignLeft") | qenum(
    QtCore.Qt, "AlignmentFlag", "AlignBottom"
)
_CENTER = qenum(QtCore.Qt, "AlignmentFlag", "AlignCenter")
_ANTIALIAS = qenum(QtGui.QPainter, "RenderHint", "Antialiasing")


class FrameView(QtWidgets.QAbstractItemView):
    """A grid of uniform cells, one per row of a list model, row-major.

    Where a cell is follows from its row by arithmetic, so inserting 10,000 frames costs
    no layout pass (a QListView lays every item out again on each insert), and a paint
    touches only the cells in view.
    """

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None, cell: QtCore.QSize = CELL) -> None:
        super().__init__(parent)
        self.cell = cell
        self.setItemDelegate(FrameDelegate(self, cell))
        self.setSelectionMode(qenum(QtWidgets.QAbstractItemView, "SelectionMode", "ExtendedSelection"))
        self.setSelectionBehavior(qenum(QtWidgets.QAbstractItemView, "SelectionBehavior", "SelectItems"))
        self.setMouseTracking(True)
        self.verticalScrollBar().setSingleStep(cell.height())
        self.setHorizontalScrollBarPolicy(qenum(QtCore.Qt, "ScrollBarPolicy", "ScrollBarAlwaysOff"))

    # -- geometry -----------------------------------------------------------------------
    def columns(self) -> int:
        return max(1, self.viewport().width() // self.cell.width())

    def _count(self) -> int:
        model = self.model()
        return model.rowCount() if model is not None else 0

    def _rect_of_row(self, row: int) -> QtCore.QRect:
        cols = self.columns()
        x = (row % cols) * self.cell.width()
        y = (row // cols) * self.cell.height() - self.verticalScrollBar().value()
        return QtCore.QRect(x, y, self.cell.width(), self.cell.height())

    def visualRect(self, index: QtCore.QModelIndex) -> QtCore.QRect:
        if not index.isValid() or index.row() >= self._count():
            return QtCore.QRect()
        return self._rect_of_row(index.row())

    def indexAt(self, point: QtCore.QPoint) -> QtCore.QModelIndex:
        model = self.model()
        if model is None or point.x() < 0:
            return QtCore.QModelIndex()
        cols = self.columns()
        col = point.x() // self.cell.width()
        if col >= cols:
            return QtCore.QModelIndex()
        line = (point.y() + self.verticalScrollBar().value()) // self.cell.height()
        row = line * cols + col
        if point.y() + self.verticalScrollBar().value() < 0 or row >= self._count():
            return QtCore.QModelIndex()
        return model.index(row, 0)

    def scrollTo(self, index: QtCore.QModelIndex, hint: Any = None) -> None:
        if not index.isValid():
            return
        rect = self._rect_of_row(index.row())
        bar = self.verticalScrollBar()
        if rect.top() < 0:
            bar.setValue(bar.value() + rect.top())
        elif rect.bottom() > self.viewport().height():
            bar.setValue(bar.value() + rect.bottom() - self.viewport().height() + 1)

    def horizontalOffset(self) -> int:
        return 0

    def verticalOffset(self) -> int:
        return self.verticalScrollBar().value()

    def isIndexHidden(self, index: QtCore.QModelIndex) -> bool:
        return False

    def updateGeometries(self) -> None:
        lines = -(-self._count() // self.columns())
        bar = self.verticalScrollBar()
        page = self.viewport().height()
        bar.setPageStep(max(self.cell.height(), page))
        bar.setRange(0, max(0, lines * self.cell.height() - page))
        super().updateGeometries()

    def moveCursor(self, action: Any, modifiers: Any) -> QtCore.QModelIndex:
        model = self.model()
        count = self._count()
        if model is None or not count:
            return QtCore.QModelIndex()
        current = self.currentIndex()
        row = current.row() if current.isValid() else 0
        cols = self.columns()
        page = max(1, self.viewport().height() // self.cell.height()) * cols
        moves = {
            "MoveLeft": -1,
            "MoveRight": 1,
            "MoveUp": -cols,
            "MoveDown": cols,
            "MovePrevious": -1,
            "MoveNext": 1,
            "MovePageUp": -page,
            "MovePageDown": page,
        }
        for name, delta in moves.items():
            if action == qenum(QtWidgets.QAbstractItemView, "CursorAction", name):
                row += delta
                break
        else:
            if action == qenum(QtWidgets.QAbstractItemView, "CursorAction", "MoveHome"):
                row = 0
            elif action == qenum(QtWidgets.QAbstractItemView, "CursorAction", "MoveEnd"):
                row = count - 1
        return model.index(min(max(row, 0), count - 1), 0)

    def _rows_in(self, rect: QtCore.QRect) -> List[int]:
        """Rows whose cells intersect ``rect`` (viewport coordinates)."""
        count = self._count()
        if not count:
            return []
        cols = self.columns()
        off = self.verticalScrollBar().value()
        top = max(0, (rect.top() + off) // self.cell.height())
        bottom = (rect.bottom() + off) // self.cell.height()
        left = max(0, rect.left() // self.cell.width())
        right = min(cols - 1, rect.right() // self.cell.width())
        rows: List[int] = []
        for line in range(top, bottom + 1):
            first = line * cols + left
            if first >= count:
                break
            rows.extend(range(first, min(line * cols + right + 1, count)))
        return rows

    def setSelection(self, rect: QtCore.QRect, flags: Any) -> None:
        model = self.model()
        if model is None:
            return
        selection = QtCore.QItemSelection()
        for first, last in frame_runs(self._rows_in(rect.normalized())):
            selection.select(model.index(first, 0), model.index(last, 0))
        self.selectionModel().select(selection, flags)

    def visualRegionForSelection(self, selection: QtCore.QItemSelection) -> QtGui.QRegion:
        region = QtGui.QRegion()
        viewport = self.viewport().rect()
        for rng in selection:
            for row in range(rng.top(), rng.bottom() + 1):
                rect = self._rect_of_row(row)
                if rect.intersects(viewport):
                    region += rect
        return region

    # -- reacting to the model ----------------------------------------------------------
    def rowsInserted(self, parent: QtCore.QModelIndex, first: int, last: int) -> None:
        super().rowsInserted(parent, first, last)
        self.updateGeometries()
        self.viewport().update()

    def rowsAboutToBeRemoved(self, parent: QtCore.QModelIndex, first: int, last: int) -> None:
        super().rowsAboutToBeRemoved(parent, first, last)
        QtCore.QTimer.singleShot(0, self.updateGeometries)

    def reset(self) -> None:
        super().reset()
        self.verticalScrollBar().setValue(0)
        self.updateGeometries()

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
        self.updateGeometries()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        self.viewport().update()

    # -- painting -----------------------------------------------------------------------
    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        model = self.model()
        if model is None:
            return
        painter = QtGui.QPainter(self.viewport())
        option = QtWidgets.QStyleOptionViewItem()
        option.initFrom(self)
        base_state = option.state
        delegate = self.itemDelegate()
        selection = self.selectionModel()
        current = self.currentIndex()
        for row in self._rows_in(event.rect()):
            index = model.index(row, 0)
            option.rect = self._rect_of_row(row)
            state = base_state
            if selection is not None and selection.isSelected(index):
                state = state | _SELECTED
            option.state = state
            delegate.paint(painter, option, index)
            if index == current and self.hasFocus():
                painter.setPen(
                    QtGui.QPen(QtGui.QColor("#ffffff"), 1, qenum(QtCore.Qt, "PenStyle", "DotLine"))
                )
                painter.drawRect(option.rect.adjusted(1, 1, -2, -2))
        painter.end()


class MonitorPanel(QtWidgets.QWidget):
    """The whole panel. ``client_factory`` makes one Client per worker thread."""

    connectionChanged = Signal(str, str)
    message = Signal(str)

    def __init__(
        self,
        client_factory: Optional[Callable[[], Client]] = None,
        host: Optional[Host] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        parent: Optional[QtWidgets.QWidget] = None,
        start: bool = True,
        pump_interval_ms: int = 50,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("hpcdockMonitorPanel")
        if client_factory is None:

            def client_factory() -> Client:
                return Client(url=url, token=token)

        self.client_factory = client_factory
        self.host = host or default_host()
        self.url = url or client_factory().url
        # bounded: a worker that reads a burst waits for the GUI thread instead of racing it
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=INBOX_SIZE)
        self.pump = EventPump(self, self.inbox, interval_ms=pump_interval_ms, parent=self)
        self.cache = ThumbnailCache()
        self.jobs_model = JobsModel(self)
        self.frames_model = FramesModel(self, cache=self.cache)
        self.connection_state = CONNECTING
        self.connection_detail = ""
        self.events_worker: Optional[EventWorker] = None
        self.requests: Optional[RequestWorker] = None
        self.thumbs: Optional[ThumbnailWorker] = None
        self.tailer: Optional[LogTailer] = None
        self._log_generation = 0
        self._tail_task: Optional[Tuple[int, Any]] = None  # (task id, attempt)
        self._pending_select: Optional[int] = None
        self._auto_select = True
        self.log_text_chars = 0
        self.image_window: Optional[ImageWindow] = None
        self.flipbook: Optional[FlipbookWindow] = None
        self._labels_dirty = False
        self._connected_before = False
        self._build()
        self.frames_model.thumbnailWanted.connect(self._want_thumbnail)
        self.tick_timer = QtCore.QTimer(self)  # elapsed/ETA columns, once a second
        self.tick_timer.setInterval(1000)
        self.tick_timer.timeout.connect(self._tick)
        self.label_timer = QtCore.QTimer(self)  # summary labels: at most 4 times a second
        self.label_timer.setInterval(250)
        self.label_timer.timeout.connect(self._refresh_labels)
        if start:
            self.start()

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.conn_label = QtWidgets.QLabel(self)
        self.conn_label.setObjectName("connection")
        self.start_button = QtWidgets.QPushButton("Start hpcdock-service", self)
        self.start_button.setToolTip(
            "Start hpcdock-service in the background (found next to this Python or on PATH)"
        )
        self.start_button.clicked.connect(self.start_service)
        self.start_button.hide()
        self.cancel_button = QtWidgets.QPushButton("Cancel job", self)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.retry_button = QtWidgets.QPushButton("Retry failed", self)
        self.retry_button.clicked.connect(self.retry_selected)
        self.copy_button = QtWidgets.QPushButton("Copy output path", self)
        self.copy_button.setToolTip("The selected frames' outputs, or the job's output directory")
        self.copy_button.clicked.connect(self.copy_output_path)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.conn_label)
        top.addWidget(self.start_button)
        top.addStretch(1)
        for button in (self.cancel_button, self.retry_button, self.copy_button):
            top.addWidget(button)

        self.jobs_view = QtWidgets.QTableView(self)
        self.jobs_view.setModel(self.jobs_model)
        self.jobs_view.setSelectionBehavior(
            qenum(QtWidgets.QAbstractItemView, "SelectionBehavior", "SelectRows")
        )
        self.jobs_view.setSelectionMode(
            qenum(QtWidgets.QAbstractItemView, "SelectionMode", "SingleSelection")
        )
        self.jobs_view.verticalHeader().hide()
        self.jobs_view.setAlternatingRowColors(True)
        self.jobs_view.setItemDelegateForColumn(JobsModel.PROGRESS, ProgressDelegate(self.jobs_view))
        header = self.jobs_view.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(JobsModel.NAME, qenum(QtWidgets.QHeaderView, "ResizeMode", "Stretch"))
        for column, width in (
            (JobsModel.STATE, 90),
            (JobsModel.PROGRESS, 160),
            (JobsModel.FRAMES, 170),
            (JobsModel.ELAPSED, 80),
            (JobsModel.ETA, 80),
        ):
            header.resizeSection(column, width)
        self.jobs_view.verticalHeader().setDefaultSectionSize(24)
        self.jobs_view.selectionModel().currentRowChanged.connect(self._job_row_changed)

        self.frames_label = QtWidgets.QLabel("Frames", self)
        self.flipbook_button = QtWidgets.QPushButton("Flipbook", self)
        self.flipbook_button.setToolTip("Play the finished frames in order at the job's frame rate")
        self.flipbook_button.clicked.connect(self.play_flipbook)
        self.retry_frames_button = QtWidgets.QPushButton("Retry frames", self)
        self.retry_frames_button.setToolTip("Render the selected frames again (new attempts, history kept)")
        self.retry_frames_button.clicked.connect(self.retry_frames)
        self.retry_flagged_button = QtWidgets.QPushButton("Retry flagged", self)
        self.retry_flagged_button.setToolTip("Render again every frame the output checks flagged")
        self.retry_flagged_button.clicked.connect(self.retry_flagged)
        self.frames_view = FrameView(self)
        self.frames_view.setModel(self.frames_model)
        self.frames_view.selectionModel().currentChanged.connect(self._frame_changed)
        self.frames_view.selectionModel().selectionChanged.connect(self._update_frame_actions)
        self.frames_view.doubleClicked.connect(self._frame_double_clicked)
        self.frames_view.setContextMenuPolicy(qenum(QtCore.Qt, "ContextMenuPolicy", "CustomContextMenu"))
        self.frames_view.customContextMenuRequested.connect(self._frame_menu_requested)
        self.frame_info = QtWidgets.QLabel("", self)
        self.frame_info.setObjectName("frameInfo")
        self.frame_info.setWordWrap(True)
        self.frame_info.setTextInteractionFlags(
            qenum(QtCore.Qt, "TextInteractionFlag", "TextSelectableByMouse")
        )
        frames_head = QtWidgets.QHBoxLayout()
        frames_head.addWidget(self.frames_label, 1)
        for button in (self.flipbook_button, self.retry_frames_button, self.retry_flagged_button):
            frames_head.addWidget(button)
        frames_box = QtWidgets.QWidget(self)
        frames_layout = QtWidgets.QVBoxLayout(frames_box)
        frames_layout.setContentsMargins(0, 0, 0, 0)
        frames_layout.addLayout(frames_head)
        frames_layout.addWidget(self.frames_view)
        frames_layout.addWidget(self.frame_info)

        self.log_label = QtWidgets.QLabel("Log: select a frame to follow its task", self)
        self.log_view = QtWidgets.QPlainTextEdit(self)
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(20000)
        self.log_view.setLineWrapMode(qenum(QtWidgets.QPlainTextEdit, "LineWrapMode", "NoWrap"))
        font = QtGui.QFontDatabase.systemFont(qenum(QtGui.QFontDatabase, "SystemFont", "FixedFont"))
        self.log_view.setFont(font)
        log_box = QtWidgets.QWidget(self)
        log_layout = QtWidgets.QVBoxLayout(log_box)
        log_layout.setContentsMargins(0, 0, 0, 0)
        log_layout.addWidget(self.log_label)
        log_layout.addWidget(self.log_view)

        bottom = QtWidgets.QSplitter(qenum(QtCore.Qt, "Orientation", "Horizontal"), self)
        bottom.addWidget(frames_box)
        bottom.addWidget(log_box)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        split = QtWidgets.QSplitter(qenum(QtCore.Qt, "Orientation", "Vertical"), self)
        split.addWidget(self.jobs_view)
        split.addWidget(bottom)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 4)
        split.setSizes([150, 600])
        bottom.setSizes([600, 400])

        self.status_label = QtWidgets.QLabel("", self)
        self.status_label.setObjectName("status")
        self.message.connect(self.status_label.setText)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        layout.addWidget(self.status_label)
        self._show_connection(CONNECTING, self.url)
        self._update_actions()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self.events_worker is not None:
            return
        self.requests = RequestWorker(self.client_factory, self.inbox)
        self.thumbs = ThumbnailWorker(
            self.client_factory, self.inbox, size=(CELL.width() - 6, CELL.height() - 6)
        )
        self.events_worker = EventWorker(self.client_factory, self.inbox)
        for worker in (self.requests, self.thumbs, self.events_worker):
            worker.start()
        self.pump.start()
        self.tick_timer.start()
        self.label_timer.start()

    def shutdown(self) -> None:
        """Stop timers and worker threads (the panel is being closed)."""
        self.pump.stop()
        self.tick_timer.stop()
        self.label_timer.stop()
        for worker in (self.events_worker, self.requests, self.thumbs, self.tailer):
            if worker is not None:
                worker.stop()
        self.events_worker = self.requests = self.thumbs = self.tailer = None

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    # -- the pump's sink ----------------------------------------------------------------
    def apply_batch(
        self,
        jobs: Sequence[Tuple[int, Dict[str, Any]]],
        tasks: Sequence[Tuple[int, Dict[str, Any]]],
        frames: Sequence[Tuple[int, Dict[str, Any]]],
    ) -> None:
        if jobs:
            new_ids = [o.get("id") for _, o in jobs if self.jobs_model.row_of(o.get("id")) is None]
            self.jobs_model.apply([o for _, o in jobs], event_ids=[i for i, _ in jobs])
            shown = self.frames_model.job_id
            for _, job in jobs:
                if job.get("id") == shown:
                    self.frames_model.set_steps([s.get("name") for s in job.get("steps") or ()])
            self._maybe_follow(new_ids)
        shown = self.frames_model.job_id
        if tasks and shown is not None:
            mine = [(i, o) for i, o in tasks if o.get("job_id") == shown]
            if mine:
                self.frames_model.apply_tasks([o for _, o in mine], event_ids=[i for i, _ in mine])
                self._task_updated([o for _, o in mine])
        if frames and shown is not None:
            mine = [(i, o) for i, o in frames if o.get("job_id") == shown]
            if mine:
                self.frames_model.apply([o for _, o in mine], event_ids=[i for i, _ in mine])
                self._labels_dirty = True
        if jobs:
            self._update_actions()

    def handle(self, msg: Tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "conn":
            was = self.connection_state
            self._show_connection(msg[1], msg[2])
            if msg[1] == CONNECTED and was != CONNECTED and self._connected_before:
                # the stream resumes where it left off; the snapshots are asked again only in
                # case the shown job's were lost to the outage (they merge, never roll back)
                self._request_snapshots(self.frames_model.job_id)
            if msg[1] == CONNECTED:
                self._connected_before = True
        elif kind == "jobs":
            self.jobs_model.apply(msg[2], anchor=msg[1])
            if self._pending_select is not None and self.jobs_model.row_of(self._pending_select) is not None:
                self.select_job(self._pending_select)
            elif self.selected_job() is None and self.jobs_model.rowCount() and self._auto_select:
                self.jobs_view.selectRow(0)
            self._update_actions()
        elif kind == "frames":
            if msg[1] == self.frames_model.job_id:
                self.frames_model.apply(msg[3], anchor=msg[2])
                self._update_frames_label()
                self._update_frame_actions()
        elif kind == "tasks":
            if msg[1] == self.frames_model.job_id:
                self.frames_model.apply_tasks(msg[3], anchor=msg[2])
                self._task_updated([self.frames_model.tasks.get(t.get("id")) or t for t in msg[3]])
        elif kind == "thumb":
            self.frames_model.set_thumbnail(msg[1], msg[2])
        elif kind == "log":
            if msg[3] == self._log_generation:
                self._append_log(msg[2])
        elif kind == "done":
            tag, result, error = msg[1], msg[2], msg[3]
            if error is not None:
                self.message.emit(f"{tag} failed: {error}")
            elif isinstance(result, str):
                self.message.emit(result)

    # -- connection ---------------------------------------------------------------------
    def _show_connection(self, state: str, detail: str) -> None:
        self.connection_state, self.connection_detail = state, detail or ""
        color = {CONNECTED: "#2e8b45", CONNECTING: "#c9a227"}.get(state, "#b8332e")
        if state == CONNECTED:
            text = f"connected to {detail}"
        elif state == CONNECTING:
            text = f"connecting to {detail}…"
        elif state == DISCONNECTED:
            text = f"no service at {self.url}: reconnecting…"
        else:
            text = f"service error: {detail}"
        self.conn_label.setText(f'<span style="color:{color}">●</span> {text}')
        self.conn_label.setToolTip(detail or "")
        self.start_button.setVisible(state == DISCONNECTED)
        self.connectionChanged.emit(state, self.connection_detail)

    def start_service(self) -> bool:
        try:
            proc = service_launcher.start_service()
        except Exception as exc:
            self.message.emit(f"could not start hpcdock-service: {exc}")
            return False
        self.message.emit(f"started hpcdock-service (pid {proc.pid}); connecting…")
        self.start_button.hide()
        if self.events_worker is not None:
            self.events_worker.wake()
        return True

    # -- selection ----------------------------------------------------------------------
    def selected_job(self) -> Optional[Dict[str, Any]]:
        index = self.jobs_view.selectionModel().currentIndex()
        if not index.isValid():
            return None
        return self.jobs_model.job(index.row())

    def select_job(self, job_id: int) -> bool:
        row = self.jobs_model.row_of(job_id)
        if row is None:
            self._pending_select = job_id
            return False
        self._pending_select = None
        self.jobs_view.selectRow(row)
        return True

    def _maybe_follow(self, new_ids: List[Any]) -> None:
        """A job submitted while the panel is open is shown unless the user watches a live one."""
        if not new_ids or not self._auto_select:
            return
        pending = self._pending_select
        if pending is not None and pending in new_ids:
            self.select_job(pending)
            return
        current = self.selected_job()
        if current is None or current.get("state") not in JOB_ACTIVE:
            self.select_job(max(i for i in new_ids if i is not None))

    def _job_row_changed(self, current: QtCore.QModelIndex, previous: QtCore.QModelIndex) -> None:
        job = self.jobs_model.job(current.row()) if current.isValid() else None
        self._show_job(job)

    def _show_job(self, job: Optional[Dict[str, Any]]) -> None:
        job_id = job.get("id") if job else None
        if job_id == self.frames_model.job_id:
            return
        self._stop_tail()
        self.frames_model.set_job(job_id, [s.get("name") for s in (job or {}).get("steps") or ()])
        self._update_frames_label()
        self._update_actions()
        if job_id is None:
            return
        if self.thumbs is not None:
            self.thumbs.forget(job_id)
        self._request_snapshots(job_id)

    def _request_snapshots(self, job_id: Optional[int]) -> None:
        """Ask for the frames and tasks of a job; events newer than now win over them."""
        if job_id is None or self.requests is None:
            return
        anchor = self.pump.last_event_id if self.pump.last_event_id is not None else -1
        self.requests.submit("frames", lambda c: ("frames", job_id, anchor, c.frames(job_id)))
        self.requests.submit("tasks", lambda c: ("tasks", job_id, anchor, c.tasks(job_id)))

    def _frame_changed(self, current: QtCore.QModelIndex, previous: QtCore.QModelIndex) -> None:
        frame = self.frames_model.frame(current.row()) if current.isValid() else None
        self._show_frame_info(frame)
        if frame and frame.get("task_id") is not None:
            self.tail_task(frame["task_id"])

    def _show_frame_info(self, frame: Optional[Dict[str, Any]]) -> None:
        """The current frame in one line, and its flags below it (the tooltip's reasons, always in view)."""
        if not frame:
            self.frame_info.setText("")
            return
        lines = [
            f"frame {frame.get('frame')} ({frame.get('step')}): {frame.get('state')}"
            + (f" · {frame['output']}" if frame.get("output") else "")
        ]
        self.frame_info.setText("\n".join(lines + flag_lines(frame)))

    def _frame_double_clicked(self, index: QtCore.QModelIndex) -> None:
        frame = self.frames_model.frame(index.row())
        if not frame:
            return
        self.open_frame(frame)

    def open_frame(self, frame: Dict[str, Any]) -> bool:
        """One finished frame at full size: in the host's viewer (MPlay), else in the panel's image window."""
        output = frame.get("output")
        if not output or frame.get("state") != "done":
            self.message.emit(f"frame {frame.get('frame')} has no finished output yet")
            return False
        if self.host.open_frames([output], current=output):
            self.message.emit(f"opened {output} in {self.host.viewer_name}")
            return True
        if self.image_window is None:
            self.image_window = ImageWindow(self)
        ok = self.image_window.show_frame(_frame_image(frame))
        self.message.emit(f"opened {output}" if ok else f"could not read {output}")
        return ok

    def flipbook_frames(self) -> List[Dict[str, Any]]:
        """The finished frames of the current frame's step (else of the first step with any), in order."""
        current = self.frames_model.frame(self.frames_view.currentIndex().row())
        done = self.frames_model.done_frames()
        step = current.get("step") if current else (done[0].get("step") if done else None)
        return [f for f in done if f.get("step") == step]

    def play_flipbook(self) -> bool:
        frames = self.flipbook_frames()
        if not frames:
            self.message.emit("no finished frames to play yet")
            return False
        fps = job_fps(self.jobs_model.job_by_id(self.frames_model.job_id))
        paths = [f["output"] for f in frames]
        if self.host.open_frames(paths, fps=fps):
            self.message.emit(f"playing {len(paths)} frames at {fps:g} fps in {self.host.viewer_name}")
            return True
        if self.flipbook is not None:
            self.flipbook.close()
            self.flipbook.deleteLater()
        self.flipbook = FlipbookWindow([_frame_image(f) for f in frames], fps, parent=self)
        self.flipbook.show()
        self.flipbook.play_button.setChecked(True)
        self.message.emit(f"playing {len(paths)} frames at {fps:g} fps")
        return True

    def frame_menu(self) -> QtWidgets.QMenu:
        """The frame grid's context menu, for the current selection."""
        menu = QtWidgets.QMenu(self)
        current = self.frames_model.frame(self.frames_view.currentIndex().row())
        if current:
            menu.addAction("Open full size", lambda: self.open_frame(current)).setEnabled(
                current.get("state") == "done" and bool(current.get("output"))
            )
        menu.addAction("Flipbook", self.play_flipbook).setEnabled(self.flipbook_button.isEnabled())
        menu.addSeparator()
        menu.addAction(self.retry_frames_button.text(), self.retry_frames).setEnabled(
            self.retry_frames_button.isEnabled()
        )
        menu.addAction("Retry flagged", self.retry_flagged).setEnabled(self.retry_flagged_button.isEnabled())
        menu.addSeparator()
        menu.addAction("Copy output path", self.copy_output_path)
        return menu

    def _frame_menu_requested(self, pos: QtCore.QPoint) -> None:
        menu = self.frame_menu()
        run = getattr(menu, "exec", None) or menu.exec_  # PySide2 spells it exec_
        run(self.frames_view.viewport().mapToGlobal(pos))
        menu.deleteLater()

    # -- log ------------------------------------------------------------------------------
    def tail_task(self, task_id: int) -> None:
        task = self.frames_model.tasks.get(task_id) or {}
        ident = (task_id, task.get("attempt"))
        if self._tail_task == ident and self.tailer is not None:
            return
        self._stop_tail()
        self._log_generation += 1
        self._tail_task = ident
        self.log_view.clear()
        self.log_text_chars = 0
        self._update_log_label(task_id)
        running = task.get("state", "running") in TASK_ACTIVE
        self.tailer = LogTailer(
            self.client_factory, self.inbox, task_id, self._log_generation, running=running
        )
        self.tailer.start()

    def _stop_tail(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
        self.tailer = None
        self._tail_task = None

    def _task_updated(self, tasks: Sequence[Dict[str, Any]]) -> None:
        if self._tail_task is None:
            return
        for task in tasks:
            if task.get("id") != self._tail_task[0]:
                continue
            if task.get("attempt") != self._tail_task[1] and self._tail_task[1] is not None:
                self.tail_task(task["id"])  # a retry: follow the new attempt from the start
            elif self.tailer is not None:
                self.tailer.set_running(task.get("state") in TASK_ACTIVE)
                if self._tail_task[1] is None:
                    self._tail_task = (task["id"], task.get("attempt"))
            self._update_log_label(task["id"])

    def _update_log_label(self, task_id: int) -> None:
        task = self.frames_model.tasks.get(task_id) or {}
        parts = [f"Log: task {task_id}"]
        if task:
            parts.append(f"{task.get('step')} #{task.get('index')}")
            parts.append(f"attempt {task.get('attempt')}")
            state = str(task.get("state"))
            if state == "running" and task.get("progress") is not None:
                state += f" {task['progress']:.0f}%"
            parts.append(state)
            if task.get("status"):
                parts.append(str(task["status"]))
        self.log_label.setText(" · ".join(parts))

    def _append_log(self, text: str) -> None:
        bar = self.log_view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        cursor = self.log_view.textCursor()
        cursor.movePosition(qenum(QtGui.QTextCursor, "MoveOperation", "End"))
        cursor.insertText(text)
        self.log_text_chars += len(text)
        if at_end:
            bar.setValue(bar.maximum())

    # -- actions --------------------------------------------------------------------------
    def cancel_selected(self) -> None:
        job = self.selected_job()
        if not job or self.requests is None:
            return
        job_id = job["id"]
        self.requests.submit("cancel", lambda c: (c.cancel(job_id), f"cancel requested for job {job_id}")[1])
        self.message.emit(f"canceling job {job_id}…")

    def retry_selected(self) -> None:
        job = self.selected_job()
        if not job or self.requests is None:
            return
        job_id = job["id"]
        self.requests.submit(
            "retry", lambda c: (c.retry(job_id), f"retrying failed tasks of job {job_id}")[1]
        )
        self.message.emit(f"retrying job {job_id}…")

    def selected_frames(self) -> List[Dict[str, Any]]:
        rows = sorted({i.row() for i in self.frames_view.selectionModel().selectedIndexes()})
        return [f for f in (self.frames_model.frame(r) for r in rows) if f]

    def retry_frames(self) -> List[int]:
        """Render the selected frames again; returns the frame numbers asked for."""
        job = self.selected_job()
        frames = sorted({int(f["frame"]) for f in self.selected_frames() if f.get("frame") is not None})
        if not job or not frames or self.requests is None:
            return []
        job_id, spans = job["id"], frame_spans(frames)
        self.requests.submit(
            "retry frames",
            lambda c: (c.retry(job_id, frames=frames), f"retrying frames {spans} of job {job_id}")[1],
        )
        self.message.emit(f"retrying frames {spans} of job {job_id}…")
        return frames

    def retry_flagged(self) -> None:
        job = self.selected_job()
        if not job or self.requests is None:
            return
        job_id = job["id"]
        self.requests.submit(
            "retry flagged",
            lambda c: (c.retry(job_id, flagged=True), f"retrying the flagged frames of job {job_id}")[1],
        )
        self.message.emit(f"retrying the flagged frames of job {job_id}…")

    def output_paths(self) -> List[str]:
        outputs = [f["output"] for f in self.selected_frames() if f.get("output")]
        if outputs:
            return outputs
        directory = self.frames_model.output_dir()
        return [directory] if directory else []

    def copy_output_path(self) -> str:
        text = "\n".join(self.output_paths())
        if not text:
            self.message.emit("no output path to copy yet")
            return ""
        QtWidgets.QApplication.clipboard().setText(text)
        first = text.splitlines()[0]
        more = len(text.splitlines()) - 1
        self.message.emit(f"copied {first}" + (f" (+{more} more)" if more else ""))
        return text

    def _update_actions(self) -> None:
        job = self.selected_job()
        state = job.get("state") if job else None
        self.cancel_button.setEnabled(state in JOB_ACTIVE)
        failed = bool(
            job and (job.get("tasks_failed") or job.get("frames_failed") or state in ("failed", "canceled"))
        )
        self.retry_button.setEnabled(failed)
        self.copy_button.setEnabled(job is not None)
        self._update_frame_actions()

    def _update_frame_actions(self, *_: Any) -> None:
        """The frame grid's buttons (also on selection changes, hence the ignored arguments)."""
        job = self.selected_job()
        count = sum(r.height() for r in self.frames_view.selectionModel().selection())  # no index per cell
        self.retry_frames_button.setEnabled(bool(job) and count > 0)
        self.retry_frames_button.setText(
            f"Retry {count} frame{'s' if count != 1 else ''}" if count else "Retry frames"
        )
        flagged = (job or {}).get("frames_flagged") or self.frames_model.flagged_count()
        self.retry_flagged_button.setEnabled(bool(job) and bool(flagged))
        self.flipbook_button.setEnabled(bool(self.frames_model.counts().get("done")))

    # -- thumbnails, labels -------------------------------------------------------------
    def _want_thumbnail(self, key: Tuple[Any, ...]) -> None:
        if self.thumbs is not None:
            self.thumbs.request(key)
        else:
            self.cache.pending.discard(key)

    def _update_frames_label(self) -> None:
        if self.frames_model.job_id is None:
            self.frames_label.setText("Frames")
            return
        counts = self.frames_model.counts()
        total = sum(counts.values())
        parts = [f"{counts[s]} {s}" for s in ("done", "running", "failed", "waiting") if counts.get(s)]
        flagged = self.frames_model.flagged_count()
        if flagged:
            parts.append(f"⚠ {flagged} flagged")
        self.frames_label.setText(
            f"Frames of job {self.frames_model.job_id}: {total}" + (" — " + ", ".join(parts) if parts else "")
        )

    def _refresh_labels(self) -> None:
        if self._labels_dirty:
            self._labels_dirty = False
            self._update_frames_label()
            self._update_frame_actions()
            self._show_frame_info(self.frames_model.frame(self.frames_view.currentIndex().row()))

    def _tick(self) -> None:
        self.jobs_model.tick()
        if self._tail_task is not None:
            self._update_log_label(self._tail_task[0])


def _frame_image(frame: Dict[str, Any]) -> FrameImage:
    return FrameImage(int(frame.get("frame") or 0), str(frame.get("output")), tuple(flag_lines(frame)))
