"""GPU attach end to end on the real rootless engine, with a harmless CDI test vendor (no GPU needed).

The spec tests/engine/cdi/hpcdock-test.yaml is installed by scripts/setup-system.sh as
/etc/cdi/hpcdock-test.yaml: rootless Podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi.
Its devices "0" and "1" stand in for two GPUs (a /dev/null bind named /dev/hpcdock-testN plus an
environment variable), so the whole path — inventory, exclusive allocation, attach and verify
inside the engine's create, run — is exercised exactly as for NVIDIA's nvidia.com/gpu devices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hpcdock_service.engines.base import ContainerRequest, EngineError, GpuGrant
from hpcdock_service.gpu import EngineCaps, Gpu, detect_gpus
from hpcdock_service.gpu_broker import GpuBroker

from tests.helpers import TEST_IMAGE, ServiceProcess, make_bundle, wait_job

pytestmark = pytest.mark.engine

KIND = "hpcdock.test/gpu"
FAKE_GPUS = [Gpu(0, "HPCDOCK-TEST-0", "test gpu 0"), Gpu(1, "HPCDOCK-TEST-1", "test gpu 1")]


@pytest.fixture(scope="module")
def inventory():
    inv = detect_gpus(nvml=None, nvidia_smi=None)
    if not inv.cdi_names(KIND):
        pytest.fail(
            "test CDI spec not installed: scripts/setup-system.sh copies tests/engine/cdi/hpcdock-test.yaml "
            "to /etc/cdi/"
        )
    inv.gpus = list(FAKE_GPUS)
    return inv


@pytest.fixture
def placed(engine, inventory, monkeypatch: pytest.MonkeyPatch) -> GpuBroker:
    """The engine's GPU placement over the two test devices (the session's engine is put back after)."""
    caps = EngineCaps.from_engine(engine.client.version(), engine.client.info(), libpod_create=True)
    broker = GpuBroker(inventory, caps, cdi_kind=KIND)
    monkeypatch.setattr(engine, "gpus", broker)
    return broker


def _request(name: str, command: list[str], grant: GpuGrant) -> ContainerRequest:
    return ContainerRequest(
        name=name,
        image=TEST_IMAGE,
        command=command,
        env={},
        workdir="/",
        mounts=[],
        network=False,
        labels={"hpcdock.test": "gpu-cdi"},
        gpus=grant,
    )


def test_cdi_device_and_env_reach_the_container_through_the_engine_layer(engine, placed) -> None:
    placed.acquire(100, 1)  # GPU 0 busy: the task must get exactly GPU 1
    grant = placed.acquire(1, 1)
    assert grant == GpuGrant(1, (1,))
    att = placed.attachment(grant)
    assert att.mechanism == "cdi" and att.cdi_names == [KIND + "=1"]
    cid = engine.create(
        _request(
            "hpcdock-gpu-test-1",
            [
                "sh",
                "-c",
                "test -c /dev/hpcdock-test1 && ! test -e /dev/hpcdock-test0 && "
                "echo GPU=$HPCDOCK_TEST_GPU CUDA=$CUDA_VISIBLE_DEVICES",
            ],
            grant,
        )
    )  # attached and verified inside create
    try:
        engine.start(cid)
        assert engine.wait(cid, timeout=60) == 0
        assert b"".join(engine.logs(cid, follow=False)).decode().strip() == "GPU=1 CUDA=0"
    finally:
        engine.remove(cid)


def test_create_refuses_a_container_whose_gpu_the_engine_dropped(engine, placed) -> None:
    """A CDI DeviceRequest through Podman's Docker-compatible API: Podman before 5.4 accepts and drops it."""
    real = placed.caps
    assert real is not None
    if real.name != "podman" or real.cdi_compat:
        pytest.skip("only Podman before 5.4 drops CDI DeviceRequests")
    placed.caps = EngineCaps("podman", (5, 4))  # planned as if for 5.4, sent to the real 4.x
    name = "hpcdock-gpu-test-dropped"
    with pytest.raises(EngineError) as err:
        engine.create(_request(name, ["true"], placed.acquire(1, 1)))
    problem = str(err.value)
    assert "GPU not attached" in problem and "dropped the CDI request" in problem and KIND + "=0" in problem
    assert name not in [
        n.lstrip("/") for c in engine.client.api.containers(all=True) for n in c.get("Names") or []
    ]


def test_gpu_job_gets_exclusive_gpus_and_oversized_request_is_refused(
    tmp_path: Path, engine_url: str, inventory
) -> None:
    config = {
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name} for g in FAKE_GPUS],
        "gpu_cdi_kind": KIND,
        "slots": 4,
    }
    svc = ServiceProcess(tmp_path / "svc", engine_url, slots=4, config=config).start()
    try:
        client = svc.client()
        assert [g["index"] for g in client.health()["gpus"]] == [0, 1]
        step_gpu = "  hostRequirements:\n    amounts:\n    - {name: amount.worker.gpu, min: %d}\n  script:"
        command = ["sh", "-c", "ls /dev | grep hpcdock-test; echo GPU=$HPCDOCK_TEST_GPU; sleep 1"]
        bundle = make_bundle(tmp_path / "gpu", frames="1-4", chunk=1, command=command)
        template = bundle / "template.yaml"
        template.write_text(template.read_text().replace("  script:", step_gpu % 1, 1))
        (bundle / "hpcdock.yaml").write_text(f"image: {TEST_IMAGE}\n")
        job = wait_job(client, client.submit(str(bundle))["id"])
        assert job["state"] == "succeeded", job
        tasks = client.tasks(job["id"])
        for t in tasks:
            assert len(t["gpus"]) == 1
            log, _ = client.log(t["id"])
            gpu = t["gpus"][0]
            assert f"GPU={gpu}" in log and f"hpcdock-test{gpu}" in log and f"hpcdock-test{1 - gpu}" not in log
        # 4 slots but 2 GPUs: never more than two GPU tasks at once, and never the same GPU twice at once.
        spans = sorted((t["started_at"], t["finished_at"], t["gpus"][0]) for t in tasks)
        for i, (start, _, gpu) in enumerate(spans):
            overlapping = [g for s, e, g in spans[:i] if e > start]
            assert gpu not in overlapping and len(overlapping) <= 1

        template.write_text(template.read_text().replace("min: 1}", "min: 3}"))
        with pytest.raises(Exception) as refused:
            client.submit(str(bundle))
        assert "amount.worker.gpu" in str(refused.value) and "3 GPU" in str(refused.value)
    finally:
        svc.stop()
