"""Qt tests run offscreen, on whichever binding qtpy picks (or the one forced).

Run them on one binding at a time (a process can load only one):

    QT_QPA_PLATFORM=offscreen pytest tests/qt                                # PySide6 here
    QT_API=pyside2 FORCE_QT_API=1 PYTEST_QT_API=pyside2 pytest tests/qt      # where PySide2 installs

Where the requested binding is not installed (PySide2 5.15 has no wheel for Python 3.11)
the Qt tests are not collected and ``test_binding.py`` reports one skip that says why.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from qtenv import QT_ERROR  # noqa: E402

if QT_ERROR:
    collect_ignore_glob = ["test_[!b]*.py"]


def pytest_report_header(config):
    if QT_ERROR:
        return f"qt: unavailable ({QT_ERROR})"
    import qtpy
    from hpcdock.panel.qt import binding_problem

    problem = binding_problem()
    header = f"qt: {qtpy.API_NAME} {qtpy.QT_VERSION} (platform {os.environ.get('QT_QPA_PLATFORM')})"
    return header + (f"\nqt: WARNING: {problem}" if problem else "")
