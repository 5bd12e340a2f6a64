"""Reports which Qt binding the Qt tests ran on, or why they were skipped."""

import pytest
import qtenv


def test_qt_binding_available():
    if qtenv.QT_ERROR:
        pytest.skip(qtenv.QT_ERROR)
    import qtpy

    assert qtpy.API_NAME in ("PySide2", "PySide6", "PyQt5", "PyQt6")
