"""The serving-stack step model: roofline work at achievable rates, plus the runtime's per-step overhead.

For one forward pass (a prefill, or one decode step) on a device with peaks P (FLOP/s) and B (bytes/s):

    device_ms = sum over ops of count x max(FLOPs / (P x e_c), bytes / (B x e_m), kernels x kernel_floor)
    host_ms   = layers x host_ms_per_layer + host_ms_fixed          (eager dispatch; 0 under CUDA graphs)
    step      = max(device_ms, host_ms) + step_ms                   (GPU: the host runs ahead asynchronously)
              = device_ms + host_ms + step_ms                       (CPU: one thread does both)

e_c, e_m are the runtime's achieved fractions of peak for GEMMs (`compute`, `memory`) and for the rest (`other`).
`step_ms` is the host work of one generated token outside the forward (scheduler, sampling, the generate loop).
The consequences are the ones measured in practice: a small model at batch 1 under an eager runtime is bound by
host time that scales with the number of layers, not with bytes, so width and byte cuts buy nothing there while
depth cuts do; CUDA graphs remove the per-layer host term; large models and large batches return to the roofline.

2:4 and quantized weight formats count only where the runtime's kernel table has a kernel for the GPU
architecture, dtype and tokens per GEMM; elsewhere the GEMM runs at the dense rate on dense bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, computed_field

from planner.docbase import Doc

if TYPE_CHECKING:
    from planner.perf.runtimes import RuntimeProfile

GEMM_NAMES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CATEGORIES = ("mlp", "attn_proj", "attn_core", "lm_head", "other")
StepBound = Literal["memory", "compute", "overhead"]


class Rates(Doc):
    """What one runtime achieves on one device: efficiencies and overheads, and where they come from."""

    runtime: str
    memory: float = Field(gt=0, description="achieved fraction of bandwidth, GEMMs")
    compute: float = Field(gt=0, description="achieved fraction of math peak, GEMMs")
    compute_fp8: float | None = Field(None, gt=0, description="achieved fraction of the fp8 math peak, GEMMs")
    other: float = Field(gt=0, description="achieved fraction of peaks, non-GEMM ops")
    host_ms_per_layer: float = Field(ge=0)
    host_ms_fixed: float = Field(0.0, ge=0)
    step_ms: float = Field(ge=0)
    request_ms: float = Field(0.0, ge=0, description="fixed host time per request, added to the first token")
    kernel_floor_us: float = Field(ge=0)
    kernels_per_layer: int = Field(ge=1)
    kernels_fixed: int = Field(0, ge=0)
    overlap: bool = Field(description="host dispatch runs ahead of the device (GPU) instead of adding to it (CPU)")
    fused_attention: bool = Field(True, description="attention runs as one fused kernel at the GEMM rates")
    source: str = Field(description="runtime profile and architecture, or the measurement they were fitted on")


class ServedPhase(Doc):
    phase: Literal["prefill", "decode"]
    roofline_ms: float = Field(description="lower bound at the peaks (no efficiency, no overhead)")
    work_ms: float = Field(description="ops at achievable rates, without kernel floors or host time")
    device_ms: float = Field(description="ops at achievable rates, each at least its kernels' floor")
    host_ms: float = Field(description="eager dispatch of the forward's ops")
    step_ms: float = Field(description="host work per step outside the forward")
    time_ms: float
    by_category: dict[str, float]
    formats: dict[str, str] = Field(default_factory=dict, description="weight format -> how it ran here")

    @computed_field
    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.time_ms - self.work_ms)

    @computed_field
    @property
    def overhead_share(self) -> float:
        return self.overhead_ms / self.time_ms if self.time_ms else 0.0


class Serving(Doc):
    """A roofline estimate turned into serving-stack times for one runtime."""

    rates: Rates
    decode_batch: int = Field(description="sequences per decode step the runtime forms")
    prefill: ServedPhase
    decode: ServedPhase
    label: str


def rates_from_profile(runtime: "RuntimeProfile", gpu) -> Rates:
    """The runtime profile's figures for the GPU's architecture (CPU priors for a local host)."""
    eff = runtime.efficiency_for(gpu.architecture)
    fields = dict(memory=eff.memory, compute=eff.compute, compute_fp8=eff.compute_fp8 or eff.compute, other=eff.other, host_ms_per_layer=runtime.host_ms_per_layer,
                  host_ms_fixed=runtime.host_ms_fixed, step_ms=runtime.step_ms, request_ms=runtime.request_ms)
    where = f"profiles/runtimes/{runtime.id}.yaml ({gpu.architecture or 'default'})"
    if gpu.measured_local:
        fields.update(runtime.cpu or {})
        where = f"profiles/runtimes/{runtime.id}.yaml (CPU priors; not measured on this host)"
    return Rates(runtime=runtime.id, kernel_floor_us=0.0 if gpu.measured_local else runtime.kernel_floor_us,
                 kernels_per_layer=runtime.kernels_per_layer, kernels_fixed=runtime.kernels_fixed,
                 overlap=not gpu.measured_local and not runtime.cuda_graphs, source=where,
                 **{k: float(v) for k, v in fields.items()})


def sparse_2to4_density(dtype_bytes: float) -> float:
    """Stored fraction of a 2:4 weight: half the values, plus a 2-bit index per kept value."""
    return 0.5 * (1.0 + 2.0 / (8.0 * dtype_bytes))


def sparse_variants(op, dtype_bytes: float) -> list[tuple[float, Any]]:
    """(weight, op) pairs whose weighted costs add up to `op`'s: an op on 2:4 kernels in only a share of its
    instances is that share of the 2:4 op and the rest of the same op with dense weights."""
    if not op.sparse_2to4 or op.sparse_share >= 1.0:
        return [(1.0, op)]
    dense_weight = op.weight_bytes / sparse_2to4_density(dtype_bytes)
    dense = op.model_copy(update={"sparse_2to4": False, "sparse_share": 1.0, "weight_bytes": dense_weight,
                                  "bytes": op.bytes - op.weight_bytes + dense_weight})
    return [(op.sparse_share, op.model_copy(update={"sparse_share": 1.0})), (1.0 - op.sparse_share, dense)]


def is_gemm(name: str) -> bool:
    return name in GEMM_NAMES or name == "lm_head"


def per_layer(op, layers: int) -> int:
    """Instances of `op` in each decoder layer (residual adds: 2), or 0 for ops outside the layers."""
    return op.count // layers if layers and op.count >= layers and op.count % layers == 0 else 0


def _kernels(ops, layers: int, rates: Rates) -> list[float]:
    """Kernels per instance of each op: one per GEMM, one fused attention, the rest shared by the small ops."""
    fused = ("attn_scores", "attn_values")
    small_layer = sum(per_layer(op, layers) for op in ops
                      if per_layer(op, layers) and not is_gemm(op.name) and op.name not in fused)
    gemms_layer = sum(per_layer(op, layers) for op in ops if is_gemm(op.name))
    left = max(0, rates.kernels_per_layer - gemms_layer - 1)
    fixed_small = sum(1 for op in ops if not per_layer(op, layers) and not is_gemm(op.name))
    out = []
    for op in ops:
        if is_gemm(op.name) or op.name == "attn_scores":
            out.append(1.0)
        elif op.name == "attn_values":
            out.append(0.0)
        elif per_layer(op, layers):
            out.append(left / small_layer)
        else:
            out.append(rates.kernels_fixed / max(1, fixed_small))
    return out


def _arch(gpu) -> str | None:
    """The kernel table's architecture name: the catalog's, or "cpu" for the local host."""
    return gpu.architecture or ("cpu" if gpu.measured_local else None)


def serve_phase(phase, *, layers: int, rates: Rates, peak: float, bandwidth: float, runtime, gpu, dtype: str,
                dtype_bytes: float, weight_format: str | None = None, tensor_parallel: int = 1,
                group_size: int = 1, query_dim: int = 0, hidden_size: int = 0) -> ServedPhase:
    """One phase of a RooflineEstimate (its ops) at the runtime's rates and overheads.

    `weight_format` (int8-weight-only, int4-weight-only, fp8) stores the decoder layers' projection weights in that
    format where the runtime's kernel table has a kernel for it, else they run at the dense rate. `tensor_parallel`
    N splits every decoder layer's work over N GPUs and adds two all-reduces per layer."""
    tokens = phase.batch_size * phase.new_tokens
    quant = None
    if weight_format is not None:
        quant = runtime.kernel_for(weight_format, _arch(gpu), dtype, tokens) if runtime is not None else None
        formats = {weight_format: (f"{weight_format} kernel of {runtime.id} ({quant.weight_bytes_factor:g}x weight "
                                   f"bytes, {quant.math_speedup:g}x math)") if quant else
                   (f"no {weight_format} kernel in {runtime.id if runtime else 'this runtime'} for "
                    f"{gpu.architecture or gpu.id}/{dtype} at {tokens} tokens per GEMM: dense rate")}
    else:
        formats = {}
    ops = list(phase.ops)
    kernels = _kernels(ops, layers, rates)
    floor_ms = rates.kernel_floor_us / 1e3
    device = {c: 0.0 for c in CATEGORIES}
    host = {c: 0.0 for c in CATEGORIES}
    roofline_ms = work_ms = 0.0
    host_scale = quant.host_factor if quant is not None else 1.0
    per_layer_kernels = sum(per_layer(op, layers) * k for op, k in zip(ops, kernels))
    fixed_kernels = sum(k for op, k in zip(ops, kernels) if not per_layer(op, layers)) or 1.0
    def instance_ms(op, split: int) -> float:
        """One instance of `op` at the runtime's rates (kernel floor and host time apart)."""
        gemm = is_gemm(op.name)
        # GEMMs and fused attention (tensor cores, streaming K/V) run at the GEMM rates; small ops at `other`
        fast = gemm or (rates.fused_attention and op.name in ("attn_scores", "attn_values"))
        e_c, e_m = (rates.compute, rates.memory) if fast else (rates.other, rates.other)
        if gemm and dtype == "fp8" and rates.compute_fp8:
            e_c = rates.compute_fp8
        flops, nbytes, op_peak = op.flops, op.bytes, peak
        if quant is not None and op.name in GEMM_NAMES:
            op_peak = peak * quant.math_speedup
            nbytes = op.bytes - op.weight_bytes + op.weight_bytes * quant.weight_bytes_factor
            e_m = quant.efficiency or e_m
        if op.name in ("attn_scores", "attn_values") and group_size > 1 and runtime is not None \
                and runtime.expands_gqa_kv:
            # repeat_kv writes K/V once per query head and attention reads that copy
            kv_bytes = op.bytes - tokens * query_dim * dtype_bytes
            nbytes = op.bytes + kv_bytes * (2 * group_size - 1)
        if op.sparse_2to4:
            density = sparse_2to4_density(dtype_bytes)
            dense_weight = op.weight_bytes / density
            entry = runtime.kernel_for("2:4", _arch(gpu), dtype, tokens) if runtime is not None else None
            if entry is not None:
                op_peak = peak * entry.math_speedup
                nbytes = op.bytes - op.weight_bytes + dense_weight * entry.weight_bytes_factor
                formats["2:4"] = f"2:4 kernel of {runtime.id} ({entry.math_speedup:g}x math, " \
                                 f"{entry.weight_bytes_factor:g}x weight bytes)"
            else:
                nbytes = op.bytes - op.weight_bytes + dense_weight
                formats.setdefault("2:4", f"no 2:4 kernel in {runtime.id if runtime else 'this runtime'} for "
                                          f"{gpu.architecture or gpu.id}/{dtype} at {tokens} tokens per GEMM: "
                                          "dense rate")
        return max(flops / (op_peak * e_c), nbytes / (bandwidth * e_m)) * 1e3 / split if op_peak and bandwidth else 0.0

    for op, k in zip(ops, kernels):
        roofline_ms += op.time_ms
        in_layer = per_layer(op, layers) > 0
        split = tensor_parallel if in_layer else 1
        # 2:4 in only a share of the layers: that share of the instances sparse, the rest dense
        work = sum(weight * instance_ms(variant, split) for weight, variant in sparse_variants(op, dtype_bytes))
        work_ms += op.count * work
        device[op.category] += op.count * max(work, k * floor_ms)
        share = rates.host_ms_per_layer * host_scale * k / per_layer_kernels if in_layer and per_layer_kernels \
            else rates.host_ms_fixed * k / fixed_kernels
        host[op.category] += op.count * share
    if tensor_parallel > 1 and runtime is not None:
        # two ring all-reduces of the layer's 16-bit activations per layer: latency + 2 (N-1)/N x bytes / bus rate
        message = tokens * hidden_size * 2.0
        ring = 2.0 * (tensor_parallel - 1) / tensor_parallel * message / (runtime.allreduce_gb_s * 1e9)
        allreduce = 2 * layers * (runtime.allreduce_us / 1e6 + ring) * 1e3
        device["other"] += allreduce
        work_ms += allreduce
    device_ms, host_ms = sum(device.values()), sum(host.values())
    if rates.overlap:
        busy = device if device_ms >= host_ms else host
        by_category = dict(busy)
        core = max(device_ms, host_ms)
    else:
        by_category = {c: device[c] + host[c] for c in CATEGORIES}
        core = device_ms + host_ms
    by_category["other"] += rates.step_ms
    step = rates.step_ms + (rates.request_ms if phase.phase == "prefill" else 0.0)
    by_category["other"] += step - rates.step_ms
    return ServedPhase(phase=phase.phase, roofline_ms=roofline_ms, work_ms=work_ms, device_ms=device_ms,
                       host_ms=host_ms, step_ms=step, time_ms=core + step,
                       by_category=by_category, formats=formats)


def step_bound(served: ServedPhase, roofline_bound: str) -> StepBound:
    """Overhead when per-step overhead is at least half the step; else what the roofline says."""
    return "overhead" if served.overhead_share >= 0.5 else roofline_bound  # type: ignore[return-value]
