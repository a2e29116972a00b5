"""How many channels to keep: a uniform count per layer, rounded to a multiple the target's GEMMs like.

Why a multiple at all: a GEMM whose inner or outer dimension is not a multiple of the hardware tile wastes the
remainder of the last tile (tile quantization) and may miss the fast, aligned load path. NVIDIA's "Matrix
Multiplication Background User's Guide" (docs.nvidia.com/deeplearning/performance/dl-performance-matrix-
multiplication) asks for dimensions that are multiples of 16 bytes for tensor cores (8 fp16 elements), and notes
that on A100 and later they run best at multiples of 128 bytes (64 fp16 elements). So:

| target                              | alignment | fp32/tf32 | bf16/fp16 | fp8/int8 |
| ----------------------------------- | --------- | --------- | --------- | -------- |
| NVIDIA, compute capability >= 8.0   | 128 bytes | 32        | 64        | 128      |
| NVIDIA before Ampere (V100, T4)     | 16 bytes  | 4         | 8         | 16       |
| other GPUs (AMD matrix cores)       | 128 bytes | 32        | 64        | 128      |
| local CPU (no GPU given)            | 64 bytes  | 16        | 32        | 64       |

On a CPU the unit that matters is a 64-byte cache line, which is also one AVX-512 register. A coarser multiple
never makes a shape slower, but it moves the achieved ratio away from the requested one; the engines report the
ratio they achieved.
"""

from __future__ import annotations

import math

from planner.errors import InputError

ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def default_round_to(gpu=None, dtype: str = "fp32") -> int:
    """Channel multiple for pruned MLP widths on `gpu` (a GpuSpec, a catalog name, or None for the local CPU)
    serving in `dtype` (fp32, tf32, bf16, fp16, fp8, int8)."""
    if dtype not in ELEMENT_BYTES:
        raise InputError(f"unknown dtype {dtype!r} for round_to; accepted: {', '.join(ELEMENT_BYTES)}")
    if isinstance(gpu, str):
        from planner.gpus import get_gpu

        gpu = get_gpu(gpu)
    if gpu is None or gpu.vendor == "host":
        alignment = 64
    elif gpu.vendor == "nvidia" and gpu.compute_capability and float(gpu.compute_capability) < 8.0:
        alignment = 16
    else:
        alignment = 128
    return max(1, alignment // ELEMENT_BYTES[dtype])


def kept_count(total: int, ratio: float, round_to: int, what: str) -> int:
    """How many of `total` features to keep when removing `ratio` of them: the nearest multiple of `round_to`.
    Ratio 0 keeps everything. A request that would keep none, or (ratio > 0) all, is an InputError."""
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"{what} ratio {ratio!r} is out of range; accepted: 0 <= ratio < 1")
    if round_to < 1:
        raise InputError(f"round_to {round_to!r} is invalid; accepted: an integer >= 1")
    if ratio == 0.0:
        return total
    kept = min(total, int(math.floor(total * (1.0 - ratio) / round_to + 0.5)) * round_to)
    if kept <= 0:
        raise InputError(
            f"{what}: removing {ratio:.0%} of {total} with round_to={round_to} leaves 0; "
            f"use a smaller ratio or a round_to <= {max(1, int(total * (1 - ratio)))}"
        )
    if kept >= total:
        raise InputError(
            f"{what}: removing {ratio:.0%} of {total} rounded to a multiple of round_to={round_to} removes "
            f"nothing (one step of {round_to} is {round_to / total:.1%}); use a larger ratio or a smaller round_to"
        )
    return kept
