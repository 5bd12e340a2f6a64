"""A fake ``hou`` with only what ``hpcdock.houdini`` and the farm render script call.

Signatures and behaviour follow SideFX's HOM reference (sidefx.com/docs/houdini/hom):

* ``hou.node(path)``, ``hou.pwd()``, ``hou.selectedNodes()``, ``hou.timeToFrame(time)``,
  ``hou.isUIAvailable()``; ``hou.setFrame(frame)`` moves the playbar
* ``hou.hscript(command) -> (stdout, stderr)``: words split as hscript does (``$VAR``
  expanded outside single quotes, not inside them); commands ``set -g NAME = value``,
  ``varchange`` and ``render -p -c -F rop`` (the render order, see below)
* ``hou.hipFile.path()``, ``isNewFile()``, ``saveAsBackup() -> str`` (a numbered backup
  under ``$HIP/backup``; the session's file name is unchanged),
  ``load(file_name, suppress_save_prompt=False, ignore_load_warnings=False)``
  (sets ``$HIP``, ``$HIPNAME``, ``$HIPFILE``; ``hou.OperationFailed`` if unreadable)
* ``hou.ui.displayMessage(text, buttons=("OK",), severity=..., default_choice=0,
  close_choice=None, help=None, title=None, details=None, ...) -> int``
* ``hou.Node``: ``path()``, ``name()``, ``type().name()``, ``type().nameWithCategory()``
  (``Driver/ifd``, ``Sop/filecache::2.0``, ``Lop/usdrender_rop``), ``inputs()`` (a tuple,
  ``None`` for an unconnected input before a connected one), ``parm(name)`` (``None``
  if absent), ``parmTuple(name)``, ``node(path)`` (relative to this node), ``errors()``
* ``hou.RopNode``: ``isBypassed()``, ``isLocked()``, ``setLocked(on)``,
  ``render(frame_range=(), res=(), output_file=None, output_format=None, to_flipbook=False, quality=2, ignore_inputs=False, method=...,
  ignore_bypass_flags=False, ignore_lock_flags=False, verbose=False,
  output_progress=False)``; raises ``hou.OperationFailed`` when the render fails
* ``hou.Parm``: ``eval()``, ``evalAsString()``, ``evalAtFrame(frame)``,
  ``evalAsStringAtFrame(frame)``, ``set(value)``; ``hou.ParmTuple.eval()``
* ``hou.severityType``, ``hou.OperationFailed``, ``hou.paneTabType``,
  ``hou.ui.curDesktop().createFloatingPaneTab(...)``, ``hou.qt.mainWindow()``,
  ``hou.text.expandString(text)``

Rendering follows SideFX's "Render nodes" and "render" HScript command pages: a ROP
renders its inputs first (unless ``ignore_inputs``), dependencies ROP by ROP. The output
node renders ``frame_range`` (or its own Valid Frame Range); with "Render Current Frame"
it renders the current frame whatever ``frame_range`` says, with "Strict" only frames
inside its range. Inputs render the frames asked of them, trimmed when Strict. A bypassed
ROP renders nothing and passes the request on; a locked ROP renders nothing and neither
does anything above it; a Merge ROP renders nothing; a Fetch ROP stands for its source.
A ROP asset with a ``fake_inner`` ROP (the Karma ROP and the USD Render ROP of its LOP
network) renders that ROP's frames as its own. A SOHO output driver (a ``soho_program`` parm) runs its program, per frame or, with
``soho_multiframe`` on, once (HDK "SOHO Output Drivers"), through ``fake_state().soho_runner``.

String parameter values are expanded like Houdini does: ``$HIP``, ``$HIPNAME``,
``$HIPFILE``, ``$JOB``, ``$FSTART``/``$FEND``/``$FPS``, ``$F``, ``$F2``..``$F9`` (zero
padded), ``$FF``, ``$OS`` and ``${NAME}``: a variable name is read whole before the frame
variables are tried, so ``$FSTART`` is never ``$F`` followed by ``START``. A value may
also be a callable taking the frame.

Anything else is deliberately missing, so a call outside this surface fails the tests
(``hou.hipFile.save``, which would rename the artist's file, is not here on purpose).
Test helpers (not part of hou) start with ``fake_``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

# --------------------------------------------------------------------------- exceptions


class Error(Exception):
    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self._message = message

    def instanceMessage(self) -> str:
        return self._message


class OperationFailed(Error):
    pass


class _EnumValue:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name.split(".")[-1]

    def __repr__(self) -> str:
        return f"hou.{self._name}"


class severityType:
    Message = _EnumValue("severityType.Message")
    Warning = _EnumValue("severityType.Warning")
    Error = _EnumValue("severityType.Error")


class renderMethod:
    RopByRop = _EnumValue("renderMethod.RopByRop")
    FrameByFrame = _EnumValue("renderMethod.FrameByFrame")


# --------------------------------------------------------------------------- state


class _State:
    def __init__(self) -> None:
        self.nodes: Dict[str, Node] = {}
        self.vars: Dict[str, str] = {
            "HIP": os.getcwd(),
            "HIPNAME": "untitled",
            "HIPFILE": "",
            "JOB": os.getcwd(),
            "FSTART": "1",
            "FEND": "240",
            "FPS": "24",
        }
        self.hip_path = os.path.join(os.getcwd(), "untitled.hip")
        self.new_file = True
        self.frame = 1.0
        self.ui = True
        self.selected: List[Node] = []
        self.messages: List[dict] = []
        self.renders: List[dict] = []  # render() calls
        self.rendered: List[tuple] = []  # (path, frame) of every frame any ROP rendered
        self.hscripts: List[str] = []
        self.loads: List[str] = []  # hipFile.load() calls: the files asked for
        self.backup_count = 0
        self.scenes: Dict[str, list] = {}  # saved "hip files": token -> node specs
        self.pane_tabs: List[Any] = []
        self.pwd: Optional[Node] = None
        # Runs a SOHO output driver's program: (rop, frame) -> None; set by the tests that need it.
        self.soho_runner: Optional[Callable[[Node, float], None]] = None


_state = _State()


def fake_reset() -> None:
    global _state
    scenes = _state.scenes  # saved files outlive a reset, like files on disk
    _state = _State()
    _state.scenes = scenes


def fake_state() -> _State:
    return _state


def fake_open_scene(hip_path: str) -> None:
    """Pretend the artist opened (saved) ``hip_path``."""
    _set_hip(hip_path)
    _state.new_file = False


def _set_hip(hip_path: str) -> None:
    hip_path = os.path.abspath(hip_path)
    _state.hip_path = hip_path
    _state.vars["HIP"] = os.path.dirname(hip_path)
    _state.vars["HIPFILE"] = hip_path
    _state.vars["HIPNAME"] = os.path.splitext(os.path.basename(hip_path))[0]


# --------------------------------------------------------------------------- expansion

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _expand(text: str, frame: float, node: Optional[Node]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in _state.vars:
            return _state.vars[name]
        if name == "OS" and node is not None:
            return node.name()
        if name in os.environ:
            return os.environ[name]
        if name == "F":
            return str(int(round(frame)))
        if name == "FF":
            return f"{frame:g}"
        if re.match(r"^F[2-9]$", name):
            return str(int(round(frame))).zfill(int(name[1]))
        return m.group(0)  # Houdini leaves unknown variables as they are

    return _VAR.sub(sub, text)


# --------------------------------------------------------------------------- parms


class Parm:
    def __init__(self, node: Node, name: str, value: Any) -> None:
        self._node = node
        self._name = name
        self._value = value

    def _raw(self, frame: float) -> Any:
        return self._value(frame) if callable(self._value) else self._value

    def evalAtFrame(self, frame: float) -> Any:
        value = self._raw(frame)
        if isinstance(value, str):
            return _expand(value, frame, self._node)
        return value

    def evalAsStringAtFrame(self, frame: float) -> str:
        value = self.evalAtFrame(frame)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def eval(self) -> Any:
        return self.evalAtFrame(_state.frame)

    def evalAsString(self) -> str:
        return self.evalAsStringAtFrame(_state.frame)

    def set(self, value: Any) -> None:
        self._value = value


class ParmTuple:
    def __init__(self, parms: Sequence[Parm]) -> None:
        self._parms = tuple(parms)

    def eval(self) -> tuple:
        return tuple(p.eval() for p in self._parms)


# --------------------------------------------------------------------------- nodes


class NodeType:
    def __init__(self, name: str, category: str) -> None:
        self._name = name
        self._category = category

    def name(self) -> str:
        return self._name

    def nameWithCategory(self) -> str:
        return f"{self._category}/{self._name}"


class Node:
    def __init__(
        self, path: str, type_name: str, parms: Optional[Dict[str, Any]] = None, category: str = "Driver"
    ) -> None:
        self._path = path
        self._type = NodeType(type_name, category)
        self._parms: Dict[str, Parm] = {}
        self._inputs: List[Optional[Node]] = []
        self._errors: List[str] = []
        for k, v in (parms or {}).items():
            self.fake_set_parm(k, v)

    # -- hou.Node
    def path(self) -> str:
        return self._path

    def name(self) -> str:
        return self._path.rstrip("/").rsplit("/", 1)[-1]

    def type(self) -> NodeType:
        return self._type

    def inputs(self) -> tuple:
        items = list(self._inputs)
        while items and items[-1] is None:
            items.pop()
        return tuple(items)

    def parm(self, parm_path: str) -> Optional[Parm]:
        return self._parms.get(parm_path)

    def parmTuple(self, name: str) -> Optional[ParmTuple]:
        members = [self._parms.get(f"{name}{i}") for i in (1, 2, 3, 4)]
        members = [p for p in members if p is not None]
        if members:
            return ParmTuple(members)
        if name in self._parms:
            return ParmTuple([self._parms[name]])
        return None

    def node(self, node_path: str) -> Optional[Node]:
        """The node at ``node_path``, absolute or relative to this node (``../mantra1``)."""
        return _state.nodes.get(os.path.normpath(os.path.join(self._path, node_path)))

    def errors(self) -> tuple:
        return tuple(self._errors)

    def setInput(self, input_index: int, item_to_become_input: Optional[Node], output_index: int = 0) -> None:
        while len(self._inputs) <= input_index:
            self._inputs.append(None)
        self._inputs[input_index] = item_to_become_input

    # -- helpers
    def fake_set_parm(self, name: str, value: Any) -> None:
        if name == "f" and isinstance(value, (tuple, list)):
            for i, v in enumerate(value, 1):
                self._parms[f"f{i}"] = Parm(self, f"f{i}", v)
            return
        self._parms[name] = Parm(self, name, value)


class RopNode(Node):
    def __init__(
        self,
        path: str,
        type_name: str,
        parms: Optional[Dict[str, Any]] = None,
        output_parm: Optional[str] = None,
        category: str = "Driver",
    ) -> None:
        super().__init__(path, type_name, parms, category)
        self._bypassed = False
        self._locked = False
        self._output_parm = output_parm  # which parm the fake "render" writes to
        self.fake_fail_frames: Dict[int, str] = {}
        self.fake_error_frames: Dict[int, str] = {}
        # A ROP asset that renders a ROP inside it, as the Karma ROP renders the USD Render
        # ROP of its own LOP network: rendering this node renders that one's frame too.
        self.fake_inner: Optional[RopNode] = None

    def isBypassed(self) -> bool:
        return self._bypassed

    def bypass(self, on: bool) -> None:
        self._bypassed = bool(on)

    def isLocked(self) -> bool:
        return self._locked

    def setLocked(self, on: bool) -> None:
        self._locked = bool(on)

    def render(
        self,
        frame_range: Sequence[float] = (),
        res: Sequence[float] = (),
        output_file: Optional[str] = None,
        output_format: Optional[str] = None,
        to_flipbook: bool = False,
        quality: int = 2,
        ignore_inputs: bool = False,
        method: Any = renderMethod.RopByRop,
        ignore_bypass_flags: bool = False,
        ignore_lock_flags: bool = False,
        verbose: bool = False,
        output_progress: bool = False,
    ) -> None:
        _state.renders.append(
            {"node": self._path, "frame_range": tuple(frame_range), "ignore_inputs": ignore_inputs}
        )
        plan = _render_plan(
            self, _asked_frames(self, frame_range), ignore_inputs, ignore_bypass_flags, ignore_lock_flags
        )
        for rop, frames, _deps in plan:
            rop._errors = []
            if rop.parm("soho_program") is not None:
                rop._fake_run_soho(frames)
                continue
            for f in frames:
                _state.frame = f
                if not rop._fake_render_frame(f):
                    return

    def _fake_run_soho(self, frames: List[float]) -> None:
        """A SOHO output driver runs its program per frame, or once with ``soho_multiframe`` on
        (HDK "SOHO Output Drivers"); the program reads the frame from SOHO, not the playbar."""
        multiframe = self.parm("soho_multiframe")
        for f in frames[:1] if multiframe is not None and multiframe.eval() else frames:
            _state.rendered.append((self._path, int(round(f))))
            if _state.soho_runner is not None:
                _state.soho_runner(self, f)

    def _fake_render_frame(self, f: float) -> bool:
        frame = int(round(f))
        _state.rendered.append((self._path, frame))
        if frame in self.fake_fail_frames:
            raise OperationFailed(self.fake_fail_frames[frame])
        if frame in self.fake_error_frames:
            self._errors = [self.fake_error_frames[frame]]
            return False
        if self._output_parm:
            out = self._parms[self._output_parm].evalAsStringAtFrame(f)
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with open(out, "w") as fh:
                fh.write(f"{self._path} frame {frame}\n")
        if self.fake_inner is not None:
            return self.fake_inner._fake_render_frame(f)
        return True


# --------------------------------------------------------------------------- render order


def _frange(start: float, end: float, inc: float) -> List[float]:
    frames, f = [], float(start)
    while f <= end + 1e-9:
        frames.append(f)
        f += inc
    return frames


def _trange(node: Node) -> int:
    parm = node.parm("trange")
    return 0 if parm is None else int(parm.eval())


def _own_frames(node: Node) -> List[float]:
    if _trange(node) == 0:
        return [_state.frame]
    start, end, inc = node.parmTuple("f").eval()
    return _frange(start, end, inc)


def _asked_frames(node: Node, frame_range: Sequence[float]) -> List[float]:
    """The frames the output node renders: "Render Current Frame" ignores ``frame_range``."""
    if not frame_range or _trange(node) == 0:
        return _own_frames(node)
    return _frange(frame_range[0], frame_range[1], frame_range[2] if len(frame_range) > 2 else 1)


def _stands_for(node: Node, ignore_bypass: bool, ignore_locks: bool, stack: List[str]) -> List[RopNode]:
    """The ROPs that render when ``node`` is asked for frames."""
    if node.path() in stack:
        raise OperationFailed("Dependency loop: " + " -> ".join(stack + [node.path()]))
    stack = stack + [node.path()]
    if not isinstance(node, RopNode) or (node.isLocked() and not ignore_locks):
        return []
    bypassed = node.isBypassed() and not ignore_bypass
    if node.type().name() == "fetch" and not bypassed:
        source = node.node(node.parm("source").evalAsString())
        if source is None:
            raise OperationFailed(f"{node.path()}: invalid source")
        return _stands_for(source, ignore_bypass, ignore_locks, stack)
    if node.type().name() == "merge" or bypassed:
        found: List[RopNode] = []
        for n in node.inputs():
            if n is not None:
                found.extend(r for r in _stands_for(n, ignore_bypass, ignore_locks, stack) if r not in found)
        return found
    return [node]


def _render_plan(
    top: RopNode, frames: List[float], ignore_inputs: bool, ignore_bypass: bool, ignore_locks: bool
) -> List[tuple]:
    """``[(rop, frames, dependency rops)]``, dependencies first."""
    order: List[RopNode] = []
    deps: Dict[str, List[RopNode]] = {}

    def visit(rop: RopNode, stack: List[str]) -> None:
        if rop.path() in stack:
            raise OperationFailed("Dependency loop: " + " -> ".join(stack + [rop.path()]))
        if rop.path() in deps:
            return
        found: List[RopNode] = []
        if not ignore_inputs:
            for n in rop.inputs():
                if n is not None:
                    found.extend(
                        r
                        for r in _stands_for(n, ignore_bypass, ignore_locks, stack + [rop.path()])
                        if r not in found
                    )
        deps[rop.path()] = found
        for d in found:
            visit(d, stack + [rop.path()])
        order.append(rop)

    roots = _stands_for(top, ignore_bypass, ignore_locks, [])
    for r in roots:
        visit(r, [])
    asked: Dict[str, set] = {r.path(): set(frames) for r in roots}
    plan = []
    for rop in reversed(order):  # downstream first: a ROP asks its inputs for what it renders
        wanted = asked.get(rop.path(), set())
        if _trange(rop) == 2:
            wanted = {f for f in wanted if any(abs(f - g) < 1e-9 for g in _own_frames(rop))}
        for d in deps[rop.path()]:
            asked.setdefault(d.path(), set()).update(wanted)
        plan.append((rop, sorted(wanted), deps[rop.path()]))
    return [p for p in reversed(plan) if p[1]]


def _render_listing(top: RopNode) -> str:
    """``render -p -c -F``: ``id [ dep ids ] /path<TAB>( start end step )`` (or the frames)."""
    plan = _render_plan(top, _own_frames(top), False, False, False)
    ids = {rop.path(): str(i) for i, (rop, _f, _d) in enumerate(plan, 1)}
    lines = []
    for rop, frames, rop_deps in plan:
        ints = [int(round(f)) for f in frames]
        step = ints[1] - ints[0] if len(ints) > 1 else 0
        if any(abs(f - i) > 1e-9 for f, i in zip(frames, ints)):
            text = " ".join(f"{f:g}" for f in frames)
        elif len(ints) > 1 and ints == list(range(ints[0], ints[-1] + 1, step)):
            text = f"( {ints[0]} {ints[-1]} {step} )"
        else:
            text = " ".join(str(i) for i in ints)
        dep_ids = " ".join(ids[d.path()] for d in rop_deps if d.path() in ids)
        lines.append(f"{ids[rop.path()]} [ {dep_ids} ] {rop.path()}\t{text}".replace("[  ]", "[ ]"))
    return "".join(line + "\n" for line in lines)


def fake_create(
    path: str,
    type_name: str,
    parms: Optional[Dict[str, Any]] = None,
    inputs: Sequence[Optional[Node]] = (),
    output_parm: Optional[str] = None,
    rop: bool = True,
    category: str = "Driver",
) -> Node:
    node: Node
    if rop:
        node = RopNode(path, type_name, parms, output_parm, category)
    else:
        node = Node(path, type_name, parms, category)
    for i, n in enumerate(inputs):
        node.setInput(i, n)
    _state.nodes[path] = node
    return node


# --------------------------------------------------------------------------- module functions


def node(path: str) -> Optional[Node]:
    return _state.nodes.get(path)


def pwd() -> Optional[Node]:
    """The current node; while a ROP renders, that ROP (the fake sets it with fake_state().pwd)."""
    return _state.pwd


def timeToFrame(time: float) -> float:
    return time * float(_state.vars["FPS"]) + 1.0


def selectedNodes() -> tuple:
    return tuple(_state.selected)


def setFrame(frame: float) -> None:
    _state.frame = float(frame)


def isUIAvailable() -> bool:
    return _state.ui


def _hscript_words(command: str) -> List[str]:
    """Split like hscript: ``$VAR`` expands unquoted and in double quotes, not in single quotes."""
    words: List[str] = []
    word: Optional[List[str]] = None
    i = 0
    while i < len(command):
        c = command[i]
        if c.isspace():
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        word = word if word is not None else []
        if c == "'":
            end = command.index("'", i + 1)
            word.append(command[i + 1 : end])
            i = end + 1
        elif c == '"':
            end = command.index('"', i + 1)
            word.append(_expand(command[i + 1 : end], _state.frame, None))
            i = end + 1
        else:
            j = i
            while j < len(command) and not command[j].isspace() and command[j] not in "'\"":
                j += 1
            word.append(_expand(command[i:j], _state.frame, None))
            i = j
    if word is not None:
        words.append("".join(word))
    return words


def hscript(command: str) -> tuple:
    _state.hscripts.append(command)
    words = _hscript_words(command)
    if words[:2] == ["set", "-g"] and len(words) >= 5 and words[3] == "=":
        _state.vars[words[2]] = " ".join(words[4:])
        return "", ""
    if words == ["varchange"]:
        return "", ""
    if words[:4] == ["render", "-p", "-c", "-F"] and len(words) == 5:
        rop = _state.nodes.get(words[4])
        if not isinstance(rop, RopNode):
            return "", f"Invalid output driver: {words[4]}\n"
        try:
            return _render_listing(rop), ""
        except OperationFailed as exc:
            return "", f"{exc.instanceMessage()}\n"
    return "", f"Unknown command: {words[0] if words else ''}\n"


class ui:
    @staticmethod
    def displayMessage(
        text: str,
        buttons: Sequence[str] = ("OK",),
        severity: Any = severityType.Message,
        default_choice: int = 0,
        close_choice: Optional[int] = None,
        help: Optional[str] = None,
        title: Optional[str] = None,
        details: Optional[str] = None,
        details_label: Optional[str] = None,
        details_expanded: bool = False,
    ) -> int:
        if not _state.ui:
            raise RuntimeError("hou.ui is not available without a UI")
        _state.messages.append({"text": text, "severity": severity, "title": title, "details": details})
        return default_choice


class paneTabType:
    PythonPanel = _EnumValue("paneTabType.PythonPanel")


class PaneTab:
    def __init__(self, pane_tab_type: Any, python_panel_interface: Optional[str]) -> None:
        self._type = pane_tab_type
        self._interface = python_panel_interface

    def type(self) -> Any:
        return self._type


class Desktop:
    def createFloatingPaneTab(
        self,
        pane_tab_type: Any,
        position: Sequence[int] = (),
        size: Sequence[int] = (),
        python_panel_interface: Optional[str] = None,
        immediate: bool = False,
    ) -> PaneTab:
        if not _state.ui:
            raise RuntimeError("hou.ui is not available without a UI")
        tab = PaneTab(pane_tab_type, python_panel_interface)
        _state.pane_tabs.append(tab)
        return tab


ui.curDesktop = staticmethod(lambda: Desktop())


class qt:
    _main_window = object()  # stands for Houdini's main QMainWindow

    @staticmethod
    def mainWindow() -> Any:
        return qt._main_window


class text:
    @staticmethod
    def expandString(text: str) -> str:
        return _expand(text, _state.frame, None)


def _node_specs() -> list:
    specs = []
    for path, n in _state.nodes.items():
        specs.append(
            {
                "path": path,
                "type": n.type().name(),
                "rop": isinstance(n, RopNode),
                "category": n.type().nameWithCategory().split("/", 1)[0],
                "locked": n.isLocked() if isinstance(n, RopNode) else False,
                "parms": {k: p._value for k, p in n._parms.items()},
                "inputs": [i.path() if i is not None else None for i in n._inputs],
                "bypass": n.isBypassed() if isinstance(n, RopNode) else False,
                "output_parm": n._output_parm if isinstance(n, RopNode) else None,
                "fail": {str(k): v for k, v in n.fake_fail_frames.items()} if isinstance(n, RopNode) else {},
                "errors": {str(k): v for k, v in n.fake_error_frames.items()}
                if isinstance(n, RopNode)
                else {},
                "inner": n.fake_inner.path() if isinstance(n, RopNode) and n.fake_inner is not None else None,
            }
        )
    return specs


class hipFile:
    @staticmethod
    def path() -> str:
        return _state.hip_path

    @staticmethod
    def isNewFile() -> bool:
        return _state.new_file

    @staticmethod
    def saveAsBackup() -> str:
        """Save the session to a numbered backup file; the session's name is unchanged."""
        stem, ext = os.path.splitext(os.path.basename(_state.hip_path))
        backup_dir = os.environ.get("HOUDINI_BACKUP_DIR") or os.path.join(
            os.path.dirname(_state.hip_path), "backup"
        )
        os.makedirs(backup_dir, exist_ok=True)
        _state.backup_count += 1
        path = os.path.join(backup_dir, f"{stem}_bak{_state.backup_count}{ext}")
        specs = _node_specs()
        try:  # plain values: the file holds the scene, so another process can load it
            text = json.dumps({"fake_hou_specs": specs})
        except TypeError:  # callables: keep them in this process, the file holds a key
            token = uuid.uuid4().hex
            _state.scenes[token] = specs
            text = json.dumps({"fake_hou_scene": token})
        with open(path, "w") as fh:
            fh.write(text)
        return path

    @staticmethod
    def load(file_name: str, suppress_save_prompt: bool = False, ignore_load_warnings: bool = False) -> None:
        _state.loads.append(file_name)
        try:
            with open(file_name) as fh:
                data = json.load(fh)
            specs = (
                data["fake_hou_specs"] if "fake_hou_specs" in data else _state.scenes[data["fake_hou_scene"]]
            )
        except (OSError, ValueError, KeyError) as exc:
            raise OperationFailed(f"Unable to open file: {file_name} ({exc})") from None
        _state.nodes.clear()
        for s in specs:
            n = fake_create(
                s["path"],
                s["type"],
                s["parms"],
                output_parm=s["output_parm"],
                rop=s["rop"],
                category=s["category"],
            )
            if isinstance(n, RopNode):
                n.bypass(s["bypass"])
                n.setLocked(s["locked"])
                n.fake_fail_frames = {int(k): v for k, v in s["fail"].items()}
                n.fake_error_frames = {int(k): v for k, v in s["errors"].items()}
        for s in specs:
            for i, p in enumerate(s["inputs"]):
                _state.nodes[s["path"]].setInput(i, _state.nodes[p] if p else None)
            if s["inner"]:
                _state.nodes[s["path"]].fake_inner = _state.nodes[s["inner"]]
        _set_hip(file_name)
        _state.new_file = False
