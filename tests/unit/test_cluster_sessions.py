"""Sessions on the cluster engines, the parts that need no cluster: where a session's directory
travels in a Slurm attempt's spec and which one the node runner binds, the Swarm session's bind,
``swarm.spool_dir`` and the spool directories no task may mount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hpcdock_service import mounts
from hpcdock_service.config import SwarmSettings, load_config
from hpcdock_service.engines.base import SESSION_ROOT, EngineError
from hpcdock_service.engines.node_run import NodeRun, request_from_spec
from hpcdock_service.engines.slurm import request_to_spec
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import PathRefused

from tests.unit.test_swarm_spec import request, spec, write


def test_a_slurm_sessions_directory_travels_in_its_spec() -> None:
    session = request(session_dir="/spool/sessions/hpcdock-s1-j1-s0-1-9")
    back = request_from_spec(
        request_to_spec(session, mounts.MountPolicy.build(["/proj"]), "abc", "/a.tar"), ()
    )
    assert back.session_dir == session.session_dir
    assert (
        request_from_spec(
            request_to_spec(request(), mounts.MountPolicy.build([]), "abc", "/a.tar"), ()
        ).session_dir
        is None
    )


def test_the_node_runner_binds_only_a_directory_of_its_spools_sessions(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "sessions" / "s1").mkdir(parents=True)
    (spool / "sessions" / "s1" / "deeper").mkdir()
    (spool / "sessions" / "link").symlink_to(tmp_path)
    spec_path = spool / "hpcdock-s1-j1-s0-1-9.json"
    spec_path.write_text(json.dumps({}))
    run = NodeRun(spec_path)
    run.check_session_dir(None)  # a task's run binds none
    run.check_session_dir(str(spool / "sessions" / "s1"))
    for refused in (
        tmp_path,
        spool / "sessions" / "s1" / "deeper",
        spool / "sessions" / "link",
        spool / "sessions" / "absent",
        spool,
    ):
        with pytest.raises(EngineError, match="session directory .* refused"):
            run.check_session_dir(str(refused))


def test_a_swarm_session_binds_its_directory_read_write_at_the_session_root() -> None:
    body = spec(request(session_dir="/proj/spool/sessions/s1"))
    binds = body["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert {
        "Type": "bind",
        "Source": "/proj/spool/sessions/s1",
        "Target": SESSION_ROOT,
        "ReadOnly": False,
    } in binds
    assert all(
        m["Target"] != SESSION_ROOT for m in spec(request())["TaskTemplate"]["ContainerSpec"]["Mounts"]
    )


def test_swarm_spool_dir_is_read_and_a_relative_one_refused_by_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"swarm": {"spool_dir": "/proj/.hpcdock/swarm"}}))
    assert config.swarm == SwarmSettings(spool_dir="/proj/.hpcdock/swarm")
    with pytest.raises(BadInput) as err:
        load_config(write(tmp_path, {"swarm": {"spool_dir": "spool"}}))
    assert err.value.field.endswith("swarm.spool_dir") and "absolute path" in err.value.message


@pytest.mark.parametrize("engine", ["slurm", "swarm"])
def test_no_task_mounts_a_cluster_spool_holding_session_control_files(tmp_path: Path, engine: str) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "engine": engine,
                "allowed_roots": ["/proj"],
                engine: {"shared_roots": ["/proj"], "spool_dir": "/proj/.hpcdock/spool"},
            },
        )
    )
    policy = config.mount_policy()
    policy.check_place("/proj/shows/ep1")
    with pytest.raises(PathRefused, match="hpcdock keeps to itself"):
        policy.check_place("/proj/.hpcdock/spool/sessions/s1")
