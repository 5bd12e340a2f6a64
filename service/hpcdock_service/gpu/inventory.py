"""What NVIDIA GPUs this machine has, and how a container engine can be given them.

Sources, all optional: NVML (``nvidia-ml-py``, imported lazily), else ``nvidia-smi``; the NVIDIA
device nodes under /dev; CDI specs in /etc/cdi and /var/run/cdi. A machine without a driver has
no GPUs: that is an answer, not an error. Every path and external call is injectable for tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
NVIDIA_CDI_KIND = "nvidia.com/gpu"
_GPU_NODE = re.compile(r"^nvidia(\d+)$")
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")

SMI_QUERY = ["--query-gpu=index,uuid,name,memory.total,pci.bus_id", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as the host driver numbers it."""

    index: int
    uuid: str
    name: str = ""
    memory_mib: int = 0
    minor: Optional[int] = None  # /dev/nvidiaN minor number; NVML's index need not equal it
    pci_bus_id: str = ""

    @property
    def device_node(self) -> str:
        return f"/dev/nvidia{self.index if self.minor is None else self.minor}"


@dataclass
class CdiDevice:
    """One device of a CDI spec, with the spec-wide edits folded in."""

    name: str  # fully qualified: vendor/class=name
    kind: str
    spec_path: str
    device_nodes: List[str] = field(default_factory=list)  # container paths
    env: List[str] = field(default_factory=list)  # KEY=VALUE
    mounts: List[str] = field(default_factory=list)  # container paths

    @property
    def short_name(self) -> str:
        return self.name.split("=", 1)[1]


