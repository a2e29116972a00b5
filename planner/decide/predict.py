"""Predict a candidate's goal metric on the target GPU: the roofline model applied to the shapes the GPU will run.

What the GPU actually runs decides the shape we project:

- structured steps (MLP channels, heads, layers) give a smaller dense model: project its smaller shape;
- unstructured zeros stay inside dense tensors that a dense GEMM reads and multiplies: project the dense shape;
- 2:4 runs on sparse tensor cores only where the GPU has them for the serving dtype (`sparse_2to4=True`); any other
  N:M pattern, or 2:4 elsewhere, runs at the dense rate.

Every figure here is *projected to* the target GPU; none is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from planner.workload import Goal

# goal -> (name of the predicted figure, True when lower is better)
GOAL_METRIC: dict[Goal, tuple[str, bool]] = {
    Goal.P50_LATENCY: ("p50_ms", True),
    Goal.P95_LATENCY: ("p95_ms", True),
    Goal.P99_LATENCY: ("p99_ms", True),
    Goal.TTFT: ("ttft_ms", True),
    Goal.TPOT: ("tpot_ms", True),
    Goal.THROUGHPUT: ("tokens_per_s", False),
    Goal.COST_PER_TOKEN: ("usd_per_million_tokens", True),
    Goal.PEAK_MEMORY: ("peak_memory_bytes", True),
    Goal.CHECKPOINT_SIZE: ("file_bytes", True),
    Goal.KV_CAPACITY: ("kv_tokens", False),
}

UNITS = {"ms": "ms", "tokens_per_s": "tok/s", "usd_per_million_tokens": "$/1M tok",
         "gpu_hours_per_million_tokens": "GPU-h/1M tok", "bytes": "B", "kv_tokens": "tokens"}


@dataclass
class Prediction:
    metric: str  # name of the goal figure, e.g. p95_ms
    value: float | None  # the goal figure for this candidate
    dense_value: float | None
    speedup: float | None  # x times better than dense (dense/pruned for lower-is-better figures)
    figures: dict[str, float | None] = field(default_factory=dict)  # every projected figure, by name
    shape: dict[str, int] = field(default_factory=dict)
    params: int = 0
    params_removed_frac: float = 0.0
    ratio: float = 0.0  # effective fraction removed of what the step prunes
    notes: list[str] = field(default_factory=list)

    @property
    def gain(self) -> float | None:
        return None if not self.speedup else 1.0 - 1.0 / self.speedup


# -- shapes and parameter counts ----------------------------------------------------------------------------


def linear_params(shape) -> int:
    """Weights of the decoder blocks' linear projections: what masks (unstructured, N:M) prune."""
    from planner.profile.roofline import linear_parameters

    return linear_parameters(shape)


def total_params(shape) -> int:
    from planner.profile.roofline import parameter_count

    return parameter_count(shape)


def pruned_shape(shape, spec):
    """The shape after a structured step (the same shape for masks) and the effective fraction removed.

    Counts come from the pruning engines' own rounding (whole KV groups, MLP widths in multiples of round_to), so
    the shape projected here is the shape `plan run` will produce. Raises InputError where the step cannot be
    honoured (a ratio that removes nothing whole, head pruning on a family that does not support it)."""
    kind = spec.kind
    if kind == "mlp_channels":
        from planner.prune.structured.rounding import kept_count

        inter = shape.intermediate_size
        kept = kept_count(inter, spec.ratio, spec.round_to, "mlp_channels")
        return shape.model_copy(update={"intermediate_size": kept}), 1 - kept / inter
    if kind == "heads":
        from planner.prune.structured.heads import plan_head_counts

        heads, kv = plan_head_counts(shape, spec)
        return shape.model_copy(update={"num_heads": heads, "num_kv_heads": kv}), 1 - heads / shape.num_heads
    if kind == "layers":
        if spec.num_layers >= shape.num_layers:
            from planner.errors import InputError

            raise InputError(f"layers num_layers={spec.num_layers} would remove all {shape.num_layers} layers")
        return shape.model_copy(update={"num_layers": shape.num_layers - spec.num_layers}), \
            spec.num_layers / shape.num_layers
    if kind == "unstructured":
        return shape, spec.sparsity
    if kind == "nm":
        return shape, spec.n / spec.m
    return shape, 0.0


def _shape_dict(shape) -> dict[str, int]:
    return {k: getattr(shape, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                           "num_kv_heads", "head_dim")}


# -- figures --------------------------------------------------------------------------------------------------


def _default_estimator():
    from planner.profile.roofline import estimate

    return estimate


def uses_sparse_kernel(spec, gpu, dtype: str) -> bool:
    return spec.kind == "nm" and (spec.n, spec.m) == (2, 4) and dtype in gpu.sparse_2to4.dtypes


