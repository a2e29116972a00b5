"""Analytic roofline of a decoder-only LM: FLOPs and bytes of every op, from the config's shapes alone.

Each op's lower-bound time is max(FLOPs / math peak, bytes / memory bandwidth) on the target GPU (Williams et al.,
"Roofline: an insightful visual performance model", CACM 2009). Two phases are modelled:

- prefill: `batch x prompt_len` new tokens, causal attention over the prompt;
- decode: one step of `batch x 1` new tokens reading a KV cache of `prompt_len + gen_len / 2` tokens (the mean
  context over the generation), so `request_ms = prefill_ms + gen_len * decode_ms_per_token`.

Conventions (what a serving stack such as vLLM runs, not what eager PyTorch happens to do):
- GEMM FLOPs are 2*M*N*K; bytes are activations in + weights + activations out, each read or written once.
- Attention is one fused kernel (FlashAttention): the score matrix stays on chip; Q, K, V are read and the output
  written once; causal prefill computes only the P*(P+1)/2 query-key pairs it needs. K/V are read once per KV
  head, so GQA cuts attention bytes, not FLOPs.
- The LM head runs on the last position of each sequence only (logits of the prompt are not needed).
- Norms, activations, rotary embeddings, residual adds and the embedding gather are bytes-only ops (their FLOPs
  are negligible next to the GEMMs and are not counted in FLOP shares).
- 2:4 sparsity (`sparse_2to4=True`) changes anything only on a GPU with sparse tensor cores for the dtype: the
  decoder layers' projection weights shrink to half the values plus 2-bit indices, and those GEMMs run at twice
  the math peak. The LM head and embeddings stay dense. Elsewhere zeros are multiplied by dense kernels. A share
  (`sparse_2to4=0.9`: N:M with some layers left dense) puts that share of the layers on the sparse kernels and the
  rest at the dense rate: each projection op's time is the share-weighted sum of its sparse and dense instances.

Nothing here needs weights, so a Llama-2-70B plan on an H100 works from its config.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, computed_field

from planner.arch import ModelShape
from planner.errors import InputError
from planner.perf.footprint import linear_parameters, norm_width, parameter_count  # noqa: F401  (callers' names)
from planner.perf.serving import Serving, StepBound, sparse_2to4_density, sparse_variants, step_bound
from planner.profile._doc import Doc
from planner.workload import Workload

if TYPE_CHECKING:
    from planner.gpus import GpuSpec

Category = Literal["mlp", "attn_proj", "attn_core", "lm_head", "other"]
CATEGORIES: tuple[str, ...] = ("mlp", "attn_proj", "attn_core", "lm_head", "other")
Bound = Literal["memory", "compute"]
PhaseName = Literal["prefill", "decode"]

LOGITS_BYTES = 4  # logits are kept in fp32 for sampling, whatever the serving dtype


class OpCost(Doc):
    """FLOPs and DRAM bytes of one op instance; `count` instances run per forward pass (e.g. one per layer)."""

    name: str = "gemm"
    category: Category = "other"
    flops: float = Field(ge=0)
    bytes: float = Field(gt=0)
    weight_bytes: float = Field(0.0, ge=0, description="part of `bytes` that is weights")
    count: int = Field(1, ge=0)
    sparse_2to4: bool = False
    sparse_share: float = Field(1.0, ge=0.0, le=1.0, description="with sparse_2to4: share of the `count` instances "
                                "on 2:4 kernels (the rest dense; `bytes` and `weight_bytes` are the 2:4 instance's)")

    @computed_field
    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte of DRAM traffic."""
        return self.flops / self.bytes

    @property
    def total_flops(self) -> float:
        return self.flops * self.count

    @property
    def total_bytes(self) -> float:
        return self.bytes * self.count


class OpEstimate(OpCost):
    """An op placed on a device: the math peak it runs at, its lower-bound time (all instances), its bound."""

    peak_flops: float
    time_ms: float
    bound: Bound


class CategoryTotals(Doc):
    flops: float = 0.0
    bytes: float = 0.0
    time_ms: float = 0.0


