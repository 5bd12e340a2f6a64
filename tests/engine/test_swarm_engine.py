"""The Swarm engine on a real rootless Docker Swarm: what the conformance suite does not look at.

Each task attempt is a ``replicated-job`` service carrying hpcdock's labels, with Swarm's own
restart off; the security defaults hold inside the task; a stopped and removed run leaves no
service and no container; a run is found again by name and by label from a fresh engine (a
restarted service); a dockerd killed mid-task and started again runs tasks on the isolated
network again; mounts outside the shared roots are refused naming the path; a step's host
requirements decide the node it is constrained to, or refuse it at submit.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from hpcdock.client import ServiceError
from hpcdock_service.bundle_loader import Mount
from hpcdock_service.config import SwarmSettings
from hpcdock_service.engines.base import ContainerRequest, MountRefused, RunState
from hpcdock_service.engines.swarm import ISOLATED_NETWORK, SwarmEngine, connect_swarm
from hpcdock_service.mounts import MountPolicy

from tests.engine.engine_kinds import expected
from tests.engine.test_slurm_engine import TIER, tier_bundle
from tests.helpers import TEST_IMAGE, ServiceProcess, remove_leftovers, wait_for, wait_job
from tests.swarm import start_swarm, swarm_url

pytestmark = pytest.mark.engine

STORE = "swarmtest"


@pytest.fixture(scope="module")
def url() -> str:
    found, why = swarm_url()
    if found is None:
        if "swarm" in expected():
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture
def engine(url: str, tmp_path: Path) -> Iterator[SwarmEngine]:
    eng = connect_swarm(url, SwarmSettings(), slots=2)
    eng.mount_policy = MountPolicy.build([str(tmp_path)])
    yield eng
    for run in eng.leftovers(STORE):
        eng.remove(run.handle)
    eng.close()


def request(tmp_path: Path, name: str, script: str, network: bool = False) -> ContainerRequest:
    bundle = tmp_path / "bundle"
    out = bundle / "out"
    out.mkdir(parents=True, exist_ok=True)
    return ContainerRequest(
        name=f"hpcdock-{STORE}-{name}-{int(time.time() * 1000)}",
        image=TEST_IMAGE,
        command=["sh", "-c", script],
        env={"HPCDOCK_TASK": "7"},
        workdir=str(bundle),
        mounts=[
            Mount(source=str(bundle), target=str(bundle), readonly=True),
            Mount(source=str(out), target=str(out), readonly=False),
        ],
        network=network,
        labels={"hpcdock.store": STORE, "hpcdock.job": "41", "hpcdock.task": "7", "hpcdock.attempt": "1"},
    )


def run(engine: SwarmEngine, req: ContainerRequest) -> tuple[int, str]:
    handle = engine.create(req)
    engine.start(handle)
    code = engine.wait(handle, timeout=120)
    log = b"".join(engine.logs(handle, follow=False)).decode()
    return code, log


def containers_of(engine: SwarmEngine, name: str) -> list[dict]:
    return engine.api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={name}"})


def test_a_running_task_is_a_labelled_replicated_job_without_swarm_restarts(
    engine: SwarmEngine, tmp_path: Path
) -> None:
    req = request(tmp_path, "label", "echo started; sleep 30")
    handle = engine.create(req)
    engine.start(handle)
    wait_for(lambda: engine.status(handle).state == RunState.RUNNING, timeout=60, what="the task running")
    listed = engine.api.services(filters={"label": "hpcdock.job=41"})
    assert [s["Spec"]["Name"] for s in listed] == [req.name]
    spec = listed[0]["Spec"]
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert spec["Labels"] == req.labels
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    [container] = containers_of(engine, req.name)
    assert {k: v for k, v in container["Labels"].items() if k.startswith("hpcdock.")} == req.labels
    engine.stop(handle)
    assert engine.wait(handle, timeout=60) == 137


def test_a_failed_task_is_not_run_again_by_swarm(engine: SwarmEngine, tmp_path: Path) -> None:
    req = request(tmp_path, "fail", "echo once >> out/runs; exit 3")
    code, _ = run(engine, req)
    assert code == 3
    time.sleep(3)  # what a Swarm restart would take: its default delay is 5 s, none is set
    assert len(engine._tasks(req.name)) == 1
    assert (tmp_path / "bundle" / "out" / "runs").read_text() == "once\n"
    assert engine.status(req.name).exit_code == 3


def test_security_defaults_hold_inside_the_task(engine: SwarmEngine, tmp_path: Path) -> None:
    script = (
        "grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/self/status; "
        "touch ro 2>/dev/null && echo bundle-writable; touch out/rw && echo outputs-writable; "
        # slirp4netns's DNS forwarder: reachable from a networked task on rootless Docker only
        "nc -w 2 10.0.2.3 53 </dev/null && echo reached-outside || echo no-way-out"
    )
    code, log = run(engine, request(tmp_path, "sec", script))
    assert code == 0, log
    assert "NoNewPrivs:\t1" in log
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "bundle-writable" not in log and "outputs-writable" in log
    assert "no-way-out" in log, log
    code, log = run(engine, request(tmp_path, "net", script, network=True))
    assert "reached-outside" in log, f"the comparison needs a networked task to get out: {log}"
    assert engine.describe()["network_none"].startswith(f"internal network {ISOLATED_NETWORK}")


def address_in_log(engine: SwarmEngine, handle: str) -> Optional[str]:
    text = b"".join(engine.logs(handle, follow=False)).decode()
    return text.split("ADDR ")[1].split()[0] if "ADDR " in text else None


def test_isolated_tasks_cannot_reach_each_other(engine: SwarmEngine, tmp_path: Path) -> None:
    """The isolated network has no inter-container traffic; the default bridge (network: true) has."""
    for network, reached in ((True, True), (False, False)):
        listen = request(
            tmp_path,
            f"listen{int(network)}",
            "ip -4 -o addr show eth0 | sed 's/.*inet \\([0-9.]*\\).*/ADDR \\1/'; nc -l -p 7000",
            network=network,
        )
        handle = engine.create(listen)
        engine.start(handle)
        address = wait_for(
            lambda h=handle: address_in_log(engine, h), 60, what="the listening task's address"
        )
        code, out = run(
            engine,
            request(tmp_path, f"dial{int(network)}", f"echo hi | nc -w 2 {address} 7000", network=network),
        )
        assert (code == 0) is reached, f"network={network}: exit {code}, {out}"
        engine.stop(handle)
        engine.wait(handle, timeout=30)
        engine.remove(handle)


def test_cancel_leaves_no_service_and_no_container(engine: SwarmEngine, tmp_path: Path) -> None:
    req = request(tmp_path, "cancel", "trap '' TERM; sleep 60")
    handle = engine.create(req)
    engine.start(handle)
    wait_for(lambda: engine.status(handle).state == RunState.RUNNING, timeout=60, what="the task running")
    assert containers_of(engine, req.name)
    engine.stop(handle)
    assert engine.wait(handle, timeout=30) == 137
    engine.remove(handle)
    assert engine.find(req.name) is None
    wait_for(lambda: not containers_of(engine, req.name), timeout=60, what="the task's container gone")


def test_a_fresh_engine_finds_runs_by_name_and_label(engine: SwarmEngine, url: str, tmp_path: Path) -> None:
    req = request(tmp_path, "adopt", "echo hello; sleep 2; exit 5")
    handle = engine.create(req)
    engine.start(handle)
    restarted = connect_swarm(url, SwarmSettings(), slots=2)
    try:
        found = restarted.find(req.name)
        assert found is not None and found.handle == handle and found.labels == req.labels
        assert found.state in (RunState.QUEUED, RunState.RUNNING)
        assert [r.name for r in restarted.leftovers(STORE)] == [req.name]
        assert restarted.wait(found.handle, timeout=60) == 5
        assert b"".join(restarted.logs(found.handle, follow=False)) == b"hello\n"
        assert restarted.find(req.name).state == RunState.EXITED
        # prepared but never started: another process (a restarted service) finds nothing of it
        never = request(tmp_path, "never", "true")
        restarted.mount_policy = engine.mount_policy
        assert restarted.create(never) == never.name
        assert engine.find(never.name) is None
        restarted.remove(never.name)
    finally:
        restarted.close()


def test_a_daemon_killed_mid_task_runs_isolated_tasks_again_once_started_again(
    engine: SwarmEngine, url: str, tmp_path: Path
) -> None:
    """A dockerd killed while a task used the isolated network keeps a stale copy of it in its
    local network store and, started as it was, would reject every later task on it ("network
    <id> exists", moby#37087): the setup script starts it without that store, and the engine
    (the same one, as a service that outlived the daemon) makes the node's config-only network
    again before the next task."""
    network_id = engine.api.inspect_network(ISOLATED_NETWORK)["Id"]
    local_store = Path(engine.api.info()["DockerRootDir"]) / "network" / "files" / "local-kv.db"
    handle = engine.create(request(tmp_path, "killed", "sleep 300"))
    engine.start(handle)
    wait_for(lambda: engine.status(handle).state == RunState.RUNNING, timeout=60, what="the task running")
    run_dir = Path(url.removeprefix("unix://")).parent  # the script's, beside its socket
    pids = [int((run_dir / name).read_text()) for name in ("dockerd.pid", "rootlesskit.pid")]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=30, what="dockerd gone")
    assert network_id.encode() in local_store.read_bytes(), "the killed dockerd kept no copy of the network"
    again, why = start_swarm()
    assert again == url, why
    code, log = run(engine, request(tmp_path, "after", "echo after the restart"))
    assert (code, log) == (0, "after the restart\n")


def test_mounts_outside_the_shared_roots_are_refused_naming_the_path(url: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    eng = connect_swarm(url, SwarmSettings(shared_roots=(str(shared),)), slots=2)
    eng.mount_policy = MountPolicy.build([str(tmp_path)])
    try:
        req = request(tmp_path, "shared", "true")
        with pytest.raises(
            MountRefused, match=f"{tmp_path / 'bundle'} refused: it is outside the shared roots"
        ):
            eng.create(req)
        assert eng.find(req.name) is None
    finally:
        eng.close()


# -- placement by host requirements ---------------------------------------------------------


@pytest.fixture
def tiered_service(url: str, engine: SwarmEngine, tmp_path: Path) -> Iterator[tuple[ServiceProcess, str]]:
    """A service on the swarm whose one node is declared premium; and that node's hostname."""
    [node] = engine.nodes(fresh=True)
    hostname = node["Description"]["Hostname"]
    config = {
        "engine": "swarm",
        "swarm": {"nodes": {hostname: {"capabilities": {TIER: ["standard", "premium"]}}}},
    }
    svc = ServiceProcess(tmp_path / "svc", url, config=config).start()
    yield svc, hostname
    svc.stop()
    remove_leftovers(svc)


def test_a_step_is_constrained_to_the_node_that_has_what_it_asks_for(
    tiered_service: tuple[ServiceProcess, str], engine: SwarmEngine, tmp_path: Path
) -> None:
    svc, hostname = tiered_service
    client = svc.client()
    bundle = tier_bundle(tmp_path / "tiers", {"premium": ["premium"]}, "echo ran; sleep 6")
    job_id = client.submit(str(bundle))["id"]

    def running_service() -> Optional[dict]:
        [task] = client.tasks(job_id)
        return (
            engine._service(task["container"]) if task["state"] == "running" and task["container"] else None
        )

    spec = wait_for(running_service, 120, what="the task's Swarm service")["Spec"]
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == [f"node.hostname=={hostname}"]
    assert wait_job(client, job_id)["state"] == "succeeded", client.tasks(job_id)
    assert "\nran\n" in client.log(client.tasks(job_id)[0]["id"])[0]


def test_a_step_no_node_can_run_is_refused_at_submit_naming_what_it_has(
    tiered_service: tuple[ServiceProcess, str], tmp_path: Path
) -> None:
    svc, hostname = tiered_service
    client = svc.client()
    with pytest.raises(ServiceError) as refused:
        client.submit(str(tier_bundle(tmp_path / "gold", {"gold": ["gold"]})))
    assert 400 <= refused.value.status < 500, refused.value
    assert refused.value.field.endswith("steps[0].hostRequirements.attributes"), refused.value
    assert refused.value.message.startswith(
        f"{TIER} (anyOf ['gold']): no worker of this service meets it (node {hostname} has {TIER} "
        "['standard', 'premium']"
    ), refused.value
    assert client.jobs() == []
