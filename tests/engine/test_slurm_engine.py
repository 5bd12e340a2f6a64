"""The Slurm engine on a real Slurm cluster (``scripts/setup-slurm.sh``'s single node), what the
conformance suite does not cover: node-runner cleanup on ``scancel``, Slurm's refusal to requeue
an attempt, image distribution through the shared store, the shared roots, and where a step's
host requirements place its tasks (per-partition capabilities).

Real parts throughout: real ``sbatch``/``squeue``/``scancel``, real jobs running the node runner,
real rootless Podman containers on the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import yaml
from hpcdock.client import ServiceError

from tests.engine.engine_kinds import EXPECT_ENGINES, by_name, expected, slurm_unavailable
from tests.helpers import TEST_IMAGE, ServiceProcess, remove_leftovers, run_check, wait_for, wait_job

pytestmark = pytest.mark.engine


@pytest.fixture
def slurm(tmp_path: Path, engine_url: str) -> Iterator:
    from hpcdock_service import mounts
    from hpcdock_service.config import SlurmConfig
    from hpcdock_service.engines.slurm import SlurmEngine

    reason = slurm_unavailable()
    if reason:
        if "slurm" in expected():
            pytest.fail(f"{EXPECT_ENGINES}={os.environ[EXPECT_ENGINES]} expects slurm, but {reason}")
        pytest.skip(reason)
    shared = tmp_path / "shared"
    shared.mkdir()
    eng = SlurmEngine(SlurmConfig(max_jobs=4), tmp_path / "state")
    eng.mount_policy = mounts.MountPolicy.build([str(tmp_path)], (), [str(shared)], "slurm.shared_roots")
    eng.shared_dir = shared
    yield eng
    for name in eng.spool.names("hpcdock-"):
        eng.remove(name)
    eng.close()


def _request(name: str, command: str, mounts: list | None = None, image: str = TEST_IMAGE):
    from hpcdock_service.engines.base import ContainerRequest

    return ContainerRequest(
        name=name,
        image=image,
        command=["sh", "-c", command],
        env={},
        workdir="/",
        mounts=mounts or [],
        network=False,
        labels={"hpcdock.store": "slurmtest", "hpcdock.task": "1", "hpcdock.attempt": "0"},
    )


def _unique(stem: str) -> str:
    return f"hpcdock-slurmtest-{stem}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _podman_names() -> set[str]:
    out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return set(out.stdout.split())


def _job_state(name: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%T"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _job_ended(name: str) -> bool:
    return _job_state(name) not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def test_scancel_stops_and_removes_the_container(slurm) -> None:
    from hpcdock_service.engines.base import EngineError, RunState

    name = _unique("cancel")
    handle = slurm.create(_request(name, "echo started; sleep 60"))
    slurm.start(handle)
    wait_for(lambda: name in _podman_names(), 60, what="the task's container to run on the node")
    wait_for(lambda: b"started" in b"".join(slurm.logs(handle, follow=False)), 30, what="its first line")
    assert slurm.status(handle).state is RunState.RUNNING
    slurm.stop(handle)
    code = slurm.wait(handle, timeout=30)
    assert code != 0  # killed, not finished
    record = slurm.spool.read_exit(name)
    assert record is not None and record.stopped
    assert name not in _podman_names(), "the node runner left the canceled container behind"
    wait_for(lambda: _job_ended(name), 30, what="the Slurm job to end")
    slurm.remove(handle)
    assert slurm.find(name) is None or slurm.find(name).state is RunState.EXITED
    with pytest.raises(EngineError):
        slurm.status(_unique("never"))


def test_stop_of_a_queued_job_cancels_it_without_a_container(slurm) -> None:
    from hpcdock_service.engines.base import EngineError, RunState

    name = _unique("held")
    handle = slurm.create(_request(name, "echo never"))
    slurm.settings = slurm.settings.__class__(sbatch_args=("--begin=now+1hour",), max_jobs=4)
    slurm.start(handle)
    assert slurm.status(handle).state is RunState.QUEUED
    slurm.stop(handle)
    with pytest.raises(EngineError, match="canceled"):
        slurm.wait(handle, timeout=30)
    assert name not in _podman_names()
    assert not slurm.spool.output(name).exists(), "a job that never started wrote output"


def test_slurm_refuses_to_requeue_an_attempt(slurm) -> None:
    """--no-requeue: Slurm never runs an attempt twice under one name, whoever asks it to."""
    name = _unique("requeue")
    handle = slurm.create(_request(name, "echo running; sleep 60"))
    slurm.start(handle)
    wait_for(lambda: name in _podman_names(), 60, what="the task's container to run")
    job_id = slurm.spool.job_id(name).read_text().strip()
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode != 0 and "disabled" in requeue.stderr, requeue.stderr
    assert _job_state(name) == "RUNNING"
    slurm.stop(handle)
    slurm.wait(handle, timeout=30)
    assert slurm.spool.output(name).read_bytes().count(b"running") == 1


def test_image_is_loaded_on_a_node_that_lacks_it(slurm, tmp_path: Path) -> None:
    """The image travels through the shared store: saved at create, loaded by the node runner."""
    image = f"localhost/hpcdock-slurm-load:{os.getpid()}"
    build = tmp_path / "img"
    build.mkdir()
    (build / "marker").write_text(f"{os.getpid()}-{time.time()}\n")  # a layer of its own: a new image id
    (build / "Containerfile").write_text(f"FROM {TEST_IMAGE}\nCOPY marker /marker\n")
    subprocess.run(["podman", "build", "-q", "-t", image, str(build)], check=True, capture_output=True)
    try:
        name = _unique("load")
        handle = slurm.create(_request(name, "cat /marker", image=image))
        archive = Path(json.loads(slurm.spool.spec(name).read_text())["archive"])
        assert archive.exists() and archive.parent == slurm.images.root
        subprocess.run(["podman", "rmi", "-f", image], check=True, capture_output=True)  # the node lacks it
        slurm.start(handle)
        assert slurm.wait(handle, timeout=120) == 0
        assert (build / "marker").read_bytes() in b"".join(slurm.logs(handle, follow=False))
        present = subprocess.run(["podman", "image", "exists", image])
        assert present.returncode == 0, "the node runner did not load the image"
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)


def test_mounts_outside_the_shared_roots_are_refused_naming_the_path(slurm, tmp_path: Path) -> None:
    from hpcdock_service.bundle_loader import Mount
    from hpcdock_service.engines.base import MountRefused

    private = tmp_path / "private"
    private.mkdir()
    with pytest.raises(MountRefused, match=f"{private}.*shared roots"):
        slurm.create(_request(_unique("private"), "true", mounts=[Mount(str(private), "/in")]))
    inside = slurm.shared_dir / "in"
    inside.mkdir()
    (inside / "f").write_text("shared\n")
    name = _unique("shared")
    handle = slurm.create(_request(name, "cat /in/f", mounts=[Mount(str(inside), "/in")]))
    slurm.start(handle)
    assert slurm.wait(handle, timeout=120) == 0
    assert b"shared\n" in b"".join(slurm.logs(handle, follow=False))


def test_leftovers_are_found_by_name_and_removed(slurm) -> None:
    from hpcdock_service.engines.base import RunState

    names = [_unique("left-a"), _unique("left-b")]
    for name in names:
        slurm.start(slurm.create(_request(name, "sleep 60")))
    found = {s.name: s for s in slurm.leftovers("slurmtest")}
    assert set(names) <= set(found)
    assert all(found[n].state in (RunState.QUEUED, RunState.RUNNING) for n in names)
    for name in names:
        slurm.remove(name)
    wait_for(
        lambda: all(_job_state(n) in ("CANCELLED", "COMPLETED", "") for n in names),
        30,
        what="both jobs to end",
    )
    assert not set(names) & {s.name for s in slurm.leftovers("slurmtest")}
    wait_for(lambda: not set(names) & _podman_names(), 30, what="their containers to be removed")


# -- placement by host requirements ---------------------------------------------------------

TIER = "attr.custom.tier"
# What service.yaml declares for setup-slurm.sh's two partitions on the one node.
SITE = "attr.custom.site"
PARTITIONS = {
    "main": {"capabilities": {TIER: "standard", SITE: "paris"}},
    "spare": {"capabilities": {TIER: ["standard", "premium"], SITE: "oslo"}},
}


def tier_bundle(
    root: Path, steps: dict[str, list[str]], script: str = "echo ran", site: Optional[str] = None
) -> Path:
    """A bundle of one task per step running ``script``; each step asks for one of its tiers (none:
    nothing), and for ``site`` when given."""
    root.mkdir(parents=True, exist_ok=True)
    template_steps = []
    for name, tiers in steps.items():
        step: dict = {
            "name": name,
            "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", script]}}},
        }
        wants = [{"name": TIER, "anyOf": tiers}] if tiers else []
        wants += [{"name": SITE, "anyOf": [site]}] if site else []
        if wants:
            step["hostRequirements"] = {"attributes": wants}
        template_steps.append(step)
    template = {"specificationVersion": "jobtemplate-2023-09", "name": root.name, "steps": template_steps}
    (root / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": TEST_IMAGE}))
    return root


def _tiered_config(request: pytest.FixtureRequest, partitions: dict) -> dict:
    """service.yaml for the Slurm engine with those ``slurm.partitions`` (the test skips or fails
    without Slurm, as the conformance suite does)."""
    kind = by_name("slurm")
    reason = kind.unavailable()
    if reason:
        if "slurm" in expected():
            pytest.fail(f"{EXPECT_ENGINES}={os.environ[EXPECT_ENGINES]} expects slurm, but {reason}")
        pytest.skip(reason)
    listed = subprocess.run(
        ["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True
    ).stdout.split()
    assert {"main*", "spare"} <= set(listed), (
        f"setup-slurm.sh makes partitions main and spare; sinfo has {listed}"
    )
    return {**kind.select(request).config, "slurm": {"partitions": partitions}}


@pytest.fixture
def tiered_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service on the Slurm engine whose two partitions have different tiers."""
    svc = ServiceProcess(tmp_path / "svc", None, config=_tiered_config(request, PARTITIONS)).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


