"""The local engine: rootless Podman or Docker on this machine, through the ``docker`` SDK.

Podman's Docker-compatible API and Docker's own API take the same calls here, so one
class serves both; :meth:`LocalEngine.describe` says which one answered. Every container
gets the security defaults (README.md, "Security defaults") no matter what the request says: all
capabilities dropped, ``no-new-privileges``, no network unless asked, and the task's resource
limits: as cgroup limits where the engine enforces them, else as ulimits (rootless Podman on
cgroup v1 drops cgroup limits with only a warning in its own log, but applies ulimits).

Mounts are checked again at every creation, not trusted from submit: a task can turn a
directory of its writable output into a symlink, and engines follow symlinks when they
bind. Each mount is walked without following any (:mod:`..mounts`) right before the
engine sees it, then the engine's bind is proven:

- **Podman**: create, then ``init`` (the runtime sets up the container's mount namespace
  without running any of the task's code), then the container's
  ``/proc/<pid>/mountinfo`` must show at each target exactly the directory that was
  checked (device and filesystem path); otherwise the container is removed before it ever
  starts. A symlink swapped in between the check and the bind is caught here.
- **Docker** has no ``init``: the mounts are checked before create and again right before
  ``start``, and the container's mountinfo is compared once it started; on a mismatch it is
  killed and removed. A swap that lands in the moments between the last check and the
  bind gives the task those moments with the wrong mount, and a task that has already
  exited when its mounts are looked at is judged by the walks alone.

A refused mount raises :class:`MountRefused`, which fails the task naming the path.

GPUs are this engine's too: it places them on this machine's GPUs (:mod:`..gpu_broker`),
attaches them by the engine's own mechanism and verifies from the container's inspect, before
any of the task's code runs, that the engine did not drop them.

The engine's words for a container's state stay here: the scheduler and the runner read
:class:`RunStatus` (created but never started is no run at all: :meth:`LocalEngine.find`
removes such a container and answers None).
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount as DockerMount
from docker.types import Ulimit

from .. import mounts
from ..gpu.attach import AttachError, Attachment, EngineCaps, verify_attachment
from ..gpu.inventory import NVIDIA_CDI_KIND
from ..gpu_broker import GpuBroker
from .base import (
    LABEL_STORE,
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
from .common import check_binds, docker_enforcement, enforcement, no_output, recheck_binds, split_limits

if TYPE_CHECKING:
    from .discovery import EmbeddedPodman

log = logging.getLogger(__name__)

WAIT_INTERVAL = "20ms"  # how often Podman looks whether a waited-for container has exited
PING_TIMEOUT = 10.0  # seconds an engine may take to answer a ping before it counts as down
EXIT_GRACE = 10.0  # seconds a Docker container whose mounts cannot be read gets to show it has exited
# Podman's and Docker's words for a container that was made but never started.
NEVER_STARTED = frozenset({"created", "configured", "initialized"})


class _APIClient(docker.APIClient):
    """The SDK's client, telling an engine that cannot be reached from one that refused a request.

    Every call goes through ``send``: a connection that cannot be made or breaks (socket
    missing, refused, reset) is :class:`EngineUnreachable`; an HTTP error status stays the
    SDK's ``APIError`` (the engine answered). Timeouts stay timeouts (``wait`` uses them).
    """

    def __init__(self, engine_url: str, **kwargs: Any) -> None:
        super().__init__(base_url=engine_url, **kwargs)
        self.engine_url = engine_url  # base_url becomes http+docker://localhost for a socket

    def send(self, request: Any, **kwargs: Any) -> Any:
        try:
            return super().send(request, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
                raise
            raise EngineUnreachable(
                f"the engine at {self.engine_url} cannot be reached: {_cause(exc)}"
            ) from exc


class LocalEngine:
    """One rootless Podman or Docker on this machine: ``slots`` tasks at once, this machine's GPUs.

    ``declared_gpus`` and ``cdi_kind`` are the config's ``gpus`` and ``gpu_cdi_kind``;
    ``embedded`` is the Podman service hpcdock started itself (:mod:`.discovery`), which this
    engine starts again when it dies and stops when it is closed.
    """

    runs_sessions = True  # binds a session's directory (ContainerRequest.session_dir)
    session_root: Optional[Path] = None  # its containers run here: the service's state directory

    def __init__(
        self,
        base_url: str,
        timeout: int = 60,
        *,
        slots: int = 1,
        declared_gpus: Optional[list[dict[str, Any]]] = None,
        cdi_kind: str = NVIDIA_CDI_KIND,
        embedded: Optional[EmbeddedPodman] = None,
    ) -> None:
        self.base_url = base_url
        self.slots = slots
        self.embedded = embedded
        self.restarts = 0  # times the embedded Podman service was started again
        self.mount_policy = mounts.MountPolicy.build([])  # no mounts at all until the service sets its policy
        self._unproven: dict[str, list[mounts.Bound]] = {}  # Docker: created, mounts not yet proven
        try:
            self.client = docker.DockerClient(base_url=base_url, timeout=timeout, version="1.41")
            self.client.api.close()  # the SDK's own transport, replaced by the one that tells loss from refusal
            self.client.api = _APIClient(base_url, timeout=timeout, version="1.41")
            version, info, host = self._probe()
        except EngineUnreachable:
            raise
        except (DockerException, requests.RequestException) as exc:
            raise EngineError(f"no container engine answers at {base_url}: {exc}") from exc
        self.kind = _kind(version)
        self.version = str(version.get("Version", "?"))
        self.rootless = any("rootless" in str(opt) for opt in info.get("SecurityOptions") or []) or bool(
            (host.get("security") or {}).get("rootless")
        )
        self.enforcement = self._detect_enforcement(info, host)
        self.gpus = GpuBroker.detect(
            EngineCaps.from_engine(version, info, libpod_create=self.kind == "podman"),
            declared_gpus,
            cdi_kind,
        )

    def _probe(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """What the engine says of itself: its version, its info and (Podman) its host."""
        version = self.client.version()
        info = self.client.info()
        return version, info, self._podman_host() if _kind(version) == "podman" else {}

    def _podman_host(self) -> dict[str, Any]:
        """The ``host`` part of Podman's own /info (its compat /info says neither rootless nor cgroups)."""
        try:
            resp = self.client.api.get(self.client.api.base_url + "/v4.0.0/libpod/info")
            return dict(resp.json()["host"])
        except (requests.RequestException, KeyError, ValueError, TypeError):
            return {}

    def _detect_enforcement(self, info: dict[str, Any], host: dict[str, Any]) -> LimitEnforcement:
        if self.kind == "podman":
            # The controllers Podman can use for this user: all of them as root, those delegated
            # to the user on cgroup v2, none for rootless on cgroup v1.
            controllers = set(host.get("cgroupControllers") or [])
            memory, pids, cpu = "memory" in controllers, "pids" in controllers, "cpu" in controllers
            return enforcement(memory, pids, cpu)
        return docker_enforcement(info)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.kind,
            "version": self.version,
            "socket": self.base_url,
            "rootless": self.rootless,
            "limits": self.enforcement.to_json(),
            "embedded": self.embedded is not None,
            "restarts": self.restarts,
        }

    def ping(self) -> None:
        if self.embedded is not None and not self.embedded.alive():
            self._restart_embedded()
        api = self.client.api
        try:
            # the SDK's own request helpers, which its stubs leave out
            api._raise_for_status(api._get(api._url("/_ping"), timeout=PING_TIMEOUT))  # type: ignore[attr-defined]
        except requests.exceptions.Timeout as exc:  # a hung engine is as good as a missing one
            raise EngineUnreachable(f"the engine at {self.base_url} does not answer: {exc}") from exc
        except APIError:
            pass  # it answered

    def _restart_embedded(self) -> None:
        """Start the embedded Podman service again on its socket (the SDK reconnects by itself)."""
        assert self.embedded is not None
        proc = self.embedded.proc
        log.warning(
            "the embedded podman service exited (%s); starting it again",
            proc.returncode if proc is not None else "?",
        )
        try:
            self.embedded.start()
        except EngineError as exc:
            raise EngineUnreachable(str(exc)) from exc
        self.restarts += 1

    def image_exists(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except ImageNotFound:
            return False
        except APIError as exc:
            if exc.status_code in (400, 404):  # podman answers 400 for malformed references
                return False
            raise EngineError(f"cannot look up image {image}: {exc.explanation}") from exc

    def create(self, request: ContainerRequest) -> str:
        bound = self._check_mounts(request.mounts)
        gpu = self._plan_gpus(request.gpus)
        # Podman's own create call for every container it can take: its Docker-compatible create
        # drops ulimits (Podman 4.3 measured), which on cgroup v1 are the only limits it applies.
        if (gpu is None and self.kind == "podman") or (gpu is not None and gpu.via == "libpod"):
            container_id = self._create_libpod(request, gpu)
        else:
            container_id = self._create_compat(request, gpu)
        try:
            if request.files:  # before the runtime is initialised: it checks the command exists
                self._put_files(container_id, request.files)
            if self.kind == "podman":
                # The runtime binds the mounts now, before any of the task's code runs (and Podman
                # shows CDI devices in inspect only once the container is initialised).
                self._libpod("post", f"/containers/{container_id}/init", what="initialise container")
                self._prove_mounts(container_id, bound)
            else:
                self._unproven[container_id] = bound
            if gpu is not None:
                self._verify_gpus(container_id, gpu)
        except EngineError:
            self.remove(container_id)
            raise
        return container_id

    def _put_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        """Write ``files`` into the container's own filesystem (one archive upload), not through a mount."""
        try:
            self.client.api.put_archive(container_id, "/", _archive(files))
        except (APIError, requests.RequestException) as exc:
            raise EngineError(f"could not write the task's files into its container: {exc}") from None

    def _plan_gpus(self, grant: Optional[GpuGrant]) -> Optional[Attachment]:
        if grant is None or grant.count == 0:
            return None
        try:
            return self.gpus.attachment(grant)
        except AttachError as exc:
            raise EngineError(str(exc)) from None

    def _verify_gpus(self, container_id: str, gpu: Attachment) -> None:
        """Engines drop GPU requests they do not understand without a word: check, never trust."""
        problem = verify_attachment(gpu, self._inspect(container_id))
        if problem:
            raise EngineError(f"GPU not attached: {problem}")

    def _check_mounts(self, request_mounts: list[mounts.Mount]) -> list[mounts.Bound]:
        return check_binds(self.mount_policy, request_mounts)

    def _prove_mounts(self, container_id: str, bound: list[mounts.Bound]) -> None:
        """Refuse unless the container's mountinfo shows every target bound to its checked directory."""
        if not bound:
            return
        try:
            with open(f"/proc/{int(self._state(container_id).get('Pid') or 0)}/mountinfo") as fh:
                problems = mounts.bound_mismatches(fh.read(), bound)
        except OSError as exc:
            if self.kind == "docker" and self._has_exited(container_id):
                # already gone: the paths are all there is left to look at
                recheck_binds(self.mount_policy, bound)
                return
            problems = [f"cannot read the container's mounts ({exc.strerror})"]
        if problems:
            raise MountRefused("mount refused: " + "; ".join(problems))

    def _state(self, container_id: str) -> dict[str, Any]:
        return self._inspect(container_id).get("State") or {}

    def _inspect(self, container_id: str) -> dict[str, Any]:
        try:
            return self.inspect(container_id)
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot inspect container {container_id[:12]}: {_explain(exc)}") from exc

    def _has_exited(self, container_id: str) -> bool:
        """Whether the container's process is gone: an exiting one is still reported running for a moment."""
        try:
            self.wait(container_id, timeout=EXIT_GRACE)
            return True
        except TimeoutError:
            return False

    def _create_compat(self, request: ContainerRequest, gpu: Optional[Attachment]) -> str:
        # The low-level calls: the high-level containers.create() inspects every new container
        # once more, a round trip per task that dispatch does not need.
        host: dict[str, Any] = {
            "mounts": [
                DockerMount(target=m.target, source=m.source, type="bind", read_only=m.readonly)
                for m in _all_mounts(request)
            ],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if not request.network:
            host["network_mode"] = "none"
        cgroup, rlimits = split_limits(request.limits, self.enforcement)
        if "memory" in cgroup:
            host["mem_limit"] = host["memswap_limit"] = int(cgroup["memory"])
        if "pids" in cgroup:
            host["pids_limit"] = int(cgroup["pids"])
        if "vcpus" in cgroup:
            host["nano_cpus"] = int(cgroup["vcpus"] * 1e9)
        if rlimits:
            host["ulimits"] = [Ulimit(name=name, soft=value, hard=value) for name, value in rlimits.items()]
            if self.kind == "podman":  # only GPU attachments made for this API come here
                log.warning(
                    "%s: Podman's Docker-compatible create drops ulimits; this container runs without "
                    "its %s limits",
                    request.name,
                    " and ".join(rlimits),
                )
        create: dict[str, Any] = {
            "name": request.name,
            "entrypoint": request.command[:1],
            "command": request.command[1:],
            "environment": dict(request.env),
            "working_dir": request.workdir,
            "labels": request.labels,
        }
        if gpu is not None:
            merged = gpu.apply({**host, "environment": create["environment"]})
            create["environment"] = merged.pop("environment")
            host = merged
        api = self.client.api
        try:
            return api.create_container(request.image, host_config=api.create_host_config(**host), **create)[
                "Id"
            ]
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot create container for {request.image}: {_explain(exc)}") from exc

    def _create_libpod(self, request: ContainerRequest, gpu: Optional[Attachment]) -> str:
        """Podman's own create call: the only way Podman before 5.4 applies CDI devices, and ulimits."""
        body: dict[str, Any] = {
            "name": request.name,
            "image": request.image,
            "entrypoint": request.command[:1],
            "command": request.command[1:],
            "env": dict(request.env),
            "work_dir": request.workdir,
            "labels": request.labels,
            "mounts": [
                {
                    "destination": m.target,
                    "source": m.source,
                    "type": "bind",
                    "options": ["rbind", "ro" if m.readonly else "rw"],
                }
                for m in _all_mounts(request)
            ],
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "netns": {"nsmode": "private" if request.network else "none"},
        }
        cgroup, rlimits = split_limits(request.limits, self.enforcement)
        resources: dict[str, Any] = {}
        if "memory" in cgroup:
            resources["memory"] = {"limit": int(cgroup["memory"]), "swap": int(cgroup["memory"])}
        if "pids" in cgroup:
            resources["pids"] = {"limit": int(cgroup["pids"])}
        if "vcpus" in cgroup:
            resources["cpu"] = {"quota": int(cgroup["vcpus"] * 100_000), "period": 100_000}
        if resources:
            body["resource_limits"] = resources
        if rlimits:
            body["r_limits"] = [
                {"type": name, "soft": value, "hard": value} for name, value in rlimits.items()
            ]
        if gpu is not None:
            fields = gpu.libpod_fields()
            body["env"].update(fields.get("env", {}))
            body["devices"] = fields.get("devices", [])
            body["mounts"] += fields.get("mounts", [])
        return self._libpod(
            "post", "/containers/create", json=body, what=f"create container for {request.image}"
        )["Id"]

    def _libpod(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        api = self.client.api
        try:
            resp = getattr(api, "_" + method)(api.base_url + "/v4.0.0/libpod" + path, **kwargs)
            api._raise_for_status(resp)  # type: ignore[attr-defined]
        except requests.exceptions.ReadTimeout:
            raise  # the caller's own timeout (wait), not an engine failure
        except (APIError, DockerException, requests.RequestException) as exc:
            raise EngineError(f"cannot {what}: {_explain(exc)}") from exc
        return resp.json() if resp.content else None

    def start(self, container_id: str) -> None:
        unproven = self._unproven.pop(container_id, None)
        try:
            if unproven:  # Docker: no init, so check once more as close to the bind as it gets
                recheck_binds(self.mount_policy, unproven)
            self.client.api.start(container_id)
            if unproven:
                self._prove_mounts(container_id, unproven)
        except (APIError, DockerException) as exc:
            self.remove(container_id)
            raise EngineError(f"cannot start container: {_explain(exc)}") from exc
        except EngineError:
            self.remove(container_id)
            raise

    def inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's own inspect JSON: this engine's business (and its tests'), not the seam's."""
        return self.client.api.inspect_container(container_id)

    def status(self, handle: str) -> RunStatus:
        try:
            attrs = self.inspect(handle)
        except NotFound:
            raise EngineError(f"container {handle[:12]} is gone") from None
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot inspect container {handle[:12]}: {_explain(exc)}") from exc
        return _run_status(attrs)

    def find(self, name: str) -> Optional[RunStatus]:
        try:
            attrs = self.inspect(name)
        except NotFound:
            return None
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot look up container {name}: {_explain(exc)}") from exc
        state = attrs.get("State") or {}
        if not state.get("Running") and str(state.get("Status", "")).lower() in NEVER_STARTED:
            self.remove(attrs["Id"])  # none of the task's code ran: the attempt runs again
            return None
        return _run_status(attrs)

    def leftovers(self, store_id: str) -> list[RunStatus]:
        try:
            listed = self.client.api.containers(all=True, filters={"label": [f"{LABEL_STORE}={store_id}"]})
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot list containers: {_explain(exc)}") from exc
        return [_listed_status(c) for c in listed]

    def logs(self, container_id: str, follow: bool, tail: Optional[int] = None) -> LogStream:
        try:
            # Streamed either way (a CancellableStream when following: close() ends it from another
            # thread); without stream=True the SDK reads the whole log into one bytes object.
            return self.client.api.logs(container_id, stream=True, follow=follow, tail=tail or "all")
        except NotFound:
            return no_output()

    def wait(self, container_id: str, timeout: Optional[float] = None) -> int:
        try:
            if self.kind == "podman":
                # Podman's Docker-compatible wait looks at the container every 250 ms, as long
                # as a short task itself; its own endpoint takes the interval as a parameter.
                return int(
                    self._libpod(
                        "post",
                        f"/containers/{container_id}/wait",
                        what="wait for container",
                        params={"condition": ["exited", "stopped"], "interval": WAIT_INTERVAL},
                        timeout=timeout,
                    )
                )
            # a float timeout, which the SDK hands to requests as it is; its stubs say int
            result = self.client.api.wait(container_id, timeout=timeout)  # type: ignore[arg-type]
        except requests.exceptions.ReadTimeout as exc:
            raise TimeoutError(f"container {container_id[:12]} still running after {timeout}s") from exc
        except requests.exceptions.ConnectionError as exc:
            if timeout is not None and "timed out" in str(exc).lower():
                raise TimeoutError(str(exc)) from exc
            raise
        return int(result.get("StatusCode", -1))

    def stop(self, container_id: str, grace: float = 0) -> None:
        try:
            if grace > 0:
                self.client.api.stop(container_id, timeout=int(grace))
            else:
                self.client.api.kill(container_id)
        except (NotFound, APIError):
            pass  # already gone or already stopped: either way it no longer runs

    def remove(self, container_id: str) -> None:
        self._unproven.pop(container_id, None)
        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 404:
                raise EngineError(f"cannot remove container {container_id[:12]}: {exc.explanation}") from exc

    def close(self) -> None:
        """Let go of the engine; the embedded Podman service stops (its containers run on under conmon)."""
        self.client.close()
        if self.embedded is not None:
            self.embedded.stop()


def _all_mounts(request: ContainerRequest) -> list[mounts.Mount]:
    """The task's mounts (checked by the policy) and a session's own directory (the service's)."""
    if request.session_dir is None:
        return list(request.mounts)
    return [*request.mounts, mounts.Mount(source=request.session_dir, target=SESSION_ROOT, readonly=False)]


def _state_of(word: str, running: bool) -> RunState:
    """hpcdock's state for the engine's word (a never-started container counts as queued)."""
    if running:
        return RunState.RUNNING
    return RunState.QUEUED if word.lower() in NEVER_STARTED else RunState.EXITED


def _listed_status(listed: dict[str, Any]) -> RunStatus:
    """A container as the engine lists it (its state word, no exit code) as a :class:`RunStatus`."""
    word = str(listed.get("State", ""))
    return RunStatus(
        handle=listed["Id"],
        name=str((listed.get("Names") or [""])[0]).lstrip("/"),
        state=_state_of(word, running=word.lower() == "running"),
        labels=dict(listed.get("Labels") or {}),
    )


def _run_status(attrs: dict[str, Any]) -> RunStatus:
    """A container's inspect JSON as hpcdock's :class:`RunStatus`."""
    state = attrs.get("State") or {}
    run_state = _state_of(str(state.get("Status", "")), bool(state.get("Running")))
    exited = run_state is RunState.EXITED
    return RunStatus(
        handle=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        state=run_state,
        exit_code=int(state.get("ExitCode", -1)) if exited else None,
        oom_killed=bool(state.get("OOMKilled")),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
    )


def _kind(version: dict[str, Any]) -> str:
    names = [c.get("Name", "") for c in version.get("Components") or []]
    return "podman" if any("Podman" in n for n in names) else "docker"


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _cause(exc: BaseException) -> str:
    """The innermost reason (``FileNotFoundError: ...``), not the layers requests and urllib3 wrap it in."""
    while exc.args and isinstance(exc.args[-1], BaseException):
        exc = exc.args[-1]
    return f"{exc.__class__.__name__}: {exc}"


def _archive(files: Sequence[ContainerFile]) -> bytes:
    """A tar of ``files`` relative to ``/``, with each directory on their way (root-owned, 0755)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        made: set[str] = set()
        for file in files:
            parts = posixpath.normpath(file.path).strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(file.data), file.mode
            tar.addfile(info, io.BytesIO(file.data))
    return buffer.getvalue()
