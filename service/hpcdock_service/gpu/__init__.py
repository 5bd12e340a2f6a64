"""NVIDIA GPUs for task containers: inventory, exclusive allocation, attachment and its check."""

from .allocator import GpuAllocator, GpuConflict
from .attach import AttachError, Attachment, EngineCaps, plan_attachment, verify_attachment
from .inventory import CdiDevice, Gpu, GpuInventory, detect_gpus, load_cdi_specs

__all__ = [
    "AttachError",
    "Attachment",
    "CdiDevice",
    "EngineCaps",
    "Gpu",
    "GpuAllocator",
    "GpuConflict",
    "GpuInventory",
    "detect_gpus",
    "load_cdi_specs",
    "plan_attachment",
    "verify_attachment",
]
