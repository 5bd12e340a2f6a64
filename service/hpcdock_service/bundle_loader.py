"""Read, validate and expand an OpenJD job bundle into the steps and tasks hpcdock runs.

OpenJD itself (``openjd-model``) parses the template, applies parameter values, and
expands parameter spaces and frame chunks; this module only adds what OpenJD does not
describe (``hpcdock.yaml``: image, env, mounts, network, where frames land) and refuses,
by name, every OpenJD feature hpcdock does not run yet. Nothing here touches the engine
or the store: :func:`load_bundle` is a pure function of the directory and the config, so
a refused bundle can never leave half a job behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import yaml
from openjd.model import (
    DecodeValidationError,
    IntRangeExpr,
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)
from openjd.model._internal._combination_expr import (  # the parser openjd itself runs on `combination`
    IdentifierNode as CombinationIdentifier,
)
from openjd.model._internal._combination_expr import Parser as CombinationExpressionParser
from openjd.model._internal._combination_expr import ProductNode as CombinationProduct
from openjd.model.v2023_09 import (
    JobParameterType,
    JobPathParameterDefinition,
    TaskChunksRangeConstraint,
    TaskParameterType,
)
from openjd.model.v2023_09._model import JobPathParameterDefinitionDataFlow as DataFlow
from openjd.model.v2023_09._model import JobPathParameterDefinitionObjectType as PathObjectType

from .config import AmountNeed, AttributeNeed, Need, SubmitLimits, Unmet, WorkerCapabilities, Workers
from .errors import BadInput, text_problem
from .framecheck import FrameCheckSettings, parse_settings
from .mounts import Mount, MountPolicy, PathRefused, make_dirs

SUPPORTED_EXTENSIONS = ["TASK_CHUNKING"]
MAX_FRAME = 2**31 - 1
GPU_AMOUNT = "amount.worker.gpu"
MEMORY_AMOUNT = "amount.worker.memory"  # MiB: the task container's memory limit
VCPU_AMOUNT = "amount.worker.vcpu"  # the task container's CPU limit
AMOUNTS = (GPU_AMOUNT, MEMORY_AMOUNT, VCPU_AMOUNT)
# Other amounts OpenJD names for a worker: what the worker has, not what a task holds. A step's
# min (and max) must hold for some worker, as WorkerCapabilities declares them.
WORKER_AMOUNT_PREFIX = "amount.worker."
# Custom amounts name a counted resource of service.yaml's `resources:`: `amount.houdini_engine`
# asks for the resource `houdini_engine`. OpenJD reserves amount.worker.* (and job, step, task).
CUSTOM_AMOUNT_PREFIX = "amount."

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
# Docker's reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest].
_IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FRAME_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?0?[0-9]{0,2}d?")  # a width of at most 99: no padding bombs
# Mount targets that would hide what the container itself needs: whole trees, and top-level dirs.
_SYSTEM_TREES = ("/proc", "/sys", "/dev")
_SYSTEM_DIRS = {
    "/",
    "/bin",
    "/boot",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/run",
    "/sbin",
    "/usr",
    "/var",
    "/usr/bin",
    "/usr/lib",
    "/usr/sbin",
    "/usr/lib64",
}
_KNOWN_KEYS = {
    "image",
    "env",
    "network",
    "mounts",
    "frames",
    "priority",
    "max_attempts",
    "name",
    "outputs",
    "frame_checks",
    "fps",
}


@dataclass(frozen=True)
class EmbeddedFile:
    """One of a script's ``embeddedFiles`` (a step's or an environment's), as the template gives it.

    ``data`` is an OpenJD format string, resolved like the script's actions; the file is written
    where the action that uses it runs before that action starts (see :mod:`.taskfiles`).
    """

    name: str
    data: str
    filename: Optional[str] = None  # None: a name of the runtime's choosing
    runnable: bool = False
    end_of_line: Optional[str] = None  # AUTO, LF or CRLF; None: AUTO

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": self.data,
            "filename": self.filename,
            "runnable": self.runnable,
            "end_of_line": self.end_of_line,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbeddedFile:
        return cls(
            name=str(data["name"]),
            data=str(data["data"]),
            filename=data.get("filename"),
            runnable=bool(data.get("runnable")),
            end_of_line=data.get("end_of_line"),
        )


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


class Environment(NamedTuple):
    """One OpenJD environment a step's tasks run in (the job's first, then the step's own).

    Its actions are OpenJD format strings, resolved when a session enters or exits it; an empty
    action means the environment has none (it only sets ``variables``).
    """

    name: str
    enter: tuple[str, ...]  # onEnter's command and args
    exit: tuple[str, ...]  # onExit's command and args
    variables: Mapping[str, str]
    timeout: Optional[float] = None  # seconds each action may take; None: no limit
    files: tuple[EmbeddedFile, ...] = ()  # its script's embeddedFiles ({{Env.File.NAME}})

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enter": list(self.enter),
            "exit": list(self.exit),
            "variables": dict(self.variables),
            "timeout": self.timeout,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Environment:
        return cls(
            data["name"],
            tuple(data["enter"]),
            tuple(data["exit"]),
            dict(data["variables"]),
            data.get("timeout"),
            tuple(EmbeddedFile.from_json(f) for f in data.get("files") or []),  # none in older jobs
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
    memory_mib: Optional[int] = None  # the task container's limits; None: the service's default
    vcpus: Optional[float] = None
    # What one running task holds, by amount name: counted resources ("amount.houdini_engine": 1)
    # and what it is packed by ("amount.worker.vcpu": 2, "amount.worker.memory": MiB).
    amounts: dict[str, float] = field(default_factory=dict)
    files: list[EmbeddedFile] = field(default_factory=list)  # the step script's embeddedFiles
    # The job's environments, then the step's: what its sessions enter, in this order.
    environments: list[Environment] = field(default_factory=list)
    # The worker groups (Slurm partitions, Swarm nodes) that meet its host requirements, where
    # only some do; None: wherever the engine places tasks by itself.
    placement: Optional[tuple[str, ...]] = None


@dataclass
class JobPlan:
    name: str
    bundle_dir: str
    container: ContainerSpec
    params: dict[str, str]  # job parameter values as strings
    steps: list[StepPlan]
    priority: int
    max_attempts: int
    frame_checks: FrameCheckSettings = field(default_factory=FrameCheckSettings)
    fps: float = 24.0  # the flipbook's frame rate

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
    limits: Optional[SubmitLimits] = None,
    capacity: Optional[Mapping[str, float]] = None,
    capabilities: Union[WorkerCapabilities, Workers, None] = None,
) -> JobPlan:
    """Validate the bundle at ``bundle_dir`` and expand it into a :class:`JobPlan`.

    Raises :class:`BadInput` naming the file and field at fault. ``mount_policy`` says
    what the job's containers may mount (the engine checks each mount again at every
    container creation); ``image_exists`` and ``gpu_check`` let the caller check against
    the live engine and GPU inventory. Every size in ``limits`` is checked before the thing
    it bounds is read or expanded. ``capacity`` is what the service can ever give one task, by
    amount name (its counted resources, and the machine's vCPUs and memory): a step asking for
    an amount not in it, or for more than it, is refused by name. ``capabilities`` is what the
    workers have besides (attributes such as ``attr.worker.os.family``, amounts such as
    ``amount.worker.gpu.memory``), alike or per group (a cluster's partitions or nodes): a step
    whose requirements no worker meets is refused naming the requirement and what the workers
    have, and a step only some groups meet is placed on those (:attr:`StepPlan.placement`).
    """
    workers = (
        capabilities
        if isinstance(capabilities, Workers)
        else Workers.alike(capabilities or WorkerCapabilities())
    )
    limits = limits or SubmitLimits()
    root = _bundle_root(bundle_dir, mount_policy)
    tname, template = _read_document(
        root, "template", limits.max_template_bytes, "max_template_bytes", limits, required=True
    )
    _, settings = _read_document(
        root, "hpcdock", limits.max_parameter_file_bytes, "max_parameter_file_bytes", limits, required=True
    )
    values = _parameter_values(root, parameter_values, limits)

    steps_raw = template.get("steps")
    if isinstance(steps_raw, list) and len(steps_raw) > limits.max_steps:
        raise BadInput(
            f"{tname}: steps",
            f"{len(steps_raw)} steps, more than the limit of {limits.max_steps} "
            "(limits.max_steps in service.yaml)",
        )
    jt = _decode_template(template, tname)
    _refuse_unsupported(jt, tname)
    container, frames_param, outputs, priority, max_attempts, name = _parse_settings(
        settings, root, mount_policy
    )
    frame_checks = parse_settings(settings.get("frame_checks"))
    fps = settings.get("fps", 24)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise BadInput("hpcdock.yaml: fps", f"must be a frame rate above 0 and at most 1000, got {fps!r}")
    if image_exists is not None and not image_exists(container.image):
        raise BadInput(
            "hpcdock.yaml: image",
            f"image {container.image!r} does not exist on the engine "
            "(no registry is used: build or import it locally first)",
        )

    try:
        params = preprocess_job_parameters(
            job_template=jt,
            job_parameter_values=values,
            environment_templates=[],
            job_template_dir=root,
            current_working_dir=root,
        )
        job = create_job(job_template=jt, job_parameter_values=params)
    except DecodeValidationError as exc:
        raise BadInput("parameter_values", _clean_openjd_message(exc)) from None
    except ValueError as exc:
        raise BadInput("parameter_values", str(exc)) from None
    except OverflowError:  # a range longer than a machine word can count
        raise BadInput(
            "parameter_values",
            f"a range is out of range (frames are whole numbers from {-MAX_FRAME} to {MAX_FRAME})",
        ) from None

    _check_job_size(job, frames_param, limits, tname)
    container = _with_path_mounts(container, jt, params, mount_policy)
    steps = []
    step_names = {s.name for s in job.steps}
    for index, step in enumerate(job.steps):
        steps.append(
            _plan_step(
                index,
                step,
                frames_param,
                outputs,
                step_names,
                gpu_check,
                capacity or {},
                workers,
                tname,
            )
        )
        steps[-1].environments = _environments(job.jobEnvironments) + _environments(step.stepEnvironments)
    if frames_param is not None and not any(frames_param in s.tasks[0].params for s in steps if s.tasks):
        raise BadInput(
            "hpcdock.yaml: frames.parameter", f"no step has a task parameter named {frames_param!r}"
        )
    return JobPlan(
        name=name or job.name,
        bundle_dir=str(root),
        container=container,
        params={k: str(v.value) for k, v in params.items()},
        steps=steps,
        priority=priority,
        max_attempts=max_attempts,
        frame_checks=frame_checks,
        fps=float(fps),
    )


# -- reading files -------------------------------------------------------------------------


def _bundle_root(bundle_dir: str, policy: MountPolicy) -> Path:
    if not bundle_dir or not os.path.isabs(bundle_dir):
        raise BadInput("bundle_dir", f"must be an absolute path, got {bundle_dir!r}")
    bad = text_problem(bundle_dir)
    if bad:
        raise BadInput("bundle_dir", bad)
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


def _read_document(
    root: Path, stem: str, cap: int, cap_name: str, limits: SubmitLimits, required: bool
) -> tuple[str, Any]:
    """Read ``STEM.yaml`` or ``STEM.json`` (exactly one may exist); return its name and its data.

    JSON is there for writers without a YAML library (Houdini's Python has none).
    """
    present = [f"{stem}.{ext}" for ext in ("yaml", "json") if os.path.lexists(root / f"{stem}.{ext}")]
    if len(present) > 1:
        raise BadInput(
            " and ".join(present), "both present: a bundle has exactly one of them; remove the other"
        )
    if not present:
        if required:
            raise BadInput(f"{stem}.yaml", f"missing: the bundle has no {stem}.yaml (or {stem}.json)")
        return f"{stem}.yaml", None
    name = present[0]
    raw = _read_regular_file(root, name, cap, cap_name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(name, f"is not UTF-8 text: {exc}") from None
    data = _parse_json(name, text) if name.endswith(".json") else _parse_yaml(name, text, limits)
    _check_tree(name, data, limits.max_yaml_depth)
    if required and not isinstance(data, dict):
        raise BadInput(name, "must be a mapping")
    return name, data


def _read_regular_file(root: Path, name: str, cap: int, cap_name: str) -> bytes:
    """Read at most ``cap`` bytes of ``root/name``, refusing anything but a regular file.

    ``O_NOFOLLOW`` refuses a symlink (to ``/dev/zero``, say) and ``O_NONBLOCK`` keeps a FIFO
    from blocking the open; ``fstat`` then refuses FIFOs and devices, and the read is capped
    whatever the size claims to be.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(root / name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(name, "is a symbolic link; bundle files must be regular files") from None
        raise BadInput(name, f"cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(
                name, "is not a regular file (a FIFO, device or directory cannot be a bundle file)"
            )
        too_big = f"more than the limit of {cap} bytes (limits.{cap_name} in service.yaml)"
        if st.st_size > cap:
            raise BadInput(name, f"is {st.st_size} bytes, {too_big}")
        chunks, size = [], 0
        while size <= cap:
            chunk = os.read(fd, min(1024 * 1024, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise BadInput(name, f"is {too_big}")
        return b"".join(chunks)
    except OSError as exc:
        raise BadInput(name, f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _parse_json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(name, "is nested too deeply") from None
    except ValueError as exc:
        raise BadInput(name, f"is not valid JSON: {exc}") from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on nesting, aliases and the size aliases expand to.

    Composing is recursive (deep nesting ends in ``RecursionError``) and an alias shares its
    node, so a few hundred bytes of aliases of aliases expand to billions of nodes in whatever
    walks the result; both are counted here, as the document is composed, before anything
    is built from it.
    """

    def __init__(self, stream: str, name: str, limits: SubmitLimits) -> None:
        super().__init__(stream)
        self._name = name
        self._limits = limits
        self._depth = 0
        self._aliases = 0
        self._weights: dict[int, int] = {}  # expanded node count of each composed node, by id

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > self._limits.max_yaml_aliases:
                raise BadInput(
                    self._name,
                    f"has more than {self._limits.max_yaml_aliases} YAML aliases "
                    "(limits.max_yaml_aliases in service.yaml)",
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > self._limits.max_yaml_depth:
            raise BadInput(
                self._name,
                f"is nested deeper than {self._limits.max_yaml_depth} levels "
                "(limits.max_yaml_depth in service.yaml)",
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            weight = 1 + sum(self._weights.get(id(n), 1) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            weight = 1 + sum(self._weights.get(id(k), 1) + self._weights.get(id(v), 1) for k, v in node.value)
        else:
            weight = 1
        if weight > self._limits.max_yaml_nodes:
            raise BadInput(
                self._name,
                f"expands to more than {self._limits.max_yaml_nodes} YAML nodes "
                "with its aliases resolved (limits.max_yaml_nodes in service.yaml)",
            )
        self._weights[id(node)] = weight
        return node


def _parse_yaml(name: str, text: str, limits: SubmitLimits) -> Any:
    loader = _BoundedLoader(text, name, limits)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise BadInput(name, f"is not valid YAML: {exc}") from None
    except (ValueError, OverflowError) as exc:  # a typed scalar PyYAML cannot build: 2001-13-45, 5000 digits
        raise BadInput(name, f"has a value that cannot be read: {exc}") from None
    finally:
        loader.dispose()


def _check_tree(name: str, data: Any, max_depth: int) -> None:
    """Refuse nesting past ``max_depth`` and strings no path, store or container can hold."""
    pending: list[tuple[Any, str, int]] = [(data, "", 0)]
    while pending:
        value, where, depth = pending.pop()
        if depth > max_depth:
            raise BadInput(
                f"{name}: {where}" if where else name,
                f"is nested deeper than {max_depth} levels (limits.max_yaml_depth in service.yaml)",
            )
        if isinstance(value, str):
            bad = text_problem(value)
            if bad:
                raise BadInput(f"{name}: {where}" if where else name, bad)
        elif isinstance(value, dict):
            for key, item in value.items():
                key_where = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and text_problem(key):
                    raise BadInput(f"{name}: {where or 'keys'}", f"a key {text_problem(key)}")
                pending.append((item, key_where, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _parameter_values(
    root: Path, overrides: Optional[dict[str, Any]], limits: SubmitLimits
) -> dict[str, str]:
    name, data = _read_document(
        root,
        "parameter_values",
        limits.max_parameter_file_bytes,
        "max_parameter_file_bytes",
        limits,
        required=False,
    )
    values: dict[str, str] = {}
    if data is not None:
        entries = data.get("parameterValues") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise BadInput(f"{name}: parameterValues", "must be a list of {name, value}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry or "value" not in entry:
                raise BadInput(f"{name}: parameterValues[{i}]", "must have name and value")
            if isinstance(entry["value"], (dict, list)):
                raise BadInput(f"{name}: parameterValues[{i}].value", "must be a string or a number")
            if str(entry["name"]).startswith("deadline:"):
                continue  # submitter settings of AWS Deadline Cloud bundles, not job parameters
            values[str(entry["name"])] = str(entry["value"])
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise BadInput("parameter_values", "must be a mapping of name to value")
        values.update({str(k): str(v) for k, v in overrides.items()})
    return values


# -- the template --------------------------------------------------------------------------


def _decode_template(template: dict[str, Any], tname: str) -> Any:
    try:
        return decode_job_template(template=template, supported_extensions=SUPPORTED_EXTENSIONS)
    except DecodeValidationError as exc:
        raise BadInput(tname, _clean_openjd_message(exc)) from None
    except Exception as exc:  # openjd raises a few other types for unknown spec versions
        raise BadInput(tname, str(exc)) from None


def _clean_openjd_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and "validation error" in lines[0]:
        lines = lines[1:]
    return " ".join(lines)


def _refuse_unsupported(jt: Any, tname: str) -> None:
    """Name every OpenJD feature in the template that hpcdock does not run yet."""
    for i, step in enumerate(jt.steps):
        where = f"{tname}: steps[{i}]"
        if getattr(step, "let", None):
            raise BadInput(f"{where}.let", "let bindings are not supported by hpcdock yet")
        req = step.hostRequirements
        for amount in req.amounts or [] if req is not None else []:
            if ":" in str(amount.name):
                raise BadInput(
                    f"{where}.hostRequirements.amounts",
                    f"{amount.name}: vendor-prefixed amounts are not supported by hpcdock "
                    f"(only amount.worker.* and {CUSTOM_AMOUNT_PREFIX}<resource> for the service's resources)",
                )
        space = step.parameterSpace
        for param in space.taskParameterDefinitions if space else []:
            chunks = getattr(param, "chunks", None)
            if chunks is not None and getattr(chunks, "targetRuntimeSeconds", None) is not None:
                raise BadInput(
                    f"{where}.parameterSpace.{param.name}.chunks.targetRuntimeSeconds",
                    "adaptive chunking is not supported by hpcdock yet; use defaultTaskCount",
                )


def _environments(environments: Any) -> list[Environment]:
    """The template's environments as sessions enter them (format strings kept, resolved per session)."""
    planned = []
    for env in environments or []:
        actions = env.script.actions if env.script is not None else None
        timeouts = [
            float(a.timeout)
            for a in (getattr(actions, "onEnter", None), getattr(actions, "onExit", None))
            if a is not None and a.timeout is not None
        ]
        planned.append(
            Environment(
                name=env.name,
                enter=_action_command(getattr(actions, "onEnter", None)),
                exit=_action_command(getattr(actions, "onExit", None)),
                variables={k: str(v) for k, v in (env.variables or {}).items()},
                timeout=max(timeouts) if timeouts else None,
                files=tuple(_embedded_files(env.script)),
            )
        )
    return planned


def _embedded_files(script: Any) -> list[EmbeddedFile]:
    """A step's or an environment's script's ``embeddedFiles`` (none without a script)."""
    return [
        EmbeddedFile(
            name=str(f.name),
            data=str(f.data),
            filename=f.filename,
            runnable=bool(f.runnable),
            end_of_line=f.endOfLine.value if getattr(f, "endOfLine", None) else None,
        )
        for f in (script.embeddedFiles if script is not None else None) or []
    ]


def _action_command(action: Any) -> tuple[str, ...]:
    if action is None:
        return ()
    return (str(action.command), *(str(a) for a in (action.args or [])))


def _check_job_size(job: Any, frames_param: Optional[str], limits: SubmitLimits, tname: str) -> None:
    """Refuse a job over the task or frame limits from its parameter ranges alone.

    openjd-model materialises every value (and every chunk) of a range when it builds a
    step's iterator: ``Frames=1-100000000`` costs gigabytes there. The lengths of the
    ranges are known without that, so the counts (an upper bound where parameters are
    associated) are checked first.
    """
    tasks_total = frames_total = 0
    for index, step in enumerate(job.steps):
        space = step.parameterSpace
        if space is None:
            tasks_total += 1
            continue
        where = f"{tname}: steps[{index}].parameterSpace"
        counts, values = {}, {}
        for name, param in space.taskParameterDefinitions.items():
            values[name] = len(param.range)
            counts[name] = _chunk_count(param) if param.type == TaskParameterType.CHUNK_INT else values[name]
            if name == frames_param:
                _check_frame_numbers(param.range, f"{where}.{name}")
        combination = space.combination or "*".join(space.taskParameterDefinitions)
        try:
            tree = CombinationExpressionParser().parse(combination)
        except Exception as exc:  # openjd validated it already; a parser change must not become a 500
            raise BadInput(f"{where}.combination", str(exc)) from None
        tasks_total += _space_size(tree, counts)
        if frames_param is not None and frames_param in values:
            frames_total += _space_size(tree, {**counts, frames_param: values[frames_param]})
    if tasks_total > limits.max_tasks_per_job:
        raise BadInput(
            "parameter_values",
            f"the job would have {tasks_total} tasks, more than the limit of "
            f"{limits.max_tasks_per_job} (limits.max_tasks_per_job in service.yaml)",
        )
    if frames_total > limits.max_frames_per_job:
        raise BadInput(
            "parameter_values",
            f"the job would have {frames_total} frames, more than the limit of "
            f"{limits.max_frames_per_job} (limits.max_frames_per_job in service.yaml)",
        )


def _chunk_count(param: Any) -> int:
    """Chunks of a CHUNK[INT] parameter without listing them: contiguous chunks never span a gap
    (for a value list, one chunk per value is the bound)."""
    size = int(param.chunks.defaultTaskCount)
    rng = param.range
    if param.chunks.rangeConstraint != TaskChunksRangeConstraint.CONTIGUOUS:
        return -(-len(rng) // size)
    if isinstance(rng, list):
        return len(rng)
    return sum(-(-len(r) // size) if r.step == 1 else len(r) for r in rng.ranges)


def _space_size(node: Any, sizes: dict[str, int]) -> int:
    if isinstance(node, CombinationIdentifier):
        return sizes[node.parameter]
    children = [_space_size(child, sizes) for child in node.children]
    if isinstance(node, CombinationProduct):
        return math.prod(children)
    return max(children)  # an association walks its (equally long) members together


def _check_frame_numbers(rng: Any, where: str) -> None:
    try:
        numbers = [int(str(v)) for v in rng] if isinstance(rng, list) else [rng.start, rng.end]
    except ValueError:
        raise BadInput(where, "frames must be whole numbers") from None
    for value in (min(numbers), max(numbers)):
        if not -MAX_FRAME <= value <= MAX_FRAME:
            raise BadInput(
                where,
                f"frame {value} is out of range (frames are whole numbers from {-MAX_FRAME} to {MAX_FRAME})",
            )


def _plan_step(
    index: int,
    step: Any,
    frames_param: Optional[str],
    outputs: dict[str, str],
    step_names: set[str],
    gpu_check: Optional[Callable[[int], Optional[str]]],
    capacity: Mapping[str, float],
    workers: Workers,
    tname: str,
) -> StepPlan:
    where = f"{tname}: steps[{index}]"
    needs: list[Need] = [
        AttributeNeed(str(a.name).lower(), tuple(a.anyOf or ()), tuple(a.allOf or ()))
        for a in (step.hostRequirements.attributes or [] if step.hostRequirements is not None else [])
    ]
    gpus = 0
    memory_mib: Optional[int] = None
    vcpus: Optional[float] = None
    amounts: dict[str, float] = {}
    if step.hostRequirements is not None:
        for amount in step.hostRequirements.amounts or []:
            name = str(amount.name).lower()
            # The limit is the most the step may use, else what it needs; a task is packed and
            # counted by what it needs, else by its limit.
            need = amount.min if amount.min is not None else amount.max
            if name == GPU_AMOUNT:
                gpus = int(amount.min)
                needs.append(AmountNeed(name, amount.min, where_measured=True))
            elif name == MEMORY_AMOUNT:
                memory_mib = int(amount.max if amount.max is not None else amount.min)
                amounts[name] = int(need or 0)
                needs.append(AmountNeed(name, need, where_measured=True))  # max is the task's limit
            elif name == VCPU_AMOUNT:
                vcpus = float(amount.max if amount.max is not None else amount.min)
                amounts[name] = float(need or 0)
                needs.append(AmountNeed(name, need, where_measured=True))
            elif name.startswith(WORKER_AMOUNT_PREFIX):
                needs.append(AmountNeed(name, amount.min, amount.max))
            else:
                amounts[name] = _resource_need(name, need, capacity, f"{where}.hostRequirements.amounts")
        for name in (VCPU_AMOUNT, MEMORY_AMOUNT):
            if amounts.get(name) and name in capacity and amounts[name] > capacity[name]:
                unit = " MiB" if name == MEMORY_AMOUNT else ""
                raise BadInput(
                    f"{where}.hostRequirements.amounts",
                    f"{name} {amounts[name]:g}{unit} can never fit: tasks are packed into "
                    f"{capacity[name]:g}{unit} (machine in service.yaml, default this machine)",
                )
    if gpus and gpu_check is not None:  # no GPU anywhere: the engine says how to give it some
        refusal = gpu_check(gpus)
        if refusal:
            raise BadInput(f"{where}.hostRequirements.amounts", refusal)
    try:
        placement = workers.place(needs)
    except Unmet as exc:
        raise BadInput(f"{where}.hostRequirements{'.' + exc.field if exc.field else ''}", str(exc)) from None
    action = step.script.actions.onRun
    timeout = float(action.timeout) if action.timeout is not None else None
    cancel_grace = 0.0
    cancelation = getattr(action, "cancelation", None)
    if cancelation is not None and getattr(cancelation, "notifyPeriodInSeconds", None) is not None:
        cancel_grace = float(cancelation.notifyPeriodInSeconds)
    elif cancelation is not None and str(getattr(cancelation, "mode", "")).endswith("NOTIFY_THEN_TERMINATE"):
        cancel_grace = 120.0  # OpenJD's default notify period
    tasks: list[TaskPlan] = []
    frame_name: Optional[str] = None  # the step's task parameter that holds frames, if it has one
    if step.parameterSpace is not None:
        names = set(step.parameterSpace.taskParameterDefinitions)
        frame_name = frames_param if frames_param in names else None
        space = StepParameterSpaceIterator(space=step.parameterSpace)
        if len(names) == 1 and frame_name is not None:  # the frame is the only parameter: 100,000 tasks
            for params in space:
                value = str(params[frame_name].value)
                tasks.append(TaskPlan({frame_name: value}, _frames_of(value)))
        else:
            for params in space:
                values = {k: str(v.value) for k, v in params.items()}
                frames = _frames_of(values[frame_name]) if frame_name is not None else []
                tasks.append(TaskPlan(values, frames))
    else:
        tasks.append(TaskPlan({}, []))
    output = None
    if frame_name is not None:
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
        memory_mib=memory_mib or None,
        vcpus=vcpus or None,
        amounts={k: v for k, v in amounts.items() if v},
        files=_embedded_files(step.script),
        placement=placement,
    )


def _resource_need(name: str, need: Any, capacity: Mapping[str, float], where: str) -> int:
    """How many of a counted resource a task holds; refused when the service has none or too few."""
    resource = name[len(CUSTOM_AMOUNT_PREFIX) :]
    have = capacity.get(name)
    if have is None:
        known = sorted(k[len(CUSTOM_AMOUNT_PREFIX) :] for k in capacity if k not in AMOUNTS)
        raise BadInput(
            where,
            f"{name}: this service has no resource {resource!r} (resources in service.yaml: "
            f"{', '.join(known) if known else 'none'})",
        )
    count = need  # openjd requires min or max
    if count != int(count):
        raise BadInput(where, f"{name}: a resource is counted in whole units, got {count}")
    if count > have:
        raise BadInput(
            where,
            f"{name}: asks for {int(count)} but this service has only {have:g} "
            f"(resources.{resource} in service.yaml)",
        )
    return int(count)


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
            raise BadInput(f"hpcdock.yaml: {key}", f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")
    image = settings.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadInput("hpcdock.yaml: image", "required: the container image to run (a non-empty string)")
    if not _IMAGE_REFERENCE.fullmatch(image.strip()) or len(image.strip()) > 255:
        raise BadInput(
            "hpcdock.yaml: image",
            f"{image!r} is not an image reference such as "
            "localhost/name:tag (lowercase name, optional registry, tag and @sha256 digest)",
        )
    env = settings.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise BadInput("hpcdock.yaml: env", "must be a mapping of variable name to value")
    for k, v in env.items():
        if not _ENV_NAME.fullmatch(k):
            raise BadInput(
                f"hpcdock.yaml: env.{k!r}",
                "not a variable name: letters, digits and _, not starting with a digit",
            )
        if isinstance(v, (dict, list)):
            raise BadInput(f"hpcdock.yaml: env.{k}", "must be NAME: scalar value")
    network = settings.get("network", False)
    if not isinstance(network, bool):
        raise BadInput(
            "hpcdock.yaml: network",
            f"must be true or false, got {network!r} (host networking is never allowed)",
        )
    priority = _int_setting(settings, "priority", 50, 0, 100)
    max_attempts = _int_setting(settings, "max_attempts", 2, 1, 100)
    name = settings.get("name")
    if name is not None and not isinstance(name, str):
        raise BadInput("hpcdock.yaml: name", "must be a string")

    for key, shape in (("mounts", "{source, target, readonly}"), ("outputs", "directories")):
        if settings.get(key) is not None and not isinstance(settings[key], list):
            raise BadInput(f"hpcdock.yaml: {key}", f"must be a list of {shape}")
    mounts = [Mount(str(root), str(root), True)]
    for i, raw in enumerate(settings.get("mounts") or []):
        mounts.append(_parse_mount(i, raw, policy))

    frames_param, outputs = _parse_frames(settings.get("frames"), root, policy)
    out_dirs = {
        os.path.realpath(_static_dir(p)) for p in outputs.values()
    }  # as _check_output_dir checked them
    for extra in settings.get("outputs") or []:
        out_dirs.add(_check_output_dir(str(extra), root, policy, "hpcdock.yaml: outputs"))
    for d in sorted(out_dirs):
        mounts.append(Mount(d, d, False))
    container = ContainerSpec(
        image=image.strip(),
        env={k: str(v) for k, v in env.items()},
        network=network,
        mounts=mounts,
        workdir=str(root),
    )
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
    shadowed = _system_dir(target)
    if shadowed:
        raise BadInput(
            f"{where}.target",
            f"{target} would hide the container's own {shadowed}; mount somewhere else (e.g. under /mnt)",
        )
    return Mount(real, target, readonly)


def _parse_frames(frames: Any, root: Path, policy: MountPolicy) -> tuple[Optional[str], dict[str, str]]:
    if frames is None:
        return None, {}
    if not isinstance(frames, dict) or not isinstance(frames.get("parameter"), str):
        raise BadInput("hpcdock.yaml: frames", "must be {parameter: TASK_PARAM, output: PATTERN}")
    unknown = set(frames) - {"parameter", "output", "steps"}
    if unknown:
        raise BadInput(
            f"hpcdock.yaml: frames.{sorted(unknown)[0]}", "unknown key (known: parameter, output, steps)"
        )
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
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise BadInput(where, f"bad pattern {pattern!r}: {exc}") from None
    for f, spec, conv in fields:
        if f != "frame" or conv is not None or not _FRAME_SPEC.fullmatch(spec or ""):
            raise BadInput(
                where,
                f"bad pattern {pattern!r}: only {{frame}} may be used, optionally with a "
                f"width like {{frame:04d}}, not {{{f}{'!' + conv if conv else ''}"
                f"{':' + spec if spec else ''}}}",
            )
    if not fields:
        raise BadInput(where, f"pattern {pattern!r} must contain {{frame}}")
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    full = os.path.normpath(full)
    _check_output_dir(_static_dir(full), root, policy, where)
    return full


def _system_dir(target: str) -> Optional[str]:
    """The container system directory a mount at ``target`` would hide, if any."""
    target = os.path.normpath(target)
    for top in _SYSTEM_TREES:
        if target == top or target.startswith(top + "/"):
            return top
    return target if target in _SYSTEM_DIRS else None


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


def _with_path_mounts(
    container: ContainerSpec, jt: Any, params: Mapping[str, Any], policy: MountPolicy
) -> ContainerSpec:
    """The container with the mounts its PATH parameters ask for, by ``objectType`` and ``dataFlow``.

    ``IN`` is mounted read-only, ``OUT`` and ``INOUT`` read-write (a FILE's parent directory, since
    programs write a file by replacing it), ``NONE`` (the default) not at all: the path is then
    only a string to the task. Every path goes through the same policy as any other mount, at the
    same path inside the container (no path mapping, so ``Param`` and ``RawParam`` are equal).
    """
    by_place = {(m.source, m.target): m for m in container.mounts}
    for definition in jt.parameterDefinitions or []:
        if not isinstance(definition, JobPathParameterDefinition) or definition.type != JobParameterType.PATH:
            continue
        flow = definition.dataFlow or DataFlow.NONE
        value = params.get(definition.name)
        path = str(value.value) if value is not None else ""
        if flow == DataFlow.NONE or not path:
            continue
        where = f"parameter_values: {definition.name}"
        if not os.path.isabs(path):
            raise BadInput(where, f"a PATH parameter with dataFlow {flow.value} must be an absolute path")
        bad = text_problem(path)
        if bad:
            raise BadInput(where, bad)
        real = os.path.realpath(path)
        is_file = definition.objectType == PathObjectType.FILE or (
            definition.objectType is None and os.path.isfile(real)
        )
        if flow == DataFlow.IN:
            if not os.path.exists(real):
                raise BadInput(where, f"{path} does not exist (dataFlow IN: the task reads it)")
            source, readonly = real, True
        else:
            source, readonly = (os.path.dirname(real) if is_file else real), False
            if flow == DataFlow.INOUT and not os.path.exists(real):
                raise BadInput(where, f"{path} does not exist (dataFlow INOUT: the task reads it first)")
        if not readonly and source == container.workdir:
            raise BadInput(where, "an output needs a directory of its own inside the bundle (e.g. out/)")
        _check_mountable(policy, source, where, must_exist=readonly)
        if not readonly:
            shadowed = _system_dir(source)
            if shadowed:
                raise BadInput(where, f"{source} would hide the container's own {shadowed}")
        known = by_place.get((source, source))
        if known is None or (known.readonly and not readonly):
            by_place[(source, source)] = Mount(source, source, readonly)
    return ContainerSpec(
        image=container.image,
        env=container.env,
        network=container.network,
        mounts=list(by_place.values()),
        workdir=container.workdir,
    )


def prepare_output_dirs(plan: JobPlan, mount_policy: MountPolicy) -> None:
    """Create the writable mounts' directories; called only once the whole bundle is accepted."""
    for mount in plan.container.mounts:
        if not mount.readonly:
            try:
                make_dirs(mount.source, mount_policy)
            except PathRefused as exc:
                raise BadInput(
                    "hpcdock.yaml: frames.output", f"cannot create output directory: {exc}"
                ) from None
