"""The port between the panel and the application it lives in.

The panel never imports ``hou``. What it needs from its host is small and lives behind
this interface; ``DesktopHost`` is the implementation for the standalone monitor (and
any host that does not say otherwise). Inside Houdini the adapter module
(``hpcdock.houdini``) provides a host whose ``open_frames`` starts MPlay, and the
``.pypanel`` passes it in::

    from hpcdock import houdini
    from hpcdock.panel import create_panel
    panel = create_panel(host=houdini.panel_host())
"""

from typing import Optional, Sequence

from .qt import QtCore, QtGui


class Host:
    """What the panel asks of its host. Subclass and override; every method has a default."""

    #: shown in the panel's tooltip of the open action
    viewer_name = "the system viewer"

    def open_frames(self, paths: Sequence[str], current: Optional[str] = None) -> bool:
        """Show frames (the sequence of a step, ``current`` the double-clicked one).

        Returns False when nothing could be opened (the panel then says so).
        """
        target = current or (paths[0] if paths else None)
        if not target:
            return False
        return bool(QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(target)))

    def parent_window(self) -> Optional[object]:
        """The window dialogs should be parented to (Houdini's main window), or None."""
        return None


class DesktopHost(Host):
    """Outside Houdini: the system's default viewer for the clicked frame."""


def default_host() -> Host:
    return DesktopHost()
