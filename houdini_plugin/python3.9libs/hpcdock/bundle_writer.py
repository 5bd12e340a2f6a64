"""Write an OpenJD job bundle that hpcdock-service runs. Pure Python: no ``hou``.

A bundle is a directory holding

* ``template.json``         OpenJD ``jobtemplate-2023-09`` with the ``TASK_CHUNKING``
                            extension; one step per ROP (two for a Karma or USD Render
                            ROP rendered with husk: export, then render), frames as a
                            ``CHUNK[INT]`` task parameter named ``Frame``; a step hython
                            renders has a step environment that keeps its scene loaded
                            between tasks (the render server, see :func:`_server_environment`);
* ``parameter_values.json`` ``parameterValues: [{name, value}]`` (the layout
                            deadline-cloud job bundles use);
* ``hpcdock.yaml``          what OpenJD does not describe: image, env, network,
                            mounts, priority, attempts and where each frame's
                            output lands;
* ``hpcdock_farm/``         the farm-side render script, its render server's ``server.py``,
                            ``markers.py`` and ``protocol.py``, so the container needs Houdini
                            but not this plugin;
* ``hip/<name>.hip``        the scene snapshot (written by the caller, see
                            :func:`write_bundle`'s ``write_snapshot``).

:class:`JobSpec` and :class:`StepSpec` are plain data; ``hpcdock.houdini`` fills them
from the scene. Everything here runs on Python 3.9 and is tested without Houdini.

Every document is written as JSON: Houdini's Python has no YAML library, OpenJD reads
``template.json`` and ``parameter_values.json`` as readily as their YAML twins, and JSON
text is valid YAML, so ``hpcdock.yaml`` keeps its name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .protocol import format_frame_list

FRAME_PARAM = "Frame"
OUTPUT_PARAM = "OutputDir"  # + the step's index: a PATH parameter, dataFlow OUT, per output directory
BUNDLE_PARAM = "BundleDir"  # the bundle directory, for the render server's actions (run elsewhere)
FARM_DIR = "hpcdock_farm"
SNAPSHOT_DIR = "hip"
TEMPLATE_FILE = "template.json"
PARAMETER_VALUES_FILE = "parameter_values.json"
HPCDOCK_FILE = "hpcdock.yaml"
SPEC_VERSION = "jobtemplate-2023-09"
# Exported USD goes under <bundle>/usd/<step>/: a directory of its own, which the service
# mounts writable because the export step's frame outputs lie there.
USD_DIR = "usd"

# OpenJD host-requirement amounts for licences. Custom amount names are "amount." plus a
# name of letters, digits and "_" (openjd-model 0.14 accepts "amount.houdini_engine");
# hpcdock-service counts them against the ``resources:`` of its configuration.
HOUDINI_ENGINE_AMOUNT = "amount.houdini_engine"
KARMA_RENDER_AMOUNT = "amount.karma_render"
GPU_AMOUNT = "amount.worker.gpu"

# The render server: the step environment that runs it, and its directory in the session's scratch.
SERVER_ENVIRONMENT = "HoudiniRenderServer"
SERVER_DIR = "{{Session.WorkingDirectory}}/hpcdock_render"

# What a step runs (StepSpec.mode).
MODE_HYTHON = "hython"  # hython renders the ROP
MODE_EXPORT_USD = "export_usd"  # hython writes the ROP's USD, one file per frame, and renders nothing
MODE_HUSK = "husk"  # husk renders the USD an export step wrote; no hython, no Engine licence

# Files copied from this package into <bundle>/hpcdock_farm/.
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
FARM_FILES = (
    (os.path.join(_PKG_DIR, "farm", "render.py"), "render.py"),
    (os.path.join(_PKG_DIR, "farm", "husk.py"), "husk.py"),
    (os.path.join(_PKG_DIR, "farm", "server.py"), "server.py"),
    (os.path.join(_PKG_DIR, "markers.py"), "markers.py"),
    (os.path.join(_PKG_DIR, "protocol.py"), "protocol.py"),
)

_STEP_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


class BundleError(ValueError):
    """The job cannot be written as a bundle; the message says why, for an artist."""


@dataclass
class Mount:
    source: str
    target: str
    readonly: bool = True


@dataclass
class StepSpec:
    """One OpenJD step: render ``rop`` over ``frames``."""

    name: str
    rop: str
    frames: List[int]
    dependencies: List[str] = field(default_factory=list)
    output_pattern: Optional[str] = None  # Python format string with {frame}
    gpus: int = 0
    with_inputs: bool = False  # render the ROP's inputs too (single-step mode)
    sequential: bool = False  # a simulation: all frames in one task, rendered in order
    mode: str = MODE_HYTHON
    usd_pattern: Optional[str] = None  # export/husk: the USD file per frame, {frame}, relative to the bundle
    renderer: Optional[str] = None  # husk: Hydra delegate for --renderer; None = husk's default (Karma)
    amounts: Dict[str, int] = field(default_factory=dict)  # licence amount name -> how many a task holds


@dataclass
class JobSpec:
    name: str
    image: str
    steps: List[StepSpec]
    hip_name: str  # basename of the artist's scene, e.g. "shot.hip"
    project_dir: str  # the artist's $HIP
    env: Dict[str, str] = field(default_factory=dict)
    network: bool = False
    mounts: List[Mount] = field(default_factory=list)
    priority: int = 50
    max_attempts: int = 2
    frames_per_task: int = 1
    timeout: int = 0  # seconds per task, 0 = none
    hython: str = "hython"
    python: str = "python3"  # runs the farm script in husk steps: a bare Python, so no Engine licence
    husk: str = "husk"
    # hython steps keep their scene loaded between tasks (the render server); False: one hython per task
    render_server: bool = True


# --------------------------------------------------------------------------- frames


def frames_to_range(frames: Iterable[int]) -> str:
    """Return an OpenJD range expression for ``frames``: "1-10", "1-9:2" or "1,4,9"."""
    values = sorted(set(int(f) for f in frames))
    if not values:
        raise BundleError("empty frame list")
    if len(values) == 1:
        return str(values[0])
    step = values[1] - values[0]
    if all(b - a == step for a, b in zip(values, values[1:])):
        rng = f"{values[0]}-{values[-1]}"
        return rng if step == 1 else f"{rng}:{step}"
    return format_frame_list(values)  # irregular: maximal runs of consecutive frames


def frame_range(start: float, end: float, inc: float) -> List[int]:
    """Integer frames of a ROP's Start/End/Inc, or BundleError if empty or fractional."""
    if inc <= 0:
        raise BundleError(f"frame increment must be positive, got {inc:g}")
    if end < start:
        raise BundleError(f"empty frame range: start {start:g} is after end {end:g}")
    for v in (start, end, inc):
        if abs(v - round(v)) > 1e-6:
            raise BundleError(
                f"fractional frames are not supported (start/end/inc {start:g} {end:g} {inc:g})"
            )
    s, e, i = int(round(start)), int(round(end)), int(round(inc))
    return list(range(s, e + 1, i))


