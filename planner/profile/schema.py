"""profile.json: what the profiler measured on the local device and projected onto the target GPU.

Every section carries a `label` saying where its figures come from: "measured on cpu (AMD EPYC, 2 threads)" or
"projected to a100-80gb-sxm (bf16, ...)". A config-only model has no `measured` section (`measured_note` says
why) but a full projection.
"""

from __future__ import annotations

import statistics
from typing import Literal

from pydantic import Field, PrivateAttr, computed_field

from planner.arch import ModelShape
from planner.profile._doc import Doc
from planner.profile.nvml import NvmlReport
from planner.profile.roofline import RooflineEstimate
from planner.workload import Workload

PROFILE_VERSION = 1

# measured op categories, in the order a reader of a transformer would look for them
MEASURED_CATEGORIES: dict[str, str] = {
    "q_proj": "attention q projection (GEMM)",
    "k_proj": "attention k projection (GEMM)",
    "v_proj": "attention v projection (GEMM)",
    "qkv_proj": "fused attention q/k/v projection (GEMM)",
    "o_proj": "attention output projection (GEMM)",
    "gate_proj": "MLP gate projection (GEMM)",
    "up_proj": "MLP up projection (GEMM)",
    "down_proj": "MLP down projection (GEMM)",
    "lm_head": "LM head (GEMM)",
    "attention_core": "attention core: QK^T, softmax, AV (scaled-dot-product)",
    "norm": "norms (RMSNorm / LayerNorm)",
    "activation": "activations (SiLU, GELU, ReLU)",
    "elementwise": "other elementwise (residual adds, rotary, gating product, masks)",
    "embedding": "embedding lookup",
    "data_movement": "data movement (cat, copy, transpose, views, allocation; includes the KV-cache update)",
    "other": "other ops (not classified)",
    "framework": "framework: Python and dispatch time inside the phase but inside no op",
}


class MeasuredOp(Doc):
    name: str
    category: str
    part: str = Field(description="roofline category the time counts toward: mlp, attn_proj, attn_core, lm_head, other")
    calls: int
    self_ms: float


class MeasuredPhase(Doc):
    """One phase measured with torch.profiler; the breakdown is that of the median repeat (decode: median step)."""

    phase: Literal["prefill", "decode"]
    label: str
    batch_size: int
    new_tokens: int = Field(description="tokens per sequence in one forward pass (prompt length, or 1)")
    context_len: float = Field(description="keys attended per new token (decode: mean KV-cache length)")
    profiled_ms: list[float] = Field(description="profiled time of each repeat (decode: of each step)")
    wall_ms: list[float] = Field(description="wall clock of each profiled repeat, timed outside the profiler")
    unprofiled_ms: list[float] = Field(description="wall clock of each repeat without the profiler")
    total_ms: float = Field(description="profiled time of the median repeat; the categories add up to it")
    unattributed_ms: float = Field(0.0, description="part of total_ms in no event's self time, counted as "
                                                    "framework: float rounding on CPU, device idle on CUDA")
    by_category: dict[str, float]
    by_part: dict[str, float]
    by_module: dict[str, float]
    ops: list[MeasuredOp]
    local_lower_bound_ms: float | None = Field(None, description="roofline lower bound on the local device")

    @computed_field
    @property
    def median_ms(self) -> float:
        """The phase's measured time: median wall clock without the profiler."""
        return statistics.median(self.unprofiled_ms)

    @computed_field
    @property
    def profiler_overhead(self) -> float:
        """Median profiled time / median unprofiled time - 1."""
        return statistics.median(self.profiled_ms) / self.median_ms - 1.0

    @computed_field
    @property
    def coverage(self) -> float:
        """Share of the phase's time in a named category (not 'other')."""
        return 1.0 - self.by_category.get("other", 0.0) / self.total_ms

    @computed_field
    @property
    def op_coverage(self) -> float:
        """Share of the time spent inside ops that falls in a named op category."""
        in_ops = self.total_ms - self.by_category.get("framework", 0.0)
        return 1.0 - self.by_category.get("other", 0.0) / in_ops if in_ops > 0 else 1.0

    @computed_field
    @property
    def efficiency(self) -> float | None:
        """Local roofline lower bound / measured time: 1.0 would be the device's peak."""
        if self.local_lower_bound_ms is None:
            return None
        return self.local_lower_bound_ms / self.median_ms

    @computed_field
    @property
    def category_share(self) -> dict[str, float]:
        return {c: t / self.total_ms for c, t in self.by_category.items()}

    @computed_field
    @property
    def part_share(self) -> dict[str, float]:
        return {c: t / self.total_ms for c, t in self.by_part.items()}


