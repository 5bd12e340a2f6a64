"""The Swarm engine: each task attempt is a Docker Swarm ``replicated-job`` service.

One service per attempt (one replica, one completion), named like the local engine's container
(:func:`..runner.container_name`) and labelled like it (``hpcdock.store/job/task/attempt`` on the
service and on its container), so a restarted service finds its runs by name and its leftovers by
label. Why per attempt and not one service per step with a replica per task: every replica of a
service runs the same command and environment, a retried task would re-run the whole step's
service (a job service's update starts it over), and cancel, timeouts, logs and exit codes are per
task in hpcdock; the benchmark (docs/benchmarks.md) measures what per-attempt services cost.

Swarm's own retries are off (restart condition ``none``): hpcdock retries, so every attempt is
counted once, in the store.

Security defaults, as the service spec carries them (API 1.41, Docker 20.10, the oldest this
engine speaks):

- ``CapabilityDrop: [ALL]`` (API 1.41) and ulimits/PIDs limits as the local engine sets them;
- ``no-new-privileges``: the API has ``Privileges.NoNewPrivileges`` only from 1.44 (Docker 25) on; this
  engine sets it there, and below it relies on each node's dockerd running with
  ``--no-new-privileges`` (``scripts/setup-docker-rootless.sh`` starts it so; the engine tests
  read the flag back from a running task);
- no network: Swarm cannot attach a service to ``none`` (only ``host`` and ``bridge`` are
  predefined swarm networks, moby#42204), so a task without ``network: true`` joins
  :data:`ISOLATED_NETWORK`, an ``--internal`` swarm-scoped bridge without inter-container traffic
  (``enable_icc=false``, from the config-only network :data:`ISOLATED_CONFIG` each node needs),
  created by this engine: no route off the node and no reach to other tasks, as each node's
  iptables enforce (dockerd must run with iptables, the default).
  ``network: true`` uses the node's default bridge: outbound through the node's NAT (licence
  servers), never an overlay network (rootless Docker cannot create one);
- the bundle read-only, outputs read-write, bind mounts only under the allowed roots: walked by
  :mod:`..mounts` when the run is prepared and again right before the service is created, and
  only under the configured shared roots (``swarm.shared_roots``: every node must see a task's
  files at the same path).

Sessions (OpenJD environments, :mod:`..sessions`): a session is one ``replicated-job`` service
like a task's, running the session's agent, with the session's directory bound from
:attr:`SwarmEngine.session_root` (``swarm.spool_dir``, which must lie under a shared root on a
swarm of several nodes: the service hands the agent its tasks through a control file there, a
FIFO carrying nothing between hosts). Its service's name is the session's, so a restarted
service finds it by name; it ends when its agent reads ``exit``, and is removed like any run.

The image is pinned by its ID on the manager, so a node never asks a registry for it (none may
be reachable) and every node runs the very same image: each node must hold that image (``docker
load`` of one archive keeps the ID).

Placement: a step whose host requirements only some nodes meet runs only there. Swarm ANDs a
service's placement constraints and has no "one of", so the task is pinned (``node.hostname==X``)
where one node meets them, else kept off every other node the swarm lists when the run is
prepared (``node.hostname!=Y`` each): a node that joined after the job was accepted, never
judged, is kept off too. Hostnames rather than node labels: the service needs no right to change
the nodes, and what a node has is declared in service.yaml (``swarm.nodes``) next to what the
swarm reports of it (:meth:`SwarmEngine.workers`). Nodes are told apart by hostname, so two
nodes of one hostname count as one.

GPUs come only as Swarm generic resources (``node-generic-resources`` on each GPU node's dockerd,
the NVIDIA runtime with ``swarm-resource``): a GPU task reserves ``N`` of :attr:`SwarmSettings.gpu_kind`
and Swarm picks the node and the devices. Without nodes advertising that kind, a GPU job is
refused at submit, naming GPUs and how to configure the nodes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types.daemon import CancellableStream
from hpcdock import paths
from hpcdock.protocol import Backoff

from .. import mounts
from ..config import CPU_ARCH, GPUS, MEMORY, OS_FAMILY, VCPUS, Capability, SwarmSettings, Workers, arch_name
from .base import (
    LABEL_STORE,
    LABEL_TASK,
    SESSION_ROOT,
    ContainerFile,
    ContainerRequest,
    EngineError,
    EngineUnreachable,
    GpuGrant,
    LimitEnforcement,
    LogStream,
    MountRefused,
    RunState,
    RunStatus,
)
from .common import ClusterGpus, check_binds, docker_enforcement, no_output, recheck_binds, split_limits
from .local import _APIClient, _explain

log = logging.getLogger(__name__)

ISOLATED_NETWORK = "hpcdock-isolated"
ISOLATED_CONFIG = "hpcdock-isolated-config"  # its bridge options, on each node (config-only network)
# How a node whose dockerd kept a stale copy of a swarm-scoped network rejects tasks on it
# (moby#37087), and what its admin does about it.
STALE_NETWORK = re.compile(r"network \w+ exists")
STALE_NETWORK_ADVICE = (
    " (that node's dockerd kept a stale copy of the network after an unclean stop, moby#37087: stop "
    "it, remove network/files/local-kv.db under its data-root, start it again; "
    "scripts/setup-docker-rootless.sh does so whenever it starts one)"
)
LABEL_FILES_OF = "hpcdock.files-of"  # on the Swarm configs that carry a run's files (OpenJD embedded files)
API_VERSION = "1.41"  # Docker 20.10: replicated-job services, CapabilityDrop, Ulimits, Pids
NO_NEW_PRIVILEGES_API = (1, 44)  # the first API whose ContainerSpec.Privileges takes NoNewPrivileges
PING_TIMEOUT = 10.0
POLL_MAX = 0.25  # seconds between looks at a Swarm task no event of this node speaks of
SAFETY_POLL = 2.0  # ... and at one whose container this node's events follow (in case one is lost)
NODES_TTL = 30.0  # seconds the node count (for the shared-roots rule) is taken as still true
KILLED = 137  # what a run stopped before it exited reports, as a killed container does

# Swarm task states (swarmkit's TaskState) that are not queued ones (new ... starting), in hpcdock's words.
_RUNNING = {"running"}
_EXITED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


def _api_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def service_spec(
    request: ContainerRequest,
    *,
    image: str,
    api_version: str,
    enforced: LimitEnforcement,
    gpu_kind: str,
    constraints: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``POST /services/create`` body for one task attempt (see the module docstring);
    ``constraints``: its placement (:func:`placement_constraints`)."""
    container: dict[str, Any] = {
        "Image": image,
        "Command": list(request.command),
        "Env": [f"{k}={v}" for k, v in request.env.items()],
        "Dir": request.workdir,
        "Labels": dict(request.labels),
        "Mounts": [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.readonly}
            for m in request.mounts
        ],
        "CapabilityDrop": ["ALL"],
        "StopGracePeriod": 0,  # a removed run is killed at once (stop() gives grace on this node)
    }
    if request.session_dir is not None:
        container["Mounts"].append(
            {"Type": "bind", "Source": request.session_dir, "Target": SESSION_ROOT, "ReadOnly": False}
        )
    if _api_tuple(api_version) >= NO_NEW_PRIVILEGES_API:
        container["Privileges"] = {"NoNewPrivileges": True}
    cgroup, rlimits = split_limits(request.limits, enforced)
    if rlimits:
        container["Ulimits"] = [{"Name": n, "Soft": v, "Hard": v} for n, v in rlimits.items()]
    resources: dict[str, Any] = {}
    limits: dict[str, int] = {}
    if "memory" in cgroup:
        limits["MemoryBytes"] = int(cgroup["memory"])
    if "pids" in cgroup:
        limits["Pids"] = int(cgroup["pids"])
    if "vcpus" in cgroup:
        limits["NanoCPUs"] = int(cgroup["vcpus"] * 1e9)
    if limits:
        resources["Limits"] = limits
    # The swarm packs its nodes by reservations (the service packs only a local engine's machine).
    reservations: dict[str, Any] = {}
    if request.reserve.memory:
        reservations["MemoryBytes"] = int(request.reserve.memory)
    if request.reserve.vcpus:
        reservations["NanoCPUs"] = int(request.reserve.vcpus * 1e9)
    if request.gpus is not None and request.gpus.count:
        reservations["GenericResources"] = [
            {"DiscreteResourceSpec": {"Kind": gpu_kind, "Value": request.gpus.count}}
        ]
    if reservations:
        resources["Reservations"] = reservations
    template: dict[str, Any] = {
        "ContainerSpec": container,
        "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
    }
    if resources:
        template["Resources"] = resources
    if constraints:
        template["Placement"] = {"Constraints": list(constraints)}
    body: dict[str, Any] = {
        "Name": request.name,
        "Labels": dict(request.labels),
        "TaskTemplate": template,
        "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
    }
    if not request.network:
        template["Networks"] = [{"Target": ISOLATED_NETWORK}]
        # No virtual IP (and no load balancer on the node) for a service nothing connects to.
        body["EndpointSpec"] = {"Mode": "dnsrr"}
    return body