class PhaseEstimate(Doc):
    phase: PhaseName
    batch_size: int
    new_tokens: int = Field(description="tokens per sequence processed in this forward pass")
    context_len: float = Field(description="keys each new token's attention reads (decode: mean over generation)")
    ops: list[OpEstimate]
    compute_ms: float = Field(description="sum over ops of FLOPs / peak")
    memory_ms: float = Field(description="sum over ops of bytes / bandwidth")

    @computed_field
    @property
    def flops(self) -> float:
        return sum(op.total_flops for op in self.ops)

    @computed_field
    @property
    def bytes(self) -> float:
        return sum(op.total_bytes for op in self.ops)

    @computed_field
    @property
    def time_ms(self) -> float:
        return sum(op.time_ms for op in self.ops)

    @computed_field
    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @computed_field
    @property
    def bound(self) -> Bound:
        """Whichever resource the phase as a whole spends longer on."""
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @computed_field
    @property
    def by_category(self) -> dict[str, CategoryTotals]:
        totals = {c: CategoryTotals() for c in CATEGORIES}
        for op in self.ops:
            t = totals[op.category]
            t.flops += op.total_flops
            t.bytes += op.total_bytes
            t.time_ms += op.time_ms
        return totals

    @computed_field
    @property
    def flop_share(self) -> dict[str, float]:
        total = self.flops
        return {c: (t.flops / total if total else 0.0) for c, t in self.by_category.items()}

    @computed_field
    @property
    def time_share(self) -> dict[str, float]:
        total = self.time_ms
        return {c: t.time_ms / total for c, t in self.by_category.items()}


