"""How to hand allocated GPUs to a container, and whether the engine really did.

Order of preference: CDI (``nvidia.com/gpu=<uuid|index>``) -> Docker ``DeviceRequest`` pinned by UUID
with the NVIDIA runtime -> raw device nodes plus read-only driver libraries. Only the GPUs the
allocator handed out (and the NVIDIA control nodes) ever reach a container.

Measured on Podman 4.3.1 (Debian 12), rootless, Docker-compatible API:
- ``HostConfig.Devices`` with a CDI name: create fails ("stat nvidia.com/gpu=0: no such file").
- ``HostConfig.DeviceRequests`` (driver "cdi" or "nvidia"): accepted and silently dropped.
- libpod API ``devices: [{"path": "<cdi name>"}]``: works; the edits show in inspect
  (``HostConfig.Devices``, ``Config.Env``) only once the container is initialised (``init``/start).
- raw ``HostConfig.Devices`` paths work but never show in inspect (rootless binds them).
Podman honours CDI DeviceRequests through the compatible API from 5.4 (containers/podman#25171);
Docker from 25 (experimental, ``"features": {"cdi": true}``), on by default from 28.2.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .inventory import NVIDIA_CDI_KIND, Gpu, GpuInventory

DRIVER_CAPABILITIES = "compute,utility,graphics"
LIB_DIR = "/usr/local/nvidia/lib64"
_LIB_NAMES = re.compile(
    r"^(libcuda\.so|libnvidia-[\w.-]+\.so|libnvoptix\.so|libnvcuvid\.so|libEGL_nvidia\.so"
    r"|libGLX_nvidia\.so|libGLESv[12]\w*_nvidia\.so)"
)
_NODE_OK = re.compile(r"^/dev/nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")


class AttachError(RuntimeError):
    """No way to give these GPUs to a container on this engine; the message says what to install."""


def _vtuple(text: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:3]) or (0,)


@dataclass
class EngineCaps:
    name: str  # "podman" | "docker"
    version: Tuple[int, ...] = (0,)
    nvidia_runtime: bool = False  # docker info Runtimes has "nvidia"
    docker_cdi: Optional[bool] = None  # docker info CDISpecDirs non-empty (None: not reported)
    libpod_create: bool = False  # the engine layer can create containers through Podman's libpod API

    @classmethod
    def from_engine(
        cls, version: Dict[str, Any], info: Dict[str, Any], libpod_create: bool = False
    ) -> EngineCaps:
        """From the docker SDK's ``client.version()`` and ``client.info()``."""
        name, ver = "docker", version.get("Version", "0")
        for comp in version.get("Components") or []:
            if "podman" in str(comp.get("Name", "")).lower():
                name, ver = "podman", comp.get("Version", ver)
        dirs = info.get("CDISpecDirs")
        return cls(
            name,
            _vtuple(ver),
            "nvidia" in (info.get("Runtimes") or {}),
            None if dirs is None else bool(dirs),
            libpod_create and name == "podman",
        )

    @property
    def version_text(self) -> str:
        return ".".join(str(x) for x in self.version)

    @property
    def cdi_compat(self) -> bool:
        """CDI names survive the Docker-compatible API as DeviceRequests(driver="cdi")."""
        if self.name == "podman":
            return self.version >= (5, 4)
        if self.docker_cdi is not None:
            return self.docker_cdi and self.version >= (25,)
        return self.version >= (28, 2)

    @property
    def cdi_libpod(self) -> bool:
        return self.name == "podman" and self.libpod_create and self.version >= (4, 1)


@dataclass
class Attachment:
    mechanism: str  # "cdi" | "nvidia-runtime" | "raw"
    via: str  # "compat" (docker SDK containers.create) | "libpod" (Podman's libpod create)
    engine: str
    engine_version: str
    gpus: List[Gpu]
    cdi_names: List[str] = field(default_factory=list)
    device_requests: List[Dict[str, Any]] = field(default_factory=list)
    devices: List[str] = field(default_factory=list)  # "host:container:rwm"
    mounts: List[Tuple[str, str]] = field(default_factory=list)  # read-only binds (source, target)
    environment: Dict[str, str] = field(default_factory=dict)
    expect_devices: List[str] = field(default_factory=list)  # container paths inspect must show
    expect_env: List[str] = field(default_factory=list)  # KEY=VALUE inspect must show
    notes: List[str] = field(default_factory=list)

    @property
    def indices(self) -> List[int]:
        return [g.index for g in self.gpus]

    def create_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for the docker SDK's ``containers.create`` (via == "compat")."""
        import docker.types

        kw: Dict[str, Any] = {"environment": dict(self.environment)}
        if self.device_requests:
            kw["device_requests"] = [
                docker.types.DeviceRequest(
                    driver=r["driver"],
                    device_ids=list(r["device_ids"]),
                    capabilities=[list(c) for c in r.get("capabilities", [])],
                )
                for r in self.device_requests
            ]
        if self.devices:
            kw["devices"] = list(self.devices)
        if self.mounts:
            kw["mounts"] = [docker.types.Mount(t, s, type="bind", read_only=True) for s, t in self.mounts]
        return kw

    def apply(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """``kwargs`` (the engine's own create arguments) with this attachment merged in."""
        out = dict(kwargs)
        for key, value in self.create_kwargs().items():
            if key == "environment":
                env = out.get("environment") or {}
                if isinstance(env, (list, tuple)):
                    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
                out[key] = {**env, **value}
            else:
                out[key] = list(out.get(key) or []) + value
        return out

    def libpod_fields(self) -> Dict[str, Any]:
        """Fields for Podman's libpod ``POST /v4.0.0/libpod/containers/create`` body (via == "libpod");
        merge ``env`` into the body's env and extend its ``devices``/``mounts``."""
        devices = [{"path": n} for n in self.cdi_names] + [
            {"path": d.rsplit(":", 1)[0]} for d in self.devices
        ]
        return {
            "devices": devices,
            "env": dict(self.environment),
            "mounts": [
                {"destination": t, "source": s, "type": "bind", "options": ["rbind", "ro"]}
                for s, t in self.mounts
            ],
        }

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["gpus"] = self.indices
        return d


def _env(gpus: Sequence[Gpu]) -> Dict[str, str]:
    return {
        "NVIDIA_VISIBLE_DEVICES": ",".join(g.uuid or str(g.index) for g in gpus),
        # only the allocated GPUs are visible inside, so CUDA numbers them 0..n-1
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpus))),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "NVIDIA_DRIVER_CAPABILITIES": DRIVER_CAPABILITIES,
        "HPCDOCK_GPUS": ",".join(str(g.index) for g in gpus),
    }