def figures(shape, spec, workload, gpu, *, estimator: Callable | None = None) -> tuple[dict, list[str]]:
    """Every projected figure for `spec` applied to `shape`, and notes on how they were obtained."""
    estimator = estimator or _default_estimator()
    new_shape, _ = pruned_shape(shape, spec)
    sparse = uses_sparse_kernel(spec, gpu, workload.dtype)
    est = estimator(new_shape, workload, gpu, sparse_2to4=sparse)
    notes: list[str] = []
    b = workload.dtype_bytes
    weight_bytes = float(est.weight_bytes)  # resident weights: the roofline stores applied 2:4 compressed
    lin_bytes = linear_params(new_shape) * b
    if spec.kind == "unstructured":
        notes.append("unstructured zeros stay in dense tensors: projected at the dense shape and dense kernels")
    elif spec.kind == "nm" and not sparse:
        notes.append(f"{spec.n}:{spec.m} runs at the dense rate on {gpu.id} for {workload.dtype}: "
                     "projected at the dense shape")
    elif sparse:
        notes.append(f"2:4 on {gpu.id}'s sparse tensor cores for {workload.dtype}, assuming a sparse kernel exists "
                     "for every projection shape; measured 2:4 gains are often smaller, and can be zero in decode")
    file_bytes = weight_bytes
    if spec.kind == "unstructured":
        # compressed sparse format: a bitmask (1 bit per weight) + the non-zero values
        file_bytes = weight_bytes - lin_bytes + lin_bytes * (1 - spec.sparsity) + lin_bytes / (8 * b)
        notes.append("file size in a compressed sparse format (bitmask + non-zeros); a dense safetensors file "
                     "keeps every zero and does not shrink")
    elif spec.kind == "nm":
        # kept values + an index of log2(m) bits per kept value (2:4: 2 bits); weight_bytes is dense unless the
        # sparse kernel applies, so start from the dense linear bytes
        dense_weights = weight_bytes if not sparse else float(est.parameters) * b
        kept = (spec.m - spec.n) / spec.m
        index_bits = max(1, (spec.m - 1).bit_length())
        file_bytes = dense_weights - lin_bytes + lin_bytes * kept * (1 + index_bits / (8 * b))
        notes.append(f"file size in a compressed {spec.n}:{spec.m} format (kept values + indices); a dense "
                     "safetensors file does not shrink")
    runtime_weights = weight_bytes
    kv_bytes = float(est.kv_cache_bytes)
    kv_per_token = float(est.kv_cache_bytes_per_token) or None
    kv_tokens = None
    if gpu.memory_bytes and kv_per_token:
        kv_tokens = max(0.0, (gpu.memory_bytes - runtime_weights) / kv_per_token)
    request_ms = float(est.request_ms)
    p_ms = request_ms + workload.non_model_ms
    tokens_per_s = float(est.tokens_per_s) if est.tokens_per_s else None
    usd = None
    if gpu.price is not None and tokens_per_s:
        usd = gpu.price.usd_per_hour / (tokens_per_s * 3600.0) * 1e6
    out = {
        "prefill_ms": float(est.prefill_ms), "decode_ms_per_token": float(est.decode_ms_per_token),
        "ttft_ms": float(est.ttft_ms), "tpot_ms": float(est.tpot_ms), "request_ms": request_ms,
        "p50_ms": p_ms, "p95_ms": p_ms, "p99_ms": p_ms, "tokens_per_s": tokens_per_s,
        "usd_per_million_tokens": usd,
        "gpu_hours_per_million_tokens": 1e6 / (tokens_per_s * 3600.0) if tokens_per_s else None,
        "weight_bytes": runtime_weights, "kv_cache_bytes": kv_bytes,
        "peak_memory_bytes": runtime_weights + kv_bytes + float(est.activation_bytes),
        "file_bytes": file_bytes, "kv_bytes_per_token": kv_per_token, "kv_tokens": kv_tokens,
    }
    return out, notes


def goal_metric(goal: Goal, dense: dict) -> str:
    """The figure a goal is judged by; cost in GPU-hours where the GPU has no price, KV capacity in bytes per token
    where it has no memory figure."""
    metric, _ = GOAL_METRIC[goal]
    if goal is Goal.COST_PER_TOKEN and dense.get(metric) is None:
        return "gpu_hours_per_million_tokens"
    if goal is Goal.KV_CAPACITY and dense.get(metric) is None:
        return "kv_bytes_per_token"
    return metric


LOWER_IS_BETTER = {name for name, lower in GOAL_METRIC.values() if lower} | {"gpu_hours_per_million_tokens",
                                                                             "kv_bytes_per_token"}


def predict(shape, spec, workload, gpu, goal: Goal, dense: dict, *, estimator: Callable | None = None) -> Prediction:
    """The candidate's goal figure against the dense figures `dense` (from `figures(shape, NoPruning(), ...)`)."""
    metric = goal_metric(goal, dense)
    lower_better = metric in LOWER_IS_BETTER
    figs, notes = figures(shape, spec, workload, gpu, estimator=estimator)
    if metric == "gpu_hours_per_million_tokens":
        notes.append(f"{gpu.id} has no example price: cost per token in GPU-hours per 1M tokens")
    if metric == "kv_bytes_per_token":
        notes.append(f"{gpu.id} has no memory figure: KV capacity compared as KV bytes per token")
    value, dense_value = figs.get(metric), dense.get(metric)
    speedup = None
    if value and dense_value:
        speedup = dense_value / value if lower_better else value / dense_value
    new_shape, ratio = pruned_shape(shape, spec)
    params_before = total_params(shape)
    if spec.kind in ("unstructured", "nm"):
        removed = linear_params(shape) * ratio
        params_after = params_before
    else:
        params_after = total_params(new_shape)
        removed = params_before - params_after
    return Prediction(metric=metric, value=value, dense_value=dense_value, speedup=speedup, figures=figs,
                      shape=_shape_dict(new_shape), params=params_after, params_removed_frac=removed / params_before,
                      ratio=ratio, notes=notes)
