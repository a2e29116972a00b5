"""Serving-runtime profiles: one YAML file per runtime under `profiles/runtimes/`, every figure citing its source.

A runtime decides how a model's roofline work becomes wall time: how much host (Python, scheduler, dispatch) time
each step costs, whether CUDA graphs hide kernel launches, what fraction of the GPU's peaks its kernels reach, and
which weight formats (2:4 sparse, int8 / int4 / fp8 weights) it has fast kernels for. Abridged example
(see profiles/runtimes/vllm.yaml):

```yaml
version: 1
id: vllm
name: vLLM (CUDA graphs, continuous batching)
targets: [gpu]
cuda_graphs: true             # host launch time of each kernel is hidden; only step_ms stays on the host
continuous_batching: true     # decode runs all in-flight requests together: batch = max(batch, concurrency)
host_ms_per_layer: 0.0        # per forward, per decoder layer (eager dispatch); 0 under CUDA graphs
host_ms_fixed: 0.0            # per forward, outside the layers
step_ms: 2.0                  # per generated token: scheduler, sampling, detokenization
kernels_per_layer: 11         # GPU kernels one decoder layer issues per forward
kernels_fixed: 6
kernel_floor_us: 2.5          # no kernel takes less (launch + ramp-up + tail)
efficiency:                   # achieved fraction of datasheet peaks, by GPU architecture (default: any other)
  default: {memory: 0.8, compute: 0.6, other: 0.6}
kernels:                      # the kernel table: formats with fast kernels
  - {format: "2:4", architectures: [hopper], dtypes: [fp16, bf16, fp8], min_tokens: 1, ...}
sources: {step_ms: "..."}     # field -> citation; fitted figures name the rows they were fitted on
```

Unknown combinations (a format without a kernel for the architecture, dtype or tokens per GEMM) run at the dense
rate, and the projection says so.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.errors import InputError, did_you_mean

Target = Literal["gpu", "cpu"]
WeightFormat = Literal["2:4", "int8-weight-only", "int4-weight-only", "fp8", "w8a8-int8"]


class Efficiency(BaseModel):
    """Fractions of the datasheet (or measured) peaks the runtime's kernels reach."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    memory: float = Field(gt=0, le=1.0, description="of memory bandwidth, for weight-streaming GEMMs (decode)")
    compute: float = Field(gt=0, le=1.0, description="of the dense math peak, for large GEMMs (prefill)")
    other: float = Field(gt=0, le=1.0, description="of bandwidth or math peak, for everything that is not a GEMM")
    compute_fp8: float | None = Field(None, gt=0, le=1.0, description="of the fp8 math peak (default: compute)")


