"""Which Qt binding the Qt tests run on, decided once before any test module imports Qt."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

QT_ERROR = None
_wanted = (os.environ.get("QT_API") or "").lower()  # read first: qtpy rewrites it when it falls back
try:
    import qtpy
    from qtpy import QtWidgets  # noqa: F401

    if _wanted and os.environ.get("FORCE_QT_API") and qtpy.API_NAME.lower() != _wanted:
        QT_ERROR = f"QT_API={_wanted} requested but qtpy loaded {qtpy.API_NAME}"
except Exception as exc:  # no binding at all, or the forced one is missing
    QT_ERROR = f"no usable Qt binding for QT_API={os.environ.get('QT_API') or '(any)'}: {exc}"
