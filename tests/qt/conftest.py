"""Qt tests run offscreen on the binding ``hpcdock.panel.qt`` picks: the one pytest-qt loaded.

``make test`` runs them twice: in ``.venv`` (PySide6) and in ``.venv-pyside2`` (Debian's
PySide2, with ``HPCDOCK_EXPECT_QT=PySide2`` so a fallback to another binding fails
``test_binding.py`` instead of passing unnoticed). One process can load only one binding.
"""

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_report_header(config):
    from hpcdock.panel import qt

    header = f"qt: {qt.API_NAME} {qt.PYSIDE_VERSION}, Qt {qt.QT_VERSION} (platform {os.environ['QT_QPA_PLATFORM']})"
    problem = qt.binding_problem()
    return header + (f"\nqt: WARNING: {problem}" if problem else "")
