"""The Slurm engine: each task attempt is one batch job, run on a node by that node's rootless Podman.

How a task runs:

- :meth:`SlurmEngine.create` checks what the service host can check (mounts against the
  service's mount policy, which with ``slurm.shared_roots`` holds them to the shared roots; GPUs
  the cluster has; the image in the shared image store) and writes the attempt's *spec*, the
  :class:`~.base.ContainerRequest` as JSON, into the spool directory. Nothing is queued yet, so a
  cancel between create and start means the task never ran, and a service killed before
  :meth:`~SlurmEngine.start` leaves nothing a restart would mistake for a run.
- :meth:`~SlurmEngine.start` submits one job with ``sbatch``, as the service's own user, whose name
  is the attempt's name (``hpcdock-<store>-t<task>-a<attempt>``), whose output file is
  ``<spool>/<name>.out``, and whose batch script runs :mod:`.node_run` with the service's own
  Python (the virtualenv lives on the shared filesystem). The node runner creates the container
  with :class:`~.local.LocalEngine`, the very code that runs local tasks (security defaults,
  labels, limits, mount checks and proof, GPU attachment and verification), streams its output to
  the job's output file and writes ``<name>.exit``, the exit status, before the job ends.
- The handle of a run is its name: every other call finds the job by it, so a restarted service
  re-adopts a job from the name its store kept, whether Slurm still lists the job or not.
- Output is the job's output file, followed while the job runs; the exit code comes from the
  exit-status file (milliseconds after the container exits, where Slurm's own record of the
  job's end takes a controller round trip), else from ``scontrol``'s ``ExitCode`` while Slurm
  remembers the job (``MinJobAge``), else from ``sacct`` where the site keeps accounting.
- Cancel is ``scancel --signal=TERM --batch``: the node runner stops the container (with the
  grace the service asked for, read from ``<name>.stop``), removes it and exits; plain
  ``scancel`` follows when it has not within the grace plus :data:`KILL_AFTER`.

Requeue: jobs are submitted with ``--no-requeue``, so Slurm never runs an attempt twice under
one name (Slurm 22.05 refuses ``scontrol requeue`` of such a job: "Requested operation is
presently disabled"). A node failure ends the job as ``NODE_FAIL`` (its node runner, if still
alive, stops the container on Slurm's SIGTERM): the attempt fails naming the node failure, and
hpcdock's own retry (the job's ``maxAttempts``) runs the task again exactly once as a new
attempt with a new job, or the task fails with that reason when no attempt is left.

Status comes from the CLI (``squeue``, ``scontrol``, ``sacct``), not a library: PyPI's pyslurm
has releases for Slurm 17.11, 18.08 and 25.11 only (none builds against the 22.05 libslurm that
Debian 12 ships, and each build is tied to one Slurm version). psij-python (pure Python, any
Slurm) writes the batch script from its own template and tracks jobs through its own job
objects: hpcdock needs the job's name, output file and script to be its own, and to find a job
again by name after a restart. The CLI is the interface Slurm keeps stable across versions; one
``squeue`` call lists every job of this user (cached for :data:`SQUEUE_TTL`), so polling costs
one call however many tasks run, and one thread (:class:`SpoolWatch`) looks for every waiting
task's output and exit-status files.

Placement: a step goes to ``slurm.partition`` (or the cluster's default partition) when that
partition meets its host requirements; otherwise to every partition of ``slurm.partitions`` that
meets them (``--partition=a,b``: Slurm starts the job in the first that can). What a partition
has is what its nodes report (``scontrol show node``: the most CPUs and memory of one of its
nodes, their architectures) plus the capabilities service.yaml declares for it
(:meth:`SlurmEngine.workers`).

GPUs: a step's ``amount.worker.gpu: N`` becomes ``--gres=gpu:N``; Slurm picks the GPUs and the
node runner attaches and verifies exactly those (``CUDA_VISIBLE_DEVICES``). A cluster whose nodes
have no ``gpu`` gres refuses such a step at submit, naming GPUs.

Sessions (OpenJD environments, :mod:`..sessions`): a session is one job like a task's, whose
container runs the session's agent with the same node runner (security defaults, labels, mount
walk and proof); its directory is ``<spool>/sessions/<session>`` (:attr:`SlurmEngine.session_root`),
which the node runner binds into the container and through which the service hands it tasks
(a control file the agent follows: a FIFO carries nothing between hosts). The job's name is the
session's, so a restarted service finds it again like a task's job; the session ends when its
agent reads ``exit``, and is canceled like any job when it does not.

Images: :class:`ImageStore` keeps ``podman save`` archives on the shared filesystem, keyed by
image id; the node runner ``podman load``\\ s the archive when the node's Podman lacks the image.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from .. import mounts
from ..config import CPU_ARCH, GPUS, MEMORY, OS_FAMILY, VCPUS, Capability, SlurmConfig, Workers, arch_name
from .base import (
    ContainerRequest,
    EngineError,
    EngineUnreachable,
    GpuGrant,
    LogStream,
    MountRefused,
    RunState,
    RunStatus,
)
from .common import ClusterGpus

log = logging.getLogger(__name__)

SQUEUE_TTL = 0.5  # seconds one squeue listing answers every waiter
SPOOL_POLL = 0.02  # seconds between looks at the spool for new output and exit-status files
SLURM_POLL = 1.0  # seconds between looks at what Slurm says of a waited-for job (the fallback)
QUEUED_POLL = 0.2  # seconds between looks at a job that is being stopped or canceled
EXIT_FILE_GRACE = 3.0  # seconds a job Slurm says ended may take to show its exit-status file (NFS)
KILL_AFTER = 15.0  # seconds past the grace before a stopped job is canceled outright
REMOVE_WAIT = 20.0  # seconds remove() waits for Slurm to say a job ended (a kill takes KillWait)
LOG_POLL = 0.05  # seconds between looks at a followed output file that has not grown
OPEN_POLL = 0.5  # seconds between looks whether a queued job's stream was closed or the job ended
CLI_TIMEOUT = 30.0  # seconds any Slurm command may take before the controller counts as unreachable
IMAGE_TTL = 10.0  # seconds an image reference's id is trusted before podman is asked again

# Slurm's job states (squeue %T, scontrol JobState, sacct State) in hpcdock's words.
QUEUED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
)
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
FINAL_REASONS = {
    "COMPLETED": "",
    "FAILED": "the job failed",
    "CANCELLED": "the job was canceled",
    "TIMEOUT": "the job reached its Slurm time limit",
    "NODE_FAIL": "the node running the job failed",
    "PREEMPTED": "the job was preempted",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "BOOT_FAIL": "the node could not be booted for the job",
    "DEADLINE": "the job missed its deadline",
}
# Errors of the Slurm commands that mean the controller cannot be reached (not a refusal).
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|Communication connection failure|"
    r"Zero Bytes were transmitted",
    re.IGNORECASE,
)


def map_state(slurm_state: str) -> RunState:
    """A Slurm job state (``CANCELLED by 1000`` as scontrol writes it, too) as hpcdock's."""
    word = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else ""
    if word in QUEUED_STATES:
        return RunState.QUEUED
    if word in RUNNING_STATES:
        return RunState.RUNNING
    return RunState.EXITED


