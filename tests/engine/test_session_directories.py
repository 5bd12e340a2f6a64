"""Where the cluster engines keep session directories, on the real engines (the session scenarios
themselves are in test_conformance.py): on the shared filesystem, or no sessions at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from hpcdock_service.config import SwarmSettings
from hpcdock_service.engines.swarm import connect_swarm

from tests.engine.test_swarm_engine import url  # noqa: F401 (the fixture)

pytestmark = pytest.mark.engine


def test_a_swarm_session_directory_outside_the_shared_roots_means_steps_run_cold(
    url: str,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    unshared = connect_swarm(
        url, SwarmSettings(shared_roots=(str(shared),)), slots=2, state_dir=tmp_path / "state"
    )
    try:
        assert unshared.session_root == tmp_path / "state" / "swarm" / "sessions"
        assert not unshared.runs_sessions  # no node but this one would see its sessions' files
    finally:
        unshared.close()
    spool = shared / ".hpcdock" / "swarm"
    settings = SwarmSettings(shared_roots=(str(shared),), spool_dir=str(spool))
    engine = connect_swarm(url, settings, slots=2, state_dir=tmp_path / "state")
    try:
        assert engine.session_root == spool / "sessions" and engine.runs_sessions
        assert engine.describe()["sessions"] == str(spool / "sessions")
    finally:
        engine.close()
