"""Engine discovery order and the rootless rule (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hpcdock_service.engines import discovery
from hpcdock_service.engines.base import EngineError


def test_candidates_in_order(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///from/env.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert discovery.candidate_sockets("unix:///configured.sock") == [
        "unix:///configured.sock",
        "unix:///from/env.sock",
        "unix:///run/user/1234/podman/podman.sock",
        "unix:///run/user/1234/docker.sock",
    ]
    monkeypatch.delenv("DOCKER_HOST")
    assert discovery.candidate_sockets(None)[0] == "unix:///run/user/1234/podman/podman.sock"


class FakeEngine:
    def __init__(self, url: str, rootless: bool) -> None:
        self.base_url, self.rootless, self.kind, self.closed = url, rootless, "docker", False

    def close(self) -> None:
        self.closed = True


def test_rootful_engine_is_refused_unless_allowed(monkeypatch, tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    sock.touch()
    made: list[FakeEngine] = []
    monkeypatch.setattr(
        discovery, "LocalEngine", lambda url, **options: made.append(FakeEngine(url, False)) or made[-1]
    )
    with pytest.raises(EngineError, match="runs as root.*allow_rootful"):
        discovery.connect(f"unix://{sock}", tmp_path, allow_rootful=False, embedded=False)
    assert made[-1].closed
    engine = discovery.connect(f"unix://{sock}", tmp_path, allow_rootful=True, embedded=False)
    assert engine.base_url == f"unix://{sock}" and not engine.closed


def test_no_engine_and_no_embedding_says_what_was_tried(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "empty"))
    with pytest.raises(EngineError, match="no container engine found; tried .*podman.sock \\(absent\\)"):
        discovery.connect(None, tmp_path, embedded=False)