def final_reason(slurm_state: str) -> str:
    word = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else ""
    return FINAL_REASONS.get(word, f"the job ended in Slurm state {slurm_state}")


@dataclass(frozen=True)
class JobInfo:
    """One line of ``squeue``: a job of this user."""

    job_id: str
    name: str
    state: str  # Slurm's word
    reason: str  # why it pends, or none


SQUEUE_FORMAT = "%i|%j|%T|%r"


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """``squeue -h -o SQUEUE_FORMAT`` output by job name; of two jobs of one name, the newer."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0]:
            continue
        info = JobInfo(*parts)
        old = jobs.get(info.name)
        if old is None or _job_number(info.job_id) > _job_number(old.job_id):
            jobs[info.name] = info
    return jobs


def _job_number(job_id: str) -> int:
    digits = re.match(r"\d+", job_id)
    return int(digits.group()) if digits else -1


def parse_exit_code(text: str) -> Optional[int]:
    """Slurm's ``ExitCode=N:S`` (or sacct's ``N:S``): the code, or 128+S for a signal, or None."""
    match = re.search(r"(?:ExitCode=)?(\d+):(\d+)", text)
    if not match:
        return None
    code, signal = int(match.group(1)), int(match.group(2))
    return 128 + signal if signal and not code else code


@dataclass(frozen=True)
class ExitRecord:
    """What the node runner writes to ``<name>.exit`` when the attempt is over."""

    code: Optional[int]  # the container's exit code; None: it never ran to one (see error)
    error: Optional[str] = None
    oom_killed: bool = False
    stopped: bool = False  # ended by SIGTERM: the service's stop, or Slurm's (node failure, time limit)
    job_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExitRecord:
        data = json.loads(text)
        code = data.get("code")
        return cls(
            code=int(code) if code is not None else None,
            error=data.get("error"),
            oom_killed=bool(data.get("oom_killed")),
            stopped=bool(data.get("stopped")),
            job_id=str(data.get("job_id") or ""),
        )


class SpoolWatch:
    """One thread lists the spool for every waiter: which attempts have output or exit files yet.

    A hundred tasks waiting for their jobs would otherwise each look for their files every few
    milliseconds, on the cores the jobs themselves need; here one ``listdir`` a tick wakes only
    when a new file appears.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: frozenset[str] = frozenset()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    def wait_for(self, filename: str, timeout: float) -> bool:
        """Whether ``filename`` is in the spool, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="slurm-spool", daemon=True)
                self._thread.start()
            while filename not in self._files:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped.is_set():
                    return False
                self._cond.wait(remaining)
            return True

    def _loop(self) -> None:
        while not self._stopped.wait(SPOOL_POLL):
            try:
                files = frozenset(os.listdir(self.root))
            except OSError:
                files = frozenset()
            with self._cond:
                new = not files <= self._files
                self._files = files
                if new:
                    self._cond.notify_all()

    def stop(self) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Spool:
    """The attempt's files on the shared filesystem, all named by the attempt's name."""

    root: Path

    def spec(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def output(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def exit(self, name: str) -> Path:
        return self.root / f"{name}.exit"

    def stop(self, name: str) -> Path:
        return self.root / f"{name}.stop"

    def job_id(self, name: str) -> Path:
        return self.root / f"{name}.jobid"

    def all(self, name: str) -> list[Path]:
        return [self.spec(name), self.output(name), self.exit(name), self.stop(name), self.job_id(name)]

    def names(self, prefix: str) -> set[str]:
        """Attempts of that name prefix with any file here."""
        found: set[str] = set()
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return found
        for entry in entries:
            stem, dot, ext = entry.rpartition(".")
            if dot and entry.startswith(prefix) and ext in ("json", "out", "exit", "stop", "jobid"):
                found.add(stem)
        return found

    def read_exit(self, name: str) -> Optional[ExitRecord]:
        try:
            return ExitRecord.from_json(self.exit(name).read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            return ExitRecord(code=None, error=f"unreadable exit-status file {self.exit(name)}: {exc}")


def request_to_spec(
    request: ContainerRequest, policy: mounts.MountPolicy, image_id: str, archive: str
) -> dict[str, Any]:
    """The attempt's container, as the node runner rebuilds it (see :mod:`.node_run`)."""
    return {
        "request": {
            "name": request.name,
            "image": request.image,
            "command": list(request.command),
            "env": dict(request.env),
            "workdir": request.workdir,
            "mounts": [m.to_json() for m in request.mounts],
            "network": request.network,
            "labels": dict(request.labels),
            "gpus": request.gpus.count if request.gpus else 0,
            "limits": asdict(request.limits),
            "reserve": asdict(request.reserve),
            "placement": list(request.placement) if request.placement is not None else None,
            "files": [
                {"path": f.path, "data": base64.b64encode(f.data).decode(), "mode": f.mode}
                for f in request.files
            ],
            "session_dir": request.session_dir,
        },
        "policy": {"roots": list(policy.roots), "protected": list(policy.protected)},
        "image_id": image_id,
        "archive": archive,
    }


