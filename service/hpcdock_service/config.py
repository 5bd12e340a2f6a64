"""Service configuration: ``$XDG_CONFIG_HOME/hpcdock/service.yaml``, then command-line flags.

Every key has a safe default (a private Unix socket, rootless only, mounts only of project
directories), so most users never write this file.

``allowed_roots`` defaults to the home directory, ``/tmp`` and ``/var/tmp``: an artist's
projects (and the bundles the ROP writes next to them) live there, and shared storage is
added by hand (``allowed_roots: [/home/me, /projects]``). That is not the whole home, though:
whatever ``allowed_roots`` says, :mod:`.mounts` never mounts hpcdock's own config and
state directories, the token, the engine's socket, ``$XDG_RUNTIME_DIR``, hidden entries of
the home and temporary directories (``~/.ssh``, ``~/.config``, ``~/.local``, shell start-up
files), ``~/bin``, Houdini's preference directories, nor a directory containing any of
them (the home itself, ``/tmp`` itself). So the default lets a job mount ``~/shows/ep1``
or ``/tmp/render-test``, never ``~`` or ``~/.config/hpcdock``.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from hpcdock import endpoint, paths

from .errors import BadInput
from .mounts import MountPolicy


@dataclass
class SubmitLimits:
    """What one submission may ask for (``limits:`` in service.yaml), checked before anything is
    expanded or allocated, so a hostile bundle costs the service a refusal, not its memory."""

    max_template_bytes: int = 8 * 1024 * 1024
    max_parameter_file_bytes: int = 1024 * 1024  # parameter_values and hpcdock.yaml
    max_yaml_depth: int = 64
    max_yaml_aliases: int = 1000
    max_yaml_nodes: int = 2_000_000  # nodes of a document with every alias expanded
    max_steps: int = 1000
    max_tasks_per_job: int = 200_000
    max_frames_per_job: int = 1_000_000
    max_concurrent_submits: int = 4  # submissions read and expanded at once; more get a 429


# A declared capability's value: an attribute's values, or an amount.
Capability = Union[str, list[str], float]

# The values of ``engine:`` (engines.open_engine says which of them this build carries).
ENGINES = ("local", "slurm", "swarm")

# A counted resource's name, as OpenJD spells what follows ``amount.`` in a custom amount
# capability (openjd-model's capability-name rule); worker, job, step and task are OpenJD's own scopes.
RESOURCE_NAME = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
_RESERVED_SCOPES = ("worker", "job", "step", "task")


# An sbatch option hpcdock sets itself for every task's job: given again under
# ``slurm.sbatch_args`` it would change what the engine relies on (names, output, requeue).
SLURM_OWN_OPTIONS = (
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--open-mode",
    "--parsable",
    "--wrap",
    "--requeue",
    "--no-requeue",
    "--chdir",
    "-D",
    "--comment",
    "--array",
    "-a",
    "--gres",
    "--gpus",
    "-G",
    "--hold",
    "-H",
)


@dataclass(frozen=True)
class SlurmConfig:
    """The ``slurm:`` mapping of service.yaml (used with ``engine: slurm``); every key optional.

    With none given, tasks go to the cluster's default partition under the user's default
    account and QOS, at most ``max_jobs`` of them in Slurm's queue at once.
    """

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    sbatch_args: tuple[str, ...] = ()  # more sbatch options, e.g. [--constraint=avx2, --time=60]
    # Where bundles and outputs must lie for every node to see them; None: the allowed roots.
    shared_roots: Optional[tuple[str, ...]] = None
    # Job output and exit-status files; must be on the shared filesystem. None: <state_dir>/slurm.
    spool_dir: Optional[str] = None
    # Image archives (podman save, by image id) nodes load from; None: <spool_dir>/images.
    image_store: Optional[str] = None
    max_jobs: int = 100  # task jobs queued or running at once (Slurm queues beyond its free CPUs)
    # What each partition's nodes have for hostRequirements, besides what Slurm reports and the
    # service-wide capabilities: {NAME: {capability: value}} (``partitions: {NAME: {capabilities: ...}}``).
    partitions: Mapping[str, Mapping[str, Capability]] = field(default_factory=dict)

    def partition_names(self, first: Optional[str]) -> list[str]:
        """The partitions tasks may go to: ``first`` (where a step goes when it meets the step's
        host requirements), then the other ones :attr:`partitions` names."""
        return ([first] if first else []) + [p for p in self.partitions if p != first]


_SLURM_TEXT_KEYS = ("partition", "account", "qos", "spool_dir", "image_store")


def _load_slurm(raw: Any, path: Path) -> SlurmConfig:
    if raw is None or isinstance(raw, SlurmConfig):
        return raw or SlurmConfig()
    known = [f.name for f in fields(SlurmConfig)]
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: slurm", f"must be a mapping of {', '.join(known)}")
    for key in raw:
        if key not in known:
            raise BadInput(f"{path}: slurm.{key}", f"unknown setting (known: {', '.join(known)})")
    for key in _SLURM_TEXT_KEYS:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value):
            raise BadInput(f"{path}: slurm.{key}", f"must be a non-empty line of text, got {value!r}")
    for key in ("spool_dir", "image_store"):
        if raw.get(key) is not None and not os.path.isabs(raw[key]):
            raise BadInput(f"{path}: slurm.{key}", f"must be an absolute path, got {raw[key]!r}")
    args = raw.get("sbatch_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and a.startswith("-") for a in args):
        raise BadInput(
            f"{path}: slurm.sbatch_args",
            f"must be a list of sbatch options, each starting with '-' (e.g. [--time=60]), got {args!r}",
        )
    for arg in args:
        option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]  # -Jname is -J name
        if option in SLURM_OWN_OPTIONS:
            raise BadInput(
                f"{path}: slurm.sbatch_args",
                f"{arg!r}: hpcdock sets {option} itself for every task's job (partition, account and "
                "qos have keys of their own; GPUs come from the step's amount.worker.gpu)",
            )
    roots = raw.get("shared_roots")
    if roots is not None and (
        not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots)
    ):
        raise BadInput(f"{path}: slurm.shared_roots", f"must be a list of absolute paths, got {roots!r}")
    max_jobs = raw.get("max_jobs", SlurmConfig.max_jobs)
    _check_number(max_jobs, f"{path}: slurm.max_jobs", whole=True)
    return SlurmConfig(
        **{k: raw.get(k) for k in _SLURM_TEXT_KEYS},
        sbatch_args=tuple(args),
        shared_roots=tuple(roots) if roots is not None else None,
        max_jobs=max_jobs,
        partitions=_check_groups(
            raw.get("partitions"), path, "slurm.partitions", "partition", _PARTITION_NAME
        ),
    )


# A Slurm partition's name as sbatch --partition takes it in a comma-separated list; a Swarm
# node's hostname as a placement constraint (node.hostname==NAME) compares it.
_PARTITION_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _check_groups(
    raw: Any, path: Path, key: str, what: str, name_rule: re.Pattern[str]
) -> dict[str, dict[str, Capability]]:
    """``{NAME: {capabilities: {...}}}`` of ``slurm.partitions`` or ``swarm.nodes``, each checked as
    ``capabilities:`` is; BadInput names the bad key."""
    if raw is None:
        return {}
    example = "{NAME: {capabilities: {attr.custom.site: paris}}}"
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: {key}", f"must be a mapping of {what} name to its settings, e.g. {example}")
    groups: dict[str, dict[str, Capability]] = {}
    for name, settings in raw.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not name_rule.fullmatch(name):
            raise BadInput(f"{path}: {where}", f"not a {what} name (letters, digits, '.', '-', '_')")
        if not isinstance(settings, dict):
            raise BadInput(f"{path}: {where}", f"must be a mapping with capabilities, e.g. {example}")
        for setting in settings:
            if setting != "capabilities":
                raise BadInput(f"{path}: {where}.{setting}", "unknown setting (known: capabilities)")
        # A cluster's GPU memory is not measured (NVML runs on the nodes): the admin declares it.
        groups[name] = _check_capabilities(
            settings.get("capabilities", {}), path, f"{where}.capabilities", declarable=(GPU_MEMORY,)
        )
    return groups


@dataclass(frozen=True)
class Machine:
    """What tasks are packed into (``machine:`` in service.yaml; default: this machine's CPUs and RAM)."""

    vcpus: float
    memory_mib: int
    detected: bool  # False: configured by hand


@dataclass(frozen=True)
class LicenceRetry:
    """How a task whose log says no licence was available is tried again without spending an attempt."""

    backoff_s: float
    backoff_max_s: float
    retries: int  # licence failures of one task before it fails for good

    def delay(self, retried: int) -> float:
        """Seconds before the next try after ``retried`` earlier licence retries: doubling, capped."""
        return min(self.backoff_s * 2 ** min(retried, 32), self.backoff_max_s)


DEFAULT_LICENCE_RETRY = LicenceRetry(backoff_s=30.0, backoff_max_s=600.0, retries=10)

OS_FAMILY = "attr.worker.os.family"
CPU_ARCH = "attr.worker.cpu.arch"
GPU_MEMORY = "amount.worker.gpu.memory"
VCPUS = "amount.worker.vcpu"
MEMORY = "amount.worker.memory"
GPUS = "amount.worker.gpu"
# What the service measures or packs by itself: service.yaml's capabilities may not say otherwise.
_MEASURED = (
    OS_FAMILY,
    CPU_ARCH,
    GPU_MEMORY,
    VCPUS,
    MEMORY,
    GPUS,
)
# OpenJD's names for the machine architectures (attr.worker.cpu.arch), by what Python reports.
_CPU_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def arch_name(machine: str) -> str:
    """A machine architecture as OpenJD spells it (x86_64, arm64), from uname's or Go's name."""
    return _CPU_ARCHES.get(machine.lower(), machine.lower())


def cpu_arch() -> str:
    """This machine's architecture as OpenJD spells it (x86_64, arm64)."""
    return arch_name(platform.machine())


@dataclass(frozen=True)
class AttributeNeed:
    """A step's ``attr.*`` host requirement: one of ``any_of``, or every value of ``all_of``."""

    name: str  # lowercase, as OpenJD compares names
    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (
            f"{self.name} ({f'anyOf {list(self.any_of)}' if self.any_of else f'allOf {list(self.all_of)}'})"
        )


@dataclass(frozen=True)
class AmountNeed:
    """A step's ``amount.worker.*`` host requirement: a worker has at least ``low``, at most ``high``.

    ``where_measured``: judged only by workers whose amount is known (``amount.worker.vcpu``,
    ``memory`` and ``gpu`` on a cluster's nodes); the local engine packs tasks by them instead
    (:mod:`.resources`, :mod:`.gpu`).
    """

    name: str
    low: Optional[float] = None
    high: Optional[float] = None
    where_measured: bool = False

    def __str__(self) -> str:
        bounds = " ".join(f"{k} {v:g}" for k, v in (("min", self.low), ("max", self.high)) if v is not None)
        return f"{self.name} ({bounds})"


Need = Union[AttributeNeed, AmountNeed]


@dataclass(frozen=True)
class WorkerCapabilities:
    """What the workers have that a step's ``hostRequirements`` can ask for, besides what tasks are
    packed by (vCPUs, memory, GPUs, counted resources: see :mod:`.resources`).

    Attributes are sets of values (``attr.worker.os.family``: ``linux``, since tasks run in Linux
    containers; ``attr.worker.cpu.arch``: this machine's; ``attr.*`` from ``capabilities:`` in
    service.yaml); amounts are quantities a worker has (``amount.worker.gpu.memory``: the smallest
    GPU's memory in MiB; ``amount.worker.*`` from ``capabilities:``). Names are lowercase, as
    OpenJD compares them. On the local engine every worker is alike; a cluster's partitions or
    nodes each have their own (:class:`Workers`).
    """

    attributes: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {OS_FAMILY: ("linux",), CPU_ARCH: (cpu_arch(),)}
    )
    amounts: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        declared: Mapping[str, Any],
        gpu_memory_mib: Sequence[int],
        measured: Optional[Mapping[str, Any]] = None,
    ) -> WorkerCapabilities:
        """The workers' capabilities: this machine's (or ``measured``, a cluster node's), then
        ``declared`` (checked by load_config), in that shape: an attribute's value or values, an amount."""
        attributes: dict[str, tuple[str, ...]] = dict(cls().attributes)
        amounts: dict[str, float] = {GPU_MEMORY: float(min(gpu_memory_mib))} if gpu_memory_mib else {}
        for name, value in {**(measured or {}), **declared}.items():
            if name.startswith("attr."):
                attributes[name] = (value,) if isinstance(value, str) else tuple(value)
            else:
                amounts[name] = float(value)
        return cls(attributes, amounts)

    def meets(self, need: Need) -> bool:
        """Whether this worker meets ``need``; an amount it has no measure of meets a ``where_measured`` need."""
        if isinstance(need, AttributeNeed):
            have = self.attributes.get(need.name, ())
            if need.any_of:
                return any(v in have for v in need.any_of)
            return bool(have) and all(v in have for v in need.all_of)
        amount = self.amounts.get(need.name)
        if amount is None:
            return need.where_measured
        return (need.low is None or amount >= need.low) and (need.high is None or amount <= need.high)

    def has(self, need: Need) -> str:
        """What this worker has of what ``need`` names, for a refusal: ``attr.x ['a']`` or ``no attr.x``."""
        if isinstance(need, AttributeNeed):
            have = self.attributes.get(need.name)
            return f"{need.name} {list(have)}" if have is not None else f"no {need.name}"
        amount = self.amounts.get(need.name)
        return f"{need.name} {amount:g}" if amount is not None else f"no {need.name}"

    def refusal(self, need: Need) -> Optional[str]:
        """Why no worker of a service whose workers are all alike meets ``need`` (None: they do)."""
        if self.meets(need):
            return None
        if isinstance(need, AttributeNeed):
            have = self.attributes.get(need.name)
            if have is None:
                known = ", ".join(f"{k} {list(v)}" for k, v in sorted(self.attributes.items()))
                return (
                    f"{need}: no worker of this service has the attribute {need.name} "
                    f"(the workers have: {known}; declare more under capabilities in service.yaml)"
                )
            return f"{need}: no worker of this service meets it (the workers have {need.name} {list(have)})"
        amount = self.amounts.get(need.name)
        if amount is None:
            known = ", ".join(f"{k} {v:g}" for k, v in sorted(self.amounts.items())) or "none"
            what = "no NVIDIA GPU" if need.name == GPU_MEMORY else f"no {need.name}"
            return (
                f"{need}: the workers of this service have {what} "
                f"(their amounts: {known}; declare more under capabilities in service.yaml)"
            )
        return f"{need}: no worker of this service meets it (the workers have {amount:g})"


