"""Entry points for the HDA's buttons, its render hook and the shelf tools.

The HDA's PythonModule is one import line from here; nothing in this module imports
``hou`` at import time (``hpcdock.houdini`` is imported inside each function), so it
can be imported anywhere.
"""

from __future__ import annotations


def on_submit(kwargs: dict):
    """Submit button: ``hou.phm().on_submit(kwargs)``."""
    from hpcdock import houdini

    return houdini.submit_node(kwargs["node"])


def on_save_bundle(kwargs: dict):
    """Save Bundle button: ``hou.phm().on_save_bundle(kwargs)``."""
    from hpcdock import houdini

    return houdini.save_bundle(kwargs["node"])


def soho_render() -> bool:
    """Called by ``soho/hpcdock_submit.py`` when the node is rendered: schedules the submit."""
    from hpcdock import houdini

    return houdini.soho_render()


def submit_selected():
    """Shelf tool "Submit selected ROPs"."""
    from hpcdock import houdini

    return houdini.submit_selected()


def open_monitor():
    """Shelf tool "Open hpcdock monitor": the panel is another module's job."""
    from hpcdock import panel

    return panel.open_in_houdini()