def sbatch_command(
    settings: SlurmConfig,
    name: str,
    spool: Spool,
    python: str,
    comment: str,
    gpus: int = 0,
    cpus: int = 0,
    partitions: Optional[Sequence[str]] = None,
    memory_mib: int = 0,
) -> list[str]:
    """The ``sbatch`` call that queues one attempt (its job name is the attempt's name);
    ``partitions``: those its step's host requirements place it on, else ``slurm.partition``.
    Its CPUs and memory are asked of Slurm, which packs them into its nodes (the service packs
    only a local engine's machine)."""
    cmd = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--output={spool.output(name)}",
        "--no-requeue",
        f"--chdir={spool.root}",
        f"--comment={comment}",
    ]
    for option, value in (
        ("partition", ",".join(partitions) if partitions else settings.partition),
        ("account", settings.account),
        ("qos", settings.qos),
    ):
        if value:
            cmd.append(f"--{option}={value}")
    if gpus:
        cmd.append(f"--gres=gpu:{gpus}")
    if cpus:
        cmd.append(f"--cpus-per-task={cpus}")
    if memory_mib:
        cmd.append(f"--mem={memory_mib}M")
    cmd += list(settings.sbatch_args)
    run = [python, "-m", "hpcdock_service.engines.node_run", str(spool.spec(name))]
    cmd.append("--wrap=exec " + " ".join(shlex.quote(part) for part in run))
    return cmd