class Unmet(Exception):
    """No worker of the service meets a step's host requirements: ``field`` is where in
    ``hostRequirements`` (``attributes``, ``amounts`` or empty for the step's whole set), the
    message names the requirement and what the workers have."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class WorkerGroup:
    """Workers alike for hostRequirements: a Slurm partition, a Swarm node."""

    name: str
    capabilities: WorkerCapabilities


@dataclass(frozen=True)
class Workers:
    """Where a step's tasks can run, judged by its host requirements.

    ``kind`` names what the groups are ("partition", "node"); empty for a service whose workers are
    all alike (the local engine: one unnamed group). ``default`` is the group a step goes to when
    it meets the step's requirements (``slurm.partition``): the engine's own placement then holds.
    """

    groups: tuple[WorkerGroup, ...]
    kind: str = ""
    default: Optional[str] = None

    @classmethod
    def alike(cls, capabilities: WorkerCapabilities) -> Workers:
        return cls((WorkerGroup("", capabilities),))

    @classmethod
    def build(
        cls,
        kind: str,
        common: Mapping[str, Any],
        declared: Mapping[str, Mapping[str, Any]],
        measured: Mapping[str, Mapping[str, Any]],
        default: Optional[str] = None,
    ) -> Workers:
        """One group per name of ``measured`` (what the cluster reports of each), with the
        service-wide ``common`` capabilities and then the group's ``declared`` own."""
        return cls(
            tuple(
                WorkerGroup(name, WorkerCapabilities.build({**common, **declared.get(name, {})}, [], have))
                for name, have in measured.items()
            ),
            kind,
            default,
        )

    def to_json(self) -> dict[str, Any]:
        """What ``--check`` shows: each group's attributes and amounts, as host requirements see them."""
        return {
            "kind": self.kind or "alike",
            "default": self.default,
            "groups": {
                g.name: {
                    "attributes": {k: list(v) for k, v in sorted(g.capabilities.attributes.items())},
                    "amounts": dict(sorted(g.capabilities.amounts.items())),
                }
                for g in self.groups
            },
        }

    def place(self, needs: Sequence[Need]) -> Optional[tuple[str, ...]]:
        """The groups that meet every need, or None where the engine's own placement serves (no
        needs, workers all alike, or the default group meets them); Unmet when no group does."""
        matching = tuple(g.name for g in self.groups if all(g.capabilities.meets(n) for n in needs))
        if not matching:
            raise self._unmet(needs)
        if not needs or not self.kind or self.default in matching:
            return None
        return matching

    def _unmet(self, needs: Sequence[Need]) -> Unmet:
        """Why no group meets ``needs``: a requirement no group meets on its own is named first,
        under its part of hostRequirements, with what each group has of it; otherwise what each
        group lacks (each requirement holds somewhere, all of them nowhere)."""
        hopeless = next((n for n in needs if not any(g.capabilities.meets(n) for g in self.groups)), None)
        if hopeless is not None:
            part = "attributes" if isinstance(hopeless, AttributeNeed) else "amounts"
            if not self.kind:
                refusal = self.groups[0].capabilities.refusal(hopeless)
                assert refusal is not None
                return Unmet(part, refusal)
            nobody = all(g.capabilities.has(hopeless) == f"no {hopeless.name}" for g in self.groups)
            verdict = f"has the attribute {hopeless.name}" if nobody and part == "attributes" else "meets it"
            return Unmet(
                part,
                f"{hopeless}: no worker of this service {verdict} ("
                + "; ".join(f"{self.kind} {g.name} has {g.capabilities.has(hopeless)}" for g in self.groups)
                + (
                    ""
                    if hopeless.name in _MEASURED
                    else f"; declare capabilities per {self.kind} in service.yaml"
                )
                + ")",
            )
        lacking = []
        for group in self.groups:
            need = next(n for n in needs if not group.capabilities.meets(n))
            lacking.append(f"{self.kind} {group.name} lacks {need} (it has {group.capabilities.has(need)})")
        return Unmet(
            "",
            f"no {self.kind} of this service meets every host requirement of the step: "
            + "; ".join(lacking)
            + f" (declare capabilities per {self.kind} in service.yaml)",
        )