# --------------------------------------------------------------------------- outputs


def infer_frame_pattern(samples: Dict[int, str]) -> Optional[str]:
    """Turn evaluated output paths ``{frame: path}`` into a ``{frame}`` pattern.

    Tries each run of digits in one sample whose value is that sample's frame, as
    ``{frame:0Nd}`` (zero padded) or ``{frame}``, and keeps the candidate that
    reproduces every sample. Needs at least two distinct frames to tell a frame
    number from e.g. a version number. Returns None when no candidate fits (the
    output does not change per frame, or changes in a way we cannot express).
    """
    if len(samples) < 2:
        raise ValueError("need at least two frames to infer an output pattern")
    frame0 = min(samples)
    path0 = samples[frame0]

    def esc(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    fits: List[str] = []
    for m in re.finditer(r"\d+", path0):
        text = m.group(0)
        if int(text) != frame0:
            continue
        fmts = [f"{{frame:0{len(text)}d}}"]
        if len(text) == len(str(frame0)):
            fmts.insert(0, "{frame}")
        for fmt in fmts:
            pattern = esc(path0[: m.start()]) + fmt + esc(path0[m.end() :])
            if all(pattern.format(frame=f) == p for f, p in samples.items()):
                fits.append(pattern)
                break
    if not fits:
        return None
    # Several runs can fit (e.g. "f1/img.1.exr"); the last one is the file name's.
    return fits[-1]


def relative_to_bundle(pattern: str, bundle_dir: str) -> str:
    """Make ``pattern`` relative when it lies inside the bundle directory."""
    if not os.path.isabs(pattern):
        return pattern
    root = os.path.abspath(bundle_dir)
    norm = os.path.normpath(pattern)
    if norm == root or not norm.startswith(root + os.sep):
        return pattern
    return os.path.relpath(norm, root)


# --------------------------------------------------------------------------- names


def step_name(base: str, taken: Sequence[str]) -> str:
    """A valid, unique OpenJD step name made from a node name."""
    name = _STEP_NAME_BAD.sub("_", base).strip("_") or "step"
    name = name[:60]
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    return candidate


def default_bundle_dir(jobs_dir: str, job_name: str, stamp: str) -> str:
    """``<jobs_dir>/<name>-<stamp>``, with ``-2``, ``-3``... if that already exists."""
    safe = _STEP_NAME_BAD.sub("_", job_name).strip("_") or "job"
    path = os.path.join(jobs_dir, f"{safe}-{stamp}")
    candidate, n = path, 2
    while os.path.exists(candidate):
        candidate = f"{path}-{n}"
        n += 1
    return candidate


# --------------------------------------------------------------------------- documents


def snapshot_relpath(job: JobSpec) -> str:
    return f"{SNAPSHOT_DIR}/{job.hip_name}"


def validate(job: JobSpec) -> None:
    """Raise BundleError naming the first thing an artist has to fix."""
    if not job.image or not job.image.strip():
        raise BundleError("no container image is set: fill in 'Image' on the submit node")
    if not job.steps:
        raise BundleError("nothing to render: connect at least one ROP to the submit node")
    names = [s.name for s in job.steps]
    if len(set(names)) != len(names):
        raise BundleError(f"duplicate step names: {names}")
    for s in job.steps:
        if not s.frames:
            raise BundleError(f"empty frame range for {s.rop}")
        for d in s.dependencies:
            if d not in names:
                raise BundleError(f"step {s.name} depends on unknown step {d}")
        if s.gpus < 0:
            raise BundleError("GPUs per task cannot be negative")
        if s.mode not in (MODE_HYTHON, MODE_EXPORT_USD, MODE_HUSK):
            raise BundleError(f"step {s.name}: unknown mode {s.mode!r}")
        if s.mode != MODE_HYTHON and not s.usd_pattern:
            raise BundleError(f"step {s.name}: a USD export or husk step needs its USD file pattern")
    if not 0 <= job.priority <= 100:
        raise BundleError(f"priority must be 0-100, got {job.priority}")
    if job.max_attempts < 1:
        raise BundleError(f"max attempts must be at least 1, got {job.max_attempts}")
    if job.frames_per_task < 1:
        raise BundleError(f"frames per task must be at least 1, got {job.frames_per_task}")
    if not job.hip_name or "/" in job.hip_name or "\\" in job.hip_name:
        raise BundleError(f"bad scene file name {job.hip_name!r}")
    for k in job.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise BundleError(f"bad environment variable name {k!r}")


def _chunks(step: StepSpec, frames_per_task: int) -> dict:
    """Chunking of a step's frames; a sequential step is one chunk holding every frame."""
    if step.sequential:
        return {"defaultTaskCount": len(step.frames), "rangeConstraint": "NONCONTIGUOUS"}
    return {"defaultTaskCount": int(frames_per_task), "rangeConstraint": "CONTIGUOUS"}


def _scene_args(s: StepSpec) -> List[str]:
    """What hython loads and renders for step ``s`` (see ``farm/render.py``)."""
    args = ["--hip", "{{Param.HipFile}}", "--hip-dir", "{{Param.ProjectDir}}", "--rop", s.rop]
    if s.mode == MODE_EXPORT_USD:
        args += ["--export-usd", str(s.usd_pattern)]
    if s.with_inputs:
        args.append("--with-inputs")
    return args


def _frame_args(job: JobSpec, s: StepSpec) -> List[str]:
    """The farm script's arguments for what step ``s`` runs (see ``farm/render.py``)."""
    frames = ["--frames", "{{Task.Param." + FRAME_PARAM + "}}"]
    if s.mode == MODE_HUSK:
        args = [f"{FARM_DIR}/render.py", "--husk", str(s.usd_pattern), *frames, "--husk-bin", job.husk]
        if s.output_pattern:
            args += ["--output", s.output_pattern]
        if s.renderer:
            args += ["--renderer", s.renderer]
        return args
    args = [f"{FARM_DIR}/render.py", *_scene_args(s), *frames]
    if s.sequential:
        args.append("--sequential")
    return args


def served(job: JobSpec, s: StepSpec) -> bool:
    """Whether step ``s`` renders through the render server: hython renders it, chunk by chunk.

    A simulation is one task already, and husk starts once per frame whatever runs it.
    """
    return job.render_server and s.mode in (MODE_HYTHON, MODE_EXPORT_USD) and not s.sequential


def _server_script(job: JobSpec, mode: str, *args: str) -> dict:
    """An action running the farm script's render server ``mode`` in a plain Python (no licence).

    Environment actions run in the session's working directory, not the bundle's: the script is
    named by its full path.
    """
    script = "{{Param." + BUNDLE_PARAM + "}}/" + FARM_DIR + "/render.py"
    return {"command": job.python, "args": [script, mode, "--dir", SERVER_DIR, *args]}


def _server_environment(job: JobSpec, s: StepSpec) -> dict:
    """The step environment of a served step: ``onEnter`` starts ``hython render.py serve`` in the
    background and returns once it has loaded the scene (failing with its log if it cannot),
    ``onExit`` stops it. Its tasks hand their frames to it (:func:`_on_run`)."""
    serve = [job.hython, f"{FARM_DIR}/render.py", "serve", "--dir", SERVER_DIR, *_scene_args(s)]
    on_enter = _server_script(job, "start", "--workdir", "{{Param." + BUNDLE_PARAM + "}}", "--", *serve)
    if job.timeout > 0:  # loading the scene was part of each task's time: bounded the same
        on_enter["timeout"] = int(job.timeout)
    return {
        "name": SERVER_ENVIRONMENT,
        "description": "Houdini with the scene loaded, rendering each task's frames",
        "script": {"actions": {"onEnter": on_enter, "onExit": _server_script(job, "stop")}},
    }


def _on_run(job: JobSpec, s: StepSpec) -> dict:
    if served(job, s):
        on_run = _server_script(job, "request", "--frames", "{{Task.Param." + FRAME_PARAM + "}}")
    else:
        command = job.python if s.mode == MODE_HUSK else job.hython
        on_run = {"command": command, "args": _frame_args(job, s)}
    if job.timeout > 0:
        on_run["timeout"] = int(job.timeout)
    return on_run


def _amounts(s: StepSpec) -> List[dict]:
    amounts = [{"name": name, "min": int(n)} for name, n in sorted(s.amounts.items())]
    if s.gpus > 0:
        amounts.append({"name": GPU_AMOUNT, "min": int(s.gpus)})
    return amounts


def _output_dir(step: StepSpec) -> Optional[str]:
    """The directory step ``step`` writes its frames into: the part of its pattern before the frame."""
    if not step.output_pattern:
        return None
    return os.path.dirname(step.output_pattern.split("{", 1)[0]) or None


def _path_parameters(job: JobSpec) -> List[Tuple[dict, str]]:
    """The scene and the outputs as OpenJD PATH parameters, with their values.

    So any OpenJD runtime knows what the job reads (the snapshot: ``dataFlow: IN``) and writes
    (each step's output directory: ``OUT``), and the service mounts them so. ``ProjectDir`` is only
    the value ``$HIP`` gets (``NONE``): it is mounted, or not, as the submit node says, through
    ``hpcdock.yaml``. ``BundleDir`` (``NONE``, only with a served step) names the bundle for the
    render server's environment actions, which run in the session's working directory. OpenJD
    takes only relative defaults for paths, so the values go to ``parameter_values.json`` (a
    relative one is the bundle's).
    """
    params: List[Tuple[dict, str]] = []
    if any(served(job, s) for s in job.steps):
        definition = {
            "name": BUNDLE_PARAM,
            "type": "PATH",
            "objectType": "DIRECTORY",
            "dataFlow": "NONE",
            "description": "The bundle directory, where the render server runs",
        }
        params.append((definition, "."))  # a relative value is the bundle's: "." is the bundle itself
    params += [
        (
            {
                "name": "HipFile",
                "type": "PATH",
                "objectType": "FILE",
                "dataFlow": "IN",
                "description": "Scene snapshot, relative to the bundle directory",
            },
            snapshot_relpath(job),
        ),
        (
            {
                "name": "ProjectDir",
                "type": "PATH",
                "objectType": "DIRECTORY",
                "dataFlow": "NONE",
                "description": "The artist's $HIP, restored after loading the snapshot",
            },
            job.project_dir,
        ),
    ]
    seen = set()
    for index, s in enumerate(job.steps):
        directory = _output_dir(s)
        if directory and directory not in seen:
            seen.add(directory)
            definition = {
                "name": f"{OUTPUT_PARAM}{index}",
                "type": "PATH",
                "objectType": "DIRECTORY",
                "dataFlow": "OUT",
                "description": f"Where step {s.name} writes its frames",
            }
            params.append((definition, directory))
    return params


def build_template(job: JobSpec) -> dict:
    steps = []
    for s in job.steps:
        step: dict = {
            "name": s.name,
            "parameterSpace": {
                "taskParameterDefinitions": [
                    {
                        "name": FRAME_PARAM,
                        "type": "CHUNK[INT]",
                        "range": frames_to_range(s.frames),
                        "chunks": _chunks(s, job.frames_per_task),
                    }
                ]
            },
            "script": {"actions": {"onRun": _on_run(job, s)}},
        }
        if served(job, s):
            step["stepEnvironments"] = [_server_environment(job, s)]
        if s.dependencies:
            # OpenJD 2023-09 dependencies are whole steps: a husk step starts once its export
            # step has finished every chunk, not chunk by chunk.
            step["dependencies"] = [{"dependsOn": d} for d in s.dependencies]
        amounts = _amounts(s)
        if amounts:
            step["hostRequirements"] = {"amounts": amounts}
        steps.append(step)
    return {
        "specificationVersion": SPEC_VERSION,
        "extensions": ["TASK_CHUNKING"],
        "name": job.name[:128] or "houdini",
        "parameterDefinitions": [definition for definition, _ in _path_parameters(job)],
        "steps": steps,
    }


def build_parameter_values(job: JobSpec) -> dict:
    return {"parameterValues": [{"name": d["name"], "value": v} for d, v in _path_parameters(job)]}


def build_hpcdock(job: JobSpec, bundle_dir: str) -> dict:
    doc: dict = {
        "name": job.name,
        "image": job.image.strip(),
        "env": {str(k): str(v) for k, v in job.env.items()},
        "network": bool(job.network),
        "mounts": [
            {"source": m.source, "target": m.target, "readonly": bool(m.readonly)} for m in job.mounts
        ],
        "priority": int(job.priority),
        "max_attempts": int(job.max_attempts),
    }
    patterns = {
        s.name: relative_to_bundle(s.output_pattern, bundle_dir) for s in job.steps if s.output_pattern
    }
    if patterns:
        frames: dict = {"parameter": FRAME_PARAM}
        if len(patterns) == len(job.steps):
            # Every step has outputs: the final step's pattern is the default.
            final = job.steps[-1].name
            frames["output"] = patterns.pop(final)
        # Otherwise no default, so a step without outputs never inherits another's.
        if patterns:
            frames["steps"] = patterns
        doc["frames"] = frames
    return doc


def _dump(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_bundle(
    job: JobSpec,
    bundle_dir: str,
    write_snapshot: Optional[Callable[[str], None]] = None,
) -> str:
    """Validate ``job`` and write its bundle into ``bundle_dir`` (created; must be empty).

    ``write_snapshot(path)`` is called with the absolute path the scene snapshot must
    be written to (``<bundle>/hip/<hip_name>``). Returns the bundle directory.
    """
    validate(job)
    bundle_dir = os.path.abspath(bundle_dir)
    if os.path.isdir(bundle_dir) and os.listdir(bundle_dir):
        raise BundleError(f"bundle directory is not empty: {bundle_dir}")
    os.makedirs(os.path.join(bundle_dir, SNAPSHOT_DIR), exist_ok=True)
    os.makedirs(os.path.join(bundle_dir, FARM_DIR), exist_ok=True)
    for src, name in FARM_FILES:
        shutil.copyfile(src, os.path.join(bundle_dir, FARM_DIR, name))
    if write_snapshot is not None:
        write_snapshot(os.path.join(bundle_dir, snapshot_relpath(job)))
    _dump(os.path.join(bundle_dir, TEMPLATE_FILE), build_template(job))
    _dump(os.path.join(bundle_dir, PARAMETER_VALUES_FILE), build_parameter_values(job))
    _dump(os.path.join(bundle_dir, HPCDOCK_FILE), build_hpcdock(job, bundle_dir))
    return bundle_dir
