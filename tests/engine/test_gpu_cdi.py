"""CDI attach end to end on the real rootless engine, with a harmless test vendor (no GPU needed).

Needs the spec tests/engine/cdi/hpcdock-test.yaml installed by root as /etc/cdi/hpcdock-test.yaml:
rootless Podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi.
"""

import os

import pytest
from hpcdock_service.gpu import EngineCaps, Gpu, GpuAllocator, detect_gpus, plan_attachment, verify_attachment
from hpcdock_service.gpu.attach import create_attached

pytestmark = pytest.mark.engine

KIND = "hpcdock.test/gpu"
FAKE_GPUS = [Gpu(0, "HPCDOCK-TEST-0", "test gpu 0"), Gpu(1, "HPCDOCK-TEST-1", "test gpu 1")]


@pytest.fixture(scope="module")
def engine():
    if not os.environ.get("DOCKER_HOST") or not os.environ.get("HPCDOCK_TEST_IMAGE"):
        pytest.skip("DOCKER_HOST and HPCDOCK_TEST_IMAGE not set (no rootless engine for this run)")
    docker = pytest.importorskip("docker")
    client = docker.from_env()
    yield client, os.environ["HPCDOCK_TEST_IMAGE"]
    client.close()


@pytest.fixture(scope="module")
def inventory():
    inv = detect_gpus(nvml=None, nvidia_smi=None)
    if not inv.cdi_names(KIND):
        pytest.skip(
            "test CDI spec not installed: as root copy tests/engine/cdi/hpcdock-test.yaml to /etc/cdi/"
        )
    inv.gpus = list(FAKE_GPUS)  # the spec's devices stand in for GPUs 0 and 1
    return inv


def test_cdi_device_and_env_reach_the_container(engine, inventory):
    client, image = engine
    caps = EngineCaps.from_engine(client.version(), client.info(), libpod_create=True)
    alloc = GpuAllocator(inventory.gpus)
    alloc.try_acquire("other", 1)  # GPU 0 busy: the task must get exactly GPU 1
    gpus = alloc.try_acquire("t1", 1)
    assert [g.index for g in gpus] == [1]
    att = plan_attachment(gpus, caps, inventory, cdi_kind=KIND)
    assert att.mechanism == "cdi" and att.cdi_names == [KIND + "=1"]
    cid = create_attached(
        client,
        att,
        image,
        [
            "sh",
            "-c",
            "test -c /dev/hpcdock-test1 && ! test -e /dev/hpcdock-test0 && "
            "echo GPU=$HPCDOCK_TEST_GPU CUDA=$CUDA_VISIBLE_DEVICES",
        ],
        labels={"hpcdock.test": "gpu-cdi"},
    )
    ct = client.containers.get(cid)
    try:
        assert verify_attachment(att, ct.attrs) is None
        ct.start()
        assert ct.wait(timeout=60)["StatusCode"] == 0, ct.logs().decode()
        assert ct.logs().decode().strip() == "GPU=1 CUDA=0"
    finally:
        ct.remove(force=True)


def test_verify_catches_a_request_the_engine_dropped(engine, inventory):
    """A plain DeviceRequest through the Docker-compatible API: Podman accepts and drops it."""
    client, image = engine
    caps = EngineCaps.from_engine(client.version(), client.info())
    if caps.name != "podman" or caps.cdi_compat:
        pytest.skip("only Podman before 5.4 drops CDI DeviceRequests")
    gpus = [inventory.gpus[0]]
    att = plan_attachment(gpus, EngineCaps("podman", (5, 4)), inventory, cdi_kind=KIND)  # pretend 5.4
    att.engine_version = caps.version_text
    cid = create_attached(client, att, image, ["true"])
    try:
        problem = verify_attachment(att, client.containers.get(cid).attrs)
        assert problem and "dropped the CDI request" in problem and KIND + "=0" in problem
    finally:
        client.containers.get(cid).remove(force=True)
