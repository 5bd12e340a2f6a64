"""Decide a job's steps, frames and outputs from values read out of Houdini. Pure: no ``hou``.

The Houdini adapter (:mod:`hpcdock.houdini`) reads the live scene into the frozen values
defined here and this module turns them into a :class:`hpcdock.bundle_writer.JobSpec`, so that the
decisions can be tested without Houdini or a stand-in for it.

Render order and frames are Houdini's own: for every ROP to submit the adapter runs the
hscript command ``render -p -c -F <rop>`` (SideFX's "render" HScript command: ``-p`` prints
what would render instead of rendering, ``-c`` condenses frames to ``( start end step )``,
``-F`` prints full paths), the way deadline-cloud-for-houdini does. That listing already
applies Houdini's rules for Merge, Fetch, Switch and subnet ROPs, bypass and lock flags,
"Render Current Frame" and "Render Frame Range Only (Strict)"; this module only parses it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from hpcdock import bundle_writer as B
from hpcdock.farm.render import base_type_name, output_parm_name

SUBMIT_TYPE = "hpcdock_submit"
# ROPs that render nothing themselves; if ``render -p`` lists them, their dependencies pass on.
PASS_THROUGH_TYPES = frozenset({"merge", "null", "switch", "fetch", "subnet", SUBMIT_TYPE})
# ROPs whose work cannot be split into independent steps: a Wedge ROP renders its driver once
# per wedge with changed parameters, a Batch ROP renders its inputs' frames in one session.
REFUSED_TYPES = {"wedge": "Wedge", "batch": "Batch"}
# "Valid Frame Range" menu entry 3 of Karma and USD Render ROPs: "Render Frame Range From Stage".
TRANGE_FROM_STAGE = 3
TRANGE_CURRENT_FRAME = 0
# ROPs that write the LOP stage to USD and render it with husk (``Category/base type``): with
# "Render USD with husk in its own step" on, hython only exports the USD and husk renders it.
HUSK_TYPES = frozenset({"Driver/karma", "Driver/usdrender", "Lop/usdrender_rop"})
# Hydra delegates that are Karma, whose render step asks for a Karma render licence; ""
# is husk's default delegate, Karma. Other delegates' licences are their vendors' business.
KARMA_DELEGATES = frozenset({"", "BRAY_HdKarma", "BRAY_HdKarmaXPU"})


class PlanError(ValueError):
    """The scene cannot be submitted as it is; the message says what to change."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What the artist chose on the submit node (or the environment, for the shelf tool)."""

    service_url: str = ""
    name: str = ""
    image: str = ""
    frames_per_task: int = 10
    priority: int = 50
    gpus: int = 0
    max_attempts: int = 2
    timeout: int = 0
    network: bool = False
    separate_steps: bool = True
    husk_step: bool = True
    render_server: bool = True
    mount_project: bool = True
    jobs_dir: str = ""
    hython: str = "hython"
    python: str = "python3"
    husk: str = "husk"
    env: Tuple[Tuple[str, str], ...] = ()
    mounts: Tuple[B.Mount, ...] = ()


def settings_from_environment(environ: Mapping[str, str]) -> Settings:
    """Settings for the shelf tool, which has no submit node to read them from."""
    try:
        return Settings(
            service_url=environ.get("HPCDOCK_URL", ""),
            image=environ.get("HPCDOCK_IMAGE", ""),
            frames_per_task=int(environ.get("HPCDOCK_FRAMES_PER_TASK", "10")),
            gpus=int(environ.get("HPCDOCK_GPUS", "0")),
        )
    except ValueError as exc:
        raise PlanError(f"HPCDOCK_FRAMES_PER_TASK and HPCDOCK_GPUS must be whole numbers ({exc})") from None


# --------------------------------------------------------------------------- values read from Houdini


@dataclass(frozen=True)
class RenderEntry:
    """One line of ``render -p -c -F``: a ROP, the frames it renders, the entries it waits for."""

    order: str
    path: str
    frames: Tuple[int, ...]
    deps: Optional[Tuple[str, ...]]  # order ids; None when the line listed no "[ ... ]"


@dataclass(frozen=True)
class NodeFacts:
    """A ROP of the submitted networks as the adapter found it."""

    path: str
    name: str
    type_key: str  # hou.NodeType.nameWithCategory(), e.g. "Driver/geometry", "Sop/filecache::2.0"
    locked: bool = False
    trange: Optional[int] = None  # the "Valid Frame Range" menu index, None without that parm
    initsim: bool = False  # "Initialize Simulation OPs" is on
    outputs: Tuple[Tuple[int, str], ...] = ()  # the output parm evaluated at sample frames
    renderer: Optional[str] = None  # a USD Render ROP's "renderer" (Hydra delegate), None without one

    @property
    def base_type(self) -> str:
        return base_type_name(self.type_key.split("/", 1)[-1])

    @property
    def renders_usd_with_husk(self) -> bool:
        return renders_usd_with_husk(self.type_key)


