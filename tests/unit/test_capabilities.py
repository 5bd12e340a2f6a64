"""Host requirements judged per worker group: a Slurm partition, a Swarm node (service.yaml's
``slurm.partitions`` / ``swarm.nodes``, what the cluster reports of each), and where a step that
only some groups meet is placed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service.config import (
    AmountNeed,
    AttributeNeed,
    ServiceConfig,
    SlurmConfig,
    Unmet,
    WorkerCapabilities,
    Workers,
    load_config,
)
from hpcdock_service.engines.base import ContainerRequest, EngineError, LimitEnforcement
from hpcdock_service.engines.slurm import Spool, partition_capabilities, request_to_spec, sbatch_command
from hpcdock_service.engines.swarm import node_capabilities, placement_constraints, service_spec
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.service import Service
from hpcdock_service.store import Store

from tests.fake_engine import FakeEngine
from tests.unit.test_openjd_features import load, step, write

# -- service.yaml ---------------------------------------------------------------------------


def _config(tmp_path: Path, data: dict[str, Any]):
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_partition_and_node_capabilities_are_read_lowercased(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        {
            "slurm": {
                "partition": "cpu",
                "partitions": {
                    "gpu": {
                        "capabilities": {
                            "attr.Custom.Renderer": ["karma_xpu"],
                            "amount.worker.scratch": 900,
                            "amount.worker.gpu.memory": 40960,  # not measured on a cluster
                        }
                    },
                    "cpu": {},
                },
            },
            "swarm": {"nodes": {"render-01": {"capabilities": {"attr.custom.site": "paris"}}}},
        },
    )
    assert cfg.slurm.partitions == {
        "gpu": {
            "attr.custom.renderer": ["karma_xpu"],
            "amount.worker.scratch": 900.0,
            "amount.worker.gpu.memory": 40960.0,
        },
        "cpu": {},
    }
    assert cfg.swarm.nodes == {"render-01": {"attr.custom.site": ["paris"]}}


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"slurm": {"partitions": ["gpu"]}}, "slurm.partitions", "mapping of partition name"),
        ({"slurm": {"partitions": {"a,b": {}}}}, "slurm.partitions.a,b", "not a partition name"),
        ({"slurm": {"partitions": {"gpu": ["x"]}}}, "slurm.partitions.gpu", "mapping with capabilities"),
        (
            {"slurm": {"partitions": {"gpu": {"capability": {}}}}},
            "slurm.partitions.gpu.capability",
            "unknown",
        ),
        (
            {"slurm": {"partitions": {"gpu": {"capabilities": {"amount.worker.vcpu": 64}}}}},
            "slurm.partitions.gpu.capabilities.amount.worker.vcpu",
            "measured",
        ),
        (
            {"slurm": {"partitions": {"gpu": {"capabilities": {"attr.custom.x": 3}}}}},
            "slurm.partitions.gpu.capabilities.attr.custom.x",
            "string or a list",
        ),
        ({"swarm": {"nodes": {"-bad-": {}}}}, "swarm.nodes.-bad-", "not a node name"),
        (
            {"swarm": {"nodes": {"n1": {"capabilities": {"amount.licence": 1}}}}},
            "swarm.nodes.n1.capabilities.amount.licence",
            "resources",
        ),
        ({"swarm": {"node": {}}}, "swarm.node", "unknown setting"),
    ],
)
def test_bad_group_settings_are_refused_naming_the_key(
    tmp_path: Path, data: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(BadInput) as err:
        _config(tmp_path, data)
    assert err.value.field.endswith(field), err.value.field
    assert says in err.value.message


# -- matching -------------------------------------------------------------------------------

MEASURED = {"amount.worker.vcpu": 2.0, "amount.worker.memory": 4096.0, "attr.worker.cpu.arch": ["x86_64"]}
WORKERS = Workers.build(
    "partition",
    {"attr.custom.site": "paris"},
    {"gpu": {"attr.custom.host_config": ["HostConfigA"]}, "big": {"amount.worker.scratch": 500.0}},
    {"main": MEASURED, "gpu": MEASURED, "big": {**MEASURED, "amount.worker.vcpu": 64.0}},
    default="main",
)
HOST_CONFIG_A = AttributeNeed("attr.custom.host_config", any_of=("HostConfigA",))


def test_the_default_group_keeps_steps_it_meets() -> None:
    assert WORKERS.place([]) is None
    assert WORKERS.place([AttributeNeed("attr.custom.site", any_of=("paris",))]) is None
    assert WORKERS.place([AmountNeed("amount.worker.vcpu", 2, where_measured=True)]) is None


def test_a_step_only_some_groups_meet_goes_to_those() -> None:
    assert WORKERS.place([HOST_CONFIG_A]) == ("gpu",)
    assert WORKERS.place([AmountNeed("amount.worker.vcpu", 16, where_measured=True)]) == ("big",)
    assert WORKERS.place([AmountNeed("amount.worker.scratch", 100)]) == ("big",)


def test_a_step_no_group_meets_whole_is_refused_naming_what_each_has() -> None:
    # gpu has the host config, big has the CPUs: none has both.
    with pytest.raises(Unmet) as err:
        WORKERS.place([HOST_CONFIG_A, AmountNeed("amount.worker.vcpu", 16, where_measured=True)])
    message = str(err.value)
    assert "no partition of this service meets every host requirement" in message
    assert (
        "partition main lacks attr.custom.host_config (anyOf ['HostConfigA']) (it has no attr.custom.host_config)"
        in message
    )
    assert "partition gpu lacks amount.worker.vcpu (min 16) (it has amount.worker.vcpu 2)" in message
    assert "partition big lacks attr.custom.host_config" in message
    assert err.value.field == ""


def test_a_gpu_step_goes_to_the_partitions_whose_nodes_have_enough_gpus(tmp_path: Path) -> None:
    measured = partition_capabilities(SCONTROL_NODES)
    workers = Workers.build("partition", {}, {}, measured, default="main")
    wants = {"amounts": [{"name": "amount.worker.gpu", "min": 2}]}
    plan = load(
        write(tmp_path / "g", [step(hostRequirements=wants)]), capabilities=workers, gpu_check=lambda n: None
    )
    assert plan.steps[0].placement == ("big",) and plan.steps[0].gpus == 2
    too_many = {"amounts": [{"name": "amount.worker.gpu", "min": 8}]}
    with pytest.raises(
        BadInput,
        match=r"amount.worker.gpu \(min 8\): no worker of this service meets it \(partition main has "
        r"amount.worker.gpu 0; partition big has amount.worker.gpu 4; partition arm has amount.worker.gpu 0\)$",
    ):
        load(
            write(tmp_path / "h", [step(hostRequirements=too_many)]),
            capabilities=workers,
            gpu_check=lambda n: None,
        )


def test_amounts_a_group_has_no_measure_of_hold_only_where_measured() -> None:
    bare = Workers.build("node", {}, {}, {"n1": {}})
    assert bare.place([AmountNeed("amount.worker.vcpu", 64, where_measured=True)]) == ("n1",)
    with pytest.raises(
        Unmet,
        match=r"amount.worker.scratch \(min 1\): no worker of this service meets it \(node n1 has no "
        r"amount.worker.scratch; declare capabilities per node in service.yaml\)",
    ):
        bare.place([AmountNeed("amount.worker.scratch", 1)])


def test_workers_all_alike_place_nothing_and_refuse_as_before() -> None:
    local = Workers.alike(WorkerCapabilities.build({"attr.custom.site": "paris"}, []))
    assert local.place([AttributeNeed("attr.custom.site", any_of=("paris",))]) is None
    with pytest.raises(Unmet) as err:
        local.place([AttributeNeed("attr.custom.site", any_of=("oslo",))])
    assert err.value.field == "attributes"
    assert "no worker of this service meets it (the workers have attr.custom.site ['paris'])" in str(
        err.value
    )


def test_submit_records_the_placement_and_refuses_by_group(tmp_path: Path) -> None:
    wants_a = {"attributes": [{"name": "attr.custom.host_config", "anyOf": ["HostConfigA"]}]}
    plan = load(write(tmp_path / "a", [step(hostRequirements=wants_a), step("t")]), capabilities=WORKERS)
    assert [s.placement for s in plan.steps] == [("gpu",), None]
    wants_b = {"attributes": [{"name": "attr.custom.host_config", "anyOf": ["HostConfigB"]}]}
    with pytest.raises(BadInput) as err:
        load(write(tmp_path / "b", [step(hostRequirements=wants_b)]), capabilities=WORKERS)
    # No partition has it: the requirement is named first, with what each partition has of it.
    assert err.value.field.endswith("steps[0].hostRequirements.attributes")
    assert err.value.message == (
        "attr.custom.host_config (anyOf ['HostConfigB']): no worker of this service meets it "
        "(partition main has no attr.custom.host_config; partition gpu has attr.custom.host_config "
        "['HostConfigA']; partition big has no attr.custom.host_config; declare capabilities per "
        "partition in service.yaml)"
    )
    assert err.value.status == 400
    nowhere = {"attributes": [{"name": "attr.custom.farm", "anyOf": ["a"]}]}
    with pytest.raises(BadInput, match="no worker of this service has the attribute attr.custom.farm"):
        load(write(tmp_path / "c", [step(hostRequirements=nowhere)]), capabilities=WORKERS)


def test_the_store_keeps_a_steps_placement(tmp_path: Path) -> None:
    wants_a = {"attributes": [{"name": "attr.custom.host_config", "anyOf": ["HostConfigA"]}]}
    plan = load(write(tmp_path / "a", [step(hostRequirements=wants_a), step("t")]), capabilities=WORKERS)
    store = Store.open(tmp_path / "db.sqlite")
    try:
        job = store.create_job(plan)
        assert store.step_run(job.id, 0).placement == ("gpu",)
        assert store.step_run(job.id, 1).placement is None
    finally:
        store.close()


# -- Slurm ----------------------------------------------------------------------------------

SCONTROL_NODES = """\
NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=8 CPULoad=0.10 AvailableFeatures=avx2 ActiveFeatures=avx2 Gres=(null) NodeAddr=n1 NodeHostName=n1 OS=Linux 6.1.0-18-amd64 #1 SMP RealMemory=32000 AllocMem=0 FreeMem=1 Sockets=8 Boards=1 State=IDLE Partitions=main,big
NodeName=n2 Arch=x86_64 CPUTot=64 Gres=gpu:a100:4(S:0-1) OS=Linux 6.1.0 RealMemory=512000 State=IDLE Partitions=big
NodeName=n3 Arch=aarch64 CPUTot=4 OS=Linux 6.1.0 RealMemory=8000 State=IDLE Partitions=arm
"""


def test_partition_capabilities_come_from_each_partitions_biggest_node() -> None:
    parts = partition_capabilities(SCONTROL_NODES)
    assert parts["main"] == {
        "amount.worker.vcpu": 8.0,
        "amount.worker.memory": 32000.0,
        "amount.worker.gpu": 0.0,  # measured: a GPU step is not placed here
        "attr.worker.cpu.arch": ["x86_64"],
        "attr.worker.os.family": ["linux"],
    }
    assert parts["big"]["amount.worker.vcpu"] == 64.0 and parts["big"]["amount.worker.memory"] == 512000.0
    assert parts["big"]["amount.worker.gpu"] == 4.0
    assert parts["arm"]["attr.worker.cpu.arch"] == ["arm64"]


def test_sbatch_goes_to_the_placed_partitions_else_the_configured_one(tmp_path: Path) -> None:
    settings = SlurmConfig(partition="main")
    spool = Spool(tmp_path)
    placed = sbatch_command(settings, "n", spool, "/py", "c", partitions=["gpu", "big"])
    assert "--partition=gpu,big" in placed and "--partition=main" not in placed
    assert "--partition=main" in sbatch_command(settings, "n", spool, "/py", "c")
    assert not any(a.startswith("--partition") for a in sbatch_command(SlurmConfig(), "n", spool, "/py", "c"))


def _request(placement: Any) -> ContainerRequest:
    return ContainerRequest(
        name="n",
        image="img",
        command=["true"],
        env={},
        workdir="/",
        mounts=[],
        network=False,
        labels={},
        placement=placement,
    )


def test_the_slurm_spec_carries_the_placement() -> None:
    policy = MountPolicy.build(["/tmp"])
    assert request_to_spec(_request(("gpu",)), policy, "id", "a")["request"]["placement"] == ["gpu"]
    assert request_to_spec(_request(None), policy, "id", "a")["request"]["placement"] is None


# -- Swarm ----------------------------------------------------------------------------------


def test_swarm_constraints_keep_a_task_on_the_nodes_that_meet_its_step() -> None:
    nodes = ["n1", "n2", "n3"]
    assert placement_constraints(None, nodes) == []
    assert placement_constraints(("n2",), nodes) == ["node.hostname==n2"]
    assert placement_constraints(("n1", "n3"), nodes) == ["node.hostname!=n2"]
    # A node that joined after the job was accepted was never judged: kept off too.
    assert placement_constraints(("n1", "n3"), [*nodes, "n4"]) == ["node.hostname!=n2", "node.hostname!=n4"]
    with pytest.raises(EngineError, match=r"none of the nodes .* \(n9\) is in the swarm now"):
        placement_constraints(("n9",), nodes)


def test_the_swarm_service_spec_carries_the_constraints() -> None:
    enforced = LimitEnforcement(memory="cgroup", pids="cgroup", cpu="cgroup")
    spec = service_spec(
        _request(("n1",)),
        image="sha",
        api_version="1.41",
        enforced=enforced,
        gpu_kind="G",
        constraints=["node.hostname==n1"],
    )
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname==n1"]}
    bare = service_spec(_request(None), image="sha", api_version="1.41", enforced=enforced, gpu_kind="G")
    assert "Placement" not in bare["TaskTemplate"]


def test_node_capabilities_come_from_what_the_swarm_reports() -> None:
    node = {
        "Description": {
            "Hostname": "n1",
            "Platform": {"Architecture": "aarch64", "OS": "linux"},
            "Resources": {
                "NanoCPUs": 16_000_000_000,
                "MemoryBytes": 64 * 1024**3,
                "GenericResources": [
                    {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
                    {"DiscreteResourceSpec": {"Kind": "FPGA", "Value": 1}},
                ],
            },
        }
    }
    assert node_capabilities(node, "NVIDIA-GPU") == {
        "amount.worker.gpu": 2.0,
        "amount.worker.vcpu": 16.0,
        "amount.worker.memory": 65536.0,
        "attr.worker.os.family": ["linux"],
        "attr.worker.cpu.arch": ["arm64"],
    }


def test_check_shows_each_groups_capabilities() -> None:
    shown = WORKERS.to_json()
    assert shown["kind"] == "partition" and shown["default"] == "main"
    assert shown["groups"]["gpu"]["attributes"]["attr.custom.host_config"] == ["HostConfigA"]
    assert shown["groups"]["big"]["amounts"] == {
        "amount.worker.memory": 4096.0,
        "amount.worker.scratch": 500.0,
        "amount.worker.vcpu": 64.0,
    }
    assert Workers.alike(WorkerCapabilities()).to_json()["kind"] == "alike"


# -- packing ----------------------------------------------------------------------------------


class _ClusterEngine(FakeEngine):
    """A fake cluster engine: its partitions are WORKERS (the biggest, ``big``, has 64 vCPUs)."""

    def workers(self, common: Any) -> Workers:
        return WORKERS


@pytest.mark.parametrize("cluster", [True, False])
def test_a_cluster_packs_vcpus_into_its_nodes_not_into_the_service_host(
    tmp_path: Path, cluster: bool
) -> None:
    """The service host (machine: 2 vCPUs here) packs a local engine's tasks; a cluster's own
    scheduler packs its nodes, so a step asking for 32 vCPUs goes to the partition that has them."""
    config = ServiceConfig(
        state_dir=str(tmp_path / "state"),
        token_file=str(tmp_path / "token"),
        allowed_roots=[str(tmp_path)],
        machine={"vcpus": 2, "memory_mib": 4096},
    )
    engine = _ClusterEngine(images=("img:1",)) if cluster else FakeEngine(images=("img:1",))
    service = Service(config, engine=engine)
    try:
        wants = {"amounts": [{"name": "amount.worker.vcpu", "min": 32}]}
        bundle = write(tmp_path / "bundle", [step(hostRequirements=wants)])
        if cluster:
            assert "amount.worker.vcpu" not in service.capacity
            job = service.submit(bundle)
            run = service.store.step_run(job.id, 0)
            assert run.placement == ("big",) and run.reserve.vcpus == 32  # asked of the cluster
        else:
            with pytest.raises(
                BadInput, match="amount.worker.vcpu 32 can never fit: tasks are packed into 2"
            ):
                service.submit(bundle)
    finally:
        service.close()