class RooflineEstimate(Doc):
    """Lower-bound prefill and decode times of one model shape and workload on one device."""

    gpu: str
    gpu_name: str
    dtype: str
    dtype_bytes: float
    peak_flops: float = Field(description="dense math peak, FLOP/s")
    bandwidth: float = Field(description="memory bandwidth, bytes/s")
    peaks_source: Literal["datasheet", "measured"]
    sparse_2to4: bool = Field(description="2:4 sparsity was asked for")
    sparse_2to4_applied: bool = Field(description="the GPU has 2:4 sparse tensor cores for the dtype")
    sparse_2to4_share: float = Field(1.0, description="share of the decoder layers asked to run 2:4 (1: all)")
    shape: ModelShape
    workload: Workload
    prefill: PhaseEstimate
    decode: PhaseEstimate
    parameters: int = Field(description="parameter count from the shape")
    weight_bytes: float = Field(description="all parameters at the dtype (2:4-compressed where applied)")
    kv_cache_bytes_per_token: float
    kv_sequences: int = Field(description="sequences whose KV cache is resident: max(batch_size, concurrency)")
    activation_bytes: float = Field(description="peak live activations of a prefill, fused attention")
    label: str
    runtime: str | None = Field(None, description="serving runtime the times are projected for (None: bare roofline)")
    serving: Serving | None = Field(None, description="the serving-stack model's times for `runtime`")

    @computed_field
    @property
    def roofline_prefill_ms(self) -> float:
        """Lower bound at the peaks, no efficiency and no overhead."""
        return self.prefill.time_ms

    @computed_field
    @property
    def roofline_decode_ms_per_token(self) -> float:
        return self.decode.time_ms

    @computed_field
    @property
    def ridge_point(self) -> float:
        """FLOP per byte above which a kernel is compute-bound on this device at this dtype."""
        return self.peak_flops / self.bandwidth

    @computed_field
    @property
    def prefill_ms(self) -> float:
        return self.serving.prefill.time_ms if self.serving else self.prefill.time_ms

    @computed_field
    @property
    def decode_ms_per_token(self) -> float:
        return self.serving.decode.time_ms if self.serving else self.decode.time_ms

    @computed_field
    @property
    def decode_batch(self) -> int:
        """Sequences per decode step: the runtime's continuous batch, else the workload's batch."""
        return self.serving.decode_batch if self.serving else self.workload.batch_size

    @computed_field
    @property
    def prefill_overhead_share(self) -> float | None:
        return self.serving.prefill.overhead_share if self.serving else None

    @computed_field
    @property
    def decode_overhead_share(self) -> float | None:
        return self.serving.decode.overhead_share if self.serving else None

    @computed_field
    @property
    def ttft_ms(self) -> float:
        return self.prefill_ms

    @computed_field
    @property
    def tpot_ms(self) -> float:
        return self.decode_ms_per_token

    @computed_field
    @property
    def request_ms(self) -> float:
        return self.prefill_ms + self.workload.gen_len * self.decode_ms_per_token

    @computed_field
    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over a whole request (all sequences decoded together)."""
        return self.decode_batch * self.workload.gen_len / (self.request_ms / 1e3)

    @computed_field
    @property
    def kv_cache_bytes(self) -> float:
        w = self.workload
        return self.kv_cache_bytes_per_token * self.kv_sequences * (w.prompt_len + w.gen_len)

    @computed_field
    @property
    def prefill_bound(self) -> StepBound:
        """memory / compute from the roofline; overhead where the runtime's per-step overhead is half the step."""
        return step_bound(self.serving.prefill, self.prefill.bound) if self.serving else self.prefill.bound

    @computed_field
    @property
    def decode_bound(self) -> StepBound:
        return step_bound(self.serving.decode, self.decode.bound) if self.serving else self.decode.bound

    @computed_field
    @property
    def prefill_intensity(self) -> float:
        return self.prefill.intensity

    @computed_field
    @property
    def decode_intensity(self) -> float:
        return self.decode.intensity

    @computed_field
    @property
    def dominant_phase(self) -> PhaseName:
        decode_total = self.workload.gen_len * self.decode_ms_per_token
        return "prefill" if self.prefill_ms >= decode_total else "decode"

    @computed_field
    @property
    def time_share(self) -> dict[str, float]:
        """Share of the whole request's time per category (prefill + gen_len decode steps)."""
        return self._request_share("time_ms")

    @computed_field
    @property
    def flop_share(self) -> dict[str, float]:
        return self._request_share("flops")

    def _request_share(self, field: str) -> dict[str, float]:
        n = self.workload.gen_len
        if field == "time_ms" and self.serving:
            pre_t, dec_t = self.serving.prefill.by_category, self.serving.decode.by_category
            values = {c: pre_t.get(c, 0.0) + n * dec_t.get(c, 0.0) for c in CATEGORIES}
        else:
            pre, dec = self.prefill.by_category, self.decode.by_category
            values = {c: getattr(pre[c], field) + n * getattr(dec[c], field) for c in CATEGORIES}
        total = sum(values.values())
        return {c: (v / total if total else 0.0) for c, v in values.items()}


# -- cost of one op -------------------------------------------------------------------------------------------


def gemm_cost(m: int, n: int, k: int, dtype_bytes: float, weight_density: float = 1.0, *,
              name: str = "gemm", category: Category = "other", count: int = 1) -> OpCost:
    """(m x k) activations times a (k x n) weight: 2*m*n*k FLOPs; bytes read in, weights, written out.

    `weight_density` scales the weight bytes (0.5625 for 16-bit 2:4: half the values plus 2-bit indices).
    """
    weight = n * k * weight_density * dtype_bytes
    return OpCost(
        name=name, category=category, flops=2.0 * m * n * k,
        bytes=(m * k + m * n) * dtype_bytes + weight, weight_bytes=weight, count=count,
    )


def bytes_op(name: str, category: Category, read: float, write: float, dtype_bytes: float, *,
             weights: float = 0.0, count: int = 1) -> OpCost:
    """An op whose cost is its memory traffic (elements read and written; weights counted in `read`)."""
    return OpCost(name=name, category=category, flops=0.0, bytes=(read + write) * dtype_bytes,
                  weight_bytes=weights * dtype_bytes, count=count)


# -- the model ------------------------------------------------------------------------------------------------


