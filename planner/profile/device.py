"""The local device the profiler measures on: the CPU, or a CUDA device with its NVML facts."""

from __future__ import annotations

import os

from planner.profile.nvml import query_nvml
from planner.profile.peaks import cpu_name
from planner.profile.schema import LocalDevice


def pick_device(requested: str | None = None) -> str:
    """`cuda` when a CUDA device is usable (or asked for), else `cpu`."""
    import torch

    from planner.errors import InputError

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {requested!r} asked for but torch sees no CUDA device; accepted here: cpu")
        if not requested.startswith(("cpu", "cuda")):
            raise InputError(f"unknown device {requested!r}; accepted: cpu, cuda, cuda:N")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_local_device(device: str = "cpu") -> LocalDevice:
    import psutil
    import torch

    nvml = query_nvml()
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        index = torch.device(device).index or 0
        match = next((d for d in nvml.devices if d.index == index), None)
        total = torch.cuda.get_device_properties(device).total_memory
        return LocalDevice(kind="cuda", name=name, memory_bytes=float(total), nvml=nvml,
                           catalog_id=match.catalog_id if match else None, label=f"cuda ({name})")
    threads = torch.get_num_threads()
    name = cpu_name()
    return LocalDevice(kind="cpu", name=name, threads=threads, cpu_count=os.cpu_count(),
                       memory_bytes=float(psutil.virtual_memory().total), nvml=nvml,
                       label=f"cpu ({name}, {threads} thread{'s' if threads != 1 else ''})")