@dataclass(frozen=True)
class SwarmSettings:
    """``swarm:`` in service.yaml, for ``engine: swarm`` (see :mod:`.engines.swarm`)."""

    # Directories every Swarm node mounts at the same path; bundles and outputs must lie under
    # them. None: the allowed roots, accepted only while the swarm has a single node.
    shared_roots: Optional[tuple[str, ...]] = None
    max_concurrent: Optional[int] = None  # task services at once; default: slots
    gpu_kind: str = "NVIDIA-GPU"  # the generic resource GPU nodes advertise
    # Session directories (sessions' control files and task outputs): under shared_roots when
    # they are set, else steps with environments run cold. None: <state_dir>/swarm.
    spool_dir: Optional[str] = None
    # What each node has for hostRequirements, besides what the swarm reports of it and the
    # service-wide capabilities: {HOSTNAME: {capability: value}} (``nodes: {HOSTNAME: {capabilities: ...}}``).
    nodes: Mapping[str, Mapping[str, Capability]] = field(default_factory=dict)


_SWARM_KEYS = ("shared_roots", "max_concurrent", "gpu_kind", "spool_dir", "nodes")


def _default_resources() -> dict[str, int]:
    """The licence kinds the Houdini submitter asks for (a Karma ROP's export and husk steps), known
    before an admin counts them: as many as the machine has cores, which the slots bound anyway.
    Setting ``resources:`` replaces this with the studio's real counts."""
    cores = os.cpu_count() or 1
    return {"houdini_engine": cores, "karma_render": cores}


