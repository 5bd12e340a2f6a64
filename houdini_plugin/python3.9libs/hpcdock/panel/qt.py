"""The few Qt spellings that differ between PySide2 and PySide6, in one place.

PySide6 only accepts scoped enum names (``Qt.ItemDataRole.DisplayRole``) in its newer
releases, PySide2 is happiest with the flat ones (``Qt.DisplayRole``); ``qenum`` takes
whichever the binding has. Roles are turned into plain ints once, so model code compares
ints and works the same on both.
"""

from typing import Any

from qtpy import QtCore

Qt = QtCore.Qt


def qenum(owner: Any, scope: str, name: str) -> Any:
    """``owner.scope.name`` where the binding has scoped enums, else ``owner.name``."""
    scoped = getattr(owner, scope, None)
    if scoped is not None and hasattr(scoped, name):
        return getattr(scoped, name)
    return getattr(owner, name)


def as_int(value: Any) -> int:
    try:
        return int(value)
    except TypeError:  # some PySide6 flag types
        return int(getattr(value, "value", value))


def role(name: str) -> int:
    return as_int(qenum(Qt, "ItemDataRole", name))


DISPLAY = role("DisplayRole")
DECORATION = role("DecorationRole")
TOOLTIP = role("ToolTipRole")
BACKGROUND = role("BackgroundRole")
FOREGROUND = role("ForegroundRole")
ALIGNMENT = role("TextAlignmentRole")
USER = role("UserRole")

HORIZONTAL = qenum(Qt, "Orientation", "Horizontal")
ALIGN_RIGHT_VCENTER = as_int(qenum(Qt, "AlignmentFlag", "AlignRight")) | as_int(
    qenum(Qt, "AlignmentFlag", "AlignVCenter"))
ALIGN_CENTER = qenum(Qt, "AlignmentFlag", "AlignCenter")


def exec_app(app: Any) -> int:
    runner = getattr(app, "exec", None) or app.exec_
    return int(runner() or 0)


def binding_problem() -> str:
    """A known-bad binding for this interpreter, in words ("" when none is known).

    PySide6 6.12.0 on Python before 3.12 drops a reference to ``None``/``True``/``False`` on
    every call from C++ into a Python override (a model's ``data()``, a ``paintEvent``), so a
    long-running panel dies with "deallocating None" (measured here; 6.11.3 does not).
    Python 3.12+ makes those objects immortal, which hides it.
    """
    import sys

    import qtpy

    if qtpy.API_NAME == "PySide6" and sys.version_info < (3, 12):
        version = str(getattr(qtpy, "PYSIDE_VERSION", "") or "")
        if version.startswith("6.12.0"):
            return (f"PySide6 {version} on Python {sys.version_info[0]}.{sys.version_info[1]} leaks "
                    "references to None/True/False on every Qt-to-Python call and crashes long sessions; "
                    "use PySide6 6.11 (pip install 'PySide6-Essentials<6.12')")
    return ""