def outside_shared(source: str, roots: tuple[str, ...]) -> bool:
    """Whether ``source`` (canonical, as mounts are checked) lies outside every shared root."""
    return not any(source == r or source.startswith(r.rstrip("/") + "/") for r in roots)


def placement_constraints(placement: Optional[Sequence[str]], hostnames: Sequence[str]) -> list[str]:
    """Swarm constraints that keep a task on the nodes of ``placement`` (None: anywhere), given the
    ``hostnames`` of the swarm's nodes now; EngineError when none of those nodes is left."""
    if placement is None:
        return []
    if not set(placement) & set(hostnames):
        raise EngineError(
            f"none of the nodes that meet the step's host requirements ({', '.join(placement)}) is in "
            f"the swarm now (it has {', '.join(sorted(hostnames)) or 'none'})"
        )
    if len(placement) == 1:
        return [f"node.hostname=={placement[0]}"]
    return [f"node.hostname!={h}" for h in sorted(set(hostnames)) if h not in placement]


def node_capabilities(node: dict[str, Any], gpu_kind: str) -> dict[str, Capability]:
    """What ``GET /nodes`` says one node has: its CPUs (``amount.worker.vcpu``), memory in MiB
    (``amount.worker.memory``), GPUs of ``gpu_kind`` (``amount.worker.gpu``), OS family and architecture."""
    desc = node.get("Description") or {}
    resources = desc.get("Resources") or {}
    platform = desc.get("Platform") or {}
    have: dict[str, Capability] = {GPUS: float(_gpus_of(node, gpu_kind))}
    if resources.get("NanoCPUs"):
        have[VCPUS] = resources["NanoCPUs"] / 1e9
    if resources.get("MemoryBytes"):
        have[MEMORY] = float(resources["MemoryBytes"] // (1024 * 1024))
    if platform.get("OS"):
        have[OS_FAMILY] = [platform["OS"].lower()]
    if platform.get("Architecture"):
        have[CPU_ARCH] = [arch_name(platform["Architecture"])]
    return have


def _hostname(node: dict[str, Any]) -> str:
    return str((node.get("Description") or {}).get("Hostname") or node.get("ID", "?"))


def _gpus_of(node: dict[str, Any], kind: str) -> int:
    """GPUs of ``kind`` the node advertises as generic resources."""
    count = 0
    for res in ((node.get("Description") or {}).get("Resources") or {}).get("GenericResources") or []:
        named = res.get("NamedResourceSpec")
        discrete = res.get("DiscreteResourceSpec")
        if named and named.get("Kind") == kind:
            count += 1
        elif discrete and discrete.get("Kind") == kind:
            count += int(discrete.get("Value") or 0)
    return count


def gpu_counts(nodes: list[dict[str, Any]], kind: str) -> dict[str, int]:
    """GPUs of ``kind`` each ready, active node advertises (by hostname), from ``GET /nodes``."""
    out: dict[str, int] = {}
    for node in nodes:
        if (node.get("Status") or {}).get("State") != "ready":
            continue
        if (node.get("Spec") or {}).get("Availability", "active") != "active":
            continue
        count = _gpus_of(node, kind)
        if count:
            out[_hostname(node)] = count
    return out


def _task_run(name: str, labels: dict[str, str], task: Optional[dict[str, Any]]) -> RunStatus:
    if task is None:
        return RunStatus(handle=name, name=name, state=RunState.QUEUED, labels=labels)
    status = task.get("Status") or {}
    state = str(status.get("State") or "new")
    if state in _RUNNING:
        return RunStatus(handle=name, name=name, state=RunState.RUNNING, labels=labels)
    if state in _EXITED:
        code = (status.get("ContainerStatus") or {}).get("ExitCode")
        has_code = state in ("complete", "failed", "shutdown") and (status.get("ContainerStatus") or {}).get(
            "ContainerID"
        )
        return RunStatus(
            handle=name,
            name=name,
            state=RunState.EXITED,
            exit_code=int(code) if has_code and code is not None else None,
            labels=labels,
        )
    return RunStatus(handle=name, name=name, state=RunState.QUEUED, labels=labels)


def _latest(tasks: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    return max(tasks, key=lambda t: (t.get("Version") or {}).get("Index", 0)) if tasks else None


class SwarmGpus(ClusterGpus):
    """GPUs as Swarm generic resources: Swarm picks nodes and devices; this counts what is held.

    A task may start when the GPUs held by running tasks plus its own fit what the swarm's
    nodes advertise; Swarm itself then places it on a node with enough free ones.
    """

    def __init__(self, nodes: Callable[..., list[dict[str, Any]]], kind: str) -> None:
        super().__init__()
        self.nodes = nodes  # GET /nodes as the engine caches it (``cached=True``: without asking)
        self.kind = kind

    def _counts(self, cached: bool = False) -> dict[str, int]:
        return gpu_counts(self.nodes(cached=cached), self.kind)

    def check(self, count: int) -> Optional[str]:
        if count <= 0:
            return None
        counts = self._counts()
        if not counts:
            return (
                f"amount.worker.gpu: this step needs {count} GPU(s), but no node of the Docker Swarm advertises GPUs "
                f"(generic resource {self.kind!r}); configure each GPU node's dockerd with "
                f'node-generic-resources ["{self.kind}=<GPU UUID>", ...] (or '
                f"--node-generic-resource {self.kind}=<UUID>) and the NVIDIA container runtime as "
                f'its default runtime with swarm-resource = "DOCKER_RESOURCE_{self.kind}" in '
                "/etc/nvidia-container-runtime/config.toml"
            )
        most = max(counts.values())
        if count > most:
            return (
                f"amount.worker.gpu: this step needs {count} GPU(s) on one node, but the Docker Swarm's nodes have at "
                f"most {most} ({', '.join(f'{h}: {n}' for h, n in sorted(counts.items()))})"
            )
        return None

    def acquire(self, task_id: int, count: int) -> Optional[GpuGrant]:
        return self._grant(task_id, count, limit=sum(self._counts().values()))

    def to_json(self) -> list[dict[str, Any]]:
        held = self.held()
        return [
            {"node": host, "kind": self.kind, "count": n}
            for host, n in sorted(self._counts(cached=True).items())  # /v1/health: never waits
        ] + [{"task": t, "held": n} for t, n in sorted(held.items())]

    def inventory_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "nodes": self._counts(), "placed_by": "docker swarm generic resources"}


class NodeEvents:
    """Starts and exits of this node's task containers, as dockerd announces them.

    Swarm reports a task's progress through its manager a few hundred milliseconds late; this
    node's own event stream says at once which container a run got and how it exited. Waiters
    block on :meth:`changed` instead of polling; runs on other nodes (and anything missed while
    the stream reconnects) are still found by looking at the Swarm task every POLL_MAX.
    """

    FILTERS = {"type": ["container"], "event": ["start", "die"], "label": [LABEL_TASK]}

    def __init__(self, base_url: str, version: str) -> None:
        self._api = _APIClient(base_url, timeout=None, version=version)
        self._cond = threading.Condition()
        self._started: dict[str, str] = {}  # service name -> container id
        self._exited: dict[str, int] = {}  # service name -> exit code
        self._stream: Any = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="swarm-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self._closed:
            try:
                self._stream = self._api.events(filters=self.FILTERS, decode=True)
                for event in self._stream:
                    backoff.reset()
                    self._take(event)
            except Exception as exc:  # the daemon restarting, say: waiters poll meanwhile
                if not self._closed:
                    log.debug("swarm: node event stream ended (%s); reconnecting", exc)
            if not self._closed:
                time.sleep(backoff.next())

    def _take(self, event: dict[str, Any]) -> None:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        name = attrs.get("com.docker.swarm.service.name")
        if not name:
            return
        with self._cond:
            if event.get("Action") == "start":
                self._started[name] = str((event.get("Actor") or {}).get("ID") or event.get("id"))
            elif event.get("Action") == "die":
                self._exited[name] = int(attrs.get("exitCode", -1))
            self._cond.notify_all()

    def container(self, name: str) -> Optional[str]:
        with self._cond:
            return self._started.get(name)

    def exit_code(self, name: str) -> Optional[int]:
        with self._cond:
            return self._exited.get(name)

    def changed(self, timeout: float) -> None:
        """Return at the next start or exit on this node, or after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait(timeout)

    def forget(self, name: str) -> None:
        with self._cond:
            self._started.pop(name, None)
            self._exited.pop(name, None)

    def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is not None:
            stream.close()
        self._api.close()


class _FollowLog:
    """A run's log followed from its start: opened once the task has a container (its own log
    on this node, else the service's); ``close()`` ends it from another thread, also while it
    still waits for the container."""

    def __init__(self, engine: SwarmEngine, handle: str) -> None:
        self._engine = engine
        self._handle = handle
        self._stream: Optional[LogStream] = None  # what close() ends
        self._chunks: Optional[Iterator[bytes]] = None  # what __next__ reads
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def __iter__(self) -> _FollowLog:
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._open()
        return next(self._chunks)

    def _open(self) -> Iterator[bytes]:
        engine = self._engine
        polled = 0.0
        while not self._closed.is_set():
            container = engine.events.container(self._handle)
            if container is not None:  # on this node: its own log, which ends when it exits
                return self._opened(engine._log_stream(self._handle, container, True))
            if time.monotonic() - polled >= POLL_MAX:
                polled = time.monotonic()
                task = _latest(engine._tasks(self._handle))
                status = (task or {}).get("Status") or {}
                if (status.get("ContainerStatus") or {}).get("ContainerID") or str(
                    status.get("State")
                ) in _EXITED:
                    return self._opened(engine._log_stream(self._handle, engine._local_container(task), True))
                if task is None and engine._service(self._handle) is None:
                    break
            engine.events.changed(POLL_MAX)
        return iter([])

    def _opened(self, stream: LogStream) -> Iterator[bytes]:
        with self._lock:
            if self._closed.is_set():
                stream.close()
                return iter([])
            self._stream = stream
        return iter(stream)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            stream = self._stream
        if stream is not None:
            stream.close()


class SwarmEngine:
    """Runs task attempts as Swarm ``replicated-job`` services on the manager at ``base_url``."""

    kind = "docker-swarm"
    runs_sessions = True  # a session is a service; see session_root

    def __init__(
        self,
        base_url: str,
        settings: SwarmSettings,
        slots: int,
        timeout: float = 60.0,
        state_dir: Optional[Path] = None,
    ) -> None:
        self.base_url = base_url
        self.settings = settings
        # Session directories, bound into session containers on whichever node runs them.
        self.session_root = (
            Path(settings.spool_dir) if settings.spool_dir else (state_dir or paths.state_dir()) / "swarm"
        ) / "sessions"
        self.slots = settings.max_concurrent or slots
        self.mount_policy = mounts.MountPolicy.build([])  # none until the service sets its policy
        # A prepared run: its service spec, checked mounts, image and files (made configs at start).
        self._prepared: dict[str, tuple[dict[str, Any], list[mounts.Bound], str, list[ContainerFile]]] = {}
        self._stopped: set[str] = set()
        self._lock = threading.Lock()
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        try:
            # Any: the SDK's request helpers this engine calls (_url, _get, _post_json,
            # _raise_for_status, _multiplexed_response_stream_helper) are private, without stubs.
            self.api: Any = _APIClient(base_url, timeout=timeout, version=API_VERSION)
            version = self.api.version()
            info = self.api.info()
        except EngineUnreachable:
            raise
        except (DockerException, requests.RequestException) as exc:
            raise EngineError(f"no Docker engine answers at {base_url}: {exc}") from exc
        self.version = str(version.get("Version", "?"))
        server_api = _api_tuple(str(version.get("ApiVersion") or "0.0"))
        if server_api < _api_tuple(API_VERSION):
            self.api.close()
            raise EngineError(
                f"the Docker engine at {base_url} speaks API {version.get('ApiVersion')}; Swarm jobs "
                f"(replicated-job services) need API {API_VERSION}, Docker 20.10 or later"
            )
        self.api_version = API_VERSION
        if server_api >= NO_NEW_PRIVILEGES_API:  # the API that carries no-new-privileges in the spec
            self.api_version = ".".join(map(str, NO_NEW_PRIVILEGES_API))
            self.api.close()
            self.api = _APIClient(base_url, timeout=timeout, version=self.api_version)
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            self.api.close()
            raise EngineError(
                f"the Docker engine at {base_url} is not a Swarm manager (swarm state "
                f"{swarm.get('LocalNodeState') or 'inactive'}); point engine_socket at a manager, or "
                "run `docker swarm init` there"
            )
        self.node_id = str(swarm.get("NodeID") or "")
        self.rootless = any("rootless" in str(o) for o in info.get("SecurityOptions") or [])
        self.enforcement = docker_enforcement(info)
        self.gpus = SwarmGpus(self.nodes, settings.gpu_kind)
        self.events = NodeEvents(base_url, self.api_version)

    # -- the swarm ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Refuse a swarm hpcdock cannot use safely, and create the isolated network once.

        Sessions need a session directory every node sees: without one, steps with
        environments run cold (each task's container enters them), said once here."""
        count = len(self.nodes(fresh=True))
        shared = self.settings.shared_roots
        if shared is None and count > 1:
            raise EngineError(
                f"the Docker Swarm at {self.base_url} has {count} nodes: set swarm.shared_roots in "
                "service.yaml to the directories every node mounts at the same path (bundles and "
                "outputs must be under them)"
            )
        if shared is not None and outside_shared(os.path.realpath(self.session_root), shared):
            self.runs_sessions = False
            log.warning(
                "swarm: the session directory %s is outside swarm.shared_roots, so steps with "
                "environments run cold; set swarm.spool_dir to a directory under them for sessions",
                self.session_root,
            )
        self._isolated_network()

    def _isolated_network(self) -> None:
        """The swarm network tasks without ``network: true`` join, made once.

        A swarm-scoped bridge network drops driver options given to it directly, so its
        ``enable_icc=false`` comes from a node-local config-only network of the same settings
        (:data:`ISOLATED_CONFIG`, :meth:`_isolation_config`), needed on every node.
        A network of that name made otherwise is refused: its tasks could reach each other."""
        self._isolation_config()
        try:
            made = self.api.inspect_network(ISOLATED_NETWORK)
        except NotFound:
            made = None
        if made is None:
            self._create_network(
                {
                    "Name": ISOLATED_NETWORK,
                    "Driver": "bridge",
                    "Scope": "swarm",
                    "Internal": True,
                    "ConfigFrom": {"Network": ISOLATED_CONFIG},  # (takes no labels of its own)
                }
            )
        elif (made.get("ConfigFrom") or {}).get("Network") != ISOLATED_CONFIG or not made.get("Internal"):
            raise EngineError(
                f"network {ISOLATED_NETWORK} exists but is not hpcdock's isolated network (internal, "
                f"its options from {ISOLATED_CONFIG}): remove it (docker network rm "
                f"{ISOLATED_NETWORK}) and start again"
            )

    def _isolation_config(self) -> None:
        """The config-only network on this node, made when missing: looked at again before each
        isolated task, since a dockerd started without its local network store (as
        ``scripts/setup-docker-rootless.sh`` starts one, moby#37087) comes back without it, and
        this node would reject every isolated task until it is made again."""
        try:
            self.api.inspect_network(ISOLATED_CONFIG)
        except NotFound:
            self._create_network(
                {
                    "Name": ISOLATED_CONFIG,
                    "ConfigOnly": True,
                    "Options": {"com.docker.network.bridge.enable_icc": "false"},
                }
            )
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot look at network {ISOLATED_CONFIG}: {_explain(exc)}") from exc

    def _create_network(self, body: dict[str, Any]) -> None:
        try:
            self.api._raise_for_status(self.api._post_json(self.api._url("/networks/create"), data=body))
        except APIError as exc:
            if exc.status_code != 409:  # another service made it in the meantime
                raise EngineError(f"cannot create network {body['Name']}: {_explain(exc)}") from exc

    def nodes(self, fresh: bool = False, cached: bool = False) -> list[dict[str, Any]]:
        """The swarm's nodes, asked again after NODES_TTL (or now, ``fresh``); ``cached``: the last
        answer without asking (for ``/v1/health``, which never waits for the engine)."""
        at, nodes = self._nodes
        if not cached and (fresh or time.monotonic() - at > NODES_TTL):
            try:
                nodes = self.api.nodes()
            except (APIError, DockerException) as exc:
                raise EngineError(f"cannot list the Swarm's nodes: {_explain(exc)}") from exc
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def shared_roots(self, cached: bool = False) -> tuple[str, ...]:
        """Where every node sees the same files: configured, or on a one-node swarm the allowed roots."""
        if self.settings.shared_roots is not None:
            return self.settings.shared_roots
        if len(self.nodes(cached=cached)) > 1:
            return ()
        return self.mount_policy.roots

    def workers(self, common: Mapping[str, Capability]) -> Workers:
        """The swarm's nodes now, each with what the swarm reports of it, then the service-wide
        ``common`` capabilities, then those ``swarm.nodes`` declares for it. A node declared there
        that is not in the swarm is named in the log (a typo, or a node away): it is no worker."""
        nodes = {_hostname(n): node_capabilities(n, self.settings.gpu_kind) for n in self.nodes(fresh=True)}
        for name in self.settings.nodes:
            if name not in nodes:
                log.warning(
                    "swarm.nodes.%s in service.yaml: the swarm has no node of that hostname (it has %s)",
                    name,
                    ", ".join(sorted(nodes)),
                )
        return Workers.build("node", common, self.settings.nodes, nodes)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.kind,
            "version": self.version,
            "api_version": self.api_version,
            "socket": self.base_url,
            "rootless": self.rootless,
            "nodes": len(self.nodes(cached=True)),
            "shared_roots": list(self.shared_roots(cached=True)),
            "sessions": str(self.session_root),
            "limits": self.enforcement.to_json(),
            "no_new_privileges": (
                "service spec"
                if _api_tuple(self.api_version) >= NO_NEW_PRIVILEGES_API
                else "each node's dockerd --no-new-privileges (API below 1.44 has no service option)"
            ),
            "network_none": f"internal network {ISOLATED_NETWORK} (no route off the node, no task-to-task)",
        }

    def ping(self) -> None:
        try:
            self.api._raise_for_status(self.api._get(self.api._url("/_ping"), timeout=PING_TIMEOUT))
        except requests.exceptions.Timeout as exc:
            raise EngineUnreachable(f"the engine at {self.base_url} does not answer: {exc}") from exc
        except APIError:
            pass  # it answered

    def image_exists(self, image: str) -> bool:
        try:
            self.api.inspect_image(image)
            return True
        except ImageNotFound:
            return False
        except APIError as exc:
            if exc.status_code in (400, 404):
                return False
            raise EngineError(f"cannot look up image {image}: {_explain(exc)}") from exc

    # -- one run ------------------------------------------------------------------------
    def create(self, request: ContainerRequest) -> str:
        """Check the mounts and decide the service; it is created (and may run) only at :meth:`start`."""
        shared = self.shared_roots()
        for m in request.mounts:
            if outside_shared(m.source, shared):
                raise MountRefused(
                    f"mount of {m.source} refused: it is outside the shared roots every Swarm node "
                    f"sees ({', '.join(shared) or 'none configured: set swarm.shared_roots'})"
                )
        if request.session_dir is not None:
            self._check_session_dir(request.session_dir)
        bound = check_binds(self.mount_policy, request.mounts)
        try:
            image = str(self.api.inspect_image(request.image)["Id"])
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot use image {request.image}: {_explain(exc)}") from exc
        spec = service_spec(
            request,
            image=image,
            api_version=self.api_version,
            enforced=self.enforcement,
            gpu_kind=self.settings.gpu_kind,
            constraints=placement_constraints(request.placement, [_hostname(n) for n in self.nodes()]),
        )
        with self._lock:
            self._prepared[request.name] = (spec, bound, request.image, list(request.files))
            self._stopped.discard(request.name)
        return request.name

    def start(self, handle: str) -> None:
        with self._lock:
            prepared = self._prepared.pop(handle, None)
        if prepared is None:
            raise EngineError(f"run {handle} was not prepared (or was stopped before it started)")
        spec, bound, image, files = prepared
        if files:
            spec["TaskTemplate"]["ContainerSpec"]["Configs"] = self._file_configs(handle, files)
        recheck_binds(self.mount_policy, bound)  # as close to the service's creation as it gets
        if spec["TaskTemplate"].get("Networks"):
            self._isolation_config()
        try:
            resp = self.api._post_json(self.api._url("/services/create"), data=spec)
            self.api._raise_for_status(resp)
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot create the Swarm service for {image}: {_explain(exc)}") from exc

    def _file_configs(self, handle: str, files: list[ContainerFile]) -> list[dict[str, Any]]:
        """The run's files as Swarm configs, which Swarm puts in place (on whichever node runs the
        task) before the command starts; labelled with the run, so :meth:`remove` finds them."""
        self._remove_configs(handle)  # a crash between making them and the service leaves them
        refs = []
        for i, f in enumerate(files):
            name = f"{handle}.f{i}"
            try:
                made = self.api.create_config(name, f.data, labels={LABEL_FILES_OF: handle})
            except (APIError, DockerException) as exc:
                raise EngineError(f"cannot hand {f.path} to Swarm: {_explain(exc)}") from exc
            file = {"Name": f.path, "UID": "0", "GID": "0", "Mode": f.mode}
            refs.append({"File": file, "ConfigID": made["ID"], "ConfigName": name})
        return refs

    def _remove_configs(self, handle: str) -> None:
        try:
            for config in self.api.configs(filters={"label": f"{LABEL_FILES_OF}={handle}"}):
                self.api.remove_config(config["ID"])
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot remove the files of service {handle}: {_explain(exc)}") from exc

    def _tasks(self, handle: str) -> list[dict[str, Any]]:
        try:
            return list(self.api.tasks(filters={"service": handle}))
        except NotFound:
            return []
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot look at service {handle}'s task: {_explain(exc)}") from exc

    def _service(self, handle: str) -> Optional[dict[str, Any]]:
        try:
            service = self.api.inspect_service(handle)
        except NotFound:
            return None
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot inspect service {handle}: {_explain(exc)}") from exc
        return service if (service.get("Spec") or {}).get("Name") == handle else None

    def _check_session_dir(self, session_dir: str) -> None:
        """A session's directory must be one of :attr:`session_root`'s, and every node must see it
        (under a shared root, or the swarm has this one node)."""
        if Path(session_dir).parent != self.session_root:
            raise EngineError(f"session directory {session_dir} is not in {self.session_root}")
        shared = self.settings.shared_roots
        if shared is None and len(self.nodes()) > 1:
            shared = ()
        if shared is not None and outside_shared(os.path.realpath(session_dir), shared):
            raise EngineError(
                f"session directory {session_dir} is outside the shared roots every Swarm node sees "
                f"({', '.join(shared) or 'none configured'}): set swarm.spool_dir in service.yaml to a "
                "directory under swarm.shared_roots"
            )

    def status(self, handle: str) -> RunStatus:
        service = self._service(handle)
        if service is None:
            if handle in self._prepared:
                return RunStatus(handle=handle, name=handle, state=RunState.QUEUED)
            raise EngineError(f"Swarm service {handle} does not exist")
        labels = dict((service.get("Spec") or {}).get("Labels") or {})
        return self._run(handle, labels, _latest(self._tasks(handle)))

    def _run(self, name: str, labels: dict[str, str], task: Optional[dict[str, Any]]) -> RunStatus:
        """The run as Swarm reports it, or as its container does when that is on this node: Swarm
        learns of an exit a moment later than the container's own state (and :meth:`wait`) shows it."""
        run = _task_run(name, labels, task)
        status = (task or {}).get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        if run.state != RunState.RUNNING or not container or (task or {}).get("NodeID") != self.node_id:
            return run
        try:
            state = self.api.inspect_container(container).get("State") or {}
        except (NotFound, APIError):
            return run
        if state.get("Running") or state.get("Status") not in ("exited", "dead"):
            return run
        return RunStatus(
            handle=name,
            name=name,
            state=RunState.EXITED,
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            labels=labels,
        )

    def find(self, name: str) -> Optional[RunStatus]:
        # A run prepared but never started exists only in this process (after a restart there is
        # nothing of it to find); here it is dropped, and the attempt runs again without spending one.
        with self._lock:
            if self._prepared.pop(name, None) is not None:
                return None
        if self._service(name) is None:
            return None
        return self.status(name)

    def leftovers(self, store_id: str) -> list[RunStatus]:
        try:
            services = self.api.services(filters={"label": f"{LABEL_STORE}={store_id}"})
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot list Swarm services: {_explain(exc)}") from exc
        with self._lock:
            out = [
                RunStatus(handle=name, name=name, state=RunState.QUEUED, labels=spec["Labels"])
                for name, (spec, _, _, _) in self._prepared.items()
                if spec["Labels"].get(LABEL_STORE) == store_id
            ]
        for service in services:
            name = str(service["Spec"]["Name"])
            labels = dict(service["Spec"].get("Labels") or {})
            out.append(self._run(name, labels, _latest(self._tasks(name))))
        return out

    def logs(self, handle: str, follow: bool, tail: Optional[int] = None) -> LogStream:
        """The run's output: its container's own log when the container is on this node (a
        following stream then ends when the task exits, as the local engine's does), else the
        service's log, which Swarm keeps open after the task ended (the runner closes it once
        it stays idle past the exit, and compares its end with the log's)."""
        if follow:
            return _FollowLog(self, handle)
        container = self.events.container(handle) or self._local_container(_latest(self._tasks(handle)))
        return self._log_stream(handle, container, False, tail)

    def _local_container(self, task: Optional[dict[str, Any]]) -> Optional[str]:
        """The task's container when this node runs it, else None."""
        status = (task or {}).get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        return container if container and (task or {}).get("NodeID") == self.node_id else None

    def _log_stream(
        self, handle: str, container: Optional[str], follow: bool, tail: Optional[int] = None
    ) -> LogStream:
        api = self.api
        params: dict[str, Any] = {"follow": follow, "stdout": True, "stderr": True, "tail": tail or "all"}
        urls = [api._url("/services/{0}/logs", handle)]
        if container:  # gone already (removed): the service's log is what is left
            urls.insert(0, api._url("/containers/{0}/logs", container))
        try:
            for url in urls:
                resp = api._get(url, params=params, stream=True)
                if resp.status_code != 404:
                    api._raise_for_status(resp)
                    # Streamed either way (close() ends a following one from another thread).
                    return CancellableStream(api._multiplexed_response_stream_helper(resp), resp)
                resp.close()
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot read the log of service {handle}: {_explain(exc)}") from exc
        return no_output()

    def wait(self, handle: str, timeout: Optional[float] = None) -> int:
        """The task's exit code: the moment this node announces its container's exit when it runs
        here, else (and as a safety net) from the Swarm task's state, looked at every POLL_MAX
        (every SAFETY_POLL while this node's events follow the container)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.events.exit_code(handle)
            if code is not None:
                return code
            task = _latest(self._tasks(handle))
            if task is None and self._service(handle) is None:
                if handle in self._stopped:
                    return KILLED
                raise EngineError(f"Swarm service {handle} is gone (removed outside hpcdock?)")
            run = self._run(handle, {}, task)
            if run.state is RunState.EXITED:
                if run.exit_code is not None:
                    return run.exit_code
                if handle in self._stopped:
                    return KILLED
                status = (task or {}).get("Status") or {}
                why = status.get("Err") or status.get("Message") or "no reason given"
                raise EngineError(
                    f"Swarm task of {handle} ended {status.get('State')} without an exit code: {why}"
                    + (STALE_NETWORK_ADVICE if STALE_NETWORK.search(why) else "")
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"service {handle} still running after {timeout}s")
            pause = SAFETY_POLL if self.events.container(handle) else POLL_MAX
            until = now + (pause if deadline is None else min(pause, deadline - now))
            while self.events.exit_code(handle) is None and time.monotonic() < until:
                self.events.changed(until - time.monotonic())

    def stop(self, handle: str, grace: float = 0) -> None:
        """Stop the run: its container directly when it runs on this node (with ``grace``), else
        by removing the service (Swarm kills it at once: no grace on other nodes)."""
        with self._lock:
            self._stopped.add(handle)
            if self._prepared.pop(handle, None) is not None:
                return  # never started
        task = _latest(self._tasks(handle))
        status = (task or {}).get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        if task is not None and str(status.get("State")) in _EXITED:
            return
        if task is not None and container and task.get("NodeID") == self.node_id:
            try:
                if grace > 0:
                    self.api.stop(container, timeout=int(grace))
                else:
                    self.api.kill(container)
                return
            except (NotFound, APIError):
                pass  # gone already, or not yet a container: remove the service instead
        self._remove_service(handle)

    def remove(self, handle: str) -> None:
        """Remove the service, then its task's container: Swarm leaves the containers (and task
        records) of a removed ``replicated-job`` service behind (moby#42789, Docker 20.10), so the
        container is removed here when it is on this node (elsewhere it stays, exited)."""
        with self._lock:
            self._prepared.pop(handle, None)
        self._remove_service(handle)
        self._remove_configs(handle)
        try:
            known = self.events.container(handle)  # else ask: started before this process, say
            label = f"com.docker.swarm.service.name={handle}"
            left = (
                [known]
                if known
                else [c["Id"] for c in self.api.containers(all=True, filters={"label": label})]
            )
            for container in left:
                self.api.remove_container(container, force=True)
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot remove the container of service {handle}: {_explain(exc)}") from exc
        with self._lock:
            self._stopped.discard(handle)
        self.events.forget(handle)

    def _remove_service(self, handle: str) -> None:
        try:
            self.api.remove_service(handle)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 404:
                raise EngineError(f"cannot remove Swarm service {handle}: {_explain(exc)}") from exc

    def close(self) -> None:
        self.events.close()
        self.api.close()


def swarm_sockets(configured: Optional[str]) -> list[str]:
    """Where a Swarm manager may answer: the configured socket, ``DOCKER_HOST``, rootless Docker's own."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    out = [u for u in (configured, os.environ.get("DOCKER_HOST")) if u]
    return out + [f"unix://{runtime}/docker.sock", f"unix://{runtime}/hpcdock-docker/docker.sock"]


def connect_swarm(
    configured: Optional[str],
    settings: SwarmSettings,
    slots: int,
    allow_rootful: bool = False,
    state_dir: Optional[Path] = None,
) -> SwarmEngine:
    """The first Swarm manager that answers; a rootful one only with ``allow_rootful``."""
    tried = []
    for url in swarm_sockets(configured):
        path = url[len("unix://") :] if url.startswith("unix://") else None
        if path is not None and not os.path.exists(path):
            tried.append(f"{url} (absent)")
            continue
        try:
            engine = SwarmEngine(url, settings, slots, state_dir=state_dir)
        except EngineError as exc:
            if url == configured:
                raise
            tried.append(f"{url} ({exc})")
            continue
        if not engine.rootless and not allow_rootful:
            engine.close()
            raise EngineError(
                f"the Docker Swarm manager at {url} runs as root; hpcdock only uses rootless "
                "engines unless the config sets `allow_rootful: true`"
            )
        try:
            engine.prepare()
        except EngineError:
            engine.close()
            raise
        return engine
    raise EngineError("no Docker Swarm manager found; tried " + "; ".join(tried))