def _default_roots() -> list[str]:
    return [os.path.expanduser("~"), "/tmp", "/var/tmp"]


def _machine_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def _default_task_memory_mib() -> int:
    """Three quarters of the machine's memory: one runaway task cannot take it all."""
    return _machine_memory_mib() * 3 // 4


@dataclass
class ServiceConfig:
    # Where to listen: unix:///path or tcp://host:port; default the user's private socket
    # (see hpcdock.endpoint). host/port alone mean TCP, on 127.0.0.1:7654 unless given.
    listen: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    state_dir: str = field(default_factory=lambda: str(paths.state_dir()))
    token_file: str = field(default_factory=lambda: str(paths.token_path()))
    # Which engine runs tasks: "local" (rootless Podman or Docker here), or a cluster's (ENGINES).
    engine: str = "local"
    engine_socket: Optional[str] = None  # unix:///... ; default: discovered (see engines.discovery)
    embedded_podman: bool = True
    allow_rootful: bool = False
    allowed_roots: list[str] = field(default_factory=_default_roots)
    # GPUs tasks may use, declared by hand ([{index, uuid, name}]); default: all that NVML finds.
    gpus: Optional[list[dict[str, Any]]] = None
    gpu_cdi_kind: str = "nvidia.com/gpu"  # CDI device kind GPUs are requested by
    # Task limits where a step's hostRequirements (amount.worker.memory / vcpu) give none.
    task_pids: int = 4096  # processes and threads
    task_memory_mib: Optional[int] = field(default_factory=_default_task_memory_mib)
    task_vcpus: Optional[float] = None
    log_cap_mib: int = 64  # per attempt; the end of a longer log is kept
    limits: SubmitLimits = field(default_factory=SubmitLimits)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # with engine: slurm
    swarm: SwarmSettings = field(default_factory=SwarmSettings)  # with engine: swarm
    # Counted resources (licences): {name: count}; a step holds `amount.<name>` of them while it runs.
    resources: dict[str, int] = field(default_factory=lambda: _default_resources())
    # {vcpus:, memory_mib:} tasks are packed into by their amount.worker.vcpu/memory; default: this machine.
    machine: Optional[dict[str, Any]] = None
    licence_backoff_s: float = DEFAULT_LICENCE_RETRY.backoff_s  # first wait after a licence failure; doubles
    licence_backoff_max_s: float = DEFAULT_LICENCE_RETRY.backoff_max_s
    licence_retries: int = (
        DEFAULT_LICENCE_RETRY.retries
    )  # licence failures of one task before it fails for good
    # What the workers have for hostRequirements beyond what is measured: {attr.NAME: value or
    # [values], amount.worker.NAME: number}; see WorkerCapabilities.
    capabilities: dict[str, Capability] = field(default_factory=dict)

    @property
    def packing_machine(self) -> Machine:
        given = self.machine or {}
        return Machine(
            vcpus=given.get("vcpus") or float(os.cpu_count() or 1),
            memory_mib=given.get("memory_mib") or _machine_memory_mib(),
            detected=not given,
        )

    @property
    def licence_retry(self) -> LicenceRetry:
        return LicenceRetry(self.licence_backoff_s, self.licence_backoff_max_s, self.licence_retries)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def endpoint(self) -> endpoint.Endpoint:
        if self.listen:
            return endpoint.parse(self.listen)
        if self.host is None and self.port is None:
            return endpoint.default()
        return endpoint.Endpoint(
            host=self.host or endpoint.DEFAULT_HOST, port=self.port or endpoint.DEFAULT_PORT
        )

    def mount_policy(self, engine_socket: Optional[str] = None) -> MountPolicy:
        """What task containers may mount; ``engine_socket`` is the engine's ``unix://`` URL."""
        protected = [str(paths.config_dir()), self.state_dir, self.token_file]
        # A cluster engine's spool holds its sessions' control files: no task mounts it.
        protected += [d for d in (self.slurm.spool_dir, self.swarm.spool_dir) if d]
        if os.environ.get("XDG_RUNTIME_DIR"):
            protected.append(os.environ["XDG_RUNTIME_DIR"])
        if engine_socket and engine_socket.startswith("unix://"):
            protected.append(os.path.dirname(engine_socket[len("unix://") :]))
        if self.endpoint.is_unix:  # the service's own socket, wherever its directory is
            protected.append(os.path.dirname(str(self.endpoint.path)))
        # Bundles and outputs a cluster's nodes cannot see are refused at submit, naming the path.
        if self.engine == "slurm" and self.slurm.shared_roots is not None:
            return MountPolicy.build(
                self.allowed_roots, protected, self.slurm.shared_roots, "slurm.shared_roots in service.yaml"
            )
        if self.engine == "swarm" and self.swarm.shared_roots is not None:
            return MountPolicy.build(
                self.allowed_roots, protected, self.swarm.shared_roots, "swarm.shared_roots in service.yaml"
            )
        return MountPolicy.build(self.allowed_roots, protected)


