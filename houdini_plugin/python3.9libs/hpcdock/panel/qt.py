"""The panel's one door to Qt: the binding Houdini ships, and the spellings that differ.

Houdini 21 ships PySide6, Houdini 19.5-20.5 PySide2; its Python has nothing else (no
``qtpy``). Every panel module imports ``QtCore``/``QtGui``/``QtWidgets`` from here. A
process that has already loaded one binding (Houdini itself, or a test runner) keeps it:
loading the other one next to it would give two Qt libraries in one process.

PySide6 only accepts scoped enum names (``Qt.ItemDataRole.DisplayRole``) in its newer
releases, PySide2 is happiest with the flat ones (``Qt.DisplayRole``); ``qenum`` takes
whichever the binding has. Roles are turned into plain ints once, so model code compares
ints and works the same on both.
"""

import importlib
import sys
from typing import Any, Tuple

BINDINGS = ("PySide6", "PySide2")


def _import_binding() -> Tuple[str, Any, Any, Any, Any]:
    loaded = [name for name in BINDINGS if name in sys.modules]
    errors = []
    for name in loaded or BINDINGS:
        try:
            package = importlib.import_module(name)
            modules = [importlib.import_module(f"{name}.{part}") for part in ("QtCore", "QtGui", "QtWidgets")]
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        core, gui, widgets = modules
        return name, package, core, gui, widgets
    raise ImportError(
        "the hpcdock panel needs Qt for Python, PySide6 or PySide2 (Houdini ships one); " + "; ".join(errors)
    )


API_NAME, _PACKAGE, QtCore, QtGui, QtWidgets = _import_binding()
#: the binding's own version ("6.11.3", "5.15.8")
PYSIDE_VERSION = str(getattr(_PACKAGE, "__version__", ""))
#: the Qt library's version at run time
QT_VERSION = str(QtCore.qVersion())
Signal = QtCore.Signal
Slot = QtCore.Slot
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
    qenum(Qt, "AlignmentFlag", "AlignVCenter")
)
ALIGN_CENTER = qenum(Qt, "AlignmentFlag", "AlignCenter")


def exec_app(app: Any) -> int:
    """Run the event loop: PySide6 spells it ``exec``, PySide2 only ``exec_``."""
    runner = getattr(app, "exec", None) or app.exec_
    return int(runner() or 0)


def binding_problem(
    api: str = API_NAME,
    version: str = PYSIDE_VERSION,
    python: Tuple[int, int] = (sys.version_info[0], sys.version_info[1]),
) -> str:
    """A known-bad binding for this interpreter, in words ("" when none is known).

    PySide6 6.12.0 on Python before 3.12 drops a reference to ``None``/``True``/``False`` on
    every call from C++ into a Python override (a model's ``data()``, a ``paintEvent``), so a
    long-running panel dies with "deallocating None" (measured here; 6.11.3 does not).
    Python 3.12+ makes those objects immortal, which hides it.
    """
    if api == "PySide6" and tuple(python) < (3, 12) and version.startswith("6.12.0"):
        return (
            f"PySide6 {version} on Python {python[0]}.{python[1]} leaks "
            "references to None/True/False on every Qt-to-Python call and crashes long sessions; "
            "use PySide6 6.11 (pip install 'PySide6-Essentials<6.12')"
        )
    return ""
