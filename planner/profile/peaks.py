"""Peak throughput of the local device, measured by two micro-benchmarks and cached per host.

- math: the best FLOP/s of a square matmul at the dtype (the fastest kernel the device has for GEMMs);
- memory: the best bytes/s of a large tensor copy (read + write), far larger than any cache.

These set the measured phase times against a local roofline (efficiency) and stand in for datasheet figures when
the target is the local CPU. Best-of-N rather than median: a peak is what the hardware can do, and on a shared
host the slow repeats measure the neighbours.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time

from planner.errors import InputError
from planner.paths import cache_dir

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CACHE_VERSION = 1


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: str, min_repeats: int, budget_s: float) -> float:
    fn()  # warm-up: first-call allocation and kernel selection
    _sync(device)
    best, start, n = float("inf"), time.perf_counter(), 0
    while n < min_repeats or (time.perf_counter() - start < budget_s and n < 50):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def measure_gemm_flops(dtype: str = "fp32", device: str = "cpu", n: int | None = None) -> tuple[float, int]:
    """(best FLOP/s of an n x n x n matmul, n)."""
    import torch

    n = n or (8192 if device.startswith("cuda") else 1024)
    tdtype = getattr(torch, TORCH_DTYPES[dtype])
    a = torch.randn(n, n, device=device).to(tdtype)
    b = torch.randn(n, n, device=device).to(tdtype)
    out = torch.empty(n, n, device=device, dtype=tdtype)
    seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), device, min_repeats=3, budget_s=1.0)
    return 2.0 * n**3 / seconds, n


def measure_copy_bandwidth(device: str = "cpu", nbytes: int | None = None) -> tuple[float, int]:
    """(best bytes/s of copying an `nbytes` buffer into another: nbytes read + nbytes written, nbytes)."""
    import torch

    nbytes = nbytes or (1 << 30 if device.startswith("cuda") else 128 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, min_repeats=3, budget_s=0.3)
    return 2.0 * src.numel() * 4 / seconds, int(src.numel() * 4)


def cpu_name() -> str:
    """The CPU model as the OS reports it ('AMD EPYC 7R13 Processor'), or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return cpu_name()


def _cache_file(dtype: str, device: str, threads: int):
    import torch

    key = json.dumps([CACHE_VERSION, platform.node(), device_name(device), device, dtype, threads, torch.__version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "peaks" / f"{platform.node() or 'host'}-{digest}.json"


def _host_busy() -> tuple[bool, float]:
    """(more runnable processes than CPUs, 1-minute load average)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return load > (os.cpu_count() or 1), load


def measure_local_peaks(dtype: str = "fp32", cache: bool = True, device: str = "cpu") -> dict:
    """{"flops": FLOP/s, "bandwidth": bytes/s, ...how it was measured}, cached per host, device, dtype, threads.

    Figures measured while the CPU host was busy (load above its CPU count) are reused only while it still is:
    once the host is quiet they are measured again, so a crowded moment does not stick.
    """
    import torch

    if dtype not in TORCH_DTYPES:
        raise InputError(f"cannot measure local peaks at dtype {dtype!r}; accepted: {', '.join(TORCH_DTYPES)}")
    threads = torch.get_num_threads()
    path = _cache_file(dtype, device, threads)
    busy, load = _host_busy() if device == "cpu" else (False, 0.0)
    if cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            stale = data.get("host_busy", False) and not busy
            if data.get("flops", 0) > 0 and data.get("bandwidth", 0) > 0 and not stale:
                return data | {"cached": True}
        except (OSError, ValueError):
            pass  # a corrupt cache entry is measured again
    flops, n = measure_gemm_flops(dtype, device)
    bandwidth, nbytes = measure_copy_bandwidth(device)
    data = {
        "flops": flops, "bandwidth": bandwidth, "dtype": dtype, "device": device, "device_name": device_name(device),
        "threads": threads, "gemm_n": n, "copy_bytes": nbytes, "host": platform.node(),
        "torch": torch.__version__, "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "host_busy": busy, "load_average": load,
        "method": f"best of repeats: {n}x{n}x{n} matmul at {dtype}; copy of {nbytes >> 20} MiB (read + write)",
    }
    if cache:
        from planner.documents import write_atomic

        write_atomic(path, json.dumps(data, indent=2), what="peak figures cache")
    return data | {"cached": False}