def config_path() -> Path:
    return paths.config_dir() / "service.yaml"


def load_config(path: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None) -> ServiceConfig:
    """Read the YAML file (if any) and apply ``overrides`` (flags); refuse unknown keys by name."""
    path = path or config_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BadInput(str(path), f"is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise BadInput(str(path), "must be a YAML mapping")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name: f for f in fields(ServiceConfig)}
    for key in data:
        if key not in known:
            raise BadInput(f"{path}: {key}", f"unknown setting (known: {', '.join(sorted(known))})")
    data["limits"] = _load_limits(data.get("limits"), path)
    data["slurm"] = _load_slurm(data.get("slurm"), path)
    data["swarm"] = _load_swarm(data.get("swarm"), path)
    config = ServiceConfig(**data)
    if config.port is not None and (not isinstance(config.port, int) or not 0 < config.port < 65536):
        raise BadInput(f"{path}: port", f"must be a TCP port number, got {config.port!r}")
    if config.listen is not None:
        if config.host is not None or config.port is not None:
            raise BadInput(f"{path}: listen", "give either listen or host/port, not both")
        try:
            endpoint.parse(str(config.listen))
        except ValueError as exc:
            raise BadInput(f"{path}: listen", str(exc)) from None
    if config.engine not in ENGINES:
        raise BadInput(f"{path}: engine", f"must be one of {', '.join(ENGINES)}, got {config.engine!r}")
    if not isinstance(config.slots, int) or config.slots < 1:
        raise BadInput(f"{path}: slots", f"must be a whole number >= 1, got {config.slots!r}")
    for key, whole, optional in (
        ("task_pids", True, False),
        ("log_cap_mib", True, False),
        ("task_memory_mib", True, True),
        ("task_vcpus", False, True),
        ("licence_backoff_s", False, False),
        ("licence_backoff_max_s", False, False),
    ):
        _check_number(getattr(config, key), f"{path}: {key}", whole, optional)
    if (
        isinstance(config.licence_retries, bool)
        or not isinstance(config.licence_retries, int)
        or config.licence_retries < 0
    ):
        raise BadInput(
            f"{path}: licence_retries", f"must be a whole number >= 0, got {config.licence_retries!r}"
        )
    _check_resources(config.resources, path)
    _check_machine(config.machine, path)
    config.capabilities = _check_capabilities(config.capabilities, path)
    if not isinstance(config.allowed_roots, list) or not all(
        isinstance(r, str) and os.path.isabs(r) for r in config.allowed_roots
    ):
        raise BadInput(f"{path}: allowed_roots", "must be a list of absolute paths")
    return config


def _check_number(value: Any, where: str, whole: bool, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
        what = "a whole number > 0" if whole else "a number > 0"
        raise BadInput(where, f"must be {what}{' or null' if optional else ''}, got {value!r}")


def _check_resources(raw: Any, path: Path) -> None:
    if not isinstance(raw, dict):
        raise BadInput(
            f"{path}: resources",
            "must be a mapping of resource name to count, e.g. {houdini_engine: 2, karma_render: 4}",
        )
    for name, count in raw.items():
        if (
            not isinstance(name, str)
            or not RESOURCE_NAME.fullmatch(name)
            or name.split(".")[0] in _RESERVED_SCOPES
        ):
            raise BadInput(
                f"{path}: resources.{name}",
                "a resource name is lowercase letters, digits and _ (dots between parts), not "
                f"starting with a digit nor with {', '.join(_RESERVED_SCOPES)} (steps ask for "
                "amount.<name>, which OpenJD must accept)",
            )
        _check_number(count, f"{path}: resources.{name}", whole=True)


def _check_capabilities(
    raw: Any, path: Path, key: str = "capabilities", declarable: Sequence[str] = ()
) -> dict[str, Capability]:
    """The declared capabilities with lowercase names, or BadInput naming the bad entry; of the
    measured names, only ``declarable`` ones may be given."""
    if not isinstance(raw, dict):
        raise BadInput(
            f"{path}: {key}",
            "must be a mapping such as {attr.custom.host_config: [HostConfigA], amount.worker.disk.scratch: 500}",
        )
    checked: dict[str, Capability] = {}
    for name, value in raw.items():
        where = f"{path}: {key}.{name}"
        lower = str(name).lower()
        if lower in _MEASURED and lower not in declarable:
            raise BadInput(where, "measured by the service itself; it cannot be declared")
        if not RESOURCE_NAME.fullmatch(lower.partition(".")[2]):
            raise BadInput(
                where, "not a capability name (lowercase letters, digits and _, dots between parts)"
            )
        if lower.startswith("attr."):
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise BadInput(where, f"an attribute's value is a string or a list of strings, got {value!r}")
            checked[lower] = list(values)
        elif lower.startswith("amount.worker."):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BadInput(where, f"an amount is a number >= 0, got {value!r}")
            checked[lower] = float(value)
        else:
            raise BadInput(
                where,
                "a capability is attr.<name> or amount.worker.<name> "
                "(amounts a task holds, such as licences, go under resources)",
            )
    return checked


def _check_machine(raw: Any, path: Path) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict) or set(raw) - {"vcpus", "memory_mib"}:
        raise BadInput(f"{path}: machine", "must be a mapping of vcpus and memory_mib")
    _check_number(raw.get("vcpus"), f"{path}: machine.vcpus", whole=False, optional=True)
    _check_number(raw.get("memory_mib"), f"{path}: machine.memory_mib", whole=True, optional=True)


def _load_limits(raw: Any, path: Path) -> SubmitLimits:
    if raw is None or isinstance(raw, SubmitLimits):
        return raw or SubmitLimits()
    known = {f.name for f in fields(SubmitLimits)}
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: limits", f"must be a mapping of {', '.join(sorted(known))}")
    for key, value in raw.items():
        if key not in known:
            raise BadInput(f"{path}: limits.{key}", f"unknown limit (known: {', '.join(sorted(known))})")
        _check_number(value, f"{path}: limits.{key}", whole=True)
    return SubmitLimits(**raw)


def _load_swarm(raw: Any, path: Path) -> SwarmSettings:
    if raw is None or isinstance(raw, SwarmSettings):
        return raw or SwarmSettings()
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: swarm", f"must be a mapping of {', '.join(_SWARM_KEYS)}")
    for key in raw:
        if key not in _SWARM_KEYS:
            raise BadInput(f"{path}: swarm.{key}", f"unknown setting (known: {', '.join(_SWARM_KEYS)})")
    roots = raw.get("shared_roots")
    if roots is not None and (
        not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots)
    ):
        raise BadInput(
            f"{path}: swarm.shared_roots",
            "must be a list of absolute paths every Swarm node mounts at the same path",
        )
    _check_number(raw.get("max_concurrent"), f"{path}: swarm.max_concurrent", whole=True, optional=True)
    kind = raw.get("gpu_kind", SwarmSettings.gpu_kind)
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", kind):
        raise BadInput(
            f"{path}: swarm.gpu_kind",
            f"must be the generic resource name GPU nodes advertise (e.g. NVIDIA-GPU), got {kind!r}",
        )
    spool = raw.get("spool_dir")
    if spool is not None and (not isinstance(spool, str) or not os.path.isabs(spool)):
        raise BadInput(f"{path}: swarm.spool_dir", f"must be an absolute path, got {spool!r}")
    return SwarmSettings(
        shared_roots=None if roots is None else tuple(sorted({os.path.realpath(r) for r in roots})),
        max_concurrent=raw.get("max_concurrent"),
        gpu_kind=kind,
        spool_dir=spool,
        nodes=_check_groups(raw.get("nodes"), path, "swarm.nodes", "node", _HOSTNAME),
    )