def _slurm(args: Sequence[str], what: str, timeout: float = CLI_TIMEOUT) -> str:
    """Run a Slurm command; its output, or EngineUnreachable / EngineError saying why not."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise EngineError(
            f"cannot {what}: {args[0]} is not on the PATH (is Slurm's client installed?)"
        ) from None
    except subprocess.TimeoutExpired:
        raise EngineUnreachable(f"cannot {what}: {args[0]} did not answer within {timeout:g}s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        if _UNREACHABLE.search(message):
            raise EngineUnreachable(f"cannot {what}: the Slurm controller cannot be reached ({message})")
        raise EngineError(f"cannot {what}: {message}")
    return done.stdout


class SlurmGpus(ClusterGpus):
    """GPU placement on a Slurm cluster: Slurm picks the GPUs; hpcdock only checks they exist.

    ``check`` reads the ``gpu`` gres of the nodes of the service's partitions once (``slurm.partition``
    and ``slurm.partitions``; none named: every partition); a grant carries a count and no indices
    (the node runner attaches the ones Slurm allocated). Which of the partitions a GPU step goes to
    is its placement (:meth:`SlurmEngine.workers` measures each partition's GPUs).
    """

    def __init__(self, partitions: Sequence[str]) -> None:
        super().__init__()
        self.partitions = tuple(partitions)
        self._per_node: Optional[int] = None  # most GPUs on one node, read on first use

    def _gpus_per_node(self) -> int:
        if self._per_node is None:
            args = ["sinfo", "--noheader", "--format=%G"]
            if self.partitions:
                args.append(f"--partition={','.join(self.partitions)}")
            self._per_node = max(
                (gres_gpus(line) for line in _slurm(args, "list the nodes' gres").splitlines()), default=0
            )
        return self._per_node

    def check(self, count: int) -> Optional[str]:
        if count <= 0:
            return None
        have = self._gpus_per_node()
        where = f"partition {', '.join(self.partitions)}" if self.partitions else "any partition"
        if have == 0:
            return (
                f"amount.worker.gpu asks for {count} GPU(s) per task, but no node of {where} of this Slurm "
                "cluster has GPUs (no gpu gres in sinfo); the job would wait forever"
            )
        if count > have:
            return (
                f"amount.worker.gpu asks for {count} GPUs per task, but no node of {where} has more "
                f"than {have} GPUs (gpu gres in sinfo)"
            )
        return None

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        return self._grant(task_id, count)  # Slurm queues the job until a node has them free

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"task": task, "count": count, "placed_by": "slurm"}
            for task, count in sorted(self.held().items())
        ]

    def inventory_json(self) -> dict[str, Any]:
        try:
            per_node: Any = self._gpus_per_node()
        except EngineError as exc:
            per_node = str(exc)
        return {"placed_by": "slurm", "partitions": list(self.partitions), "most_gpus_on_one_node": per_node}


def partition_capabilities(nodes_text: str) -> dict[str, dict[str, Capability]]:
    """What each partition's nodes have, from ``scontrol show node --oneliner``: the most CPUs
    (``amount.worker.vcpu``), memory in MiB (``amount.worker.memory``) and ``gpu`` gres
    (``amount.worker.gpu``) of one of its nodes, the architectures and OS families of its nodes
    (``attr.worker.cpu.arch``, ``attr.worker.os.family``).

    The biggest node stands for the partition: a step is accepted when some node of it could run
    the task, and ``--cpus-per-task`` makes Slurm pick such a node."""
    parts: dict[str, dict[str, Any]] = {}
    for line in nodes_text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        for partition in filter(None, fields.get("Partitions", "").split(",")):
            have = parts.setdefault(
                partition, {VCPUS: 0.0, MEMORY: 0.0, GPUS: 0.0, CPU_ARCH: set(), OS_FAMILY: set()}
            )
            have[GPUS] = max(have[GPUS], float(gres_gpus(fields.get("Gres", ""))))
            if fields.get("CPUTot", "").isdigit():
                have[VCPUS] = max(have[VCPUS], float(fields["CPUTot"]))
            if fields.get("RealMemory", "").isdigit():
                have[MEMORY] = max(have[MEMORY], float(fields["RealMemory"]))
            if fields.get("Arch") not in (None, "(null)"):
                have[CPU_ARCH].add(arch_name(fields["Arch"]))
            if fields.get("OS") not in (None, "(null)"):
                have[OS_FAMILY].add(fields["OS"].lower())
    return {
        name: {k: sorted(v) if isinstance(v, set) else v for k, v in have.items() if v or k == GPUS}
        for name, have in parts.items()
    }


def gres_gpus(gres: str) -> int:
    """GPUs in one ``sinfo %G`` value: ``gpu:4``, ``gpu:a100:2(S:0-1),gpu:v100:1``, ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


class ImageStore:
    """``podman save`` archives on the shared filesystem, one per image id, for the nodes to load.

    The service host's Podman is the source: an image the artist built or imported there is saved
    once (``<store>/<id>.tar``, written to a temporary name and renamed, so a node never loads half
    an archive); a node that lacks the image loads it (:mod:`.node_run`). An image only present as
    an archive (put there by an admin, named ``<id>.tar`` with ``<reference>.ref`` holding the id)
    is accepted too.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ids: dict[str, tuple[float, Optional[str]]] = {}
        self._lock = threading.Lock()
        self._saving = threading.Lock()  # one archive written at a time: tasks of one job share it

    def _ref_file(self, image: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9_.-]", "_", image) + ".ref")

    def local_id(self, image: str) -> Optional[str]:
        """The image's id in the service host's Podman (cached for :data:`IMAGE_TTL`), or None."""
        now = time.monotonic()
        with self._lock:
            cached = self._ids.get(image)
            if cached and now - cached[0] < IMAGE_TTL:
                return cached[1]
        image_id: Optional[str] = None
        if shutil.which("podman"):
            done = subprocess.run(
                ["podman", "image", "inspect", "--format", "{{.Id}}", image],
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
            )
            image_id = done.stdout.strip() or None if done.returncode == 0 else None
        with self._lock:
            self._ids[image] = (now, image_id)
        return image_id

    def stored_id(self, image: str) -> Optional[str]:
        try:
            image_id = self._ref_file(image).read_text().strip()
        except FileNotFoundError:
            return None
        return image_id if (self.root / f"{image_id}.tar").exists() else None

    def exists(self, image: str) -> bool:
        return self.local_id(image) is not None or self.stored_id(image) is not None

    def archive(self, image: str) -> tuple[str, Path]:
        """The image's id and its archive, saving it from the service host's Podman when missing."""
        image_id = self.local_id(image)
        if image_id is None:
            stored = self.stored_id(image)
            if stored is None:
                raise EngineError(
                    f"image {image!r} is neither in this host's Podman nor in the shared image store {self.root}"
                )
            return stored, self.root / f"{stored}.tar"
        path = self.root / f"{image_id}.tar"
        with self._saving:
            if not path.exists():
                self._save(image, image_id, path)
            ref = self._ref_file(image)
            if not ref.exists() or ref.read_text().strip() != image_id:
                write_atomically(ref, image_id + "\n")
        return image_id, path

    def _save(self, image: str, image_id: str, path: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{image_id}.{os.getpid()}.tar"
        done = subprocess.run(
            ["podman", "save", "--quiet", "--format", "oci-archive", "-o", str(tmp), image],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"cannot save image {image!r} to {path}: {done.stderr.strip()}")
        os.replace(tmp, path)
        log.info("saved image %s (%s) to %s for the nodes", image, image_id[:12], path)


class SlurmEngine:
    """Task attempts as Slurm batch jobs (see the module's docstring)."""

    runs_sessions = True  # a session is a job; see session_root

    def __init__(
        self,
        settings: SlurmConfig,
        state_dir: Path,
        *,
        python: Optional[str] = None,
    ) -> None:
        self.settings = settings
        self.slots = settings.max_jobs
        self.mount_policy = mounts.MountPolicy.build([])  # the service sets its own
        self.spool = Spool(Path(settings.spool_dir or state_dir / "slurm"))
        self.spool.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Session directories: on the shared filesystem, where the node runner binds them from.
        self.session_root = self.spool.root / "sessions"
        self.watch = SpoolWatch(self.spool.root)
        self.images = ImageStore(
            Path(settings.image_store) if settings.image_store else self.spool.root / "images"
        )
        self.python = python or sys.executable
        self.gpus = SlurmGpus(settings.partition_names(settings.partition))
        self.user = os.environ.get("USER") or str(os.getuid())
        self.version = _slurm(["sbatch", "--version"], "run sbatch").strip()
        self._jobs: dict[str, JobInfo] = {}
        self._listed_at = 0.0
        self._list_lock = threading.Lock()
        self._job_ids: dict[str, str] = {}  # name -> job id, for jobs this process submitted or found
        self._submitted: dict[str, float] = {}  # name -> when this process submitted it (monotonic)
        self.ping()

    # -- the controller ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "engine": "slurm",
            "version": self.version,
            "partition": self.settings.partition or "(default)",
            "socket": None,
            "rootless": True,  # jobs run as the service's user, containers under each node's rootless Podman
            "spool": str(self.spool.root),
            "image_store": str(self.images.root),
            "sessions": str(self.session_root),
            "shared_roots": list(self.mount_policy.shared) or "the allowed roots",
            "max_jobs": self.slots,
        }

    def workers(self, common: Mapping[str, Capability]) -> Workers:
        """The partitions tasks may go to, with what each has: ``slurm.partition`` (else the
        cluster's default partition) and those of ``slurm.partitions``, each with what its nodes
        report, then the service-wide ``common`` capabilities, then its own declared ones.

        Raises EngineError naming a configured partition the cluster does not have."""
        measured = partition_capabilities(
            _slurm(["scontrol", "show", "node", "--oneliner"], "list the Slurm nodes")
        )
        listed = _slurm(["sinfo", "--noheader", "--format=%P"], "list the Slurm partitions").split()
        cluster_default = next((p[:-1] for p in listed if p.endswith("*")), None)
        known = {p.rstrip("*") for p in listed}
        default = self.settings.partition or cluster_default
        names = self.settings.partition_names(default)
        for name in names:
            if name not in known:
                setting = "slurm.partition" if name == self.settings.partition else f"slurm.partitions.{name}"
                raise EngineError(
                    f"{setting} in service.yaml: this Slurm cluster has no partition {name} "
                    f"(it has {', '.join(sorted(known)) or 'none'})"
                )
        return Workers.build(
            "partition", common, self.settings.partitions, {n: measured.get(n, {}) for n in names}, default
        )

    def ping(self) -> None:
        out = _slurm(["scontrol", "ping"], "reach the Slurm controller", timeout=10)
        if "UP" not in out:
            raise EngineUnreachable(f"the Slurm controller is down: {out.strip()}")

    def _listing(self, fresh: bool = False) -> dict[str, JobInfo]:
        """Every job of this user Slurm still lists (pending, running, recently ended), by name."""
        with self._list_lock:
            if fresh or time.monotonic() - self._listed_at > SQUEUE_TTL:
                out = _slurm(
                    [
                        "squeue",
                        "--noheader",
                        f"--user={self.user}",
                        "--states=all",
                        f"--format={SQUEUE_FORMAT}",
                    ],
                    "list Slurm jobs",
                )
                self._jobs = parse_squeue(out)
                self._listed_at = time.monotonic()
            return self._jobs

    def _info(self, name: str) -> Optional[JobInfo]:
        """What squeue says of the job of that name (a listing older than its submission is renewed)."""
        info = self._listing().get(name)
        if info is None and self._submitted.get(name, -1.0) >= self._listed_at:
            info = self._listing(fresh=True).get(name)
        return info

    def image_exists(self, image: str) -> bool:
        return self.images.exists(image)

    # -- one run ----------------------------------------------------------------------------
    def create(self, request: ContainerRequest) -> str:
        for mount in request.mounts:
            try:
                mounts.verify(self.mount_policy, mount.source, writable=not mount.readonly)
            except mounts.PathRefused as exc:
                raise MountRefused(f"mount of {mount.source} refused: {exc}") from None
        if request.gpus and request.gpus.count:
            refusal = self.gpus.check(request.gpus.count)
            if refusal:
                raise EngineError(refusal)
        if request.session_dir is not None and Path(request.session_dir).parent != self.session_root:
            raise EngineError(f"session directory {request.session_dir} is not in {self.session_root}")
        image_id, archive = self.images.archive(request.image)
        spec = request_to_spec(request, self.mount_policy, image_id, str(archive))
        for path in self.spool.all(request.name):  # an earlier try of this very attempt
            path.unlink(missing_ok=True)
        write_atomically(self.spool.spec(request.name), json.dumps(spec))
        return request.name

    def start(self, handle: str) -> None:
        spec = json.loads(self.spool.spec(handle).read_text())
        req = spec["request"]
        labels = req["labels"]
        comment = "hpcdock " + ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(labels.items()))
        vcpus = req["limits"].get("vcpus")
        memory = (req.get("reserve") or {}).get("memory")
        cmd = sbatch_command(
            self.settings,
            handle,
            self.spool,
            self.python,
            comment,
            gpus=int(req["gpus"] or 0),
            cpus=int(-(-float(vcpus) // 1)) if vcpus else 0,
            partitions=req.get("placement"),
            memory_mib=-(-int(memory) // (1024 * 1024)) if memory else 0,
        )
        job_id = _slurm(cmd, f"submit {handle} with sbatch").strip().split(";")[0]
        if not job_id.isdigit():
            raise EngineError(f"sbatch answered {job_id!r} instead of a job id for {handle}")
        self._job_ids[handle] = job_id
        self._submitted[handle] = time.monotonic()
        write_atomically(self.spool.job_id(handle), job_id + "\n")
        log.debug("%s: Slurm job %s", handle, job_id)

    def _job_id(self, name: str) -> Optional[str]:
        if name in self._job_ids:
            return self._job_ids[name]
        try:
            job_id = self.spool.job_id(name).read_text().strip()
        except FileNotFoundError:
            info = self._listing().get(name)
            return info.job_id if info else None
        self._job_ids[name] = job_id
        return job_id

    def status(self, handle: str) -> RunStatus:
        status = self.find(handle)
        if status is None:
            raise EngineError(f"no Slurm job named {handle} (it was never submitted)")
        return status

    def find(self, name: str) -> Optional[RunStatus]:
        if not any(
            p.exists() for p in (self.spool.spec(name), self.spool.job_id(name), self.spool.exit(name))
        ):
            return None  # removed (or never this service's): squeue may list it a while longer
        labels = self._labels(name)
        record = self.spool.read_exit(name)
        if record is not None:
            return RunStatus(name, name, RunState.EXITED, record.code, record.oom_killed, labels)
        info = self._info(name)
        if info is not None:
            state = map_state(info.state)
            return RunStatus(name, name, state, None, False, labels)
        if self._job_id(name) is None:  # prepared, never submitted: the attempt runs again from scratch
            for path in self.spool.all(name):
                path.unlink(missing_ok=True)
            return None
        return RunStatus(name, name, RunState.EXITED, None, False, labels)

    def _labels(self, name: str) -> dict[str, str]:
        try:
            return dict(json.loads(self.spool.spec(name).read_text())["request"]["labels"])
        except (FileNotFoundError, ValueError, KeyError):
            return {}

    def leftovers(self, store_id: str) -> list[RunStatus]:
        prefix = f"hpcdock-{store_id}-"
        active = {
            n for n, info in self._listing(fresh=True).items() if map_state(info.state) is not RunState.EXITED
        }
        names = {n for n in active if n.startswith(prefix)} | self.spool.names(prefix)
        found = []
        for name in sorted(names):  # a job whose spool files are gone is still this store's
            found.append(self.find(name) or RunStatus(name, name, RunState.EXITED))
        return found

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        ended_at: Optional[float] = None  # when Slurm first said the job is over without an exit file
        next_listing = 0.0
        while True:
            record = self.spool.read_exit(handle)
            if record is not None:
                return self._result(handle, record)
            now = time.monotonic()
            if now >= next_listing:
                info = self._info(handle)
                state = map_state(info.state) if info else RunState.EXITED
                if state is RunState.EXITED:
                    ended_at = ended_at or now
                    if now - ended_at >= EXIT_FILE_GRACE:
                        return self._result(handle, self._slurm_record(handle, info))
                next_listing = now + (QUEUED_POLL if ended_at else SLURM_POLL)
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"Slurm job {handle} still running after {timeout}s")
            until = next_listing if deadline is None else min(next_listing, deadline)
            self.watch.wait_for(self.spool.exit(handle).name, max(0.0, until - time.monotonic()))

    def _slurm_end(self, job_id: str, state: str) -> tuple[str, Optional[int]]:
        """How Slurm says the job ended: its state and exit code, from the controller or accounting."""
        try:
            shown = _slurm(["scontrol", "show", "job", "--oneliner", job_id], f"look up Slurm job {job_id}")
            found = re.search(r"JobState=(\S+)", shown)
            return (found.group(1) if found else state), parse_exit_code(shown)
        except EngineUnreachable:
            raise
        except EngineError:
            pass
        try:  # gone from the controller's memory: accounting, where the site keeps it
            acct = _slurm(
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "--allocations",
                    f"--jobs={job_id}",
                    "--format=State,ExitCode",
                ],
                f"look up Slurm job {job_id} in accounting",
            )
        except EngineUnreachable:
            raise
        except EngineError:
            return state, None
        lines = acct.strip().splitlines()
        if not lines:
            return state, None
        acct_state, _, exit_text = lines[0].partition("|")
        return acct_state, parse_exit_code(exit_text)

    def _slurm_record(self, name: str, info: Optional[JobInfo]) -> ExitRecord:
        """The end of a job that left no exit-status file, from what Slurm still knows of it."""
        job_id = info.job_id if info else self._job_id(name)
        if job_id is None:
            return ExitRecord(None, f"Slurm has no job named {name}")
        state, code = self._slurm_end(job_id, info.state if info else "")
        if not state:
            return ExitRecord(
                None, f"Slurm job {job_id} ({name}) ended and Slurm no longer knows how", job_id=job_id
            )
        if state.split()[0] == "COMPLETED" and code == 0:
            return ExitRecord(0, None, job_id=job_id)  # its exit-status file is lost, not the result
        exited = f", exit code {code}" if code is not None else ""
        return ExitRecord(
            None,
            f"Slurm job {job_id} ended without an exit status: {final_reason(state)} ({state}{exited})",
            job_id=job_id,
        )

    def _result(self, name: str, record: ExitRecord) -> int:
        if record.stopped and not self.spool.stop(name).exists():
            # Stopped, but not by the service: Slurm ended the job (node failure, time limit).
            job_id = record.job_id or self._job_id(name) or "?"
            state = ""
            for _ in range(
                int(EXIT_FILE_GRACE / QUEUED_POLL)
            ):  # the controller records the end a moment later
                state, _ = self._slurm_end(job_id, "")
                if state and map_state(state) is RunState.EXITED:
                    break
                time.sleep(QUEUED_POLL)
            why = final_reason(state) if state else "Slurm stopped the job"
            raise EngineError(f"Slurm job {job_id} was stopped: {why} ({state or 'state unknown'})")
        if record.code is None:
            raise EngineError(record.error or f"Slurm job {name} ended without an exit code")
        return record.code

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> LogStream:
        return OutputFile(self, handle, follow=follow, tail=tail)

    def over(self, name: str) -> bool:
        """Whether the run's output is complete: its exit record is there, or Slurm ended the job."""
        if self.spool.exit(name).exists():
            return True
        info = self._info(name)
        return info is None or map_state(info.state) is RunState.EXITED

    def stop(self, handle: str, grace: float = 0) -> None:
        job_id = self._job_id(handle)
        if job_id is None or self.spool.exit(handle).exists():
            return  # never submitted, or its run is over and its job ends by itself
        write_atomically(self.spool.stop(handle), f"{grace}\n")
        info = self._listing(fresh=True).get(handle)
        if info is None or map_state(info.state) is RunState.EXITED:
            return
        if map_state(info.state) is RunState.QUEUED:
            self._cancel(job_id)
            return
        try:
            _slurm(["scancel", "--batch", "--signal=TERM", job_id], f"signal Slurm job {job_id}")
        except EngineUnreachable:
            raise
        except EngineError as exc:
            log.info("%s: %s; canceling it", handle, exc)
            self._cancel(job_id)
            return
        timer = threading.Timer(grace + KILL_AFTER, self._kill_if_running, args=(handle, job_id))
        timer.daemon = True
        timer.start()

    def _kill_if_running(self, name: str, job_id: str) -> None:
        try:
            info = self._listing(fresh=True).get(name)
            if info is not None and map_state(info.state) is not RunState.EXITED:
                log.warning("%s: Slurm job %s still runs after its stop; canceling it", name, job_id)
                self._cancel(job_id)
        except EngineError as exc:
            log.warning("%s: %s", name, exc)

    def _cancel(self, job_id: str) -> None:
        try:
            _slurm(["scancel", job_id], f"cancel Slurm job {job_id}")
        except EngineUnreachable:
            raise
        except EngineError as exc:  # already over
            log.info("%s", exc)

    def remove(self, handle: str) -> None:
        """Cancel the job unless it ends by itself, and return once Slurm says it ended.

        A run with its exit record ends by itself (its node runner is removing the container);
        one without is abandoned: it is canceled, and its node runner removes the container on
        SIGTERM. Either way the job is gone (or :data:`REMOVE_WAIT` passed) when this returns,
        so a canceled task leaves no job behind."""
        job_id = self._job_id(handle)
        if job_id is not None:
            if not self.spool.exit(handle).exists():
                info = self._listing(fresh=True).get(handle)
                if info is not None and map_state(info.state) is not RunState.EXITED:
                    self._cancel(job_id)
            deadline = time.monotonic() + REMOVE_WAIT
            while time.monotonic() < deadline:
                info = self._info(handle)
                if info is None or map_state(info.state) is RunState.EXITED:
                    break
                time.sleep(QUEUED_POLL)
            else:
                log.warning(
                    "%s: Slurm job %s has not ended %gs after its removal", handle, job_id, REMOVE_WAIT
                )
        for path in self.spool.all(handle):
            path.unlink(missing_ok=True)
        self._job_ids.pop(handle, None)
        self._submitted.pop(handle, None)

    def close(self) -> None:
        self.watch.stop()


class OutputFile:
    """A job's output file as a stream of chunks, followed while the job runs.

    Before the job starts the file does not exist yet: following waits for it. At its end the
    stream looks whether the run is over (:meth:`SlurmEngine.over`) and, when it is, reads what
    is left and ends; :meth:`close` ends it from another thread.
    """

    CHUNK = 64 * 1024

    def __init__(self, engine: SlurmEngine, name: str, follow: bool, tail: Optional[int]) -> None:
        self.engine = engine
        self.name = name
        self.path = engine.spool.output(name)
        self.follow = follow
        self.tail = tail
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[bytes]:
        fh = self._open()
        if fh is None:
            return
        with fh:
            if self.tail:
                fh.seek(_tail_offset(fh, self.tail))
            while True:
                chunk = fh.read(self.CHUNK)
                if chunk:
                    yield chunk
                    continue
                if not self.follow or self._closed.is_set():
                    return
                if self.engine.over(self.name):
                    rest = fh.read()
                    while rest:
                        yield rest
                        rest = fh.read()
                    return
                self._closed.wait(LOG_POLL)

    def _open(self) -> Any:
        while True:
            try:
                return open(self.path, "rb")  # closed by the generator
            except FileNotFoundError:
                if not self.follow or self._closed.is_set() or self.engine.over(self.name):
                    return None
                # the job has not started: wake when its output file appears (or to look again)
                self.engine.watch.wait_for(self.path.name, OPEN_POLL)


def _tail_offset(fh: Any, lines: int) -> int:
    """Where the file's last ``lines`` lines begin."""
    end = fh.seek(0, os.SEEK_END)
    pos, seen, block = end, 0, 8192
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step)
        if pos + step == end and data.endswith(b"\n"):
            seen -= 1  # the final newline ends the last line, it does not start one
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 0x0A:
                seen += 1
                if seen == lines:
                    return pos + i + 1
    return 0
