"""Service configuration: ``$XDG_CONFIG_HOME/hpcdock/service.yaml``, then command-line flags.

Every key has a safe default (loopback only, rootless only, mounts only of project
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml
from hpcdock import paths

from .errors import BadInput
from .mounts import MountPolicy


def _default_roots() -> list[str]:
    return [os.path.expanduser("~"), "/tmp", "/var/tmp"]


@dataclass
class ServiceConfig:
    host: str = paths.DEFAULT_HOST
    port: int = paths.DEFAULT_PORT
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    state_dir: str = field(default_factory=lambda: str(paths.state_dir()))
    token_file: str = field(default_factory=lambda: str(paths.token_path()))
    engine_socket: Optional[str] = None  # unix:///... ; default: discovered (see engines.discovery)
    embedded_podman: bool = True
    allow_rootful: bool = False
    allowed_roots: list[str] = field(default_factory=_default_roots)
    # GPUs tasks may use, declared by hand ([{index, uuid, name}]); default: all that NVML finds.
    gpus: Optional[list[dict[str, Any]]] = None
    gpu_cdi_kind: str = "nvidia.com/gpu"  # CDI device kind GPUs are requested by

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def mount_policy(self, engine_socket: Optional[str] = None) -> MountPolicy:
        """What task containers may mount; ``engine_socket`` is the engine's ``unix://`` URL."""
        protected = [str(paths.config_dir()), self.state_dir, self.token_file]
        if os.environ.get("XDG_RUNTIME_DIR"):
            protected.append(os.environ["XDG_RUNTIME_DIR"])
        if engine_socket and engine_socket.startswith("unix://"):
            protected.append(os.path.dirname(engine_socket[len("unix://"):]))
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
    config = ServiceConfig(**data)
    if not isinstance(config.port, int) or not 0 < config.port < 65536:
        raise BadInput(f"{path}: port", f"must be a TCP port number, got {config.port!r}")
    if not isinstance(config.slots, int) or config.slots < 1:
        raise BadInput(f"{path}: slots", f"must be a whole number >= 1, got {config.slots!r}")
    if not isinstance(config.allowed_roots, list) or not all(
            isinstance(r, str) and os.path.isabs(r) for r in config.allowed_roots):
        raise BadInput(f"{path}: allowed_roots", "must be a list of absolute paths")
    return config
