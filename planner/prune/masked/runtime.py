"""What the zeros of a masked model buy at run time, and the one path where they are turned into speed.

Zeros stored in a dense tensor are multiplied like any other number by dense GEMM kernels: no speedup and no
memory saving, whatever the sparsity. The exception is 2:4 on GPUs with sparse tensor cores (NVIDIA Ampere and
later): `torch.sparse.to_sparse_semi_structured` compresses such a weight to half its values plus metadata, and
matmuls use cuSPARSELt/CUTLASS sparse kernels (fp16/bf16/int8), up to 2x on the GEMM itself. `plan run`'s latency
benchmark does that for a 2:4 variant (planner.latency.prepare_semi_structured): `semi_structured_plan` decides, layer
by layer and without touching a GPU, which weights qualify (nn.Linear, 2-D, really 2:4, shape within the kernel's
minimums and multiples, fp16/bf16, compute capability 8.0+) and why the others do not; `apply_semi_structured`
converts the qualifying ones, on CUDA only. Everything else runs dense, and `runtime_note` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


# torch's own tables (torch.sparse.SparseSemiStructuredTensor*._DTYPE_SHAPE_CONSTRAINTS) are read when present;
# these are the same figures (torch 2.3-2.13), used only where a torch build lacks the attribute
_FALLBACK_MIN_SHAPES = {"cusparselt": {"float16": (16, 16), "bfloat16": (16, 16)},
                        "cutlass": {"float16": (32, 64), "bfloat16": (32, 64)}}
_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "float16": "float16",
                "bfloat16": "bfloat16", "float32": "float32"}


@dataclass(frozen=True)
class LayerDecision:
    """One linear of a 2:4 model: converted to a sparse tensor, or kept dense and why."""

    name: str
    shape: tuple[int, ...]
    convert: bool
    reason: str


@dataclass
class SemiStructuredPlan:
    """Which linears of a model run through 2:4 sparse kernels on one device and dtype, and why not the others.

    `fallback` is set when the device or dtype has no 2:4 kernel at all: every layer then runs dense."""

    device: str  # e.g. "compute capability 9.0", "cpu"
    dtype: str  # "fp16", "bf16", ...
    backend: str | None  # "cusparselt" or "cutlass"; None without a kernel
    fallback: str | None
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def to_convert(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.convert]

    def record(self, converted: list[str] | None = None, failed: dict[str, str] | None = None) -> dict[str, Any]:
        """The results.json record (planner.run.results.SparseKernels): what was converted, what stayed dense and
        why. `converted`/`failed`: the outcome of apply_semi_structured (default: the plan's intent)."""
        failed = failed or {}
        done = [d.name for d in self.to_convert] if converted is None else list(converted)
        skipped = {d.name: d.reason for d in self.layers if not d.convert}
        skipped.update(failed)
        fallback = self.fallback
        if fallback is None and not done:
            fallback = "no layer qualified for the 2:4 kernels; the model ran on dense kernels"
        return {"format": "2:4", "device": self.device, "dtype": self.dtype, "backend": self.backend,
                "converted": done, "skipped": skipped, "fallback": fallback}


def _kernel_backend(cusparselt: bool | None = None) -> str:
    """The backend torch.sparse.to_sparse_semi_structured will use: cuSPARSELt unless unavailable or forced off."""
    import torch

    if cusparselt is None:
        try:
            cusparselt = bool(torch.backends.cusparselt.is_available())
        except AttributeError:
            cusparselt = False
    forced = getattr(getattr(torch.sparse, "SparseSemiStructuredTensor", None), "_FORCE_CUTLASS", False)
    return "cusparselt" if cusparselt and not forced else "cutlass"


def min_shape(backend: str, dtype: str) -> tuple[int, int] | None:
    """(rows, cols) a 2:4 weight must reach and be a multiple of for `backend` at `dtype`, or None (no kernel)."""
    import torch

    name = _DTYPE_NAMES.get(dtype, dtype)
    cls = {"cusparselt": "SparseSemiStructuredTensorCUSPARSELT",
           "cutlass": "SparseSemiStructuredTensorCUTLASS"}[backend]
    table = getattr(getattr(torch.sparse, cls, None), "_DTYPE_SHAPE_CONSTRAINTS", None)
    if table is not None:
        entry = table.get(getattr(torch, name, None))
        return (entry.sparse_min_rows, entry.sparse_min_cols) if entry is not None else None
    return _FALLBACK_MIN_SHAPES[backend].get(name)


def device_fallback(capability: tuple[int, int] | None, dtype: str, backend: str,
                    where: str | None = None) -> str | None:
    """None when a 2:4 kernel exists for this device and dtype, else the sentence that says why it runs dense."""
    where = where or (f"compute capability {capability[0]}.{capability[1]}" if capability else "this device")
    if capability is None:
        return f"{where} is not a CUDA GPU: no sparse tensor cores; the 2:4 model ran on dense kernels"
    major, minor = capability
    if major < 8:
        return (f"{where} (compute capability {major}.{minor}) has no sparse tensor cores (2:4 needs 8.0+); "
                "the 2:4 model ran on dense kernels")
    if _DTYPE_NAMES.get(dtype) not in SEMI_STRUCTURED_DTYPES:
        return (f"dtype {dtype} has no 2:4 kernel in torch (fp16, bf16); the 2:4 model ran on dense kernels; "
                "time it at --bench-dtype bf16 or fp16")
    if backend == "cutlass" and major != 8:
        return (f"{where}: this torch build has no cuSPARSELt, and its CUTLASS 2:4 kernels are built for compute "
                "capability 8.x only; the 2:4 model ran on dense kernels")
    return None


def semi_structured_plan(model, device_capability: tuple[int, int] | None, dtype: str,
                         backend: str | None = None, where: str | None = None) -> SemiStructuredPlan:
    """Decide, layer by layer, which decoder linears of `model` the 2:4 kernels take on a device of
    `device_capability` ((major, minor), None for a CPU) at `dtype` ("fp16", "bf16", ...). Pure: reads the
    weights (any device, CPU included) and never touches a GPU, so it runs in tests with a made-up capability.
    `backend` defaults to what torch.sparse would use here (cuSPARSELt, else CUTLASS)."""
    import torch

    from planner.arch import get_adapter
    from planner.prune.masked.patterns import nm_violations

    backend = backend or _kernel_backend()
    fallback = device_fallback(device_capability, dtype, backend, where)
    dev = where or (f"compute capability {device_capability[0]}.{device_capability[1]}" if device_capability
                    else "cpu")
    plan = SemiStructuredPlan(device=dev, dtype=dtype, backend=None if fallback else backend, fallback=fallback)
    limits = min_shape(backend, dtype) if _DTYPE_NAMES.get(dtype) in SEMI_STRUCTURED_DTYPES else None
    for _, _, name, module in get_adapter(model).iter_linears(model):
        weight = getattr(module, "weight", None)
        shape = tuple(weight.shape) if weight is not None else ()
        reason = None
        if not isinstance(module, torch.nn.Linear):
            reason = f"{type(module).__name__} is not an nn.Linear (the sparse kernels replace F.linear)"
        elif weight.dim() != 2:
            reason = f"weight is {weight.dim()}-D; the kernels take 2-D weights"
        elif weight.is_meta:
            reason = "weights are on the meta device: the 2:4 pattern cannot be checked"
        elif shape[1] % 4:
            reason = f"{shape[1]} inputs are not a multiple of 4"
        else:
            bad = nm_violations(weight != 0, 2, 4)
            if bad:
                reason = f"not 2:4: {bad} of {weight.numel() // 4} groups of 4 inputs hold fewer than 2 zeros"
        if reason is None and limits is not None:
            rows, cols = limits
            if shape[0] < rows or shape[0] % rows or shape[1] < cols or shape[1] % cols:
                reason = (f"shape {shape[0]}x{shape[1]} is not supported by {backend} at {dtype}: both dimensions "
                          f"must be at least and a multiple of ({rows}, {cols})")
        if reason is None and fallback is not None:
            reason = "qualifies, but " + fallback.split(";")[0]
        plan.layers.append(LayerDecision(name=name, shape=shape, convert=reason is None, reason=reason or "2:4"))
    return plan


def apply_semi_structured(model, plan: SemiStructuredPlan) -> dict[str, Any]:
    """Convert the weights `plan` marks to SparseSemiStructuredTensors (CUDA only); return plan.record(...) with
    what was converted and what the kernels refused at conversion time."""
    from torch.sparse import to_sparse_semi_structured

    device = next(model.parameters()).device
    if device.type != "cuda":
        raise InputError(f"2:4 sparse kernels need the model on a CUDA device, not {device.type}")
    return convert_layers(model, plan, to_sparse_semi_structured)


def convert_layers(model, plan: SemiStructuredPlan, to_sparse) -> dict[str, Any]:
    """Replace the weight of every layer `plan` converts by `to_sparse(weight)`; a layer the kernels refuse (an
    error raised by `to_sparse`) stays dense and its reason is recorded. Returns plan.record(...)."""
    import torch

    modules = dict(model.named_modules())
    converted, failed = [], {}
    for decision in plan.to_convert:
        module = modules[decision.name]
        try:
            sparse = to_sparse(module.weight.detach().contiguous())
            module.weight = torch.nn.Parameter(sparse, requires_grad=False)
            converted.append(decision.name)
        except (RuntimeError, ValueError) as exc:  # a constraint of this torch build the plan did not know
            failed[decision.name] = "conversion refused: " + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return plan.record(converted, failed)


def to_semi_structured(model, n: int = 2, m: int = 4) -> dict[str, Any]:
    """Replace the weight of every decoder nn.Linear that holds a 2:4 pattern by a SparseSemiStructuredTensor.

    Returns {"converted": [names], "skipped": {name: reason}}. Raises InputError where the device cannot do it.
    GPT-2's Conv1D is skipped (it calls addmm on an (in, out) weight, not F.linear)."""
    import torch

    if (n, m) != (2, 4):
        raise InputError(f"only 2:4 has sparse tensor core kernels; got {n}:{m}")
    device = next(model.parameters()).device
    ok, why = semi_structured_support(device)
    if not ok:
        raise InputError(f"cannot convert to 2:4 sparse kernels: {why}")
    dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(next(model.parameters()).dtype, "fp32")
    plan = semi_structured_plan(model, torch.cuda.get_device_capability(device), dtype,
                                where=torch.cuda.get_device_name(device))
    record = apply_semi_structured(model, plan)
    return {"converted": record["converted"], "skipped": record["skipped"]}


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
