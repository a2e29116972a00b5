"""NVIDIA device facts through NVML (the `nvidia-ml-py` package, imported as `pynvml` only when asked).

No NVIDIA device, no driver or no NVML library is a normal case: `query_nvml()` then returns a report that says
why, and nothing fails.
"""

from __future__ import annotations

import re

from planner.profile._doc import Doc


class NvmlDevice(Doc):
    index: int
    name: str
    compute_capability: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    memory_clock_mhz: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    catalog_id: str | None = None  # the GPU catalog entry this device is


class NvmlReport(Doc):
    available: bool
    status: str
    driver_version: str | None = None
    devices: list[NvmlDevice] = []


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(fn, *args):
    """One NVML query; fields a device does not support (power on some boards) stay None."""
    try:
        return fn(*args)
    except Exception:
        return None


def _device(pynvml, index: int) -> NvmlDevice:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(pynvml.nvmlDeviceGetName(handle))
    memory = _try(pynvml.nvmlDeviceGetMemoryInfo, handle)
    cc = _try(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    power = _try(pynvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
    limit = _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    total = int(memory.total) if memory is not None else None
    return NvmlDevice(
        index=index,
        name=name,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        memory_total_bytes=total,
        memory_used_bytes=int(memory.used) if memory is not None else None,
        sm_clock_mhz=_try(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
        sm_clock_max_mhz=_try(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM),
        memory_clock_mhz=_try(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM),
        power_w=power / 1000 if power is not None else None,
        power_limit_w=limit / 1000 if limit is not None else None,
        catalog_id=match_catalog(name, total),
    )


def query_nvml() -> NvmlReport:
    """Every NVIDIA device NVML sees, or a report saying why there is none."""
    try:
        import pynvml
    except Exception as exc:  # ImportError, or a broken install
        return NvmlReport(available=False, status=f"no NVML: the nvidia-ml-py package cannot be imported ({exc})")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without NVIDIA GPUs
        return NvmlReport(available=False, status=f"no NVIDIA device: NVML did not start ({type(exc).__name__}: {exc})")
    try:
        driver = _try(pynvml.nvmlSystemGetDriverVersion)
        count = int(pynvml.nvmlDeviceGetCount())
        devices = [_device(pynvml, i) for i in range(count)]
    except Exception as exc:
        return NvmlReport(available=False, status=f"NVML query failed ({type(exc).__name__}: {exc})")
    finally:
        _try(pynvml.nvmlShutdown)
    if not devices:
        return NvmlReport(available=False, status="NVML started but reports no NVIDIA device",
                          driver_version=_text(driver) if driver else None)
    return NvmlReport(available=True, status=f"NVML: {count} NVIDIA device(s)",
                      driver_version=_text(driver) if driver else None, devices=devices)


def _tokens(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def match_catalog(device_name: str, memory_total_bytes: int | None = None, specs=None) -> str | None:
    """The catalog id of an NVML device name ('NVIDIA A100-SXM4-80GB' -> 'a100-80gb-sxm'), or None.

    A catalog entry is a candidate when its family (a100, h100, l4, ...) is a word of the device name; among
    variants the memory size closest to the device's and then the form factor (PCIe or SXM) decide.
    """
    from planner.gpus import catalog

    specs = catalog() if specs is None else specs
    words = _tokens(device_name)
    pcie = "pcie" in words
    candidates = []
    for spec in specs.values():
        if spec.measured_local or spec.vendor != "nvidia":
            continue
        if not _tokens(spec.family or spec.id) <= words:
            continue
        form = 0 if ("pcie" in spec.id) == pcie else 1
        gap = abs(spec.memory_gb * 1e9 - memory_total_bytes) if memory_total_bytes and spec.memory_gb else 0.0
        # memory first (an 80 GB board reports ~85.9e9 bytes, a 40 GB one ~42.9e9), then PCIe vs SXM
        candidates.append((round(gap / 16e9), form, gap, spec.id))
    return min(candidates)[-1] if candidates else None