@dataclass
class GpuInventory:
    gpus: List[Gpu] = field(default_factory=list)
    source: str = "none"  # nvml | nvidia-smi | none
    driver_version: str = ""
    device_nodes: List[str] = field(default_factory=list)
    cdi_dirs: List[str] = field(default_factory=list)
    cdi_devices: List[CdiDevice] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def cdi_names(self, kind: Optional[str] = None) -> List[str]:
        return [d.name for d in self.cdi_devices if kind is None or d.kind == kind]

    def cdi_device(self, name: str) -> Optional[CdiDevice]:
        for d in self.cdi_devices:
            if d.name == name:
                return d
        return None

    def cdi_name_for(self, gpu: Gpu, kind: str = NVIDIA_CDI_KIND) -> Optional[str]:
        """The CDI name of exactly this GPU: by UUID first (CDI and CUDA indices may disagree on a
        multi-GPU host), else by index. Never ``all``."""
        for candidate in (gpu.uuid, str(gpu.index)):
            if candidate and self.cdi_device(f"{kind}={candidate}") is not None:
                return f"{kind}={candidate}"
        return None

    def to_json(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "driver_version": self.driver_version or None,
            "gpus": [asdict(g) for g in self.gpus],
            "device_nodes": list(self.device_nodes),
            "cdi": {"dirs": list(self.cdi_dirs), "devices": [d.name for d in self.cdi_devices]},
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# NVML / nvidia-smi


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_nvml(nvml: Any) -> Tuple[List[Gpu], str]:
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                minor: Optional[int] = int(nvml.nvmlDeviceGetMinorNumber(h))
            except Exception:
                minor = None
            try:
                bus = _text(nvml.nvmlDeviceGetPciInfo(h).busId)
            except Exception:
                bus = ""
            mem = int(nvml.nvmlDeviceGetMemoryInfo(h).total) // (1024 * 1024)
            gpus.append(
                Gpu(i, _text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h)), mem, minor, bus)
            )
        return gpus, driver
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def parse_nvidia_smi(text: str) -> List[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total[,pci.bus_id] --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        mem = re.match(r"\d+", parts[3])
        gpus.append(
            Gpu(
                int(parts[0]),
                parts[1],
                parts[2],
                int(mem.group()) if mem else 0,
                None,
                parts[4] if len(parts) > 4 else "",
            )
        )
    return gpus


def _default_nvml() -> Any:
    try:
        import pynvml  # from nvidia-ml-py; optional

        return pynvml
    except Exception:
        return None


def _default_smi(path: str) -> str:
    return subprocess.run([path] + SMI_QUERY, capture_output=True, text=True, timeout=20, check=True).stdout


# ---------------------------------------------------------------------------------------------
# CDI specs


def _load_spec_file(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def _edits(obj: Any) -> Tuple[List[str], List[str], List[str]]:
    edits = (obj or {}).get("containerEdits") or {}
    nodes = [n["path"] for n in edits.get("deviceNodes") or [] if isinstance(n, dict) and n.get("path")]
    env = [str(e) for e in edits.get("env") or []]
    mounts = [
        m["containerPath"]
        for m in edits.get("mounts") or []
        if isinstance(m, dict) and m.get("containerPath")
    ]
    return nodes, env, mounts


def load_cdi_specs(dirs: Sequence[str] = DEFAULT_CDI_DIRS) -> Tuple[List[CdiDevice], List[str]]:
    """Read every ``*.yaml``/``*.yml``/``*.json`` CDI spec in ``dirs``; later dirs win on a name
    clash, as in the CDI cache. Returns (devices, notes about unreadable specs)."""
    found: Dict[str, CdiDevice] = {}
    notes: List[str] = []
    for d in dirs:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith((".yaml", ".yml", ".json")):
                continue
            path = os.path.join(d, entry)
            try:
                spec = _load_spec_file(path)
                kind = spec["kind"]
                if not isinstance(kind, str) or not _KIND.match(kind) or "cdiVersion" not in spec:
                    raise ValueError("bad cdiVersion/kind")
                common = _edits(spec)
                for dev in spec.get("devices") or []:
                    name = str(dev.get("name", ""))
                    if not _DEVICE_NAME.match(name):
                        raise ValueError(f"bad device name {name!r}")
                    nodes, env, mounts = _edits(dev)
                    found[f"{kind}={name}"] = CdiDevice(
                        f"{kind}={name}", kind, path, nodes + common[0], env + common[1], mounts + common[2]
                    )
            except Exception as e:  # a broken spec must not hide the others
                notes.append(f"CDI spec {path} ignored: {e}")
    return list(found.values()), notes


# ---------------------------------------------------------------------------------------------


def find_device_nodes(dev_dir: str = "/dev") -> List[str]:
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    gpu_nodes = sorted((n for n in names if _GPU_NODE.match(n)), key=lambda n: int(n[6:]))
    return [os.path.join(dev_dir, n) for n in gpu_nodes + [c for c in CONTROL_NODES if c in names]]


def detect_gpus(
    *,
    nvml: Any = "auto",
    nvidia_smi: Optional[str] = "auto",
    run_smi: Callable[[str], str] = _default_smi,
    dev_dir: str = "/dev",
    cdi_dirs: Sequence[str] = DEFAULT_CDI_DIRS,
) -> GpuInventory:
    """Inventory of this machine's NVIDIA GPUs. ``nvml``: a pynvml-like module, None to skip NVML,
    "auto" to import it. ``nvidia_smi``: its path, None to skip, "auto" to look on PATH."""
    inv = GpuInventory(cdi_dirs=list(cdi_dirs))
    if nvml == "auto":
        nvml = _default_nvml()
    if nvml is not None:
        try:
            inv.gpus, inv.driver_version = _from_nvml(nvml)
            inv.source = "nvml"
        except Exception as e:  # library present, driver absent: no GPUs
            inv.notes.append("NVML: %s" % (str(e) or type(e).__name__))
    if inv.source == "none":
        if nvidia_smi == "auto":
            nvidia_smi = shutil.which("nvidia-smi")
        if nvidia_smi:
            try:
                inv.gpus = parse_nvidia_smi(run_smi(nvidia_smi))
                inv.source = "nvidia-smi"
            except Exception as e:
                inv.notes.append("nvidia-smi: %s" % (str(e).strip() or type(e).__name__))
    inv.device_nodes = find_device_nodes(dev_dir)
    inv.cdi_devices, cdi_notes = load_cdi_specs(cdi_dirs)
    inv.notes.extend(cdi_notes)
    if not inv.gpus:
        inv.notes.append("no NVIDIA GPU found (no NVML driver, no working nvidia-smi)")
    elif not inv.cdi_names(NVIDIA_CDI_KIND):
        inv.notes.append(
            "no CDI spec for nvidia.com/gpu: as root run "
            "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` (nvidia-container-toolkit)"
        )
    return inv
