"""The Houdini adapter: the only module of hpcdock that imports ``hou``.

It reads the live scene into the frozen values of :mod:`hpcdock.jobplan`, which decides
steps, frames and outputs; then it snapshots the hip file into the bundle and, for
Submit, sends the bundle to hpcdock-service with :mod:`hpcdock.client`. Every ``hou``
call the plugin makes is in this module and listed in ``docs/houdini.md`` with the SideFX
page it follows; ``tests/houdini/fake_hou.py`` implements exactly that surface.

The ROPs to submit are named in the submit node's "ROPs to Submit" list (as the HQueue
Render ROP names its Output Driver), not wired into it: Houdini renders a ROP's inputs
before the ROP itself, so a wired submit node would render them on the workstation before
its own render hook could submit them.

For every ROP to submit Houdini itself says what renders, in which order and which
frames: ``render -p -c -F <rop>`` (see :mod:`hpcdock.jobplan`).

The scene snapshot is written with ``hou.hipFile.saveAsBackup()``, which saves the
session to a numbered backup file and returns its path without renaming the artist's
open file; the backup is then moved into the bundle (``hip/<scene name>``).
"""

from __future__ import annotations

import datetime
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import hou

from hpcdock import bundle_writer as B
from hpcdock import jobplan as P
from hpcdock.farm.render import base_type_name, hscript_quote, output_parm_name

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


def read_settings(node) -> P.Settings:
    """Job settings from an HPC Dock Submit node."""
    env = []
    for name_parm, value_parm in _sp_multi(node, "envvars", "envname#", "envvalue#"):
        name = name_parm.evalAsString().strip()
        if name:
            env.append((name, value_parm.evalAsString()))
    mounts = []
    for path_parm, readonly_parm in _sp_multi(node, "mounts", "mountpath#", "mountro#"):
        path = path_parm.evalAsString().strip()
        if path:
            mounts.append(B.Mount(path, path, bool(int(readonly_parm.eval()))))
    return P.Settings(
        service_url=_sp_str(node, "service_url").strip(),
        name=_sp_str(node, "job_name").strip(),
        image=_sp_str(node, "image").strip(),
        frames_per_task=_sp_int(node, "frames_per_task"),
        priority=_sp_int(node, "priority"),
        gpus=_sp_int(node, "gpus_per_task"),
        max_attempts=_sp_int(node, "max_retries") + 1,
        timeout=_sp_int(node, "task_timeout"),
        network=bool(_sp_int(node, "network")),
        separate_steps=bool(_sp_int(node, "separate_steps")),
        husk_step=bool(_sp_int(node, "husk_step")),
        render_server=bool(_sp_int(node, "render_server")),
        mount_project=bool(_sp_int(node, "mount_project")),
        jobs_dir=_sp_str(node, "bundle_dir").strip(),
        hython=_sp_str(node, "hython").strip() or "hython",
        python=_sp_str(node, "python").strip() or "python3",
        husk=_sp_str(node, "husk").strip() or "husk",
        env=tuple(env),
        mounts=tuple(mounts),
    )


def listed_rops(node) -> list:
    """The ROPs named in the submit node's "ROPs to Submit" list (paths relative to it)."""
    rops = []
    for (path_parm,) in _sp_multi(node, "rops", "rop#"):
        path = path_parm.evalAsString().strip()
        if not path:
            continue
        rop = node.node(path)
        if rop is None:
            raise SubmitError(f"{node.path()}: 'ROPs to Submit' names '{path}', which does not exist")
        if not isinstance(rop, hou.RopNode):
            raise SubmitError(f"{node.path()}: 'ROPs to Submit' names {rop.path()}, which is not a ROP")
        if base_type_name(rop.type().name()) == P.SUBMIT_TYPE:
            raise SubmitError(
                f"{node.path()}: 'ROPs to Submit' names another HPC Dock Submit node, {rop.path()}"
            )
        rops.append(rop)
    return rops


# --------------------------------------------------------------------------- reading the ROP graph


def render_order(rop) -> P.Listing:
    """What Houdini renders when ``rop`` renders, from the hscript ``render -p`` listing."""
    out, err = hou.hscript(f"render -p -c -F {hscript_quote(rop.path())}")
    if err.strip():
        raise SubmitError(f"Houdini could not list what {rop.path()} renders: {err.strip()}")
    try:
        return P.Listing(rop.path(), P.parse_render_order(out))
    except P.PlanError as exc:
        raise SubmitError(f"{rop.path()}: {exc}") from None


