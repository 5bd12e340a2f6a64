"""The port between the panel and the application it lives in.

The panel never imports ``hou``. What it needs from its host is small and lives behind
this interface; ``DesktopHost`` is the implementation for the standalone monitor (and
any host that does not say otherwise): it has no viewer of its own, so the panel shows
frames in its own windows (a full-size image window, a flipbook). Inside Houdini the
adapter module (``hpcdock.houdini``) provides a host whose ``open_frames`` starts MPlay,
and the ``.pypanel`` passes it in::

    from hpcdock import houdini
    from hpcdock.panel import create_panel
    panel = create_panel(host=houdini.panel_host())
"""

from typing import Optional, Sequence


class Host:
    """What the panel asks of its host. Subclass and override; every method has a default."""

    #: named in the panel's messages once a host viewer has opened frames
    viewer_name = "the panel's viewer"

    def open_frames(
        self, paths: Sequence[str], current: Optional[str] = None, fps: Optional[float] = None
    ) -> bool:
        """Show frames in the host's own viewer: one frame full size (``paths == [current]``,
        a double-click), or a sequence to play in order at ``fps`` (the flipbook).

        Returns False when the host has no viewer, or it could not start: the panel then
        shows the frames in its own windows, so a frame always opens somewhere.
        """
        return False

    def parent_window(self) -> Optional[object]:
        """The window dialogs should be parented to (Houdini's main window), or None."""
        return None


class DesktopHost(Host):
    """Outside Houdini (``hpcdock-monitor``): no viewer of its own, the panel's windows show frames."""


def default_host() -> Host:
    return DesktopHost()
