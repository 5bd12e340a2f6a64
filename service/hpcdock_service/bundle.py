"""Read, validate and expand an OpenJD job bundle into the steps and tasks hpcdock runs.

OpenJD itself (``openjd-model``) parses the template, applies parameter values, and
expands parameter spaces and frame chunks; this module only adds what OpenJD does not
describe (``hpcdock.yaml``: image, env, mounts, network, where frames land) and refuses,
by name, every OpenJD feature hpcdock does not run yet. Nothing here touches the engine
or the store: :func:`load_bundle` is a pure function of the directory and the config, so
a refused bundle can never leave half a job behind.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from openjd.model import (
    DecodeValidationError,
    IntRangeExpr,
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)

from .errors import BadInput
from .mounts import MountPolicy, PathRefused, make_dirs

SUPPORTED_EXTENSIONS = ["TASK_CHUNKING"]
GPU_AMOUNT = "amount.worker.gpu"

# hpcdock.yaml keys that ask for something a render container must never get.
_FORBIDDEN_KEYS = {
    "privileged": "render containers never run privileged",
    "devices": "raw devices are not allowed; GPUs come only through amount.worker.gpu",
    "device_requests": "GPUs come only through the step's hostRequirements amount.worker.gpu",
    "cap_add": "capabilities cannot be added; all are dropped",
    "network_mode": "use `network: true|false`; host networking is never allowed",
    "pid_mode": "host PID namespace is never allowed",
    "ipc_mode": "host IPC namespace is never allowed",
    "security_opt": "security options are fixed by hpcdock (no-new-privileges)",
    "user": "containers run as the engine's rootless user",
    "volumes": "use `mounts`, which are checked against the allowed roots",
}
_KNOWN_KEYS = {"image", "env", "network", "mounts", "frames", "priority", "max_attempts", "name", "outputs"}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    readonly: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "readonly": self.readonly}


@dataclass(frozen=True)
class ContainerSpec:
    """Everything about *how* a job's containers run, from ``hpcdock.yaml`` plus the bundle path."""

    image: str
    env: dict[str, str]
    network: bool
    mounts: list[Mount]
    workdir: str

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "env": self.env,
            "network": self.network,
            "mounts": [m.to_json() for m in self.mounts],
            "workdir": self.workdir,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerSpec:
        return cls(
            image=data["image"],
            env=dict(data["env"]),
            network=bool(data["network"]),
            mounts=[Mount(**m) for m in data["mounts"]],
            workdir=data["workdir"],
        )


@dataclass
class TaskPlan:
    params: dict[str, str]  # task parameter values as strings (a chunk is a range like "1-5")
    frames: list[int]


@dataclass
class StepPlan:
    name: str
    depends_on: list[str]
    gpus: int
    command: list[str]  # OpenJD format strings, resolved per task at dispatch
    timeout: Optional[float]
    cancel_grace: float
    output: Optional[str]  # absolute output pattern with {frame}, or None
    tasks: list[TaskPlan] = field(default_factory=list)


@dataclass
class JobPlan:
    name: str
    bundle_dir: str
    container: ContainerSpec
    params: dict[str, str]  # job parameter values as strings
    steps: list[StepPlan]
    priority: int
    max_attempts: int

    @property
    def frames_total(self) -> int:
        return sum(len(t.frames) for s in self.steps if s.output is not None for t in s.tasks)


def load_bundle(
    bundle_dir: str,
    *,
    mount_policy: MountPolicy,
    parameter_values: Optional[dict[str, Any]] = None,
    image_exists: Optional[Callable[[str], bool]] = None,
    gpu_check: Optional[Callable[[int], Optional[str]]] = None,
) -> JobPlan:
    """Validate the bundle at ``bundle_dir`` and expand it into a :class:`JobPlan`.

    Raises :class:`BadInput` naming the file and field at fault. ``mount_policy`` says
    what the job's containers may mount (the engine checks each mount again at every
    container creation); ``image_exists`` and ``gpu_check`` let the caller check against
    the live engine and GPU inventory.
    """
    root = _bundle_root(bundle_dir, mount_policy)
    template = _read_yaml(root, "template.yaml", required=True)
    settings = _read_yaml(root, "hpcdock.yaml", required=True)
    values = _parameter_values(root, parameter_values)

    jt = _decode_template(template)
    _refuse_unsupported(jt)
    container, frames_param, outputs, priority, max_attempts, name = _parse_settings(
        settings, root, mount_policy
    )
    if image_exists is not None and not image_exists(container.image):
        raise BadInput("hpcdock.yaml: image", f"image {container.image!r} does not exist on the engine "
                       "(no registry is used: build or import it locally first)")

    try:
        params = preprocess_job_parameters(
            job_template=jt, job_parameter_values=values, environment_templates=[],
            job_template_dir=root, current_working_dir=root,
        )
        job = create_job(job_template=jt, job_parameter_values=params)
    except DecodeValidationError as exc:
        raise BadInput("parameter_values", _clean_openjd_message(exc)) from None
    except ValueError as exc:
        raise BadInput("parameter_values", str(exc)) from None

    steps = []
    step_names = {s.name for s in job.steps}
    for index, step in enumerate(job.steps):
        steps.append(_plan_step(index, step, frames_param, outputs, step_names, gpu_check))
    if frames_param is not None and not any(frames_param in s.tasks[0].params for s in steps if s.tasks):
        raise BadInput("hpcdock.yaml: frames.parameter",
                       f"no step has a task parameter named {frames_param!r}")
    return JobPlan(
        name=name or job.name,
        bundle_dir=str(root),
        container=container,
        params={k: str(v.value) for k, v in params.items()},
        steps=steps,
        priority=priority,
        max_attempts=max_attempts,
    )


