"""The hpcdock monitor panel (Qt through qtpy: PySide2 and PySide6).

``create_panel()`` is what the Houdini ``.pypanel`` and the standalone ``hpcdock-monitor``
both call. Nothing here imports ``hou``: Houdini-only behaviour (opening frames in MPlay)
comes in through the ``host`` argument, see ``hpcdock.panel.host``.
"""

from typing import Any, Callable, Optional

from .host import DesktopHost, Host


def create_panel(host: Optional[Host] = None, url: Optional[str] = None, token: Optional[str] = None,
                 client_factory: Optional[Callable[[], Any]] = None, parent: Any = None,
                 start: bool = True) -> Any:
    """Build the monitor widget (a QWidget); it starts following the service at once."""
    from .widgets import MonitorPanel

    return MonitorPanel(client_factory=client_factory, host=host, url=url, token=token,
                        parent=parent, start=start)


__all__ = ["DesktopHost", "Host", "create_panel"]
