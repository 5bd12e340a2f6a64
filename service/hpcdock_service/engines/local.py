"""The local engine: rootless Podman or Docker on this machine, through the ``docker`` SDK.

Podman's Docker-compatible API and Docker's own API take the same calls here, so one
class serves both; :meth:`LocalEngine.describe` says which one answered. Every container
gets the security defaults of DESIGN.md no matter what the request says: all
capabilities dropped, ``no-new-privileges``, no network unless asked.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount as DockerMount

from .. import mounts
from ..bundle import Mount
from .base import ContainerRequest, ContainerStatus, EngineError, MountRefused

WAIT_INTERVAL = "20ms"  # how often Podman looks whether a waited-for container has exited
EXIT_GRACE = 10.0  # seconds a Docker container whose mounts cannot be read gets to show it has exited


class LocalEngine:
    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.base_url = base_url
        self.mount_policy = mounts.MountPolicy.build([])  # no mounts at all until the service sets its policy
        self._unproven: dict[str, list[mounts.Bound]] = {}  # Docker: created, mounts not yet proven
        try:
            self.client = docker.DockerClient(base_url=base_url, timeout=timeout, version="1.41")
            version = self.client.version()
        except (DockerException, requests.RequestException) as exc:
            raise EngineError(f"no container engine answers at {base_url}: {exc}") from exc
        names = [c.get("Name", "") for c in version.get("Components") or []]
        self.kind = "podman" if any("Podman" in n for n in names) else "docker"
        self.version = str(version.get("Version", "?"))
        self.rootless = self._detect_rootless()

    def _detect_rootless(self) -> bool:
        info = self.client.info()
        if any("rootless" in str(opt) for opt in info.get("SecurityOptions") or []):
            return True
        if self.kind == "podman":
            # Podman's compat /info does not say; its own API does.
            try:
                resp = self.client.api.get(self.client.api.base_url + "/v4.0.0/libpod/info")
                return bool(resp.json()["host"]["security"]["rootless"])
            except (requests.RequestException, KeyError, ValueError):
                return False
        return False

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "version": self.version, "socket": self.base_url, "rootless": self.rootless}

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
        gpu = request.gpu
        if gpu is not None and gpu.via == "libpod":
            container_id = self._create_libpod(request)
        else:
            container_id = self._create_compat(request)
        if self.kind != "podman":
            self._unproven[container_id] = bound
            return container_id
        try:
            # The runtime binds the mounts now, before any of the task's code runs (and Podman
            # shows CDI devices in inspect only once the container is initialised).
            self._libpod("post", f"/containers/{container_id}/init", what="initialise container")
            self._prove_mounts(container_id, bound)
        except EngineError:
            self.remove(container_id)
            raise
        return container_id

    def _check_mounts(self, request_mounts: list[Mount]) -> list[mounts.Bound]:
        return [(m.source, m.target, self._verify(m.source, not m.readonly)) for m in request_mounts]

    def _verify(self, source: str, writable: bool) -> mounts.Identity:
        try:
            return mounts.verify(self.mount_policy, source, writable=writable)
        except mounts.PathRefused as exc:
            raise MountRefused(f"mount of {source} refused: {exc}") from None

    def _recheck_mounts(self, bound: list[mounts.Bound]) -> None:
        """Walk the checked paths again: each must still be the very directory checked before."""
        for source, _, identity in bound:
            if self._verify(source, writable=False) != identity:
                raise MountRefused(f"mount of {source} refused: it changed since it was checked")

    def _prove_mounts(self, container_id: str, bound: list[mounts.Bound]) -> None:
        """Refuse unless the container's mountinfo shows every target bound to its checked directory."""
        if not bound:
            return
        try:
            with open(f"/proc/{int(self._state(container_id).get('Pid') or 0)}/mountinfo") as fh:
                problems = mounts.bound_mismatches(fh.read(), bound)
        except OSError as exc:
            if self.kind == "docker" and self._has_exited(container_id):
                self._recheck_mounts(bound)  # already gone: the paths are all there is left to look at
                return
            problems = [f"cannot read the container's mounts ({exc.strerror})"]
        if problems:
            raise MountRefused("mount refused: " + "; ".join(problems))

    def _state(self, container_id: str) -> dict[str, Any]:
        try:
            return self.inspect(container_id).get("State") or {}
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot inspect container {container_id[:12]}: {_explain(exc)}") from exc

    def _has_exited(self, container_id: str) -> bool:
        """Whether the container's process is gone: an exiting one is still reported running for a moment."""
        try:
            self.wait(container_id, timeout=EXIT_GRACE)
            return True
        except TimeoutError:
            return False

    def _create_compat(self, request: ContainerRequest) -> str:
        # The low-level calls: the high-level containers.create() inspects every new container
        # once more, a round trip per task that dispatch does not need.
        host: dict[str, Any] = {
            "mounts": [DockerMount(target=m.target, source=m.source, type="bind", read_only=m.readonly)
                       for m in request.mounts],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if not request.network:
            host["network_mode"] = "none"
        create: dict[str, Any] = {
            "name": request.name,
            "entrypoint": request.command[:1],
            "command": request.command[1:],
            "environment": dict(request.env),
            "working_dir": request.workdir,
            "labels": request.labels,
        }
        if request.gpu is not None:
            merged = request.gpu.apply({**host, "environment": create["environment"]})
            create["environment"] = merged.pop("environment")
            host = merged
        api = self.client.api
        try:
            return api.create_container(request.image, host_config=api.create_host_config(**host), **create)["Id"]
        except (APIError, DockerException) as exc:
            raise EngineError(f"cannot create container for {request.image}: {_explain(exc)}") from exc

    def _create_libpod(self, request: ContainerRequest) -> str:
        """Podman's own create call: the only way Podman before 5.4 applies CDI devices."""
        body: dict[str, Any] = {
            "name": request.name,
            "image": request.image,
            "entrypoint": request.command[:1],
            "command": request.command[1:],
            "env": dict(request.env),
            "work_dir": request.workdir,
            "labels": request.labels,
            "mounts": [{"destination": m.target, "source": m.source, "type": "bind",
                        "options": ["rbind", "ro" if m.readonly else "rw"]} for m in request.mounts],
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "netns": {"nsmode": "private" if request.network else "none"},
        }
        fields = request.gpu.libpod_fields()
        body["env"].update(fields.get("env", {}))
        body["devices"] = fields.get("devices", [])
        body["mounts"] += fields.get("mounts", [])
        return self._libpod("post", "/containers/create", json=body, what=f"create container for {request.image}")["Id"]

    def _libpod(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        api = self.client.api
        try:
            resp = getattr(api, "_" + method)(api.base_url + "/v4.0.0/libpod" + path, **kwargs)
            api._raise_for_status(resp)
        except requests.exceptions.ReadTimeout:
            raise  # the caller's own timeout (wait), not an engine failure
        except (APIError, DockerException, requests.RequestException) as exc:
            raise EngineError(f"cannot {what}: {_explain(exc)}") from exc
        return resp.json() if resp.content else None

    def start(self, container_id: str) -> None:
        unproven = self._unproven.pop(container_id, None)
        try:
            if unproven:  # Docker: no init, so check once more as close to the bind as it gets
                self._recheck_mounts(unproven)
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
        return self.client.api.inspect_container(container_id)

    def find(self, name: str) -> Optional[ContainerStatus]:
        try:
            return _status(self.client.containers.get(name))
        except NotFound:
            return None

    def list_labeled(self, labels: dict[str, str]) -> list[ContainerStatus]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return [_status(c) for c in self.client.containers.list(all=True, filters=filters)]

    def logs(self, container_id: str, follow: bool) -> Iterator[bytes]:
        try:
            if follow:  # a CancellableStream: close() ends it from another thread
                return self.client.api.logs(container_id, stream=True, follow=True)
            return iter([self.client.api.logs(container_id, stream=False)])
        except NotFound:
            return iter([])

    def wait(self, container_id: str, timeout: Optional[float] = None) -> int:
        try:
            if self.kind == "podman":
                # Podman's Docker-compatible wait looks at the container every 250 ms, as long
                # as a short task itself; its own endpoint takes the interval as a parameter.
                return int(self._libpod("post", f"/containers/{container_id}/wait", what="wait for container",
                                        params={"condition": ["exited", "stopped"], "interval": WAIT_INTERVAL},
                                        timeout=timeout))
            result = self.client.api.wait(container_id, timeout=timeout)
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
        self.client.close()


def _status(container: Any) -> ContainerStatus:
    state = container.attrs.get("State") or {}
    running = bool(state.get("Running")) if isinstance(state, dict) else container.status == "running"
    exit_code = None if running else (state.get("ExitCode") if isinstance(state, dict) else None)
    status = str(state.get("Status") or container.status) if isinstance(state, dict) else container.status
    return ContainerStatus(container.id, container.name, status, running, exit_code, dict(container.labels or {}))


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)
