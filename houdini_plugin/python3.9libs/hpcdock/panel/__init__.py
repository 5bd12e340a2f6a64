"""The hpcdock monitor panel (Qt for Python: PySide2 or PySide6, see ``qt.py``).

``create_panel()`` is what the Houdini ``.pypanel`` and the standalone ``hpcdock-monitor``
both call. Nothing here imports ``hou``: Houdini-only behaviour (opening frames in MPlay)
comes in through the ``host`` argument, see ``hpcdock.panel.host``.
"""

from typing import Any, Callable, Optional

from .host import DesktopHost, Host


def create_panel(
    host: Optional[Host] = None,
    url: Optional[str] = None,
    token: Optional[str] = None,
    client_factory: Optional[Callable[[], Any]] = None,
    parent: Any = None,
    start: bool = True,
) -> Any:
    """Build the monitor widget (a QWidget); it starts following the service at once."""
    from .widgets import MonitorPanel

    return MonitorPanel(
        client_factory=client_factory, host=host, url=url, token=token, parent=parent, start=start
    )


def open_in_houdini() -> Any:
    """The shelf tool "Open hpcdock monitor": show the panel in a floating pane tab.

    Every ``hou`` call lives in the Houdini adapter (``hpcdock.houdini``), which provides
    ``open_monitor_pane(interface_name)`` (a floating Python Panel pane tab showing the
    ``.pypanel`` interface) and ``panel_host()`` (a ``Host`` whose ``open_frames`` starts MPlay).
    """
    from .. import houdini

    opener = getattr(houdini, "open_monitor_pane", None)
    if opener is None:
        raise NotImplementedError(
            "hpcdock.houdini.open_monitor_pane() is missing: the Houdini adapter "
            "must provide it to open the monitor panel"
        )
    return opener(INTERFACE_NAME)


#: the name of the Python Panel interface in ``python_panels/hpcdock.pypanel``
INTERFACE_NAME = "hpcdock"

__all__ = ["INTERFACE_NAME", "DesktopHost", "Host", "create_panel", "open_in_houdini"]