def _int_parm(node, name: str) -> Optional[int]:
    parm = node.parm(name)
    return None if parm is None else int(parm.eval())


def node_facts(node, frames: Sequence[int] = ()) -> P.NodeFacts:
    """The frozen values of one ROP; its output parm evaluated at a few of ``frames``."""
    type_key = node.type().nameWithCategory()
    parm_name = output_parm_name(type_key)
    parm = node.parm(parm_name) if parm_name else None
    outputs = tuple((f, parm.evalAsStringAtFrame(f)) for f in P.sample_frames(frames)) if parm else ()
    # The USD Render ROP's "Render Delegate"; the Karma ROP has none and renders with Karma.
    renderer = node.parm("renderer") if P.renders_usd_with_husk(type_key) else None
    return P.NodeFacts(
        path=node.path(),
        name=node.name(),
        type_key=type_key,
        locked=node.isLocked() if isinstance(node, hou.RopNode) else False,
        trange=_int_parm(node, "trange"),
        initsim=bool(_int_parm(node, "initsim")),
        outputs=outputs,
        renderer=renderer.evalAsString().strip() if renderer is not None else None,
    )


def _upstream(rops: Sequence) -> List[P.NodeFacts]:
    """Every ROP wired above ``rops`` (and ``rops`` themselves), for lock and type checks.

    Only ROP inputs are followed: a SOP-level ROP's inputs are the geometry it writes.
    """
    found: Dict[str, object] = {}
    pending = list(rops)
    while pending:
        node = pending.pop()
        if node.path() in found:
            continue
        found[node.path()] = node
        pending.extend(n for n in node.inputs() if isinstance(n, hou.RopNode))
    return [node_facts(n) for n in found.values()]


# --------------------------------------------------------------------------- job


def _check_scene() -> str:
    """The hip path, or SubmitError if the scene was never saved."""
    if hou.hipFile.isNewFile():
        raise SubmitError("Save the scene first: hpcdock renders a snapshot of a saved .hip file.")
    return hou.hipFile.path()


def build_job(rops: list, settings: P.Settings, from_node: bool = True) -> Tuple[B.JobSpec, List[str]]:
    """Turn the ROPs to submit into a JobSpec. Raises SubmitError; writes nothing."""
    hip = _check_scene()
    if not settings.image:
        where = "fill in 'Image' on the submit node" if from_node else "set HPCDOCK_IMAGE"
        raise SubmitError(f"No container image is set: {where}.")
    if not rops:
        raise SubmitError("Nothing to render: add ROPs to 'ROPs to Submit' on the submit node.")
    listings = [render_order(r) for r in rops]
    frames = P.listed_frames(listings)
    facts = {}
    for path, rop_frames in frames.items():
        node = hou.node(path)
        if node is None:
            raise SubmitError(f"Houdini lists {path} in the render order, but there is no such node")
        facts[path] = node_facts(node, rop_frames)
    try:
        steps, warnings = P.plan_steps(
            listings,
            facts,
            _upstream(rops),
            settings.separate_steps,
            settings.gpus,
            husk_step=settings.husk_step,
        )
        return P.make_job(settings, steps, hip), warnings
    except P.PlanError as exc:
        raise SubmitError(str(exc)) from None


def write_snapshot(dest: str) -> None:
    """Save the session to ``dest`` without renaming the artist's open file."""
    try:
        backup = hou.hipFile.saveAsBackup()
    except hou.OperationFailed as exc:
        raise SubmitError(f"Houdini could not save a copy of the scene: {exc}") from None
    shutil.move(backup, dest)


def export(rops: list, settings: P.Settings, from_node: bool = True, bundle_dir: Optional[str] = None):
    """Build and write the bundle. Returns (bundle_dir, job, warnings)."""
    job, warnings = build_job(rops, settings, from_node)
    if bundle_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        jobs_dir = settings.jobs_dir or os.path.join(job.project_dir, JOBS_SUBDIR)
        bundle_dir = B.default_bundle_dir(jobs_dir, job.name, stamp)
    try:
        B.write_bundle(job, bundle_dir, write_snapshot)
    except B.BundleError as exc:
        raise SubmitError(str(exc)) from None
    return bundle_dir, job, warnings


def _send(bundle_dir: str, settings: P.Settings) -> dict:
    from hpcdock.client import Client  # lazily: another module, not needed to export

    return Client(url=settings.service_url or None).submit(bundle_dir)


