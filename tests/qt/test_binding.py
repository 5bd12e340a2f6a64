"""The binding the Qt tests ran on: the one asked for, and the same one pytest-qt drives."""

import os

from hpcdock.panel import qt


def test_panel_and_pytest_qt_share_the_expected_binding(qapp):
    from pytestqt.qt_compat import qt_api

    expected = os.environ.get("HPCDOCK_EXPECT_QT") or qt.API_NAME
    assert qt.API_NAME == expected in qt.BINDINGS
    assert qt_api.pytest_qt_api == qt.API_NAME.lower()
    assert type(qapp).__module__ == f"{qt.API_NAME}.QtWidgets"
    assert qt.QT_VERSION.split(".")[0] == qt.PYSIDE_VERSION.split(".")[0]
