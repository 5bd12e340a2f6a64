"""The Swarm engine's decisions that need no daemon: the service spec of one task attempt, how
Swarm task states read in hpcdock's words, GPU placement from the nodes' generic resources, the
shared-roots rule and the ``swarm:`` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service.bundle_loader import Mount
from hpcdock_service.config import SwarmSettings, load_config
from hpcdock_service.engines.base import ContainerLimits, ContainerRequest, GpuGrant, RunState
from hpcdock_service.engines.common import enforcement
from hpcdock_service.engines.swarm import (
    ISOLATED_NETWORK,
    SwarmGpus,
    _task_run,
    gpu_counts,
    outside_shared,
    service_spec,
)
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import PathRefused

LABELS = {"hpcdock.store": "s1", "hpcdock.job": "3", "hpcdock.task": "9", "hpcdock.attempt": "2"}
ROOTLESS_V1 = enforcement(memory=False, pids=False, cpu=False)  # rootless Docker on cgroup v1
CGROUPS = enforcement(memory=True, pids=True, cpu=True)


def request(**changes: Any) -> ContainerRequest:
    fields: dict[str, Any] = {
        "name": "hpcdock-s1-t9-a2",
        "image": "localhost/render:1",
        "command": ["sh", "render.sh", "1-5"],
        "env": {"HPCDOCK_TASK": "9"},
        "workdir": "/proj/shot",
        "mounts": [
            Mount(source="/proj/shot", target="/proj/shot", readonly=True),
            Mount(source="/proj/shot/out", target="/proj/shot/out", readonly=False),
        ],
        "network": False,
        "labels": dict(LABELS),
        "limits": ContainerLimits(pids=512, memory=2 << 30, vcpus=2.0),
    }
    fields.update(changes)
    return ContainerRequest(**fields)


def spec(req: ContainerRequest, api: str = "1.41", enforced=ROOTLESS_V1) -> dict[str, Any]:
    return service_spec(req, image="sha256:abc", api_version=api, enforced=enforced, gpu_kind="NVIDIA-GPU")


def test_one_attempt_is_a_labelled_replicated_job_that_swarm_never_restarts() -> None:
    body = spec(request())
    assert body["Name"] == "hpcdock-s1-t9-a2"
    assert body["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert body["Labels"] == LABELS and body["TaskTemplate"]["ContainerSpec"]["Labels"] == LABELS
    assert body["TaskTemplate"]["RestartPolicy"] == {"Condition": "none", "MaxAttempts": 0}
    container = body["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == "sha256:abc"  # pinned: no node asks a registry
    assert container["Command"] == ["sh", "render.sh", "1-5"] and container["Dir"] == "/proj/shot"
    assert container["Env"] == ["HPCDOCK_TASK=9"]


def test_security_defaults_are_in_the_spec() -> None:
    container = spec(request())["TaskTemplate"]["ContainerSpec"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Mounts"] == [
        {"Type": "bind", "Source": "/proj/shot", "Target": "/proj/shot", "ReadOnly": True},
        {"Type": "bind", "Source": "/proj/shot/out", "Target": "/proj/shot/out", "ReadOnly": False},
    ]
    assert "Privileges" not in container  # API 1.41 has no NoNewPrivileges: each dockerd sets it
    assert "Privileges" not in spec(request(), api="1.43")["TaskTemplate"]["ContainerSpec"]
    newer = spec(request(), api="1.44")["TaskTemplate"]["ContainerSpec"]  # Docker 25
    assert newer["Privileges"] == {"NoNewPrivileges": True}


def test_no_network_unless_asked() -> None:
    assert spec(request())["TaskTemplate"]["Networks"] == [{"Target": ISOLATED_NETWORK}]
    assert "Networks" not in spec(request(network=True))["TaskTemplate"]


def test_limits_are_ulimits_without_cgroups_and_cgroup_limits_with_them() -> None:
    body = spec(request())
    assert body["TaskTemplate"]["ContainerSpec"]["Ulimits"] == [
        {"Name": "data", "Soft": 2 << 30, "Hard": 2 << 30},
        {"Name": "nproc", "Soft": 512, "Hard": 512},
    ]
    assert "Resources" not in body["TaskTemplate"]
    body = spec(request(), enforced=CGROUPS)
    assert "Ulimits" not in body["TaskTemplate"]["ContainerSpec"]
    assert body["TaskTemplate"]["Resources"] == {
        "Limits": {"MemoryBytes": 2 << 30, "Pids": 512, "NanoCPUs": 2_000_000_000}
    }


def test_gpus_are_a_generic_resource_reservation() -> None:
    body = spec(request(gpus=GpuGrant(2)))
    assert body["TaskTemplate"]["Resources"]["Reservations"] == {
        "GenericResources": [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]
    }


def test_what_a_step_declared_it_needs_is_reserved_so_the_swarm_packs_its_nodes() -> None:
    """Not the limits (a default memory limit of most of a node would leave room for one task)."""
    assert "Resources" not in spec(request())["TaskTemplate"]
    body = spec(request(reserve=ContainerLimits(memory=3 << 30, vcpus=1.5)))
    assert body["TaskTemplate"]["Resources"]["Reservations"] == {
        "MemoryBytes": 3 << 30,
        "NanoCPUs": 1_500_000_000,
    }


def task(state: str, exit_code: int = 0, container: str = "c1") -> dict[str, Any]:
    return {"Status": {"State": state, "ContainerStatus": {"ContainerID": container, "ExitCode": exit_code}}}


@pytest.mark.parametrize(
    "state,expected,code",
    [
        ("pending", RunState.QUEUED, None),
        ("preparing", RunState.QUEUED, None),
        ("running", RunState.RUNNING, None),
        ("complete", RunState.EXITED, 0),
        ("failed", RunState.EXITED, 3),
        ("rejected", RunState.EXITED, None),  # never ran: no exit code, the reason is its Err
        ("orphaned", RunState.EXITED, None),  # its node was lost
    ],
)
def test_task_states_in_hpcdocks_words(state: str, expected: RunState, code: Any) -> None:
    run = _task_run("n", LABELS, task(state, exit_code=0 if state == "complete" else 3))
    assert (run.state, run.exit_code, run.labels) == (expected, code, LABELS)
    assert _task_run("n", {}, None).state == RunState.QUEUED  # the service exists, its task not yet


def node(host: str, resources: list[dict[str, Any]], state: str = "ready") -> dict[str, Any]:
    return {
        "ID": host,
        "Status": {"State": state},
        "Spec": {"Availability": "active"},
        "Description": {"Hostname": host, "Resources": {"GenericResources": resources}},
    }


GPU = {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-1234"}}


def test_gpus_are_counted_per_ready_node_from_named_and_discrete_resources() -> None:
    nodes = [
        node("a", [GPU, GPU, {"DiscreteResourceSpec": {"Kind": "SSD", "Value": 1}}]),
        node("b", [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 4}}]),
        node("c", [GPU], state="down"),
    ]
    assert gpu_counts(nodes, "NVIDIA-GPU") == {"a": 2, "b": 4}


def test_a_swarm_without_gpu_resources_refuses_gpu_steps_naming_gpus_and_the_node_setting() -> None:
    gpus = SwarmGpus(lambda **_: [node("a", [])], "NVIDIA-GPU")
    assert gpus.check(0) is None
    why = gpus.check(1)
    assert why is not None and "GPU" in why and "amount.worker.gpu" in why and "node-generic-resources" in why
    assert "NVIDIA-GPU" in why and "swarm-resource" in why


def test_gpu_steps_fit_the_largest_node_and_wait_for_held_gpus() -> None:
    gpus = SwarmGpus(lambda **_: [node("a", [GPU, GPU]), node("b", [GPU])], "NVIDIA-GPU")
    assert gpus.check(2) is None
    assert "at most 2" in (gpus.check(3) or "")
    assert gpus.acquire(1, 2) == GpuGrant(2)
    assert gpus.acquire(2, 1) == GpuGrant(1)
    assert gpus.acquire(3, 1) is None  # all 3 held: it waits
    gpus.release(1)
    assert gpus.acquire(3, 1) == GpuGrant(1)


def test_shared_roots_contain_their_own_paths_only() -> None:
    roots = ("/proj", "/mnt/share/")
    assert not outside_shared("/proj", roots) and not outside_shared("/proj/a/b", roots)
    assert not outside_shared("/mnt/share/x", roots)
    assert outside_shared("/projects/a", roots) and outside_shared("/tmp/x", roots)
    assert outside_shared("/proj/a", ())


def write(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_swarm_settings_default_and_read(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml").swarm == SwarmSettings()
    config = load_config(
        write(
            tmp_path, {"swarm": {"shared_roots": ["/proj", "/mnt/a"], "max_concurrent": 8, "gpu_kind": "gpu"}}
        )
    )
    assert config.swarm == SwarmSettings(shared_roots=("/mnt/a", "/proj"), max_concurrent=8, gpu_kind="gpu")


@pytest.mark.parametrize(
    "swarm,field,words",
    [
        ("yes", "swarm", "mapping"),
        ({"shared_root": ["/x"]}, "swarm.shared_root", "unknown setting"),
        ({"shared_roots": "/proj"}, "swarm.shared_roots", "list of absolute paths"),
        ({"shared_roots": ["proj"]}, "swarm.shared_roots", "list of absolute paths"),
        ({"max_concurrent": 0}, "swarm.max_concurrent", "whole number > 0"),
        ({"gpu_kind": "NVIDIA GPU"}, "swarm.gpu_kind", "generic resource"),
    ],
)
def test_bad_swarm_settings_are_refused_by_name(tmp_path: Path, swarm: Any, field: str, words: str) -> None:
    with pytest.raises(BadInput) as err:
        load_config(write(tmp_path, {"swarm": swarm}))
    assert err.value.field.endswith(field) and words in err.value.message


def test_with_engine_swarm_only_shared_parts_of_the_allowed_roots_may_be_mounted(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "engine": "swarm",
                "allowed_roots": ["/home/artist", "/proj"],
                "swarm": {"shared_roots": ["/proj/shows", "/mnt/cache"]},
            },
        )
    )
    policy = config.mount_policy()
    policy.check_place("/proj/shows/ep1/out")
    with pytest.raises(PathRefused, match=r"/proj/other is outside the shared roots .*swarm\.shared_roots"):
        policy.check_place("/proj/other")  # allowed, but not shared
    with pytest.raises(
        PathRefused, match=r"/home/artist/ep1 is outside the shared roots .*swarm\.shared_roots"
    ):
        policy.check_place("/home/artist/ep1")
    with pytest.raises(PathRefused, match=r"/mnt/cache/x is outside the allowed roots"):
        policy.check_place("/mnt/cache/x")  # shared, but not allowed
    local = load_config(
        write(tmp_path, {"allowed_roots": ["/home/artist"], "swarm": {"shared_roots": ["/proj"]}})
    )
    assert local.mount_policy().roots == ("/home/artist",)  # the local engine ignores swarm:
