import json
import subprocess

from hpcdock_service.gpu import detect_gpus, load_cdi_specs
from hpcdock_service.gpu.inventory import parse_nvidia_smi


class FakeNvml:
    def __init__(self, n=2, fail=None):
        self.n, self.fail = n, fail
        self.shutdown = False

    def nvmlInit(self):
        if self.fail:
            raise self.fail

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:04d}"

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H200"

    def nvmlDeviceGetMinorNumber(self, h):
        return 3 - h  # deliberately not the index

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"total": 141 * 1024**3})()

    def nvmlDeviceGetPciInfo(self, h):
        return type("P", (), {"busId": b"00000000:%02X:00.0" % (h + 0x18)})()


def _nothing(tmp_path, **kw):
    return detect_gpus(
        nvml=kw.pop("nvml", None),
        nvidia_smi=kw.pop("nvidia_smi", None),
        dev_dir=str(tmp_path / "dev"),
        cdi_dirs=kw.pop("cdi_dirs", [str(tmp_path / "cdi")]),
        **kw,
    )


def test_nvml_inventory(tmp_path):
    nvml = FakeNvml()
    inv = _nothing(tmp_path, nvml=nvml)
    assert inv.source == "nvml" and inv.driver_version == "550.54.15" and nvml.shutdown
    assert [(g.index, g.uuid, g.minor, g.memory_mib) for g in inv.gpus] == [
        (0, "GPU-0000", 3, 144384),
        (1, "GPU-0001", 2, 144384),
    ]
    assert inv.gpus[0].device_node == "/dev/nvidia3"
    json.dumps(inv.to_json())


def test_no_driver_is_no_gpus_not_an_error(tmp_path):
    inv = _nothing(tmp_path, nvml=FakeNvml(fail=RuntimeError("Driver Not Loaded")))
    assert inv.gpus == [] and inv.source == "none"
    assert any("Driver Not Loaded" in n for n in inv.notes)
    assert inv.to_json()["gpus"] == []


def test_nvidia_smi_fallback(tmp_path):
    out = "0, GPU-aaa, NVIDIA H200, 143771, 00000000:18:00.0\n1, GPU-bbb, NVIDIA H200, 143771, 00000000:2A:00.0\n"
    inv = _nothing(
        tmp_path,
        nvml=FakeNvml(fail=OSError("no lib")),
        nvidia_smi="/usr/bin/nvidia-smi",
        run_smi=lambda path: out,
    )
    assert inv.source == "nvidia-smi"
    assert [(g.index, g.uuid, g.memory_mib, g.pci_bus_id) for g in inv.gpus] == [
        (0, "GPU-aaa", 143771, "00000000:18:00.0"),
        (1, "GPU-bbb", 143771, "00000000:2A:00.0"),
    ]
    assert parse_nvidia_smi("0, GPU-x, Tesla T4, 15360 MiB")[0].memory_mib == 15360


def test_nvidia_smi_failing(tmp_path):
    def boom(path):
        raise subprocess.CalledProcessError(9, path, "", "NVIDIA-SMI has failed")

    inv = _nothing(tmp_path, nvidia_smi="/usr/bin/nvidia-smi", run_smi=boom)
    assert inv.gpus == [] and any(n.startswith("nvidia-smi") for n in inv.notes)


def test_device_nodes(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for n in ("nvidia10", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps", "null", "nvidia-modeset"):
        (dev / n).touch()
    inv = _nothing(tmp_path)
    assert inv.device_nodes == [
        str(dev / n) for n in ("nvidia2", "nvidia10", "nvidiactl", "nvidia-uvm", "nvidia-modeset")
    ]


NVIDIA_SPEC = """
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}]
- name: GPU-0000
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}]
- name: all
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}, {path: /dev/nvidia1}]
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
  deviceNodes: [{path: /dev/nvidiactl}]
  mounts: [{hostPath: /usr/bin/nvidia-smi, containerPath: /usr/bin/nvidia-smi, options: [ro, bind]}]
"""


def test_cdi_specs_yaml_json_and_broken(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (etc / "nvidia.yaml").write_text(NVIDIA_SPEC)
    (run / "vendor.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.6.0",
                "kind": "example.com/fpga",
                "devices": [{"name": "a", "containerEdits": {"env": ["FPGA=a"]}}],
            }
        )
    )
    (run / "broken.yaml").write_text("kind: [")
    (run / "nokind.yaml").write_text("cdiVersion: 0.5.0\ndevices: []\n")
    (run / "README").write_text("not a spec")
    devices, notes = load_cdi_specs([str(etc), str(run), str(tmp_path / "absent")])
    names = sorted(d.name for d in devices)
    assert names == [
        "example.com/fpga=a",
        "nvidia.com/gpu=0",
        "nvidia.com/gpu=GPU-0000",
        "nvidia.com/gpu=all",
    ]
    assert len(notes) == 2 and all("ignored" in n for n in notes)
    dev0 = next(d for d in devices if d.name == "nvidia.com/gpu=0")
    assert dev0.device_nodes == ["/dev/nvidia0", "/dev/nvidiactl"]
    assert dev0.env == ["NVIDIA_VISIBLE_DEVICES=void"] and dev0.mounts == ["/usr/bin/nvidia-smi"]


def test_cdi_name_for_prefers_uuid_never_all(tmp_path):
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "nvidia.yaml").write_text(NVIDIA_SPEC)
    inv = _nothing(tmp_path, nvml=FakeNvml())
    assert inv.cdi_name_for(inv.gpus[0]) == "nvidia.com/gpu=GPU-0000"
    assert inv.cdi_name_for(inv.gpus[1]) is None  # only "all" would cover it
    assert inv.to_json()["cdi"]["devices"] == [
        "nvidia.com/gpu=0",
        "nvidia.com/gpu=GPU-0000",
        "nvidia.com/gpu=all",
    ]


def test_hint_when_gpus_but_no_cdi(tmp_path):
    inv = _nothing(tmp_path, nvml=FakeNvml())
    assert any("nvidia-ctk cdi generate" in n for n in inv.notes)
