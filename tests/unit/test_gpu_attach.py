import pytest
from hpcdock_service.gpu import (
    AttachError,
    CdiDevice,
    EngineCaps,
    Gpu,
    GpuInventory,
    plan_attachment,
    verify_attachment,
)
from hpcdock_service.gpu.attach import parse_ldconfig

GPUS = [Gpu(0, "GPU-aaa", "H200", minor=0), Gpu(1, "GPU-bbb", "H200", minor=1)]
NODES = ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
LDCONFIG = """1234 libs found in cache `/etc/ld.so.cache'
\tlibnvoptix.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvoptix.so.1
\tlibnvidia-ml.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibcuda.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6) => /lib/i386-linux-gnu/libcuda.so.1
\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6
"""


def cdi(name, node):
    return CdiDevice(
        "nvidia.com/gpu=" + name,
        "nvidia.com/gpu",
        "/etc/cdi/nvidia.yaml",
        [node, "/dev/nvidiactl"],
        ["NVIDIA_VISIBLE_DEVICES=void"],
    )


def inventory(with_cdi=True, nodes=NODES):
    devs = (
        [cdi("GPU-aaa", "/dev/nvidia0"), cdi("1", "/dev/nvidia1"), cdi("all", "/dev/nvidia0")]
        if with_cdi
        else []
    )
    return GpuInventory(gpus=list(GPUS), source="nvml", device_nodes=list(nodes), cdi_devices=devs)


def plan(caps, inv=None, gpus=GPUS[1:]):
    return plan_attachment(
        gpus, caps, inv or inventory(), ldconfig=lambda: LDCONFIG, nvidia_smi="/usr/bin/nvidia-smi"
    )


def inspect(env=(), devices=(), requests=None):
    return {
        "Config": {"Env": list(env)},
        "HostConfig": {
            "Devices": [{"PathOnHost": d, "PathInContainer": d, "CgroupPermissions": "rwm"} for d in devices],
            "DeviceRequests": requests,
        },
    }


def env_of(att):
    return ["{}={}".format(*kv) for kv in att.environment.items()]