def renders_usd_with_husk(type_key: str) -> bool:
    """Whether a ROP of ``type_key`` (``Driver/karma``, ``Lop/usdrender_rop``) renders USD with husk."""
    category, _, name = type_key.rpartition("/")
    return f"{category}/{base_type_name(name)}" in HUSK_TYPES


@dataclass(frozen=True)
class Listing:
    """What Houdini renders when the ROP at ``output`` is rendered."""

    output: str
    entries: Tuple[RenderEntry, ...]


# --------------------------------------------------------------------------- render -p


_ENTRY = re.compile(r"^\s*(\S+)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(.+?)\s*$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _frame(text: str, line: str) -> int:
    if not _NUMBER.match(text):
        raise PlanError(f"cannot read the frames of this render order line: {line!r}")
    value = float(text)
    if abs(value - round(value)) > 1e-6:
        raise PlanError(f"fractional frames are not supported ({line.strip()!r})")
    return int(round(value))


def _frames(text: str, line: str) -> Tuple[int, ...]:
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        parts = text[1:-1].split()
        if len(parts) != 3:
            raise PlanError(f"cannot read the frame range of this render order line: {line!r}")
        start, end, step = (_frame(p, line) for p in parts)
        if step <= 0 or end < start:
            raise PlanError(f"empty frame range in this render order line: {line!r}")
        return tuple(range(start, end + 1, step))
    return tuple(_frame(p, line) for p in text.split())


def parse_render_order(text: str) -> Tuple[RenderEntry, ...]:
    """Parse ``render -p -c -F`` output: ``order [ deps ] /path frame...`` or ``... ( start end step )``."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _ENTRY.match(line)
        if not m:
            raise PlanError(f"cannot read this render order line: {line!r}")
        order, deps, path, frames = m.groups()
        entries.append(
            RenderEntry(order, path, _frames(frames, line), None if deps is None else tuple(deps.split()))
        )
    return tuple(entries)


def _order_key(order: str):
    return (0, int(order)) if order.lstrip("-").isdigit() else (1, order)


def _entry_deps(index: int, entries: Sequence[RenderEntry], output: str) -> List[int]:
    """Indices of the entries ``entries[index]`` waits for; without "[ ... ]", every earlier order."""
    entry = entries[index]
    if entry.deps is None:
        return [i for i, e in enumerate(entries) if _order_key(e.order) < _order_key(entry.order)]
    by_order = {e.order: i for i, e in enumerate(entries)}
    missing = [d for d in entry.deps if d not in by_order]
    if missing:
        raise PlanError(f"the render order of {output} refers to an unknown entry {missing[0]!r}")
    return [by_order[d] for d in entry.deps]


def listed_frames(listings: Sequence[Listing]) -> Dict[str, List[int]]:
    """Every path rendered by the listings with its frames: where the adapter samples outputs."""
    frames: Dict[str, Set[int]] = {}
    for listing in listings:
        for e in listing.entries:
            frames.setdefault(e.path, set()).update(e.frames)
    return {p: sorted(f) for p, f in frames.items()}


def sample_frames(frames: Sequence[int]) -> List[int]:
    """Frames at which an output parm is evaluated to infer its ``{frame}`` pattern."""
    if not frames:
        return []
    return sorted({frames[0], frames[0] + 1, frames[len(frames) // 2], frames[-1]})


# --------------------------------------------------------------------------- steps


@dataclass
class _Rop:
    path: str
    frames: Set[int]
    deps: List[str]  # paths


def _graph(listing: Listing, facts: Mapping[str, NodeFacts]) -> Dict[str, _Rop]:
    """One listing as ROPs with path dependencies; pass-through entries handed on."""
    entries = listing.entries
    seen: Set[str] = set()
    for e in entries:
        if e.path in seen:
            raise PlanError(
                f"{e.path} renders more than once when {listing.output} renders "
                "(is it driven by a Wedge ROP?); submit each variant as its own ROP"
            )
        seen.add(e.path)

    def passes_on(index: int) -> bool:
        path = entries[index].path
        return path in facts and facts[path].base_type in PASS_THROUGH_TYPES

    def real_deps(index: int, stack: Tuple[int, ...]) -> List[str]:
        found: List[str] = []
        for dep in _entry_deps(index, entries, listing.output):
            if dep in stack:
                raise PlanError(f"the render order of {listing.output} has a cycle at {entries[dep].path}")
            candidates = real_deps(dep, stack + (dep,)) if passes_on(dep) else [entries[dep].path]
            found.extend(c for c in candidates if c not in found)
        return found

    graph: Dict[str, _Rop] = {}
    for i, e in enumerate(entries):
        if not passes_on(i):
            graph[e.path] = _Rop(e.path, set(e.frames), real_deps(i, (i,)))
    return graph


def _check(rop: NodeFacts) -> None:
    if rop.base_type in REFUSED_TYPES:
        raise PlanError(
            f"{rop.path}: {REFUSED_TYPES[rop.base_type]} ROPs are not supported; "
            "submit the ROPs it drives instead"
        )
    if rop.trange == TRANGE_FROM_STAGE:
        raise PlanError(
            f"{rop.path}: 'Valid Frame Range' is 'Render Frame Range From Stage', which is only "
            "known once the stage is cooked; set it to 'Render Frame Range' to submit"
        )


def _sinks(graph: Mapping[str, _Rop]) -> List[str]:
    needed = {d for rop in graph.values() for d in rop.deps}
    return [p for p in graph if p not in needed]


def _ordered(graph: Mapping[str, _Rop]) -> List[str]:
    """Dependencies first, otherwise in listing order."""
    order: List[str] = []

    def visit(path: str, stack: Tuple[str, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise PlanError("the ROP graph has a cycle: " + " -> ".join(stack[stack.index(path) :] + (path,)))
        for d in graph[path].deps:
            visit(d, stack + (path,))
        order.append(path)

    for path in graph:
        visit(path, ())
    return order


def _upstream(graph: Mapping[str, _Rop], path: str) -> List[str]:
    found = [path]
    for p in found:
        found.extend(d for d in graph[p].deps if d not in found)
    return found


def output_pattern(rop: NodeFacts, warnings: List[str]) -> Optional[str]:
    """The ``{frame}`` pattern of ``rop``'s output file, or None with a warning saying why."""
    parm = output_parm_name(rop.type_key)
    if parm is None:
        warnings.append(f"{rop.path}: ROP type '{rop.type_key}' is submitted without per-frame output paths")
        return None
    samples = dict(rop.outputs)
    if not samples or not samples[min(samples)].strip():
        warnings.append(f"{rop.path}: '{parm}' is empty; frames are tracked without output paths")
        return None
    if len(samples) < 2:  # a single frame: the path is that frame's, nothing to infer
        return None
    pattern = B.infer_frame_pattern(samples)
    if pattern is None:
        warnings.append(
            f"{rop.path}: output '{samples[min(samples)]}' does not change with the frame number; "
            "frames are tracked without output paths"
        )
    return pattern


def _husk_steps(step: B.StepSpec, rop: NodeFacts, taken: List[str]) -> List[B.StepSpec]:
    """``step`` as hython exporting the USD (an Engine licence) and husk rendering it (a render licence).

    The render step keeps the ROP's step name, so that steps depending on the ROP wait for
    its images; the export step takes over the ROP's own dependencies.
    """
    export_name = B.step_name(step.name + "_usd", taken + [step.name])
    usd_pattern = f"{B.USD_DIR}/{export_name}/{rop.name}.{{frame:04d}}.usd"
    renderer = rop.renderer or ""
    export = B.StepSpec(
        name=export_name,
        rop=step.rop,
        frames=step.frames,
        dependencies=step.dependencies,
        output_pattern=usd_pattern,
        with_inputs=step.with_inputs,
        sequential=step.sequential,
        mode=B.MODE_EXPORT_USD,
        usd_pattern=usd_pattern,
        amounts={B.HOUDINI_ENGINE_AMOUNT: 1},
    )
    render = B.StepSpec(
        name=step.name,
        rop=step.rop,
        frames=step.frames,
        dependencies=[export_name],
        output_pattern=step.output_pattern,
        gpus=step.gpus,
        mode=B.MODE_HUSK,
        usd_pattern=usd_pattern,
        renderer=renderer or None,
        amounts={B.KARMA_RENDER_AMOUNT: 1} if renderer in KARMA_DELEGATES else {},
    )
    return [export, render]


def plan_steps(
    listings: Sequence[Listing],
    facts: Mapping[str, NodeFacts],
    upstream: Sequence[NodeFacts],
    separate: bool,
    gpus: int,
    husk_step: bool = True,
) -> Tuple[List[B.StepSpec], List[str]]:
    """Steps (dependencies first) and warnings for the artist.

    With ``husk_step``, a Karma or USD Render ROP becomes two steps (see :func:`_husk_steps`).

    ``upstream`` is every ROP reachable through the inputs of the submitted ROPs, so that
    locked ROPs, which Houdini leaves out of the render order with everything above them,
    are named in a warning, and Wedge/Batch ROPs are refused even where the listing hides them.
    """
    warnings: List[str] = []
    for rop in upstream:
        if rop.base_type in REFUSED_TYPES:
            _check(rop)
        if rop.base_type == SUBMIT_TYPE:  # as SideFX's HQueue Render ROP refuses its own input chain
            raise PlanError(
                f"{rop.path} is an HPC Dock Submit node wired above a ROP it would submit; disconnect it"
            )
        if rop.locked:
            warnings.append(
                f"{rop.path} is locked: Houdini renders neither it nor the ROPs above it, "
                "so neither does the job (unlock it to include them)"
            )
    merged: Dict[str, _Rop] = {}
    tops: List[str] = []
    for listing in listings:
        graph = _graph(listing, facts)
        for path, node in graph.items():
            into = merged.setdefault(path, _Rop(path, set(), []))
            into.frames |= node.frames
            into.deps.extend(d for d in node.deps if d not in into.deps)
        tops.extend(p for p in _sinks(graph) if p not in tops)
    if not merged:
        raise PlanError("Nothing to render: the ROPs to submit render nothing (locked or bypassed?)")
    order = _ordered(merged)
    for path in order:
        _check(facts[path])

    steps: List[B.StepSpec] = []
    names: Dict[str, str] = {}
    # Separate steps: every ROP is a step depending on its inputs' steps. Otherwise each ROP
    # at the bottom of a submitted network is one step that renders its inputs itself.
    for path in order if separate else [p for p in order if p in tops]:
        rop = facts[path]
        name = B.step_name(rop.name, [s.name for s in steps])
        names[path] = name
        # A simulation restarts whenever a render starts at its first frame: its frames go to
        # one task, in order. Without separate steps, inputs render inside the same task.
        sequential = any(facts[p].initsim for p in ([path] if separate else _upstream(merged, path)))
        step = B.StepSpec(
            name=name,
            rop=path,
            frames=sorted(merged[path].frames),
            dependencies=[names[d] for d in merged[path].deps] if separate else [],
            output_pattern=output_pattern(rop, warnings),
            gpus=gpus,
            with_inputs=not separate,
            sequential=sequential,
        )
        if husk_step and rop.renders_usd_with_husk:
            steps.extend(_husk_steps(step, rop, [s.name for s in steps]))
        else:
            steps.append(step)
    return steps, warnings


def make_job(settings: Settings, steps: List[B.StepSpec], hip_path: str) -> B.JobSpec:
    """The job for ``steps`` rendered from a snapshot of the scene saved at ``hip_path``."""
    if not settings.image:
        raise PlanError("No container image is set.")
    project_dir, hip_name = os.path.dirname(hip_path), os.path.basename(hip_path)
    mounts = list(settings.mounts)
    if settings.mount_project:
        mounts.insert(0, B.Mount(project_dir, project_dir, readonly=False))
    job = B.JobSpec(
        name=settings.name or os.path.splitext(hip_name)[0],
        image=settings.image,
        steps=steps,
        hip_name=hip_name,
        project_dir=project_dir,
        env=dict(settings.env),
        network=settings.network,
        mounts=mounts,
        priority=settings.priority,
        max_attempts=settings.max_attempts,
        frames_per_task=settings.frames_per_task,
        timeout=settings.timeout,
        hython=settings.hython,
        python=settings.python,
        husk=settings.husk,
        render_server=settings.render_server,
    )
    try:
        B.validate(job)
    except B.BundleError as exc:
        raise PlanError(str(exc)) from None
    return job


# --------------------------------------------------------------------------- render hook, MPlay


def soho_submits(trange: int, start_frame: float, soho_frame: float) -> bool:
    """Whether the SOHO program, run for ``soho_frame``, is the one run that submits.

    The node sets ``soho_multiframe`` so that SOHO runs the program once for the whole
    range; should it still run once per frame, only the run for the first frame of the
    node's range submits (or the single run of "Render Current Frame").
    """
    if trange == TRANGE_CURRENT_FRAME:
        return True
    return int(round(soho_frame)) == int(round(start_frame))


def mplay_path(hfs: str, windows: bool) -> str:
    """MPlay in a Houdini installation: ``$HFS/bin/mplay``, ``mplay.exe`` on Windows."""
    sep = "\\" if windows else "/"
    return hfs.rstrip("/\\") + sep + "bin" + sep + ("mplay.exe" if windows else "mplay")
