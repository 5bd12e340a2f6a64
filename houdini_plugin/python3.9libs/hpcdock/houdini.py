"""The Houdini adapter: the only module of hpcdock that imports ``hou``.

It reads the scene (the ROPs wired into an *HPC Dock Submit* node, or the selected
ROPs), turns them into a :class:`hpcdock.bundle.JobSpec`, snapshots the hip file into
the bundle and, for Submit, sends the bundle to hpcdock-service with
:mod:`hpcdock.client`. Everything it calls on ``hou`` is listed in
``tests/houdini/fake_hou.py``, which implements exactly that surface.

Frame ranges follow Houdini's own ROP-network rule: the output node (the submit node,
or a selected ROP) asks its inputs for its frames: "Render Current Frame" asks for
the playbar frame, "Render Frame Range" for Start/End/Inc. An input renders the frames
asked of it; one set to "Render Frame Range Only (Strict)" renders only those inside
its own range. Bypassed ROPs and Merge ROPs render nothing and pass the request on;
a Fetch ROP stands for the ROP it fetches.

The scene snapshot is written with ``hou.hipFile.saveAsBackup()``, which saves the
session to a numbered backup file and returns its path without renaming the artist's
open file; the backup is then moved into the bundle (``hip/<scene name>``).
"""

from __future__ import annotations

import datetime
import os
import shutil
from typing import Dict, List, Optional, Sequence, Set, Tuple

import hou

from hpcdock import bundle as B
from hpcdock.farm.render import base_type_name, output_parm_name

SUBMIT_TYPE = "hpcdock_submit"
PASS_THROUGH_TYPES = ("merge",)  # Merge ROP: renders nothing itself
FETCH_TYPES = ("fetch",)  # Fetch ROP: stands for the ROP in its "source" parm
TITLE = "HPC Dock"
JOBS_SUBDIR = "hpcdock_jobs"


class SubmitError(Exception):
    """A problem the artist must fix; shown as a message, nothing is submitted."""


# --------------------------------------------------------------------------- messages


def _message(text: str, severity=None, details: Optional[str] = None) -> None:
    if severity is None:
        severity = hou.severityType.Message
    if hou.isUIAvailable():
        hou.ui.displayMessage(text, severity=severity, title=TITLE, details=details)
    else:
        print(f"{TITLE}: {text}" + (f"\n{details}" if details else ""))


# --------------------------------------------------------------------------- submit node parms
# Every parameter of the submit node is read through _sp/_sp_int/_sp_str/_sp_multi, so
# the HDA test can check that the DialogScript declares each name read here.


def _sp(node, name: str):
    parm = node.parm(name)
    if parm is None:
        raise SubmitError(f"{node.path()} has no parameter '{name}': is the HPC Dock asset up to date?")
    return parm


def _sp_int(node, name: str) -> int:
    return int(_sp(node, name).eval())


def _sp_str(node, name: str) -> str:
    return _sp(node, name).evalAsString()


def _sp_multi(node, count_name: str, *instance_names: str) -> list:
    """Rows of a multiparm: one tuple of hou.Parm per instance (instances count from 1)."""
    rows = []
    for i in range(1, _sp_int(node, count_name) + 1):
        rows.append(tuple(_sp(node, n.replace("#", str(i))) for n in instance_names))
    return rows


def read_settings(node) -> dict:
    """Job settings from an HPC Dock Submit node."""
    env = {}
    for name_parm, value_parm in _sp_multi(node, "envvars", "envname#", "envvalue#"):
        name = name_parm.evalAsString().strip()
        if name:
            env[name] = value_parm.evalAsString()
    mounts = []
    for path_parm, readonly_parm in _sp_multi(node, "mounts", "mountpath#", "mountro#"):
        path = path_parm.evalAsString().strip()
        if path:
            mounts.append(B.Mount(path, path, bool(int(readonly_parm.eval()))))
    return {
        "service_url": _sp_str(node, "service_url").strip(),
        "name": _sp_str(node, "job_name").strip(),
        "image": _sp_str(node, "image").strip(),
        "frames_per_task": _sp_int(node, "frames_per_task"),
        "priority": _sp_int(node, "priority"),
        "gpus": _sp_int(node, "gpus_per_task"),
        "max_attempts": _sp_int(node, "max_retries") + 1,
        "timeout": _sp_int(node, "task_timeout"),
        "network": bool(_sp_int(node, "network")),
        "separate_steps": bool(_sp_int(node, "separate_steps")),
        "mount_project": bool(_sp_int(node, "mount_project")),
        "jobs_dir": _sp_str(node, "bundle_dir").strip(),
        "hython": _sp_str(node, "hython").strip() or "hython",
        "env": env,
        "mounts": mounts,
    }


