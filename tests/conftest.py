"""Shared fixtures: a real rootless engine and a real ``hpcdock-service`` process.

The engine tests run against the rootless Podman of the user running the suite (``make
test`` runs it as the unprivileged engine user). When ``DOCKER_HOST`` is set, that engine
is used; otherwise a ``podman system service`` is started for the session.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, TEST_IMAGE, ServiceProcess, remove_leftovers, rootless_podman_unusable


@pytest.fixture(scope="session")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = rootless_podman_unusable()
    if reason:
        pytest.skip(reason)
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    sock = tmp_path_factory.mktemp("engine") / "podman.sock"
    url = f"unix://{sock}"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("podman system service did not start")
        time.sleep(0.05)
    subprocess.run([str(REPO / "scripts" / "build-test-image.sh"), TEST_IMAGE], check=True)
    os.environ["DOCKER_HOST"] = url  # for tests that talk to the engine directly
    os.environ.setdefault("HPCDOCK_TEST_IMAGE", TEST_IMAGE)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def engine(engine_url: str):
    from hpcdock_service.engines.local import LocalEngine

    eng = LocalEngine(engine_url)
    yield eng
    eng.close()


@pytest.fixture
def service(tmp_path: Path, engine_url: str) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path / "svc", engine_url).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)