class KernelEntry(BaseModel):
    """A weight format the runtime runs faster than dense: where, from how many tokens per GEMM, and how much."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: WeightFormat
    architectures: list[str] = Field(min_length=1)
    dtypes: list[str] = Field(min_length=1, description="activation dtypes the kernel takes")
    min_tokens: int = Field(1, ge=1, description="tokens per GEMM (batch x new tokens) from which it is used")
    max_tokens: int | None = Field(None, ge=1, description="above this the runtime falls back to dense")
    math_speedup: float = Field(1.0, gt=0, description="GEMM math rate against dense at the same dtype")
    weight_bytes_factor: float = Field(1.0, gt=0, description="stored weight bytes against dense 16-bit")
    host_factor: float = Field(1.0, gt=0, description="host dispatch time per layer against dense (extra ops)")
    efficiency: float | None = Field(None, gt=0, le=1.0,
                                     description="achieved fraction of bandwidth of this kernel (default: the runtime's)")
    source: str = Field(min_length=1)


class RuntimeProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: int = 1
    id: str
    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    targets: list[Target] = Field(min_length=1)
    cuda_graphs: bool
    continuous_batching: bool = False
    max_num_seqs: int | None = Field(None, ge=1, description="most sequences a continuous-batching step holds "
                                                            "(planner.perf.traffic)")
    host_ms_per_layer: float = Field(ge=0)
    host_ms_fixed: float = Field(0.0, ge=0)
    step_ms: float = Field(ge=0)
    request_ms: float = Field(0.0, ge=0, description="fixed host time per request, before its first token")
    expands_gqa_kv: bool = Field(False, description="attention copies K/V to every query head (repeat_kv) per step")
    kernels_per_layer: int = Field(ge=1)
    kernels_fixed: int = Field(0, ge=0)
    kernel_floor_us: float = Field(ge=0)
    tensor_parallel: bool = Field(False, description="splits each layer over GPUs (else layers run in sequence)")
    allreduce_us: float = Field(0.0, ge=0, description="latency of one all-reduce of a layer's activations (TP)")
    allreduce_gb_s: float = Field(200.0, gt=0, description="all-reduce bus bandwidth between the GPUs, GB/s")
    memory_utilization: float = Field(1.0, gt=0, le=1.0,
                                      description="share of GPU memory the runtime lets weights + KV cache use")
    reserve_gb: float = Field(0.0, ge=0, description="GPU memory the runtime itself holds (CUDA context, "
                                                     "workspaces) that the model cannot use, GB")
    efficiency: dict[str, Efficiency]
    cpu: dict[str, float] | None = Field(None, description="priors for a CPU host (replaced by measured figures)")
    kernels: list[KernelEntry] = Field(default_factory=list)
    sources: dict[str, str]

    @model_validator(mode="after")
    def _check(self) -> "RuntimeProfile":
        if "default" not in self.efficiency:
            raise ValueError("efficiency needs a 'default' entry")
        cited = ("host_ms_per_layer", "step_ms", "kernels_per_layer", "kernel_floor_us", "efficiency")
        missing = [f for f in cited if f not in self.sources]
        if missing:
            raise ValueError(f"sources must cite {', '.join(missing)}")
        if self.cpu is not None:
            unknown = set(self.cpu) - {"host_ms_per_layer", "host_ms_fixed", "step_ms", "request_ms", "memory",
                                       "compute", "other"}
            if unknown:
                raise ValueError(f"cpu: unknown keys {sorted(unknown)}")
        return self

    def efficiency_for(self, architecture: str | None) -> Efficiency:
        return self.efficiency.get(architecture or "", self.efficiency["default"])

    def kernel_for(self, fmt: str, architecture: str | None, dtype: str, tokens: int) -> KernelEntry | None:
        """The kernel-table entry that runs `fmt` here, or None (the dense rate)."""
        for entry in self.kernels:
            if entry.format != fmt or (architecture or "") not in entry.architectures or dtype not in entry.dtypes:
                continue
            if tokens < entry.min_tokens or (entry.max_tokens is not None and tokens > entry.max_tokens):
                continue
            return entry
        return None


def usable_memory_gb(gpu, runtime: str | None) -> float | None:
    """GPU memory a model can use under `runtime`: memory x its utilisation setting - its reserve (the raw memory
    without a runtime, None without a memory figure or for the local host)."""
    if not gpu.memory_gb or gpu.measured_local:
        return None
    if not runtime:
        return gpu.memory_gb
    spec = get_runtime(runtime)
    return max(0.0, gpu.memory_gb * spec.memory_utilization - spec.reserve_gb)


def runtimes_dir() -> Path:
    from planner.paths import profiles_dir

    return profiles_dir() / "runtimes"


def load_runtime_file(path: str | Path) -> RuntimeProfile:
    from planner.documents import load_validated

    path = Path(path)
    # binary, duplicate keys, non-finite numbers, alias bombs, unknown or bad fields: InputError
    spec = load_validated(path, RuntimeProfile, "runtime profile", where=f"runtime profile {path.name}", invalid="")
    if spec.id != path.stem:
        raise InputError(f"runtime profile {path.name}: id {spec.id!r} must equal the file name stem")
    return spec


@functools.lru_cache(maxsize=1)
def runtime_catalog() -> dict[str, RuntimeProfile]:
    return {p.stem: load_runtime_file(p) for p in sorted(runtimes_dir().glob("*.yaml"))}


def get_runtime(name: str) -> RuntimeProfile:
    """A runtime by id or alias; an unknown name is bad input naming the accepted ones."""
    catalog = runtime_catalog()
    key = name.strip().lower()
    if key in catalog:
        return catalog[key]
    for spec in catalog.values():
        if key in spec.aliases:
            return spec
    raise InputError(did_you_mean(name, list(catalog), "runtime"))


def default_runtime(gpu) -> str:
    """vLLM for a GPU target, HF transformers eager on the local CPU."""
    return "hf-eager" if gpu.measured_local else "vllm"


def resolve_runtime(name: str | None, gpu) -> RuntimeProfile:
    """The named runtime (or the target's default), checked against the target kind."""
    spec = get_runtime(name or default_runtime(gpu))
    target = "cpu" if gpu.measured_local else "gpu"
    if target not in spec.targets:
        accepted = [r for r, s in runtime_catalog().items() if target in s.targets]
        raise InputError(f"runtime {spec.id!r} does not run on {gpu.id} ({target}); accepted there: "
                         f"{', '.join(accepted)}")
    return spec


def for_target(workload, gpu):
    """The workload with its runtime resolved for the target (vllm on a GPU, hf-eager on the local CPU unless one
    was named) and, on the local CPU, fp32 unless a dtype was given (CPUs run bf16 matmuls slowly or emulated)."""
    updates: dict = {"runtime": resolve_runtime(workload.runtime, gpu).id}
    if gpu.measured_local and "dtype" not in workload.model_fields_set and workload.dtype == "bf16":
        updates["dtype"] = "fp32"
    return workload.model_copy(update=updates)