# -- reading files -------------------------------------------------------------------------

def _bundle_root(bundle_dir: str, policy: MountPolicy) -> Path:
    if not bundle_dir or not os.path.isabs(bundle_dir):
        raise BadInput("bundle_dir", f"must be an absolute path, got {bundle_dir!r}")
    root = os.path.realpath(bundle_dir)
    if not os.path.isdir(root):
        raise BadInput("bundle_dir", f"{bundle_dir} is not a directory")
    _check_mountable(policy, root, "bundle_dir")
    return Path(root)


def _check_mountable(policy: MountPolicy, path: str, where: str, must_exist: bool = True) -> None:
    """Refuse, naming ``where``, a path (symlinks already resolved) that ``policy`` does not allow.

    Symlinks the submitter's own paths go through are resolved once, here; the engine then
    mounts the resolved path and refuses it if any of its components turned into a symlink.
    """
    try:
        policy.check(path, must_exist=must_exist)
    except PathRefused as exc:
        raise BadInput(where, str(exc)) from None


def _read_yaml(root: Path, name: str, required: bool) -> Any:
    path = root / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise BadInput(name, f"missing: the bundle has no {name}") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(name, f"cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(name, f"is not valid YAML: {exc}") from None
    if required and not isinstance(data, dict):
        raise BadInput(name, "must be a YAML mapping")
    return data


def _parameter_values(root: Path, overrides: Optional[dict[str, Any]]) -> dict[str, str]:
    data = _read_yaml(root, "parameter_values.yaml", required=False)
    values: dict[str, str] = {}
    if data is not None:
        entries = data.get("parameterValues") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise BadInput("parameter_values.yaml: parameterValues", "must be a list of {name, value}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry or "value" not in entry:
                raise BadInput(f"parameter_values.yaml: parameterValues[{i}]", "must have name and value")
            if str(entry["name"]).startswith("deadline:"):
                continue  # submitter settings of AWS Deadline Cloud bundles, not job parameters
            values[str(entry["name"])] = str(entry["value"])
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise BadInput("parameter_values", "must be a mapping of name to value")
        values.update({str(k): str(v) for k, v in overrides.items()})
    return values


# -- the template --------------------------------------------------------------------------

def _decode_template(template: dict[str, Any]) -> Any:
    try:
        return decode_job_template(template=template, supported_extensions=SUPPORTED_EXTENSIONS)
    except DecodeValidationError as exc:
        raise BadInput("template.yaml", _clean_openjd_message(exc)) from None
    except Exception as exc:  # openjd raises a few other types for unknown spec versions
        raise BadInput("template.yaml", str(exc)) from None


def _clean_openjd_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and "validation error" in lines[0]:
        lines = lines[1:]
    return " ".join(lines)


def _refuse_unsupported(jt: Any) -> None:
    """Name every OpenJD feature in the template that hpcdock does not run yet."""
    if jt.jobEnvironments:
        raise BadInput("template.yaml: jobEnvironments", "job environments are not supported by hpcdock yet")
    for i, step in enumerate(jt.steps):
        where = f"template.yaml: steps[{i}]"
        if step.stepEnvironments:
            raise BadInput(f"{where}.stepEnvironments", "step environments are not supported by hpcdock yet")
        if step.script.embeddedFiles:
            raise BadInput(f"{where}.script.embeddedFiles",
                           "embedded files are not supported by hpcdock yet; ship the file in the bundle")
        if getattr(step, "let", None):
            raise BadInput(f"{where}.let", "let bindings are not supported by hpcdock yet")
        req = step.hostRequirements
        if req is not None:
            if req.attributes:
                raise BadInput(f"{where}.hostRequirements.attributes",
                               "attribute requirements are not supported by hpcdock yet")
            for amount in req.amounts or []:
                if amount.name != GPU_AMOUNT:
                    raise BadInput(f"{where}.hostRequirements.amounts",
                                   f"{amount.name} is not supported by hpcdock yet (only {GPU_AMOUNT})")
        space = step.parameterSpace
        for param in (space.taskParameterDefinitions if space else []):
            chunks = getattr(param, "chunks", None)
            if chunks is not None and getattr(chunks, "targetRuntimeSeconds", None) is not None:
                raise BadInput(f"{where}.parameterSpace.{param.name}.chunks.targetRuntimeSeconds",
                               "adaptive chunking is not supported by hpcdock yet; use defaultTaskCount")


def _plan_step(index: int, step: Any, frames_param: Optional[str], outputs: dict[str, str],
               step_names: set[str], gpu_check: Optional[Callable[[int], Optional[str]]]) -> StepPlan:
    where = f"template.yaml: steps[{index}]"
    gpus = 0
    if step.hostRequirements is not None:
        for amount in step.hostRequirements.amounts or []:
            gpus = int(amount.min)
    if gpus and gpu_check is not None:
        refusal = gpu_check(gpus)
        if refusal:
            raise BadInput(f"{where}.hostRequirements.amounts", refusal)
    action = step.script.actions.onRun
    timeout = float(action.timeout) if action.timeout is not None else None
    cancel_grace = 0.0
    cancelation = getattr(action, "cancelation", None)
    if cancelation is not None and getattr(cancelation, "notifyPeriodInSeconds", None) is not None:
        cancel_grace = float(cancelation.notifyPeriodInSeconds)
    elif cancelation is not None and str(getattr(cancelation, "mode", "")).endswith("NOTIFY_THEN_TERMINATE"):
        cancel_grace = 120.0  # OpenJD's default notify period
    tasks: list[TaskPlan] = []
    has_frames = False
    if step.parameterSpace is not None:
        names = set(step.parameterSpace.taskParameterDefinitions)
        has_frames = frames_param in names
        space = StepParameterSpaceIterator(space=step.parameterSpace)
        if len(names) == 1 and has_frames:  # the frame is the only parameter: 100,000 tasks take this path
            for params in space:
                value = str(params[frames_param].value)
                tasks.append(TaskPlan({frames_param: value}, _frames_of(value)))
        else:
            for params in space:
                values = {k: str(v.value) for k, v in params.items()}
                frames = _frames_of(values[frames_param]) if has_frames else []
                tasks.append(TaskPlan(values, frames))
    else:
        tasks.append(TaskPlan({}, []))
    output = None
    if has_frames:
        output = outputs.get(step.name) or outputs.get("")
    return StepPlan(
        name=step.name,
        depends_on=[d.dependsOn for d in (step.dependencies or [])],
        gpus=gpus,
        command=[str(action.command)] + [str(a) for a in (action.args or [])],
        timeout=timeout,
        cancel_grace=cancel_grace,
        output=output,
        tasks=tasks,
    )


def _frames_of(value: str) -> list[int]:
    if value.isdigit():  # one frame per task: by far the most common value, and 100,000 of them per job
        return [int(value)]
    return list(IntRangeExpr.from_str(value)) if any(c in value for c in "-,:") else [int(value)]


# -- hpcdock.yaml --------------------------------------------------------------------------

def _parse_settings(settings: dict[str, Any], root: Path, policy: MountPolicy):
    for key in settings:
        if key in _FORBIDDEN_KEYS:
            raise BadInput(f"hpcdock.yaml: {key}", f"not allowed: {_FORBIDDEN_KEYS[key]}")
        if key not in _KNOWN_KEYS:
            raise BadInput(f"hpcdock.yaml: {key}",
                           f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")
    image = settings.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadInput("hpcdock.yaml: image", "required: the container image to run (a non-empty string)")
    env = settings.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise BadInput("hpcdock.yaml: env", "must be a mapping of variable name to value")
    for k, v in env.items():
        if not k or "=" in k or isinstance(v, (dict, list)):
            raise BadInput(f"hpcdock.yaml: env.{k}", "must be NAME: scalar value")
    network = settings.get("network", False)
    if not isinstance(network, bool):
        raise BadInput("hpcdock.yaml: network",
                       f"must be true or false, got {network!r} (host networking is never allowed)")
    priority = _int_setting(settings, "priority", 50, 0, 100)
    max_attempts = _int_setting(settings, "max_attempts", 2, 1, 100)
    name = settings.get("name")
    if name is not None and not isinstance(name, str):
        raise BadInput("hpcdock.yaml: name", "must be a string")

    mounts = [Mount(str(root), str(root), True)]
    for i, raw in enumerate(settings.get("mounts") or []):
        mounts.append(_parse_mount(i, raw, policy))
    if settings.get("mounts") is not None and not isinstance(settings["mounts"], list):
        raise BadInput("hpcdock.yaml: mounts", "must be a list of {source, target, readonly}")

    frames_param, outputs = _parse_frames(settings.get("frames"), root, policy)
    out_dirs = {os.path.realpath(_static_dir(p)) for p in outputs.values()}  # as _check_output_dir checked them
    for extra in settings.get("outputs") or []:
        out_dirs.add(_check_output_dir(str(extra), root, policy, "hpcdock.yaml: outputs"))
    for d in sorted(out_dirs):
        mounts.append(Mount(d, d, False))
    container = ContainerSpec(image=image.strip(), env={k: str(v) for k, v in env.items()},
                              network=network, mounts=mounts, workdir=str(root))
    return container, frames_param, outputs, priority, max_attempts, name


def _int_setting(settings: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadInput(f"hpcdock.yaml: {key}", f"must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def _parse_mount(i: int, raw: Any, policy: MountPolicy) -> Mount:
    where = f"hpcdock.yaml: mounts[{i}]"
    if not isinstance(raw, dict) or "source" not in raw:
        raise BadInput(where, "must be a mapping with source, and optionally target and readonly")
    unknown = set(raw) - {"source", "target", "readonly"}
    if unknown:
        raise BadInput(f"{where}.{sorted(unknown)[0]}", "unknown mount key (known: source, target, readonly)")
    source = str(raw["source"])
    target = str(raw.get("target") or source)
    readonly = raw.get("readonly", True)
    if not os.path.isabs(source) or not os.path.isabs(target):
        raise BadInput(f"{where}.source", "source and target must be absolute paths")
    if not isinstance(readonly, bool):
        raise BadInput(f"{where}.readonly", "must be true or false")
    real = os.path.realpath(source)
    if not os.path.exists(real):
        raise BadInput(f"{where}.source", f"{source} does not exist")
    _check_mountable(policy, real, f"{where}.source")
    return Mount(real, target, readonly)


def _parse_frames(frames: Any, root: Path, policy: MountPolicy) -> tuple[Optional[str], dict[str, str]]:
    if frames is None:
        return None, {}
    if not isinstance(frames, dict) or not isinstance(frames.get("parameter"), str):
        raise BadInput("hpcdock.yaml: frames", "must be {parameter: TASK_PARAM, output: PATTERN}")
    unknown = set(frames) - {"parameter", "output", "steps"}
    if unknown:
        raise BadInput(f"hpcdock.yaml: frames.{sorted(unknown)[0]}", "unknown key (known: parameter, output, steps)")
    outputs: dict[str, str] = {}
    if frames.get("output") is not None:
        outputs[""] = _output_pattern(frames["output"], root, policy, "hpcdock.yaml: frames.output")
    per_step = frames.get("steps") or {}
    if not isinstance(per_step, dict):
        raise BadInput("hpcdock.yaml: frames.steps", "must map step name to output pattern")
    for step, pattern in per_step.items():
        outputs[str(step)] = _output_pattern(pattern, root, policy, f"hpcdock.yaml: frames.steps.{step}")
    return frames["parameter"], outputs


def _output_pattern(pattern: Any, root: Path, policy: MountPolicy, where: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise BadInput(where, "must be a path pattern such as out/ball.{frame:04d}.png")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        pattern.format(frame=1)
    except (ValueError, KeyError, IndexError) as exc:
        raise BadInput(where, f"bad pattern {pattern!r}: {exc} (only {{frame}} may be used)") from None
    if "frame" not in fields:
        raise BadInput(where, f"pattern {pattern!r} must contain {{frame}}")
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    full = os.path.normpath(full)
    _check_output_dir(_static_dir(full), root, policy, where)
    return full


def _static_dir(pattern: str) -> str:
    """The deepest directory of ``pattern`` that does not depend on the frame."""
    head = pattern.split("{", 1)[0]
    return os.path.dirname(head) if not head.endswith("/") else head.rstrip("/")


def _check_output_dir(path: str, root: Path, policy: MountPolicy, where: str) -> str:
    """The output directory's resolved path (it may not exist yet), once ``policy`` allows it."""
    full = os.path.normpath(path if os.path.isabs(path) else str(root / path))
    if full == str(root):
        raise BadInput(where, "outputs need a directory of their own inside the bundle (e.g. out/)")
    real = os.path.realpath(full)
    _check_mountable(policy, real, where, must_exist=False)
    return real


def prepare_output_dirs(plan: JobPlan, mount_policy: MountPolicy) -> None:
    """Create the writable mounts' directories; called only once the whole bundle is accepted."""
    for mount in plan.container.mounts:
        if not mount.readonly:
            try:
                make_dirs(mount.source, mount_policy)
            except PathRefused as exc:
                raise BadInput("hpcdock.yaml: frames.output", f"cannot create output directory: {exc}") from None