def parse_ldconfig(text: str) -> List[Tuple[str, str]]:
    """(soname, host path) of the NVIDIA driver's 64-bit user-space libraries in ``ldconfig -p``."""
    libs: Dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
        if m and "," in m.group(2) and _LIB_NAMES.match(m.group(1)):
            libs.setdefault(m.group(1), m.group(3))
    return sorted(libs.items())


def _ldconfig() -> str:
    exe = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        return subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        return ""


def plan_attachment(
    gpus: Sequence[Gpu],
    caps: EngineCaps,
    inventory: GpuInventory,
    *,
    cdi_kind: str = NVIDIA_CDI_KIND,
    ldconfig: Callable[[], str] = _ldconfig,
    nvidia_smi: Optional[str] = "auto",
) -> Attachment:
    """Choose how to attach ``gpus`` (from the allocator) on this engine. Raises AttachError."""
    gpus = list(gpus)
    if not gpus:
        raise ValueError("plan_attachment needs at least one GPU")
    known = {(g.index, g.uuid) for g in inventory.gpus}
    for g in gpus:
        if (g.index, g.uuid) not in known:
            raise AttachError(f"GPU {g.index} ({g.uuid}) is not in this machine's inventory")
    base: Dict[str, Any] = dict(
        engine=caps.name, engine_version=caps.version_text, gpus=gpus, environment=_env(gpus)
    )
    tried: List[str] = []

    # 1. CDI
    names = [inventory.cdi_name_for(g, cdi_kind) for g in gpus]
    if all(names):
        cdi = [inventory.cdi_device(n) for n in names]  # type: ignore[arg-type]
        expect_dev = sorted({p for d in cdi if d for p in d.device_nodes})
        expect_env = sorted({e for d in cdi if d for e in d.env})
        if caps.cdi_compat:
            return Attachment(
                "cdi",
                "compat",
                cdi_names=list(names),  # type: ignore[arg-type]
                device_requests=[{"driver": "cdi", "device_ids": list(names)}],
                expect_devices=expect_dev,
                expect_env=expect_env,
                **base,
            )
        if caps.cdi_libpod:
            return Attachment(
                "cdi",
                "libpod",
                cdi_names=list(names),  # type: ignore[arg-type]
                expect_devices=expect_dev,
                expect_env=expect_env,
                **base,
            )
        tried.append(
            "CDI specs exist, but {} {} cannot take CDI names through its Docker-compatible API{}".format(
                caps.name,
                caps.version_text,
                " (Podman 5.4+ can; older Podman only through the libpod API)"
                if caps.name == "podman"
                else " (Docker 25+ with CDI enabled can)",
            )
        )
    else:
        tried.append(
            "no CDI spec names {}".format(
                ", ".join(f"{cdi_kind}={g.uuid}" for g, n in zip(gpus, names) if not n)
            )
        )

    # 2. Docker DeviceRequest with the NVIDIA runtime, pinned by UUID (never count=N)
    if caps.name == "docker" and caps.nvidia_runtime:
        ids = [g.uuid or str(g.index) for g in gpus]
        return Attachment(
            "nvidia-runtime",
            "compat",
            device_requests=[{"driver": "nvidia", "device_ids": ids, "capabilities": [["gpu"]]}],
            **base,
        )
    tried.append(
        "no NVIDIA runtime registered with Docker"
        if caps.name == "docker"
        else "Podman's Docker-compatible API drops DeviceRequests"
    )

    # 3. raw device nodes + driver libraries, read-only
    present = set(inventory.device_nodes)
    nodes = [g.device_node for g in gpus]
    missing = [n for n in nodes + ["/dev/nvidiactl"] if n not in present]
    if not missing:
        nodes += [
            n
            for n in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
            if n in present
        ]
        assert all(_NODE_OK.match(n) for n in nodes)
        mounts = [(path, f"{LIB_DIR}/{soname}") for soname, path in parse_ldconfig(ldconfig())]
        smi = shutil.which("nvidia-smi") if nvidia_smi == "auto" else nvidia_smi
        if smi:
            mounts.append((smi, "/usr/bin/nvidia-smi"))
        att = Attachment(
            "raw",
            "compat",
            devices=[f"{n}:{n}:rwm" for n in nodes],
            mounts=mounts,
            expect_devices=[] if caps.name == "podman" else list(nodes),
            **base,
        )
        att.environment["LD_LIBRARY_PATH"] = LIB_DIR
        if not any(s.startswith("libcuda.so") for s, _ in parse_ldconfig(ldconfig())):
            att.notes.append(
                "libcuda.so not found by ldconfig -p: the container must bring a matching driver"
            )
        if caps.name == "podman":
            att.notes.append(
                "rootless Podman does not show raw devices in inspect; only the environment is verified"
            )
        return att
    tried.append("device nodes missing: {}".format(", ".join(missing)))
    raise AttachError(
        "cannot attach GPU {} on {} {}: {}. Fix: install nvidia-container-toolkit and run, as root, "
        "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`{}.".format(
            ",".join(str(g.index) for g in gpus),
            caps.name,
            caps.version_text,
            "; ".join(tried),
            ", and create GPU containers through Podman's libpod API or use Podman 5.4+"
            if caps.name == "podman"
            else ", and enable CDI or register the nvidia runtime",
        )
    )