def _phase_ops(shape: ModelShape, batch: int, new_tokens: int, context: float, causal_pairs: float,
               d: float, density: float, sparse_share: float = 1.0) -> list[OpCost]:
    """Every op of one forward pass over `batch x new_tokens` tokens, attention reading `context` keys.

    `causal_pairs` is the number of query-key pairs per sequence and head that attention computes.
    """
    t = batch * new_tokens
    h, i, q, kv, n_layers = shape.hidden_size, shape.intermediate_size, shape.q_dim, shape.kv_dim, shape.num_layers
    sparse = density < 1.0
    ops: list[OpCost] = []

    def proj(role: str, category: Category, n: int, k: int) -> None:
        op = gemm_cost(t, n, k, d, density, name=f"{role}_proj", category=category, count=n_layers)
        ops.append(op.model_copy(update={"sparse_2to4": sparse, "sparse_share": sparse_share if sparse else 1.0}))

    # embedding gather (and learned positions for GPT-2 / OPT)
    n_tables = 2 if shape.family in ("gpt2", "opt") else 1
    ops.append(bytes_op("embedding", "other", read=n_tables * t * h, write=t * h, weights=n_tables * t * h, dtype_bytes=d))
    norm_w = norm_width(shape)
    ops.append(bytes_op("input_norm", "other", read=t * h + norm_w, write=t * h, weights=norm_w, dtype_bytes=d,
                        count=n_layers))
    if shape.family == "gpt2":
        proj("qkv", "attn_proj", q + 2 * kv, h)
    else:
        proj("q", "attn_proj", q, h)
        proj("k", "attn_proj", kv, h)
        proj("v", "attn_proj", kv, h)
    if shape.family == "llama":  # rotary embeddings on q and k
        ops.append(bytes_op("rope", "attn_core", read=t * (q + kv), write=t * (q + kv), dtype_bytes=d, count=n_layers))
    ops.append(bytes_op("kv_cache_write", "attn_core", read=2 * t * kv, write=2 * t * kv, dtype_bytes=d, count=n_layers))
    pair_flops = 2.0 * batch * shape.num_heads * shape.head_dim * causal_pairs
    kv_read = batch * context * kv
    ops.append(OpCost(name="attn_scores", category="attn_core", flops=pair_flops,
                      bytes=(t * q + kv_read) * d, count=n_layers))
    ops.append(OpCost(name="attn_values", category="attn_core", flops=pair_flops,
                      bytes=(kv_read + t * q) * d, count=n_layers))
    proj("o", "attn_proj", h, q)
    ops.append(bytes_op("residual_add", "other", read=2 * t * h, write=t * h, dtype_bytes=d, count=2 * n_layers))
    ops.append(bytes_op("post_attn_norm", "other", read=t * h + norm_w, write=t * h, weights=norm_w, dtype_bytes=d,
                        count=n_layers))
    if shape.gated_mlp:
        proj("gate", "mlp", i, h)
        proj("up", "mlp", i, h)
        ops.append(bytes_op("act_mul", "mlp", read=2 * t * i, write=t * i, dtype_bytes=d, count=n_layers))
    else:
        proj("up", "mlp", i, h)
        ops.append(bytes_op("activation", "mlp", read=t * i, write=t * i, dtype_bytes=d, count=n_layers))
    proj("down", "mlp", h, i)
    ops.append(bytes_op("final_norm", "other", read=t * h + norm_w, write=t * h, weights=norm_w, dtype_bytes=d))
    ops.append(gemm_cost(batch, shape.vocab_size, h, d, name="lm_head", category="lm_head"))  # last position only
    return ops


def _place(ops: list[OpCost], peak: float, bandwidth: float, sparse_speedup: float,
           dtype_bytes: float) -> tuple[list[OpEstimate], float, float]:
    placed, compute_s, memory_s = [], 0.0, 0.0
    for op in ops:
        time_s = op_c = op_m = 0.0
        for weight, variant in sparse_variants(op, dtype_bytes):
            c = variant.total_flops / (peak * (sparse_speedup if variant.sparse_2to4 else 1.0))
            m = variant.total_bytes / bandwidth
            time_s, op_c, op_m = time_s + weight * max(c, m), op_c + weight * c, op_m + weight * m
        compute_s, memory_s = compute_s + op_c, memory_s + op_m
        op_peak = op.total_flops / op_c if op_c else peak  # the effective math peak over all instances
        placed.append(OpEstimate(**op.model_dump(exclude={"intensity"}), peak_flops=op_peak, time_ms=time_s * 1e3,
                                 bound="compute" if op_c >= op_m else "memory"))
    return placed, compute_s * 1e3, memory_s * 1e3


