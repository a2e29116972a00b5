"""What the zeros of a masked model buy at run time, and the one path where they are turned into speed.

Zeros stored in a dense tensor are multiplied like any other number by dense GEMM kernels: no speedup and no
memory saving, whatever the sparsity. The exception is 2:4 on GPUs with sparse tensor cores (NVIDIA Ampere and
later): `torch.sparse.to_sparse_semi_structured` compresses such a weight to half its values plus metadata, and
matmuls use cuSPARSELt/CUTLASS sparse kernels (fp16/bf16/int8), up to 2x on the GEMM itself. The benchmark uses
`to_semi_structured(model)` for that; everything else runs dense, and `runtime_note` says so.
"""

from __future__ import annotations

from typing import Any

from planner.errors import InputError

DENSE_NOTE = "no speedup expected: dense kernels multiply the zeros"
SEMI_STRUCTURED_DTYPES = ("float16", "bfloat16")


def semi_structured_support(device: Any = "cpu") -> tuple[bool, str]:
    """(True, how) if `device` can run 2:4 weights on sparse tensor cores through torch, else (False, why not)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return False, f"{dev.type} has no sparse tensor cores; {DENSE_NOTE}"
    if not torch.cuda.is_available():
        return False, f"CUDA is not available here; {DENSE_NOTE}"
    major, minor = torch.cuda.get_device_capability(dev)
    name = torch.cuda.get_device_name(dev)
    if major < 8:
        return False, f"{name} (compute capability {major}.{minor}) has no sparse tensor cores (need 8.0+); {DENSE_NOTE}"
    return True, f"{name} (compute capability {major}.{minor}): 2:4 weights can run on sparse tensor cores"


def to_semi_structured(model, n: int = 2, m: int = 4) -> dict[str, Any]:
    """Replace the weight of every decoder nn.Linear that holds a 2:4 pattern by a SparseSemiStructuredTensor.

    Returns {"converted": [names], "skipped": {name: reason}}. Raises InputError where the device cannot do it.
    GPT-2's Conv1D is skipped (it calls addmm on an (in, out) weight, not F.linear)."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    from planner.arch import get_adapter
    from planner.prune.masked.patterns import nm_violations

    if (n, m) != (2, 4):
        raise InputError(f"only 2:4 has sparse tensor core kernels; got {n}:{m}")
    device = next(model.parameters()).device
    ok, why = semi_structured_support(device)
    if not ok:
        raise InputError(f"cannot convert to 2:4 sparse kernels: {why}")
    converted, skipped = [], {}
    for _, _, name, module in get_adapter(model).iter_linears(model):
        weight = module.weight
        if not isinstance(module, torch.nn.Linear):
            skipped[name] = f"{type(module).__name__} is not an nn.Linear"
        elif str(weight.dtype).removeprefix("torch.") not in SEMI_STRUCTURED_DTYPES:
            skipped[name] = f"dtype {weight.dtype} (sparse kernels here: {', '.join(SEMI_STRUCTURED_DTYPES)})"
        elif nm_violations(weight != 0, 2, 4):
            skipped[name] = "weight does not hold 2 zeros in every group of 4 inputs"
        else:
            try:
                module.weight = torch.nn.Parameter(to_sparse_semi_structured(weight.detach()), requires_grad=False)
                converted.append(name)
            except (RuntimeError, ValueError) as exc:  # shape constraints of the kernels
                skipped[name] = str(exc).splitlines()[0]
    return {"converted": converted, "skipped": skipped}


def _describe(target: Any) -> tuple[str, Any, Any]:
    """(display name, GpuSpec or None, torch device string or None) for a GPU id, a GpuSpec or a device."""
    if hasattr(target, "sparse_2to4_for"):
        return target.name, target, None
    text = str(target)
    if text == "cpu" or text.startswith("cuda"):
        return text, None, text
    from planner.gpus import get_gpu

    gpu = get_gpu(text)
    return gpu.name, gpu, None


def runtime_note(gpu_or_device: Any, spec, dtype: str = "bf16") -> str:
    """One sentence on what the masked `spec` can do for speed on a target GPU (GpuSpec or catalog id) or a local
    device ("cpu", "cuda:0"). Never promises a figure: a 2:4 gain must be measured."""
    from planner.prune.specs import MaskedSpec

    if not isinstance(spec, MaskedSpec):
        raise ValueError(f"runtime_note is for masked pruning (unstructured, nm), not {spec.kind!r}")
    where, gpu, device = _describe(gpu_or_device)
    if spec.kind == "unstructured":
        return (
            f"{spec.sparsity:.0%} unstructured sparsity on {where}: {DENSE_NOTE}. The checkpoint stays dense "
            "(same size, same memory); scattered zeros only pay off with sparse formats or kernels that need far "
            "higher sparsity."
        )
    pattern = f"{spec.n}:{spec.m}"
    if (spec.n, spec.m) != (2, 4):
        return f"{pattern} sparsity on {where}: no GPU has sparse tensor cores for {pattern} (only 2:4); {DENSE_NOTE}."
    if device is not None:
        ok, why = semi_structured_support(device)
        if not ok:
            return f"2:4 sparsity on {where}: {why}."
        return (f"2:4 sparsity on {why}; torch.sparse.to_sparse_semi_structured converts fp16/bf16 linears. "
                "The gain is at most 2x on those GEMMs and must be measured.")
    if gpu.sparse_2to4_for(dtype):
        return (
            f"2:4 sparsity on {where}: its sparse tensor cores run 2:4 {dtype} GEMMs (datasheet: up to 2x the "
            "dense math rate) when the serving stack has 2:4 kernels (torch.sparse.to_sparse_semi_structured, "
            "vLLM/TensorRT-LLM sparse paths). Only the linear layers gain, by less than that end to end: measure it."
        )
    return f"2:4 sparsity on {where}: no 2:4 sparse tensor cores for {dtype}; {DENSE_NOTE}."
