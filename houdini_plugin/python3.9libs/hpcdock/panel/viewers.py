"""The panel's own frame viewers, for hosts without one (``hpcdock-monitor``).

``ImageWindow`` shows one finished frame at full size with its path and flags;
``FlipbookWindow`` plays a sequence at the job's frame rate. Frames are local files (the
frame's ``output``), read with Qt's image readers: what Qt cannot read (an EXR without an
image-format plugin) is said in words instead of shown.
"""

from collections import OrderedDict
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from .qt import QtCore, QtGui, QtWidgets, qenum

_KEEP_ASPECT = qenum(QtCore.Qt, "AspectRatioMode", "KeepAspectRatio")
_CENTER = qenum(QtCore.Qt, "AlignmentFlag", "AlignCenter")
_SELECTABLE = qenum(QtCore.Qt, "TextInteractionFlag", "TextSelectableByMouse")


class FrameImage(NamedTuple):
    """One frame as the viewers need it: its number, its file and its flags in words."""

    frame: int
    path: str
    flags: Tuple[str, ...] = ()


def read_image(path: str, fit: Optional[QtCore.QSize] = None) -> Tuple[Optional[QtGui.QImage], str]:
    """The image at ``path`` (no larger than ``fit``, keeping its aspect), or None and why not.

    The reader scales while decoding where the format can (JPEG), so a flipbook of 2K frames
    holds window-sized images, not full ones."""
    reader = QtGui.QImageReader(path)
    size = reader.size()
    if fit is not None and size.isValid() and (size.width() > fit.width() or size.height() > fit.height()):
        reader.setScaledSize(size.scaled(fit, _KEEP_ASPECT))
    image = reader.read()
    if image.isNull():
        return None, reader.errorString() or "unreadable"
    return image, ""


def _caption(item: FrameImage) -> str:
    return "\n".join([f"frame {item.frame}: {item.path}", *item.flags])


class ImageWindow(QtWidgets.QWidget):
    """One frame at full size (scroll to see a frame larger than the screen)."""

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent, qenum(QtCore.Qt, "WindowType", "Window"))
        self.item: Optional[FrameImage] = None
        self.caption = QtWidgets.QLabel(self)
        self.caption.setTextInteractionFlags(_SELECTABLE)
        self.caption.setWordWrap(True)
        self.picture = QtWidgets.QLabel(self)
        self.picture.setAlignment(_CENTER)
        scroll = QtWidgets.QScrollArea(self)
        scroll.setWidget(self.picture)
        scroll.setWidgetResizable(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.caption)
        layout.addWidget(scroll, 1)
        self.resize(960, 640)

    def show_frame(self, item: FrameImage) -> bool:
        """Load and show ``item``; False when its file could not be read (the window says why)."""
        self.item = item
        self.setWindowTitle(f"hpcdock: frame {item.frame}")
        self.caption.setText(_caption(item))
        image, error = read_image(item.path)
        if image is None:
            self.picture.setPixmap(QtGui.QPixmap())
            self.picture.setText(f"could not read {item.path}: {error}")
        else:
            self.picture.setPixmap(QtGui.QPixmap.fromImage(image))  # 1:1, never scaled
        self.show()
        self.raise_()
        return image is not None


class FlipbookWindow(QtWidgets.QWidget):
    """Plays frames in order at ``fps``, with play/pause and a frame slider.

    Frames are read when shown, scaled to the window, and kept in a small LRU
    (``cache_size``), so a 1000-frame job costs the memory of a few dozen
    window-sized frames, and opening the flipbook reads one.
    """

    def __init__(
        self,
        frames: Sequence[FrameImage],
        fps: float,
        parent: Optional[QtWidgets.QWidget] = None,
        cache_size: int = 32,
    ) -> None:
        super().__init__(parent, qenum(QtCore.Qt, "WindowType", "Window"))
        self.frames: List[FrameImage] = list(frames)
        self.fps = fps
        self.cache_size = cache_size
        self._cache: OrderedDict[Tuple[int, int, int], Tuple[Optional[QtGui.QImage], str]] = OrderedDict()
        self.reads = 0
        self.position = -1
        self.setWindowTitle(f"hpcdock flipbook: {len(self.frames)} frames at {fps:g} fps")
        self.picture = QtWidgets.QLabel(self)
        self.picture.setAlignment(_CENTER)
        self.picture.setMinimumSize(160, 90)
        self.picture.setSizePolicy(
            qenum(QtWidgets.QSizePolicy, "Policy", "Ignored"),
            qenum(QtWidgets.QSizePolicy, "Policy", "Ignored"),
        )
        self.caption = QtWidgets.QLabel(self)
        self.caption.setTextInteractionFlags(_SELECTABLE)
        self.play_button = QtWidgets.QPushButton("Play", self)
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self.set_playing)
        self.slider = QtWidgets.QSlider(qenum(QtCore.Qt, "Orientation", "Horizontal"), self)
        self.slider.setRange(0, max(0, len(self.frames) - 1))
        self.slider.valueChanged.connect(self.show_index)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, int(round(1000.0 / fps))))
        self.timer.timeout.connect(self.step)
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(self.play_button)
        controls.addWidget(self.slider, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.picture, 1)
        layout.addWidget(self.caption)
        layout.addLayout(controls)
        self.resize(960, 620)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.position < 0:  # the first frame, once the window has its size to fit it to
            self.show_index(0)

    def set_playing(self, playing: bool) -> None:
        if playing and len(self.frames) > 1:
            self.timer.start()
        else:
            self.timer.stop()
        self.play_button.setText("Pause" if self.timer.isActive() else "Play")
        if self.play_button.isChecked() != self.timer.isActive():
            self.play_button.setChecked(self.timer.isActive())

    def step(self) -> None:
        """The next frame, looping at the end (the timer's tick)."""
        if self.frames:
            self.slider.setValue((self.position + 1) % len(self.frames))

    def show_index(self, index: int) -> None:
        if not 0 <= index < len(self.frames) or index == self.position:
            return
        self.position = index
        if self.slider.value() != index:
            self.slider.setValue(index)  # comes back here and returns at once
        item = self.frames[index]
        image, error = self._image(index)
        self.caption.setText(_caption(item))
        if image is None:
            self.picture.setPixmap(QtGui.QPixmap())
            self.picture.setText(f"could not read {item.path}: {error}")
            return
        self.picture.setPixmap(QtGui.QPixmap.fromImage(image))

    def _image(self, index: int) -> Tuple[Optional[QtGui.QImage], str]:
        fit = self.picture.size()
        key = (index, fit.width(), fit.height())  # a resized window reads frames again, at its size
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        self.reads += 1
        hit = read_image(self.frames[index].path, fit)
        self._cache[key] = hit
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return hit

    def cached(self) -> int:
        return len(self._cache)

    def closeEvent(self, event: Any) -> None:
        self.set_playing(False)
        super().closeEvent(event)