def _partition_of(job_name: str) -> str:
    """The partition Slurm ran the job of that name in (it lists ended jobs for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={job_name}", "--format=%P"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_step_runs_in_the_partition_that_has_what_it_asks_for(
    tiered_service: ServiceProcess, tmp_path: Path
) -> None:
    client = tiered_service.client()
    bundle = tier_bundle(tmp_path / "tiers", {"premium": ["premium"], "standard": ["standard"], "plain": []})
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "succeeded", job
    ran = {t["step"]: t["container"] for t in client.tasks(job["id"])}
    assert {step: _partition_of(name) for step, name in ran.items()} == {
        "premium": "spare",  # only spare has it
        "standard": "main",  # the default partition has it: it stays there
        "plain": "main",  # asks for nothing: the default partition
    }


def test_a_step_no_partition_can_run_is_refused_at_submit_naming_what_each_has(
    tiered_service: ServiceProcess, tmp_path: Path
) -> None:
    client = tiered_service.client()
    bundle = tier_bundle(tmp_path / "gold", {"gold": ["gold"]})
    with pytest.raises(ServiceError) as refused:
        client.submit(str(bundle))
    assert 400 <= refused.value.status < 500, refused.value
    assert refused.value.field.endswith("steps[0].hostRequirements.attributes"), refused.value
    assert refused.value.message.startswith(
        f"{TIER} (anyOf ['gold']): no worker of this service meets it (partition main has {TIER} "
        f"['standard']; partition spare has {TIER} ['standard', 'premium']"
    ), refused.value
    result = tiered_service.cli("submit", str(bundle))
    assert result.returncode == 1 and "hostRequirements" in result.stderr and "Traceback" not in result.stderr
    # Premium is in spare and Paris in main: each holds somewhere, both nowhere.
    with pytest.raises(ServiceError) as apart:
        client.submit(str(tier_bundle(tmp_path / "apart", {"premium": ["premium"]}, site="paris")))
    assert apart.value.field.endswith("steps[0].hostRequirements"), apart.value
    assert (
        f"partition main lacks {TIER} (anyOf ['premium']) (it has {TIER} ['standard']); "
        f"partition spare lacks {SITE} (anyOf ['paris']) (it has {SITE} ['oslo'])"
    ) in apart.value.message, apart.value
    assert client.jobs() == []


def test_check_shows_what_each_partition_has_and_a_partition_slurm_lacks_stops_the_start(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    good = run_check(ServiceProcess(tmp_path / "good", None, config=_tiered_config(request, PARTITIONS)))
    assert good.returncode == 0, good.stderr
    workers = json.loads(good.stdout)["workers"]
    assert workers["kind"] == "partition" and workers["default"] == "main"
    spare = workers["groups"]["spare"]
    assert spare["attributes"][TIER] == ["standard", "premium"]
    # measured from scontrol: setup-slurm.sh gives its node this machine's cores
    assert spare["amounts"]["amount.worker.vcpu"] == os.cpu_count()
    assert workers["groups"]["main"]["attributes"]["attr.worker.os.family"] == ["linux"]
    bad = run_check(ServiceProcess(tmp_path / "bad", None, config=_tiered_config(request, {"nosuch": {}})))
    assert bad.returncode == 1
    assert "slurm.partitions.nosuch in service.yaml: this Slurm cluster has no partition nosuch" in bad.stderr
    assert "Traceback" not in bad.stderr
