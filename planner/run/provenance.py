"""Where a run's figures come from: the device, the package versions, and hashes of every input."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from planner.run.results import DeviceInfo

PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "pydantic",
            "vllm", "nvidia-ml-py")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths) -> str:
    """One hash over several files (names and contents), in sorted order."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def model_hash(folder: str | Path) -> str:
    """sha256 over the checkpoint's config and weight files."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")]
    return sha256_files(files)


def device_info(device: str = "cpu") -> DeviceInfo:
    """Facts about the device figures are measured on (CPU name and threads, or CUDA + NVML)."""
    import psutil
    import torch

    from planner.profile.nvml import query_nvml
    from planner.profile.peaks import cpu_name

    common = dict(cpu_name=cpu_name(), cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                  os=f"{platform.system()} {platform.release()}", python=sys.version.split()[0])
    if device.startswith("cuda"):
        nvml = query_nvml()  # clocks, power limit and driver: facts that move latency figures
        props = torch.cuda.get_device_properties(device)
        index = torch.device(device).index or 0
        facts = next((d.model_dump() for d in nvml.devices if d.index == index), {})
        facts["status"] = nvml.status
        return DeviceInfo(kind="cuda", name=torch.cuda.get_device_name(device), memory_bytes=int(props.total_memory),
                          cuda_version=torch.version.cuda, driver_version=nvml.driver_version,
                          compute_capability=f"{props.major}.{props.minor}", nvml=facts, **common)
    return DeviceInfo(kind="cpu", name=common["cpu_name"], memory_bytes=int(psutil.virtual_memory().total),
                      nvml={"status": query_nvml().status}, **common)
