"""Farm-side render script: ``hython render.py --hip H --rop /out/x --frames 1-10``.

Runs inside the container, with the bundle directory as the working directory. Loads
the scene snapshot, points ``$HIP`` back at the artist's project directory (so output
paths such as ``$HIP/render/x.$F4.exr`` land where they would locally), renders each
frame of the chunk on its own and prints, for each frame::

    ::hpcdock::frame-start F
    ::hpcdock::frame-done F /path/of/the/output      (or frame-failed F reason)
    ALF_PROGRESS N%

With ``--sequential`` (a simulation, which restarts whenever a render starts) the chunk is
rendered by one ``render()`` over all its frames, and the markers follow it. Before
rendering, the ROP's "Valid Frame Range" is set to "Render Frame Range", as Deadline's and
Conductor's Houdini handlers do, so that ``frame_range`` is what renders.

Exit status: 0 all frames done, 1 a frame failed (later frames are not attempted),
2 the job could not start (bad arguments, scene would not load, ROP missing).

With ``--export-usd PATTERN`` (a Karma or USD Render ROP) hython writes the ROP's USD to
``PATTERN`` (``{frame:04d}`` for the frame, relative to the bundle) and renders no image; each
frame's marker names its USD file. With ``--husk PATTERN --output PATTERN`` it renders those
files with ``husk`` instead, one husk per frame, and needs no ``hou``: a plain Python runs it,
so no Houdini Engine licence is held while rendering. Python 3.9, stdlib only; ``hou`` is
imported only in hython mode.

Render server (a step rendered with it loads its scene once per session, see ``server.py``)::

    python3 render.py start --dir D --workdir BUNDLE -- hython render.py serve --dir D --hip H --rop R ...
    python3 render.py request --dir D --frames 1-10       (a task: prints the markers as above)
    python3 render.py stop --dir D

``serve`` takes the hython-mode arguments but ``--frames`` and ``--sequential`` and renders each
request's frames as a chunk is rendered here; ``start``, ``request`` and ``stop`` need no ``hou``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from typing import Callable, Dict, List, Optional

try:  # inside the plugin package
    from hpcdock.farm import server
    from hpcdock.farm.husk import husk_argv
    from hpcdock.markers import FRAME_DONE, FRAME_FAILED, FRAME_START, format_marker
    from hpcdock.protocol import parse_frame_list
except ImportError:  # copied into <bundle>/hpcdock_farm/ next to markers.py and protocol.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import server  # type: ignore[no-redef,import-not-found]
    from husk import husk_argv  # type: ignore[no-redef]
    from markers import (  # type: ignore[no-redef,import-not-found]
        FRAME_DONE,
        FRAME_FAILED,
        FRAME_START,
        format_marker,
    )
    from protocol import parse_frame_list  # type: ignore[no-redef,import-not-found]

# Output file parameter per ROP type: hou.NodeType.nameWithCategory() with the type's
# namespace and version removed (see base_type_name).
OUTPUT_PARMS: Dict[str, str] = {
    "Driver/ifd": "vm_picture",  # Mantra
    "Driver/karma": "picture",  # Karma ROP
    "Driver/usdrender": "outputimage",  # USD Render ROP (/out)
    "Lop/usdrender_rop": "outputimage",  # USD Render ROP (LOPs)
    "Driver/opengl": "picture",  # OpenGL ROP
    "Driver/geometry": "sopoutput",  # Geometry ROP
    "Sop/rop_geometry": "sopoutput",  # ROP Geometry Output SOP
    "Sop/filecache": "file",  # File Cache SOP (filecache and filecache::2.0)
    "Driver/alembic": "filename",  # Alembic ROP
    "Sop/rop_alembic": "filename",  # ROP Alembic Output SOP
    "Driver/Redshift_ROP": "RS_outputFileNamePrefix",  # Redshift
}

# "Valid Frame Range" menu index of "Render Frame Range".
TRANGE_FRAME_RANGE = 1

# The USD Render ROP (in /out and in LOPs) writes its USD to "lopoutput" under the "Save to
# Directory" output processor's "savetodirectory_directory" and runs husk on it only when
# "runcommand" is on. The Karma ROP wraps such a ROP in its own LOP network, at this path.
USD_RENDER_PARMS = ("runcommand", "lopoutput", "savetodirectory_directory")
KARMA_USD_RENDER_ROP = "lopnet/karma/rop_usdrender"

# Values of image outputs that are not files (MPlay, interactive render).
_NOT_FILES = ("ip", "md", "imdisplay")


def base_type_name(name: str) -> str:
    """``"sidefx::filecache::2.0"`` -> ``"filecache"``; ``"ifd"`` -> ``"ifd"``."""
    parts = name.split("::")
    if len(parts) >= 3:
        return parts[1]
    if len(parts) == 2:
        return parts[0] if re.match(r"^[\d.]+$", parts[1]) else parts[1]
    return name


def output_parm_name(type_key: str) -> Optional[str]:
    """The output parm of a ``Category/type`` (``"Sop/filecache::2.0"`` -> ``"file"``)."""
    category, _, name = type_key.rpartition("/")
    return OUTPUT_PARMS.get(f"{category}/{base_type_name(name)}")


def parse_frames(expr: str) -> List[int]:
    """The frames of an OpenJD range expression as chunks hand it over: "1-10", "1-9:2", "3,5,7-9"."""
    try:
        return parse_frame_list(str(expr))
    except ValueError as exc:
        raise ValueError(f"bad frame range {expr!r}: {exc}") from None


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _is_file_output(path: str) -> bool:
    return bool(path) and path.strip() not in _NOT_FILES


def _progress(done: int, total: int) -> None:
    _emit(f"ALF_PROGRESS {int(round(100.0 * done / total))}%")


def _fail_all(frames: List[int], reason: str) -> int:
    for f in frames:
        _emit(format_marker(FRAME_FAILED, f, _one_line(reason)))
    return 2


def _render_frames(
    frames: List[int],
    render_one: Callable[[int], Optional[str]],
    started: Optional[int] = None,
    abandon: Callable[[], Optional[str]] = lambda: None,
) -> int:
    """Run ``render_one(frame) -> output path or None`` per frame with markers.

    ``started``: a frame whose start marker was already printed. ``abandon()``, asked before
    each frame, says why to stop there (the render server's task is gone, or it is stopping).
    """
    total = len(frames)
    for i, frame in enumerate(frames):
        reason = abandon()
        if reason:
            _emit(format_marker(FRAME_FAILED, frame, reason))
            return 1
        if frame != started:
            _emit(format_marker(FRAME_START, frame))
        try:
            path = render_one(frame)
        except Exception as exc:  # the reason goes into the marker, the trace to the log
            _emit(format_marker(FRAME_FAILED, frame, _one_line(exc)))
            return 1
        if path and _is_file_output(path) and not os.path.exists(path):
            _emit(format_marker(FRAME_FAILED, frame, f"output not written: {path}"))
            return 1
        _emit(format_marker(FRAME_DONE, frame, path or ""))
        _progress(i + 1, total)
    return 0


def hscript_quote(text: str) -> str:
    """``text`` as one hscript word, taken literally.

    hscript expands ``$VAR`` inside double quotes but not inside single quotes, which
    cannot themselves hold a single quote; such a value is refused rather than mangled.
    """
    if "'" in text:
        raise ValueError(f"cannot pass a value holding a single quote to hscript: {text!r}")
    return "'" + text + "'"


def usd_writer(node):
    """The USD Render ROP whose parms say where ``node`` writes its USD, or None."""
    for candidate in (node, node.node(KARMA_USD_RENDER_ROP)):
        if candidate is not None and all(candidate.parm(p) is not None for p in USD_RENDER_PARMS):
            return candidate
    return None


def houdini_frame_pattern(pattern: str) -> str:
    """``usd/x/karma1.{frame:04d}.usd`` -> ``usd/x/karma1.$F4.usd``: the same files, named by Houdini."""
    if "{frame:04d}" not in pattern or "{" in pattern.replace("{frame:04d}", ""):
        raise ValueError(f"the USD file pattern needs exactly {{frame:04d}} for the frame: {pattern!r}")
    return pattern.replace("{frame:04d}", "$F4")


def export_usd(node, pattern: str) -> Callable[[int], str]:
    """Point ``node``'s USD output at ``pattern`` and turn husk off; returns each frame's USD path."""
    writer = usd_writer(node)
    if writer is None:
        raise ValueError(f"{node.path()} has no USD Render ROP parms ({', '.join(USD_RENDER_PARMS)})")
    target = os.path.abspath(houdini_frame_pattern(pattern))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    writer.parm("runcommand").set(0)
    # The output processor keeps lopoutput's file name under this directory; without it
    # lopoutput's full path is used: either way the file lands at ``target``.
    writer.parm("savetodirectory_directory").set(os.path.dirname(target))
    writer.parm("lopoutput").set(target)
    return writer.parm("lopoutput").evalAsStringAtFrame


def prepare(args: argparse.Namespace, hou) -> server.RenderChunk:
    """Load the snapshot, point ``$HIP`` back at the project and find the ROP; returns what renders
    a chunk of frames. ValueError with the reason when the scene cannot render."""
    try:
        hou.hipFile.load(args.hip, suppress_save_prompt=True, ignore_load_warnings=True)
    except hou.OperationFailed as exc:
        raise ValueError(f"could not load scene {args.hip}: {exc}") from None
    if args.hip_dir:
        # Loading sets $HIP to the bundle's hip/ directory; point it back at the project.
        hou.hscript(f"set -g HIP = {hscript_quote(args.hip_dir)}")
        hou.hscript("varchange")
    node = hou.node(args.rop)
    if node is None or not hasattr(node, "render"):
        raise ValueError(f"no ROP at {args.rop}")
    if args.export_usd:
        output_at: Callable[[int], Optional[str]] = export_usd(node, args.export_usd)
    else:
        parm_name = output_parm_name(node.type().nameWithCategory())
        parm = node.parm(parm_name) if parm_name else None
        output_at = parm.evalAsStringAtFrame if parm is not None else (lambda frame: None)
    trange = node.parm("trange")
    if trange is not None and trange.eval() != TRANGE_FRAME_RANGE:
        # "Render Current Frame" would ignore frame_range; "Strict" could trim it.
        trange.set(TRANGE_FRAME_RANGE)

    def render(frame_range: tuple) -> None:
        node.render(
            frame_range=frame_range,
            ignore_inputs=not args.with_inputs,
            verbose=False,
            output_progress=False,
        )
        errors = node.errors()
        if errors:
            raise RuntimeError("; ".join(errors))

    def render_one(frame: int) -> Optional[str]:
        render((frame, frame))
        return output_at(frame)

    def render_chunk(frames: List[int], abandon: Callable[[], Optional[str]]) -> int:
        if args.sequential:
            return _render_sequence(frames, render, output_at)
        return _render_frames(frames, render_one, abandon=abandon)

    return render_chunk


def run_hython(args: argparse.Namespace, frames: List[int], hou) -> int:
    """Render ``args.rop`` over ``frames`` in the loaded snapshot."""
    try:
        render_chunk = prepare(args, hou)
    except ValueError as exc:
        print(f"hpcdock: {exc}", file=sys.stderr)
        return _fail_all(frames, str(exc))
    return render_chunk(frames, lambda: None)


def _render_sequence(
    frames: List[int], render: Callable[[tuple], None], output: Callable[[int], Optional[str]]
) -> int:
    """A simulation: one render over all frames, since each render restarts it at its first frame."""
    step = frames[1] - frames[0] if len(frames) > 1 else 1
    if list(range(frames[0], frames[-1] + 1, step)) != frames:
        return _fail_all(frames, f"a simulation needs evenly spaced frames, got {frames}")
    _emit(format_marker(FRAME_START, frames[0]))
    try:
        render((frames[0], frames[-1], step))
    except Exception as exc:  # the reason goes into the marker, the trace to the log
        _emit(format_marker(FRAME_FAILED, frames[0], _one_line(exc)))
        return 1
    # One render wrote every frame; report each the way a per-frame render does.
    return _render_frames(frames, output, started=frames[0])


def run_husk(args: argparse.Namespace, frames: List[int]) -> int:
    """Render each frame with husk from its USD file (``--husk`` may hold ``{frame}``)."""

    def render_one(frame: int) -> Optional[str]:
        usd = args.husk.format(frame=frame)
        if not os.path.isfile(usd):
            raise RuntimeError(f"no USD file to render: {usd}")
        out = args.output.format(frame=frame) if args.output else None
        if out and os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
        argv = husk_argv(
            usd, frame, output=out, renderer=args.renderer, settings=args.settings, husk=args.husk_bin
        )
        print("hpcdock: " + " ".join(argv), file=sys.stderr)
        rc = subprocess.call(argv)
        if rc != 0:
            raise RuntimeError(f"husk exited with status {rc}")
        return out

    return _render_frames(frames, render_one)


def _scene_args(p: argparse.ArgumentParser) -> None:
    """What hython mode and the render server share: the scene, the ROP and how to render it."""
    p.add_argument("--hip", help="scene snapshot to load (hython mode)")
    p.add_argument("--hip-dir", default="", help="set $HIP to this after loading")
    p.add_argument("--rop", help="ROP node path to render (hython mode)")
    p.add_argument("--with-inputs", action="store_true", help="also render the ROP's inputs")
    p.add_argument(
        "--export-usd",
        help="hython mode: write the ROP's USD to this pattern with {frame:04d}, render no image",
    )


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="render.py", description=__doc__.split("\n")[0])
    p.add_argument("--frames", required=True, help="OpenJD range: 1-10, 1-9:2, 3,5,7")
    _scene_args(p)
    p.add_argument("--sequential", action="store_true", help="render all frames in one go (a simulation)")
    p.add_argument("--husk", help="USD file (pattern with {frame}) to render with husk instead of hython")
    p.add_argument("--output", help="husk mode: output path pattern with {frame}")
    p.add_argument("--renderer", help="husk mode: Hydra render delegate")
    p.add_argument("--settings", help="husk mode: RenderSettings prim path")
    p.add_argument("--husk-bin", default="husk", help="husk mode: husk executable")
    args = p.parse_args(argv)
    if not args.husk and not (args.hip and args.rop):
        p.error("give --hip and --rop, or --husk")
    if args.husk and args.export_usd:
        p.error("--export-usd writes the USD that --husk renders: give one of them")
    return args


SERVER_MODES = ("serve", "start", "request", "stop")


def parse_server_args(mode: str, argv: List[str]) -> argparse.Namespace:
    """The render server's modes (see the module's docstring)."""
    p = argparse.ArgumentParser(prog=f"render.py {mode}")
    p.add_argument("--dir", required=True, help="the server's directory (in the session's working directory)")
    if mode == "serve":
        _scene_args(p)
        p.set_defaults(sequential=False)
    elif mode == "start":
        p.add_argument("--workdir", required=True, help="where the server runs (the bundle directory)")
        p.add_argument(
            "--timeout", type=float, default=0, help="seconds the scene may take to load (0: no limit)"
        )
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- the server's command line")
    elif mode == "request":
        p.add_argument("--frames", required=True, help="OpenJD range: 1-10, 1-9:2, 3,5,7")
    else:
        p.add_argument("--grace", type=float, default=server.STOP_GRACE, help="seconds before it is killed")
    args = p.parse_args(argv)
    if mode == "serve" and not (args.hip and args.rop):
        p.error("serve needs --hip and --rop")
    if mode == "start":
        args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not args.command:
            p.error("give the server's command line after --")
    return args


def run_server_mode(mode: str, argv: List[str], hou_module=None) -> int:
    try:
        args = parse_server_args(mode, argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    if mode == "start":
        return server.launch(args.dir, args.workdir, args.command, timeout=args.timeout)
    if mode == "stop":
        return server.stop(args.dir, grace=args.grace)
    if mode == "request":
        try:
            frames = parse_frames(args.frames)
        except ValueError as exc:
            print(f"hpcdock: {exc}", file=sys.stderr)
            return 2
        return server.request(args.dir, frames, args.frames)
    hou = hou_module if hou_module is not None else importlib.import_module("hou")  # hython provides it
    return server.serve(args.dir, lambda: prepare(args, hou), parse_frames)


def main(argv: Optional[List[str]] = None, hou_module=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SERVER_MODES:
        return run_server_mode(argv[0], argv[1:], hou_module)
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        frames = parse_frames(args.frames)
    except ValueError as exc:
        print(f"hpcdock: {exc}", file=sys.stderr)
        return 2
    if args.husk:
        return run_husk(args, frames)
    hou = hou_module if hou_module is not None else importlib.import_module("hou")  # hython provides it
    return run_hython(args, frames, hou)


if __name__ == "__main__":
    sys.exit(main())