class LocalPeaks(Doc):
    label: str
    flops: float = Field(description="best GEMM FLOP/s at `dtype`")
    bandwidth: float = Field(description="best copy bytes/s (read + write)")
    dtype: str
    method: str
    cached: bool = False
    measured_at: str | None = None

    @computed_field
    @property
    def ridge_point(self) -> float:
        return self.flops / self.bandwidth


class LocalDevice(Doc):
    """Where the profiler ran. NVML facts when an NVIDIA device is present; else the report says why not."""

    kind: Literal["cpu", "cuda"]
    name: str
    threads: int | None = None
    cpu_count: int | None = None
    memory_bytes: float | None = None
    catalog_id: str | None = None
    nvml: NvmlReport
    label: str = Field(description="'cpu (AMD EPYC, 2 threads)' or 'cuda (NVIDIA A100-SXM4-80GB)'")


class Measured(Doc):
    label: str
    dtype: str = Field(description="dtype the model ran at locally")
    peaks: LocalPeaks
    prefill: MeasuredPhase
    decode: MeasuredPhase
    local_roofline: RooflineEstimate
    activation_peak_bytes: float | None = Field(None, description="CUDA only: peak allocated during prefill "
                                                                  "minus the weights")
    seconds: float = Field(description="time the measurement took, loading included")
    notes: list[str] = []


class ModelInfo(Doc):
    name: str
    spec: str = Field(description="what --model was ('' for the embedded default)")
    source_kind: str
    path: str
    weights_present: bool
    shape: ModelShape
    parameters: int = Field(description="counted on a meta-device build of the model")
    parameters_by_role: dict[str, int]


class MemoryFacts(Doc):
    label: str
    dtype: str
    weight_bytes: float
    kv_cache_bytes_per_token: float
    kv_sequences: int
    kv_tokens_per_sequence: int
    kv_cache_bytes: float
    activation_peak_bytes: float
    gpu_memory_bytes: float

    @computed_field
    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_peak_bytes

    @computed_field
    @property
    def headroom_frac(self) -> float:
        """1 - (weights + KV cache + activations) / device memory; negative: does not fit."""
        return 1.0 - self.total_bytes / self.gpu_memory_bytes

    @computed_field
    @property
    def fits(self) -> bool:
        return self.headroom_frac >= 0.0


class Profile(Doc):
    # where load_or_run_profile keeps this profile (not part of the document)
    _cache_path: str | None = PrivateAttr(default=None)

    version: Literal[1] = PROFILE_VERSION
    document: Literal["planner-profile"] = "planner-profile"
    planner_version: str
    created_at: str
    model: ModelInfo
    workload: Workload
    target_gpu: str
    target_gpu_name: str
    local: LocalDevice
    measured: Measured | None = None
    measured_note: str | None = Field(None, description="why there is no measured part")
    projected: RooflineEstimate
    memory: MemoryFacts
    labels: dict[str, str] = Field(description="provenance of each section's figures")

    @computed_field
    @property
    def facts(self) -> dict[str, float | str | bool]:
        from planner.profile.facts import profile_facts

        return profile_facts(self)