def default_settings() -> dict:
    """Settings for the shelf tool, which has no submit node: from the environment."""
    env = os.environ
    return {
        "service_url": env.get("HPCDOCK_URL", ""),
        "name": "",
        "image": env.get("HPCDOCK_IMAGE", ""),
        "frames_per_task": int(env.get("HPCDOCK_FRAMES_PER_TASK", "10")),
        "priority": 50,
        "gpus": int(env.get("HPCDOCK_GPUS", "0")),
        "max_attempts": 2,
        "timeout": 0,
        "network": False,
        "separate_steps": True,
        "mount_project": True,
        "jobs_dir": "",
        "hython": "hython",
        "env": {},
        "mounts": [],
    }


# --------------------------------------------------------------------------- frames


def _type_name(node) -> str:
    return base_type_name(node.type().name())


def own_frames(node) -> List[int]:
    """The frames ``node`` asks for as an output node (its Valid Frame Range)."""
    trange = node.parm("trange")
    if trange is None or int(trange.eval()) == 0:
        return [int(round(hou.frame()))]
    try:
        start, end, inc = node.parmTuple("f").eval()
        return B.frame_range(start, end, inc)
    except B.BundleError as exc:
        raise SubmitError(f"{node.path()}: {exc}") from None


def _is_strict(node) -> bool:
    trange = node.parm("trange")
    return trange is not None and int(trange.eval()) == 2


# --------------------------------------------------------------------------- ROP graph


def _inputs(node) -> list:
    return [n for n in node.inputs() if n is not None]


def _cycle(stack: Sequence[str], path: str) -> SubmitError:
    loop = list(stack[list(stack).index(path):]) + [path]
    return SubmitError("the ROP graph has a cycle: " + " -> ".join(loop))


def _transparent(node) -> bool:
    return _type_name(node) in PASS_THROUGH_TYPES or _type_name(node) == SUBMIT_TYPE or node.isBypassed()


def _resolve(node, stack: List[str]) -> list:
    """The ROPs that render when ``node`` is asked for frames."""
    path = node.path()
    if path in stack:
        raise _cycle(stack, path)
    if _type_name(node) in FETCH_TYPES and not node.isBypassed():
        source_path = node.parm("source").evalAsString()
        source = node.node(source_path) if source_path else None
        if source is None:
            raise SubmitError(f"{path} fetches '{source_path}', which does not exist")
        return _resolve(source, stack + [path])
    if _transparent(node):
        found = []
        for n in _inputs(node):
            found.extend(_resolve(n, stack + [path]))
        return found
    return [node]


class RopGraph:
    """The render nodes reachable from the output nodes, with dependencies and frames."""

    def __init__(self) -> None:
        self.nodes: Dict[str, object] = {}
        self.deps: Dict[str, List[str]] = {}
        self.order: List[str] = []  # dependencies first
        self.requests: Dict[str, Set[int]] = {}

    def _visit(self, node, stack: List[str]) -> None:
        path = node.path()
        if path in stack:
            raise _cycle(stack, path)
        if path in self.deps:
            return
        deps: List[str] = []
        found = []
        for n in _inputs(node):
            for d in _resolve(n, stack + [path]):
                if d.path() not in deps:
                    deps.append(d.path())
                    found.append(d)
        self.nodes[path] = node
        self.deps[path] = deps
        for d in found:
            self._visit(d, stack + [path])
        self.order.append(path)

    def add_output(self, node, frames: Sequence[int]) -> List[str]:
        """Add what renders when ``node`` is asked for ``frames``; return those paths."""
        roots = _resolve(node, [])
        for r in roots:
            self._visit(r, [])
            self.requests.setdefault(r.path(), set()).update(frames)
        return [r.path() for r in roots]

    def frames(self) -> Dict[str, List[int]]:
        """Propagate requests from outputs to inputs (Houdini's rule, see module doc)."""
        result: Dict[str, List[int]] = {}
        requests = {k: set(v) for k, v in self.requests.items()}
        for path in reversed(self.order):  # downstream first
            node = self.nodes[path]
            wanted = requests.get(path, set())
            if _is_strict(node):
                wanted = wanted & set(own_frames(node))
            if not wanted:
                raise SubmitError(f"empty frame range for {path}: no requested frame lies in its strict range")
            result[path] = sorted(wanted)
            for d in self.deps[path]:
                requests.setdefault(d, set()).update(wanted)
        return result


# --------------------------------------------------------------------------- outputs