def verify_attachment(att: Attachment, inspect: Dict[str, Any]) -> Optional[str]:
    """None if the container (inspect JSON, taken once the engine created it: Podman shows CDI devices
    only once a container is initialised, which LocalEngine.create does) got its GPUs, else why not."""
    hc = inspect.get("HostConfig") or {}
    env = set((inspect.get("Config") or {}).get("Env") or [])
    devs: set[str] = set()
    for d in hc.get("Devices") or []:
        devs.update(p for p in (d.get("PathInContainer"), d.get("PathOnHost")) if p)
    req_ids = {str(i) for r in hc.get("DeviceRequests") or [] for i in (r.get("DeviceIDs") or [])}
    who = f"{att.engine.capitalize()} {att.engine_version}"
    want = ", ".join(att.cdi_names) or ", ".join(f"GPU {i}" for i in att.indices)

    allowed = {g.device_node for g in att.gpus}
    stray = sorted(p for p in devs if re.match(r"^/dev/nvidia\d+$", p) and p not in allowed)
    if stray:
        return "container got GPU devices it was not allocated: {} (allocated: {})".format(
            ", ".join(stray), ", ".join(sorted(allowed))
        )
    cuda = "CUDA_VISIBLE_DEVICES={}".format(att.environment.get("CUDA_VISIBLE_DEVICES", ""))
    if cuda not in env:
        return f"{who} dropped the GPU environment ({cuda} missing from the container's Config.Env)"

    if att.mechanism == "cdi":
        if set(att.cdi_names) <= req_ids:
            return None
        shown_dev = bool(att.expect_devices) and set(att.expect_devices) <= devs
        shown_env = set(att.expect_env) <= env
        if (shown_dev or not att.expect_devices) and shown_env and (att.expect_devices or att.expect_env):
            return None
        seen = "no DeviceRequests and none of %s" % (
            ", ".join(att.expect_devices + att.expect_env) or "its edits"
        )
        if att.engine == "podman" and att.via == "compat":
            return (
                f"{who}'s Docker-compatible API dropped the CDI request for {want} (inspect shows {seen}). Podman honours "
                "CDI there only from 5.4: upgrade, or create GPU containers through the libpod API."
            )
        if att.engine == "podman":
            return (
                f"{who} did not apply CDI device {want} (inspect after init shows {seen}). Inspect only after "
                "`init`/start; check the spec in /etc/cdi is readable and valid: "
                f"`podman run --rm --device {att.cdi_names[0]} IMAGE true`."
            )
        return (
            f"{who} dropped the CDI device request for {want} (inspect shows {seen}). Enable CDI (Docker 25-28.1: "
            '`"features": {"cdi": true}` in daemon.json; on by default from 28.2).'
        )

    if att.mechanism == "nvidia-runtime":
        ids = {str(i) for r in att.device_requests for i in r["device_ids"]}
        if ids <= req_ids:
            return None
        return (
            f"{who} dropped the GPU DeviceRequest for {want} (inspect shows no DeviceRequests; Podman's "
            "Docker-compatible API ignores them). Install nvidia-container-toolkit and run, as root, "
            "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` so hpcdock attaches by CDI."
        )

    missing = [p for p in att.expect_devices if p not in devs]
    if missing:
        return (
            "{} dropped the GPU device nodes {} (not in HostConfig.Devices). Generate a CDI spec with "
            "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` instead.".format(who, ", ".join(missing))
        )
    return None
