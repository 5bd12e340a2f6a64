"""Engines. The scheduler and the runner talk to :class:`~.base.Engine` only; which engine it is
(rootless Podman or Docker on this machine, or a cluster's scheduler) is decided once, at
start-up, by :func:`open_engine` from the config's ``engine:`` key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Engine

if TYPE_CHECKING:
    from ..config import ServiceConfig


def open_engine(config: ServiceConfig, state_dir: Path) -> Engine:
    """The engine ``config.engine`` names, connected and ready (its slots and GPUs from the config).

    Raises EngineError saying why when it cannot be had (no engine answers)."""
    if config.engine == "local":
        from .discovery import connect

        return connect(
            config.engine_socket,
            state_dir,
            allow_rootful=config.allow_rootful,
            embedded=config.embedded_podman,
            slots=config.slots,
            declared_gpus=config.gpus,
            cdi_kind=config.gpu_cdi_kind,
        )
    if config.engine == "slurm":
        from .slurm import SlurmEngine

        return SlurmEngine(config.slurm, state_dir)
    from .swarm import connect_swarm  # config.ENGINES has no fourth

    return connect_swarm(
        config.engine_socket,
        config.swarm,
        slots=config.slots,
        allow_rootful=config.allow_rootful,
        state_dir=state_dir,
    )