def _device_peaks(gpu: "GpuSpec", dtype: str, peaks: dict | None) -> tuple[float, float, str]:
    if peaks is not None:
        missing = [k for k in ("flops", "bandwidth") if not peaks.get(k)]
        if missing:
            raise InputError(f"peaks must give positive 'flops' and 'bandwidth' (missing: {', '.join(missing)})")
        return float(peaks["flops"]), float(peaks["bandwidth"]), "measured"
    if gpu.measured_local:
        raise InputError(f"{gpu.id!r} has no datasheet peaks; its figures are measured at run time "
                         "(pass peaks=measure_local_peaks())")
    flops, bandwidth = gpu.peak_flops(dtype), gpu.bandwidth_bytes_per_s
    if flops is None or bandwidth is None:
        has = [d for d in ("fp32", "tf32", "bf16", "fp16", "fp8", "int8") if gpu.peak_flops(d)]
        raise InputError(f"{gpu.id} has no {dtype} peak in the catalog; dtypes it has figures for: {', '.join(has)}")
    return flops, bandwidth, "datasheet"


def activation_bytes(shape: ModelShape, tokens: int, batch: int, dtype_bytes: float) -> float:
    """Peak live activations of a forward pass over `tokens` tokens with fused attention.

    The residual stream and its normed copy live throughout; inside the MLP the gate, up and product tensors;
    inside attention q, k, v and the attention output. Logits are for the last position, in fp32.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    mlp = (3 if shape.gated_mlp else 2) * i
    attn = 2 * shape.q_dim + 2 * shape.kv_dim
    return tokens * (2 * h + max(mlp, attn)) * dtype_bytes + batch * shape.vocab_size * LOGITS_BYTES


def estimate(shape: ModelShape, workload: Workload, gpu: "GpuSpec | str", *, sparse_2to4: bool | float = False,
             peaks: dict | None = None, runtime=None, rates=None, weight_format: str | None = None,
             tensor_parallel: int = 1) -> RooflineEstimate:
    """Prefill and one decode step of `shape` serving `workload` on `gpu`.

    Without `runtime` (and without `workload.runtime`): the bare roofline lower bound. With one: the serving-stack
    model of planner.perf.serving on top of it, at `rates` (planner.perf.serving.Rates: e.g. figures measured on
    this host) or the runtime profile's figures for the GPU's architecture.
    `peaks` ({"flops": FLOP/s, "bandwidth": bytes/s}) replaces the catalog's figures, e.g. the local CPU's
    measured peaks. Works from shapes alone: pass `shape.model_copy(update={...})` to estimate a pruned model.
    """
    from planner.gpus import get_gpu

    if isinstance(gpu, str):
        gpu = get_gpu(gpu)
    dtype, d = workload.dtype, workload.dtype_bytes
    peak, bandwidth, source = _device_peaks(gpu, dtype, peaks)
    share = min(1.0, max(0.0, float(sparse_2to4)))  # True: every decoder layer; a float: that share of them
    applied = bool(share and gpu.sparse_2to4_for(dtype))
    density = sparse_2to4_density(d) if applied else 1.0
    speedup = 2.0 if applied else 1.0

    runtime_spec = None
    runtime = runtime or getattr(workload, "runtime", None)
    if isinstance(runtime, str):
        from planner.perf.runtimes import resolve_runtime

        runtime_spec = resolve_runtime(runtime, gpu)
    elif runtime is not None:  # a RuntimeProfile object (e.g. one being fitted)
        runtime_spec = runtime
    b, p = workload.batch_size, workload.prompt_len
    decode_b = max(b, workload.concurrency) if runtime_spec is not None and runtime_spec.continuous_batching else b
    decode_context = p + workload.gen_len / 2
    prefill_ops = _phase_ops(shape, b, p, context=p, causal_pairs=p * (p + 1) / 2, d=d, density=density,
                             sparse_share=share)
    decode_ops = _phase_ops(shape, decode_b, 1, context=decode_context, causal_pairs=decode_context, d=d,
                            density=density, sparse_share=share)
    phases = {}
    for name, ops, batch, new_tokens, context in (("prefill", prefill_ops, b, p, float(p)),
                                                  ("decode", decode_ops, decode_b, 1, decode_context)):
        placed, compute_ms, memory_ms = _place(ops, peak, bandwidth, speedup, d)
        phases[name] = PhaseEstimate(phase=name, batch_size=batch, new_tokens=new_tokens, context_len=context,
                                     ops=placed, compute_ms=compute_ms, memory_ms=memory_ms)
    serving = None
    if runtime_spec is not None:
        serving = _serve(phases, shape, runtime_spec, gpu, rates, peak, bandwidth, dtype, d, decode_b,
                         weight_format, tensor_parallel)

    params = parameter_count(shape)
    linear = linear_parameters(shape)
    weight_bytes = ((params - linear) + linear * (share * density + 1.0 - share if applied else 1.0)) * d
    where = f"{gpu.id} ({dtype}, {'datasheet' if source == 'datasheet' else 'measured'} peaks"
    if applied:
        where += ", 2:4 sparse tensor cores" + (f" in {share:.0%} of the layers" if share < 1.0 else "")
    return RooflineEstimate(
        gpu=gpu.id, gpu_name=gpu.name, dtype=dtype, dtype_bytes=d, peak_flops=peak, bandwidth=bandwidth,
        peaks_source=source, sparse_2to4=bool(share), sparse_2to4_applied=applied, sparse_2to4_share=share,
        shape=shape, workload=workload,
        prefill=phases["prefill"], decode=phases["decode"], parameters=params, weight_bytes=weight_bytes,
        kv_cache_bytes_per_token=2 * shape.num_layers * shape.kv_dim * d,
        kv_sequences=max(b, workload.concurrency),
        activation_bytes=activation_bytes(shape, b * p, b, d),
        label=f"projected to {where}; " + (serving.label + ")" if serving else "roofline lower bound)"),
        runtime=runtime_spec.id if runtime_spec else None, serving=serving,
    )


def estimator_like(projected: RooflineEstimate):
    """estimate() for other shapes on the peaks and serving rates `projected` used (those measured on this host
    for `cpu`): what the planner projects candidates with."""
    peaks = ({"flops": projected.peak_flops, "bandwidth": projected.bandwidth}
             if projected.peaks_source == "measured" else None)
    rates = projected.serving.rates if projected.serving is not None else None

    def run(shape, workload, gpu, *, sparse_2to4=False, **serving):
        return estimate(shape, workload, gpu, sparse_2to4=sparse_2to4, peaks=peaks, rates=rates, **serving)

    return run


def _serve(phases, shape, runtime, gpu, rates, peak, bandwidth, dtype, d, decode_batch, weight_format,
           tensor_parallel) -> Serving:
    from planner.perf.serving import rates_from_profile, serve_phase

    rates = rates or rates_from_profile(runtime, gpu)
    served = {name: serve_phase(phase, layers=shape.num_layers, rates=rates, peak=peak, bandwidth=bandwidth,
                                runtime=runtime, gpu=gpu, dtype=dtype, dtype_bytes=d, weight_format=weight_format,
                                tensor_parallel=tensor_parallel, group_size=shape.group_size, query_dim=shape.q_dim,
                                hidden_size=shape.hidden_size)
              for name, phase in phases.items()}
    label = f"{runtime.id} serving model, rates from {rates.source}"
    return Serving(rates=rates, decode_batch=decode_batch, prefill=served["prefill"], decode=served["decode"],
                   label=label)
