"""The engines the conformance suite (test_conformance.py) runs its scenarios on: one entry each.

An entry says how to tell the engine is usable on this machine, and how to prepare it (started,
test image loaded: through session fixtures or its own once-only setup) and select it: the
``service.yaml`` settings, and for the local engine the socket, that make a service drive it.
``make test`` names the engines a machine must have in ``HPCDOCK_EXPECT_ENGINES``: their
scenarios fail, rather than skip, when the engine is missing.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.helpers import REPO, TEST_IMAGE, rootless_podman_unusable, socket_answers
from tests.swarm import swarm_url

EXPECT_ENGINES = "HPCDOCK_EXPECT_ENGINES"


@dataclass(frozen=True)
class Selection:
    """What a service needs to drive one engine: its ``service.yaml`` settings, and for the
    local engine the socket it is told with ``--engine-socket``."""

    config: dict[str, Any]
    engine_url: Optional[str] = None


@dataclass(frozen=True)
class EngineKind:
    name: str
    # Why the engine cannot be used here (None: it can); asked before anything is prepared.
    unavailable: Callable[[], Optional[str]]
    # Prepares the engine for a test (the test's request, for the session fixtures it needs)
    # and says how a service selects it.
    select: Callable[[pytest.FixtureRequest], Selection]


def expected() -> set[str]:
    """The engines ``HPCDOCK_EXPECT_ENGINES`` says this machine must have."""
    return {name.strip() for name in os.environ.get(EXPECT_ENGINES, "").split(",") if name.strip()}


# -- local engines ------------------------------------------------------------------------------

# The local engine places GPUs on this machine's own: declaring none makes the GPU refusal the
# same scenario on a GPU workstation as on a machine without GPUs.
NO_GPUS = {"gpus": []}


def _docker_sockets() -> list[Path]:
    """Where a user's rootless Docker listens: its usual socket, and the one
    scripts/setup-docker-rootless.sh starts."""
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
    return [runtime / "docker.sock", runtime / "hpcdock-docker" / "docker.sock"]


def _docker_socket() -> Optional[Path]:
    return next((sock for sock in _docker_sockets() if socket_answers(sock)), None)


def _docker_unavailable() -> Optional[str]:
    if shutil.which("docker") is None:
        return "docker is not installed"
    if _docker_socket() is None:
        return "no rootless Docker answers at " + " or ".join(str(sock) for sock in _docker_sockets())
    return None


@functools.cache
def _docker_url() -> str:
    """The user's running rootless Docker, with the test image imported into it (once a session)."""
    sock = _docker_socket()
    assert sock is not None, _docker_unavailable()
    url = f"unix://{sock}"
    subprocess.run(
        [str(REPO / "scripts" / "build-test-image.sh"), TEST_IMAGE],
        env={**os.environ, "ENGINE": "docker", "DOCKER_HOST": url},
        check=True,
    )
    return url


# -- cluster engines ----------------------------------------------------------------------------


def slurm_unavailable() -> Optional[str]:
    """Slurm's client, a controller that answers, and the rootless Podman its jobs run containers with."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (`make test` runs scripts/setup-slurm.sh as root)"
    probe = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in probe.stdout:
        return f"the Slurm controller does not answer ({(probe.stdout + probe.stderr).strip()})"
    return rootless_podman_unusable()


def _select_slurm(request: pytest.FixtureRequest) -> Selection:
    # The session's Podman service with the test image: DOCKER_HOST, which the service's jobs
    # inherit (sbatch exports the environment), points the node runner at it.
    request.getfixturevalue("engine_url")
    # Two jobs at once, as every other engine here has two slots: the session scenarios count
    # sessions against them.
    return Selection({"engine": "slurm", "slurm": {"max_jobs": 2}})


KINDS = [
    EngineKind(
        name="podman",
        unavailable=rootless_podman_unusable,
        # tests/conftest.py's engine_url: a rootless podman system service, the test image built
        select=lambda request: Selection(NO_GPUS, engine_url=request.getfixturevalue("engine_url")),
    ),
    EngineKind(
        name="docker",
        unavailable=_docker_unavailable,
        select=lambda request: Selection(NO_GPUS, engine_url=_docker_url()),
    ),
    EngineKind(name="slurm", unavailable=slurm_unavailable, select=_select_slurm),
    # The test user's rootless Docker in swarm mode (scripts/setup-docker-rootless.sh), started
    # once a session when it does not answer yet, the test image imported into it.
    EngineKind(
        name="swarm",
        unavailable=lambda: swarm_url()[1] or None,
        select=lambda request: Selection({"engine": "swarm"}, engine_url=swarm_url()[0]),
    ),
]


def by_name(name: str) -> EngineKind:
    return next(kind for kind in KINDS if kind.name == name)
