"""The frame grid view: geometry by arithmetic, hit testing, selection, keyboard, scrolling."""

import pytest
from fakes import make_frame
from hpcdock.panel.models import FramesModel
from hpcdock.panel.qt import QtCore, QtGui, qenum
from hpcdock.panel.widgets import CELL, FrameView

pytestmark = pytest.mark.qt


@pytest.fixture
def grid(qtbot):
    model = FramesModel()
    model.set_job(1, ["render"])
    view = FrameView()
    view.setModel(model)
    qtbot.addWidget(view)
    view.resize(CELL.width() * 10 + 40, CELL.height() * 4 + 10)
    view.show()
    qtbot.waitExposed(view)
    model.apply([make_frame(f, state="done" if f % 3 == 0 else "waiting") for f in range(1, 10001)])
    return view, model


def test_geometry_and_hit_testing(grid):
    view, model = grid
    cols = view.columns()
    assert cols == view.viewport().width() // CELL.width() >= 9
    rect = view.visualRect(model.index(cols + 2))
    assert (rect.x(), rect.y()) == (2 * CELL.width(), CELL.height())
    assert view.indexAt(rect.center()).row() == cols + 2
    assert not view.indexAt(QtCore.QPoint(cols * CELL.width() + 5, 5)).isValid()  # right of the last column
    bar = view.verticalScrollBar()
    assert bar.maximum() == -(-10000 // cols) * CELL.height() - view.viewport().height()
    # scrolling to the last frame and back
    last = model.index(9999)
    view.scrollTo(last)
    assert view.viewport().rect().contains(view.visualRect(last))
    assert view.indexAt(view.visualRect(last).center()).row() == 9999
    view.scrollTo(model.index(0))
    assert bar.value() == 0


def test_rubber_band_selection_and_keys(grid, qtbot):
    view, model = grid
    cols = view.columns()
    flags = qenum(QtCore.QItemSelectionModel, "SelectionFlag", "ClearAndSelect")
    view.setSelection(QtCore.QRect(1, 1, CELL.width() + 2, CELL.height() + 2), flags)
    rows = sorted(i.row() for i in view.selectionModel().selectedIndexes())
    assert rows == [0, 1, cols, cols + 1]
    view.setFocus()
    view.setCurrentIndex(model.index(0))
    qtbot.keyClick(view, qenum(QtCore.Qt, "Key", "Key_Right"))
    assert view.currentIndex().row() == 1
    qtbot.keyClick(view, qenum(QtCore.Qt, "Key", "Key_Down"))
    assert view.currentIndex().row() == 1 + cols
    qtbot.keyClick(view, qenum(QtCore.Qt, "Key", "Key_End"))
    assert view.currentIndex().row() == 9999


def test_paints_only_what_is_visible(grid):
    view, model = grid
    image = QtGui.QImage(view.viewport().size(), qenum(QtGui.QImage, "Format", "Format_ARGB32"))
    painted = []
    delegate = view.itemDelegate()
    original = delegate.paint

    def counting(painter, option, index):
        painted.append(index.row())
        original(painter, option, index)

    delegate.paint = counting
    view.viewport().render(image)
    visible = view.columns() * (view.viewport().height() // CELL.height() + 1)
    assert 0 < len(painted) <= visible
