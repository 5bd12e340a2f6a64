"""The local engine's own promises, against a real rootless engine and a real service process.

What every engine must do (chunked jobs, retries, cancel, restart, refusals, frames, logs) is
test_conformance.py's, run on this engine among the others.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TEST_IMAGE, ServiceProcess, make_bundle, socket_answers, wait_for, wait_job

pytestmark = pytest.mark.engine


def test_embedded_podman_is_started_and_stopped(tmp_path: Path, engine_url: str) -> None:
    # The service's private runtime dir (XDG_RUNTIME_DIR) is also where its Podman keeps state.
    svc = ServiceProcess(tmp_path / "svc", engine_url=None, extra_env={"DOCKER_HOST": ""})
    svc.start()
    try:
        health = svc.client().health()
        assert health["embedded_engine"] is True
        assert health["engine"]["rootless"] is True
        assert str(svc.state_dir) in health["engine"]["socket"]
        bundle = make_bundle(tmp_path / "emb", frames="1-2", chunk=2)
        job = svc.client().submit(str(bundle))
        assert wait_job(svc.client(), job["id"])["state"] == "succeeded"
    finally:
        svc.stop()
    sock = svc.state_dir / "podman" / "podman.sock"
    wait_for(lambda: not socket_answers(sock), 20, what="embedded podman to stop")


def test_image_must_exist_and_health_reports_engine(service: ServiceProcess, tmp_path: Path) -> None:
    health = service.client().health()
    assert health["engine"]["engine"] == "podman" and health["engine"]["rootless"] is True
    assert TEST_IMAGE
