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