def _is_submit_node(node) -> bool:
    return base_type_name(node.type().name()) == P.SUBMIT_TYPE


# --------------------------------------------------------------------------- entry points


def save_bundle(node) -> Optional[str]:
    """ "Save bundle" button: write the bundle, submit nothing. Returns its directory."""
    try:
        bundle_dir, _job, warnings = export(listed_rops(node), read_settings(node))
    except SubmitError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    _message(f"Saved the job bundle to\n{bundle_dir}", details="\n".join(warnings) or None)
    return bundle_dir


def submit(rops: list, settings: P.Settings, from_node: bool = True) -> Optional[dict]:
    try:
        bundle_dir, job, warnings = export(rops, settings, from_node)
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
        rops, settings = listed_rops(node), read_settings(node)
    except SubmitError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    return submit(rops, settings)


def submit_selected() -> Optional[dict]:
    """Shelf tool: submit the selected ROPs (or selected HPC Dock Submit nodes)."""
    selected = [n for n in hou.selectedNodes() if isinstance(n, hou.RopNode)]
    if not selected:
        _message("Select one or more ROPs (render nodes) first.", hou.severityType.Warning)
        return None
    submitters = [n for n in selected if _is_submit_node(n)]
    if submitters:
        result = None
        for n in submitters:
            result = submit_node(n)
        return result
    try:
        settings = P.settings_from_environment(os.environ)
    except P.PlanError as exc:
        _message(str(exc), hou.severityType.Error)
        return None
    return submit(selected, settings, from_node=False)


def soho_render() -> bool:
    """Render hook: the HDA's SOHO program runs this when the node is rendered.

    Submitting saves the scene and shows messages, neither of which belongs inside a
    render; so the SOHO program only decides whether this run submits (by the frame SOHO
    renders, ``state:time``) and leaves the submit to Houdini's event loop through
    ``hdefereval.executeDeferred``, which exists only in a graphical session. Without one
    (hbatch, hython) nothing is submitted and the message says how to submit instead.
    Returns whether a submit was scheduled.
    """
    import soho  # only exists inside a SOHO program

    node = hou.pwd()
    frame = hou.timeToFrame(soho.getDefaultedFloat("state:time", [0.0])[0])
    start = node.parmTuple("f").eval()[0]
    if not P.soho_submits(_int_parm(node, "trange") or 0, start, frame):
        return False
    if not hou.isUIAvailable():
        print(
            f"{TITLE}: rendering {node.path()} submits only in a graphical Houdini session; from a script, "
            f"call hpcdock.rop.on_submit({{'node': hou.node({node.path()!r})}})"
        )
        return False
    import hdefereval  # graphical Houdini only

    hdefereval.executeDeferred(_submit_path, node.path())
    return True


def _submit_path(path: str) -> Optional[dict]:
    node = hou.node(path)
    if node is None:  # deleted before the event loop came round
        return None
    return submit_node(node)


# -- the monitor panel's host -----------------------------------------------------------------


def open_monitor_pane(interface_name: str = "hpcdock"):
    """Open the hpcdock monitor (the ``.pypanel`` interface) in a floating Python Panel pane tab."""
    desktop = hou.ui.curDesktop()
    return desktop.createFloatingPaneTab(hou.paneTabType.PythonPanel, python_panel_interface=interface_name)


def mplay_command(paths: Sequence[str], fps: Optional[float] = None) -> Optional[List[str]]:
    """The MPlay command line showing ``paths`` in frame order (played at ``fps``, MPlay's
    ``-r``, when given), or None without MPlay."""
    mplay = P.mplay_path(hou.text.expandString("$HFS"), windows=os.name == "nt")
    if not paths or not os.path.exists(mplay):
        return None
    return [mplay] + (["-r", f"{fps:g}"] if fps else []) + sorted(paths)


def panel_host():
    """The panel's host inside Houdini: frames open in MPlay, dialogs parent to Houdini's window."""
    import subprocess

    from hpcdock.panel.host import Host

    class HoudiniHost(Host):
        viewer_name = "MPlay"

        def open_frames(
            self, paths: Sequence[str], current: Optional[str] = None, fps: Optional[float] = None
        ) -> bool:
            command = mplay_command(list(paths) or ([current] if current else []), fps)
            if command is None:
                return super().open_frames(paths, current, fps)
            subprocess.Popen(command, close_fds=True)
            return True

        def parent_window(self) -> Optional[object]:
            return hou.qt.mainWindow()

    return HoudiniHost()