def test_engine_caps_from_docker_sdk_answers():
    podman = EngineCaps.from_engine(
        {"Version": "4.3.1", "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}]},
        {"Runtimes": {"runc": {}, "crun": {}}},
        libpod_create=True,
    )
    assert (podman.name, podman.version, podman.cdi_compat, podman.cdi_libpod) == (
        "podman",
        (4, 3, 1),
        False,
        True,
    )
    assert EngineCaps("podman", (5, 4, 0)).cdi_compat
    docker = EngineCaps.from_engine(
        {"Version": "26.1.5", "Components": [{"Name": "Engine", "Version": "26.1.5"}]},
        {"Runtimes": {"nvidia": {}, "runc": {}}, "CDISpecDirs": []},
        libpod_create=True,
    )
    assert (docker.name, docker.nvidia_runtime, docker.cdi_compat, docker.cdi_libpod) == (
        "docker",
        True,
        False,
        False,
    )
    assert EngineCaps("docker", (28, 2)).cdi_compat and not EngineCaps("docker", (27, 0)).cdi_compat
    assert EngineCaps("docker", (25, 0), docker_cdi=True).cdi_compat


def test_environment_is_container_relative():
    att = plan(EngineCaps("podman", (5, 4)), gpus=GPUS)
    env = att.environment
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility,graphics" and env["HPCDOCK_GPUS"] == "0,1"
    single = plan(EngineCaps("podman", (5, 4)))
    assert single.environment["CUDA_VISIBLE_DEVICES"] == "0" and single.environment["HPCDOCK_GPUS"] == "1"


def test_cdi_on_podman_54_and_docker_pins_names():
    att = plan(EngineCaps("podman", (5, 4)), gpus=GPUS)
    assert (att.mechanism, att.via) == ("cdi", "compat")
    assert att.cdi_names == ["nvidia.com/gpu=GPU-aaa", "nvidia.com/gpu=1"]
    kw = att.create_kwargs()
    (req,) = kw["device_requests"]
    assert req["Driver"] == "cdi" and req["DeviceIDs"] == att.cdi_names and req["Count"] == 0
    assert "devices" not in kw
    assert plan(EngineCaps("docker", (28, 3))).via == "compat"


def test_cdi_on_old_podman_goes_through_libpod():
    att = plan(EngineCaps("podman", (4, 3, 1), libpod_create=True))
    assert (att.mechanism, att.via) == ("cdi", "libpod")
    fields = att.libpod_fields()
    assert (
        fields["devices"] == [{"path": "nvidia.com/gpu=1"}] and fields["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    )


def test_old_podman_without_libpod_falls_back_to_raw_nodes():
    att = plan(EngineCaps("podman", (4, 3, 1)))
    assert att.mechanism == "raw"
    assert att.devices == [
        "/dev/nvidia1:/dev/nvidia1:rwm",
        "/dev/nvidiactl:/dev/nvidiactl:rwm",
        "/dev/nvidia-uvm:/dev/nvidia-uvm:rwm",
        "/dev/nvidia-uvm-tools:/dev/nvidia-uvm-tools:rwm",
    ]
    assert "/dev/nvidia0:/dev/nvidia0:rwm" not in att.devices  # never another task's GPU
    assert ("/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1") in att.mounts
    assert ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi") in att.mounts
    kw = att.create_kwargs()
    assert all(m["ReadOnly"] and m["Type"] == "bind" for m in kw["mounts"])
    assert kw["environment"]["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"


def test_docker_with_nvidia_runtime_pins_uuid_never_count():
    att = plan(EngineCaps("docker", (24, 0), nvidia_runtime=True))
    assert att.mechanism == "nvidia-runtime"
    (req,) = att.create_kwargs()["device_requests"]
    assert req["DeviceIDs"] == ["GPU-bbb"] and req["Count"] == 0 and req["Capabilities"] == [["gpu"]]


def test_no_way_to_attach_says_what_to_install():
    with pytest.raises(AttachError, match="nvidia-ctk cdi generate"):
        plan(EngineCaps("podman", (4, 3, 1)), inv=inventory(with_cdi=False, nodes=[]))


def test_only_inventory_gpus():
    with pytest.raises(AttachError, match="not in this machine's inventory"):
        plan(EngineCaps("podman", (5, 4)), gpus=[Gpu(7, "GPU-zzz")])
    with pytest.raises(ValueError):
        plan(EngineCaps("podman", (5, 4)), gpus=[])


def test_apply_merges_with_the_engines_own_arguments():
    att = plan(EngineCaps("podman", (4, 3)))
    kw = att.apply({"environment": ["A=1"], "devices": [], "mounts": ["m"], "cap_drop": ["ALL"]})
    assert kw["environment"]["A"] == "1" and kw["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert kw["mounts"][0] == "m" and len(kw["mounts"]) > 1 and kw["cap_drop"] == ["ALL"]


def test_parse_ldconfig_keeps_64bit_nvidia_only():
    assert [s for s, _ in parse_ldconfig(LDCONFIG)] == [
        "libcuda.so.1",
        "libnvidia-ml.so.1",
        "libnvoptix.so.1",
    ]


# ----------------------------------------------------------------------------- verify


def test_verify_cdi_survived_on_docker_and_podman():
    att = plan(EngineCaps("docker", (28, 3)))
    req = [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=1"], "Count": 0}]
    assert verify_attachment(att, inspect(env_of(att), requests=req)) is None
    pod = plan(EngineCaps("podman", (4, 3, 1), libpod_create=True))
    after_init = inspect(
        env_of(pod) + ["NVIDIA_VISIBLE_DEVICES=void"], devices=["/dev/nvidia1", "/dev/nvidiactl"]
    )
    assert verify_attachment(pod, after_init) is None


def test_verify_catches_dropped_cdi_request_on_podman_compat():
    att = plan(EngineCaps("podman", (5, 4)))
    att.engine_version = "4.3.1"  # an engine that claimed more than it does
    msg = verify_attachment(att, inspect(env_of(att)))
    assert "Podman 4.3.1's Docker-compatible API dropped the CDI request for nvidia.com/gpu=1" in msg
    assert "5.4" in msg and "libpod" in msg


def test_verify_catches_cdi_not_applied_through_libpod():
    att = plan(EngineCaps("podman", (4, 3, 1), libpod_create=True))
    msg = verify_attachment(att, inspect(env_of(att)))
    assert "did not apply CDI device nvidia.com/gpu=1" in msg and "init" in msg


def test_verify_catches_dropped_device_request():
    att = plan(EngineCaps("docker", (24, 0), nvidia_runtime=True))
    assert (
        verify_attachment(
            att, inspect(env_of(att), requests=[{"Driver": "nvidia", "DeviceIDs": ["GPU-bbb"]}])
        )
        is None
    )
    att.engine = "podman"
    msg = verify_attachment(att, inspect(env_of(att), requests=None))
    assert (
        "dropped the GPU DeviceRequest" in msg
        and "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in msg
    )


def test_verify_raw_and_stray_devices():
    att = plan(EngineCaps("docker", (24, 0)))
    nodes = [d.split(":")[0] for d in att.devices]
    assert verify_attachment(att, inspect(env_of(att), devices=nodes)) is None
    assert "dropped the GPU device nodes /dev/nvidia1" in verify_attachment(
        att, inspect(env_of(att), devices=nodes[1:])
    )
    assert "not allocated: /dev/nvidia0" in verify_attachment(
        att, inspect(env_of(att), devices=nodes + ["/dev/nvidia0"])
    )
    assert "CUDA_VISIBLE_DEVICES=0 missing" in verify_attachment(att, inspect([], devices=nodes))