def output_pattern(node, frames: Sequence[int], warnings: List[str]) -> Optional[str]:
    """The ``{frame}`` pattern of ``node``'s output file, or None (with a warning)."""
    path = node.path()
    type_name = node.type().name()
    parm_name = output_parm_name(type_name)
    parm = node.parm(parm_name) if parm_name else None
    if parm is None:
        warnings.append(f"{path}: ROP type '{type_name}' is submitted without per-frame output paths")
        return None
    sample = sorted({frames[0], frames[0] + 1, frames[len(frames) // 2], frames[-1]})
    samples = {f: parm.evalAsStringAtFrame(f) for f in sample}
    first = samples[sample[0]]
    if not first.strip():
        warnings.append(f"{path}: '{parm_name}' is empty; frames are tracked without output paths")
        return None
    pattern = B.infer_frame_pattern(samples)
    if pattern is None:
        warnings.append(
            f"{path}: output '{first}' does not change with the frame number; "
            "frames are tracked without output paths"
        )
    return pattern


# --------------------------------------------------------------------------- job


def _check_scene() -> Tuple[str, str]:
    """Return (hip path, project dir) or SubmitError if the scene was never saved."""
    if hou.hipFile.isNewFile():
        raise SubmitError("Save the scene first: hpcdock renders a snapshot of a saved .hip file.")
    hip = hou.hipFile.path()
    return hip, os.path.dirname(hip)


def build_job(outputs: list, settings: dict, submit_node=None) -> Tuple[B.JobSpec, List[str]]:
    """Turn the output nodes into a JobSpec. Raises SubmitError; writes nothing."""
    hip, project_dir = _check_scene()
    if not settings["image"]:
        where = "fill in 'Image' on the submit node" if submit_node is not None else "set HPCDOCK_IMAGE"
        raise SubmitError(f"No container image is set: {where}.")
    graph = RopGraph()
    top: List[str] = []
    for out in outputs:
        if submit_node is not None and out is submit_node:
            # The submit node asks its inputs for its own frame range.
            frames = own_frames(out)
            roots: List[str] = []
            for n in _inputs(out):
                roots.extend(graph.add_output(n, frames))
        else:
            roots = graph.add_output(out, own_frames(out))
        top.extend(r for r in roots if r not in top)
    if not graph.nodes:
        raise SubmitError("Nothing to render: connect at least one ROP to the submit node.")
    frames = graph.frames()

    warnings: List[str] = []
    steps: List[B.StepSpec] = []
    names: Dict[str, str] = {}
    # Separate steps: every ROP is a step depending on its inputs' steps. Otherwise each ROP
    # wired straight into the submit node is one step that renders its inputs itself.
    separate = bool(settings["separate_steps"])
    for path in graph.order if separate else top:
        node = graph.nodes[path]
        name = B.step_name(node.name(), list(names.values()))
        names[path] = name
        steps.append(
            B.StepSpec(
                name=name,
                rop=path,
                frames=frames[path],
                dependencies=[names[d] for d in graph.deps[path]] if separate else [],
                output_pattern=output_pattern(node, frames[path], warnings),
                gpus=settings["gpus"],
                with_inputs=not separate,
            )
        )

    hip_name = os.path.basename(hip)
    mounts = list(settings["mounts"])
    if settings["mount_project"]:
        mounts.insert(0, B.Mount(project_dir, project_dir, readonly=False))
    job = B.JobSpec(
        name=settings["name"] or os.path.splitext(hip_name)[0],
        image=settings["image"],
        steps=steps,
        hip_name=hip_name,
        project_dir=project_dir,
        env=dict(settings["env"]),
        network=settings["network"],
        mounts=mounts,
        priority=settings["priority"],
        max_attempts=settings["max_attempts"],
        frames_per_task=settings["frames_per_task"],
        timeout=settings["timeout"],
        hython=settings["hython"],
    )
    try:
        B.validate(job)
    except B.BundleError as exc:
        raise SubmitError(str(exc)) from None
    return job, warnings


def write_snapshot(dest: str) -> None:
    """Save the session to ``dest`` without renaming the artist's open file."""
    try:
        backup = hou.hipFile.saveAsBackup()
    except hou.OperationFailed as exc:
        raise SubmitError(f"Houdini could not save a copy of the scene: {exc}") from None
    shutil.move(backup, dest)


def _jobs_dir(settings: dict, project_dir: str) -> str:
    return settings["jobs_dir"] or os.path.join(project_dir, JOBS_SUBDIR)


def export(outputs: list, settings: dict, submit_node=None, bundle_dir: Optional[str] = None):
    """Build and write the bundle. Returns (bundle_dir, job, warnings)."""
    job, warnings = build_job(outputs, settings, submit_node)
    if bundle_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        bundle_dir = B.default_bundle_dir(_jobs_dir(settings, job.project_dir), job.name, stamp)
    try:
        B.write_bundle(job, bundle_dir, write_snapshot)
    except B.BundleError as exc:
        raise SubmitError(str(exc)) from None
    return bundle_dir, job, warnings


def _send(bundle_dir: str, settings: dict) -> dict:
    from hpcdock.client import Client  # lazily: another module, not needed to export

    return Client(url=settings["service_url"] or None).submit(bundle_dir)


def _outputs_for(node) -> Tuple[list, dict, object]:
    if _type_name(node) == SUBMIT_TYPE:
        return [node], read_settings(node), node
    return [node], default_settings(), None


# --------------------------------------------------------------------------- entry points


def save_bundle(node) -> Optional[str]:
    """"Save bundle" button: write the bundle, submit nothing. Returns its directory."""
    try:
        outputs, settings, submit_node = _outputs_for(node)
        bundle_dir, _job, warnings = export(outputs, settings, submit_node)
    except SubmitError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    _message(f"Saved the job bundle to\n{bundle_dir}", details="\n".join(warnings) or None)
    return bundle_dir


def submit(outputs: list, settings: dict, submit_node=None) -> Optional[dict]:
    try:
        bundle_dir, job, warnings = export(outputs, settings, submit_node)
    except SubmitError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    try:
        result = _send(bundle_dir, settings)
    except Exception as exc:  # service down, refused, ...: keep the bundle for later
        _message(
            f"The job bundle was written but could not be submitted:\n{exc}\n\n"
            f"Submit it later with: hpcdock submit {bundle_dir}",
            hou.severityType.Error,
        )
        return None
    _message(
        f"Submitted job {result.get('id')} ({len(job.steps)} step(s)).\nBundle: {bundle_dir}",
        details="\n".join(warnings) or None,
    )
    return result


def submit_node(node) -> Optional[dict]:
    """Submit button (and Render, through SOHO) of an HPC Dock Submit node."""
    try:
        outputs, settings, sub = _outputs_for(node)
    except SubmitError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    return submit(outputs, settings, sub)


def submit_selected() -> Optional[dict]:
    """Shelf tool: submit the selected ROPs (or selected HPC Dock Submit nodes)."""
    selected = [n for n in hou.selectedNodes() if isinstance(n, hou.RopNode)]
    if not selected:
        _message("Select one or more ROPs (render nodes) first.", hou.severityType.Warning)
        return None
    submitters = [n for n in selected if _type_name(n) == SUBMIT_TYPE]
    if submitters:
        result = None
        for n in submitters:
            result = submit_node(n)
        return result
    return submit(selected, default_settings(), None)


def soho_render() -> None:
    """Render hook: the HDA's ``soho_program`` runs this when the node is rendered.

    SOHO runs once per frame of the node's range; submit once, on the first frame.
    """
    import soho  # only exists inside a SOHO program

    node = hou.node(soho.getOutputDriver().getName())
    frames = own_frames(node)
    if int(round(hou.frame())) != frames[0]:
        return
    submit_node(node)


# -- the monitor panel's host -----------------------------------------------------------------

def open_monitor_pane(interface_name: str = "hpcdock"):
    """Open the hpcdock monitor (the ``.pypanel`` interface) in a floating Python Panel pane tab."""
    desktop = hou.ui.curDesktop()
    return desktop.createFloatingPaneTab(hou.paneTabType.PythonPanel, python_panel_interface=interface_name)


def mplay_command(paths: Sequence[str]) -> Optional[List[str]]:
    """The MPlay command line showing ``paths`` in frame order, or None without MPlay."""
    mplay = os.path.join(hou.text.expandString("$HFS"), "bin", "mplay")
    if not paths or not os.path.exists(mplay):
        return None
    return [mplay] + sorted(paths)


def panel_host():
    """The panel's host inside Houdini: frames open in MPlay, dialogs parent to Houdini's window."""
    import subprocess

    from hpcdock.panel.host import Host

    class HoudiniHost(Host):
        viewer_name = "MPlay"

        def open_frames(self, paths: Sequence[str], current: Optional[str] = None) -> bool:
            command = mplay_command(list(paths) or ([current] if current else []))
            if command is None:
                return super().open_frames(paths, current)
            subprocess.Popen(command, close_fds=True)
            return True

        def parent_window(self) -> Optional[object]:
            return hou.qt.mainWindow()

    return HoudiniHost()
