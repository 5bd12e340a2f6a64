"""The ``husk`` command line for rendering a USD file, one frame per call.

husk is Houdini's standalone USD renderer (``husk [options] usd_file``; see SideFX's
"husk" reference). A Karma or USD Render ROP submitted with "Render USD with husk in its
own step" is exported by hython to one USD file per frame; the render step then runs
``render.py --husk usd/<step>/<rop>.{frame:04d}.usd ...``, which calls husk once per frame
with the argv built here, in a plain Python. Pure stdlib, Python 3.9.
"""

from __future__ import annotations

from typing import List, Optional, Sequence


def husk_argv(
    usd_file: str,
    frame: int,
    output: Optional[str] = None,
    renderer: Optional[str] = None,
    settings: Optional[str] = None,
    husk: str = "husk",
    extra: Sequence[str] = (),
) -> List[str]:
    """Return the argv that renders ``frame`` of ``usd_file`` with husk.

    ``output`` is the image path for this frame (already formatted); ``renderer`` a
    Hydra delegate name (e.g. ``BRAY_HdKarma``); ``settings`` a RenderSettings prim path.
    """
    if not usd_file:
        raise ValueError("husk needs a USD file")
    argv = [husk, "--frame", str(int(frame)), "--frame-count", "1", "--frame-inc", "1"]
    if renderer:
        argv += ["--renderer", renderer]
    if settings:
        argv += ["--settings", settings]
    if output:
        argv += ["--output", output]
    argv += list(extra)
    argv.append(usd_file)
    return argv
