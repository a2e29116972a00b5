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

from planner.goals import goal_spec
from planner.goals import lower_is_better as _lower_is_better
from planner.kinds import get_kind
from planner.workload import Goal

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
    return get_kind(spec).pruned_shape(shape, spec)


def _shape_dict(shape) -> dict[str, int]:
    return {k: getattr(shape, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                           "num_kv_heads", "head_dim")}


# -- figures --------------------------------------------------------------------------------------------------


def _default_estimator():
    from planner.profile.roofline import estimate

    return estimate


def uses_sparse_kernel(spec, gpu, dtype: str) -> bool:
    return get_kind(spec).sparse_kernel(spec, gpu, dtype)


def figures(shape, spec, workload, gpu, *, estimator: Callable | None = None, quantize=None,
            shard=None) -> tuple[dict, list[str]]:
    """Every projected figure for `spec` (a pruning step, or None) applied to `shape`, with the weights quantized
    by `quantize` and the model split over `shard.tensor_parallel` GPUs (each may be None), and notes on how they
    were obtained. Memory figures are per GPU; cost counts every GPU."""
    from planner.prune.specs import NoPruning

    estimator = estimator or _default_estimator()
    spec = spec if spec is not None else NoPruning()
    kind = get_kind(spec)
    new_shape, _ = kind.pruned_shape(shape, spec)
    sparse = kind.sparse_kernel(spec, gpu, workload.dtype)
    share = kind.sparse_share(spec, shape) if sparse else 1.0
    if share < 1.0:  # N:M with layers left dense: that share of the layers on sparse kernels
        sparse = share
    serving = {}
    if quantize is not None:
        serving["weight_format"] = quantize.scheme
    if shard is not None:
        serving["tensor_parallel"] = shard.tensor_parallel
    est = estimator(new_shape, workload, gpu, sparse_2to4=sparse, **serving)
    b = workload.dtype_bytes
    weight_bytes = float(est.weight_bytes)  # resident weights: the roofline stores applied 2:4 compressed
    lin_bytes = linear_params(new_shape) * b
    notes = list(kind.projection_notes(spec, gpu, workload.dtype, sparse))
    file_bytes, file_notes = kind.file_bytes(spec, weight_bytes=weight_bytes,
                                             dense_weight_bytes=float(est.parameters) * b,
                                             linear_bytes=lin_bytes, dtype_bytes=b, sparse=sparse,
                                             shape=shape)
    notes += file_notes
    if quantize is not None:
        # the decoder blocks' linear weights are stored quantized (scales included); embeddings stay dense
        saved = lin_bytes - lin_bytes / b * quantize.bytes_per_weight(b)
        weight_bytes -= saved
        file_bytes -= saved
        notes.append(_format_note(est, quantize.scheme, workload))
    per_gpu = 1
    if shard is not None:
        per_gpu = shard.tensor_parallel
        layers = lin_bytes if quantize is None else lin_bytes * quantize.bytes_per_weight(b) / b
        weight_bytes = weight_bytes - layers + layers / per_gpu  # embeddings and LM head replicated
        notes.append(f"tensor parallel over {per_gpu} {gpu.id}: decoder weights, KV cache and work split "
                     f"{per_gpu} ways, two all-reduces per layer ({_all_reduce_source(est)}); memory figures are "
                     "per GPU, cost counts every GPU")
    runtime_weights = weight_bytes
    kv_bytes = float(est.kv_cache_bytes) / per_gpu
    kv_per_token = (float(est.kv_cache_bytes_per_token) / per_gpu) or None
    kv_tokens = None
    if gpu.memory_bytes and kv_per_token:
        kv_tokens = max(0.0, (gpu.memory_bytes - runtime_weights) / kv_per_token)
    request_ms = float(est.request_ms)
    p_ms = request_ms + workload.non_model_ms
    tokens_per_s = float(est.tokens_per_s) if est.tokens_per_s else None
    traffic = _traffic(estimator, new_shape, sparse, serving, workload, gpu, notes)
    if traffic:  # percentiles and throughput under the workload's traffic (planner.perf.traffic)
        tokens_per_s = traffic["tokens_per_s"]
    usd = None
    if gpu.price is not None and tokens_per_s:
        usd = gpu.price.usd_per_hour * per_gpu / (tokens_per_s * 3600.0) * 1e6
    out = {
        "prefill_ms": float(est.prefill_ms), "decode_ms_per_token": float(est.decode_ms_per_token),
        "ttft_ms": float(est.ttft_ms), "tpot_ms": float(est.tpot_ms), "request_ms": request_ms,
        "p50_ms": p_ms, "p95_ms": p_ms, "p99_ms": p_ms, "tokens_per_s": tokens_per_s,
        **traffic,
        "usd_per_million_tokens": usd,
        "gpu_hours_per_million_tokens": per_gpu * 1e6 / (tokens_per_s * 3600.0) if tokens_per_s else None,
        "weight_bytes": runtime_weights, "kv_cache_bytes": kv_bytes,
        "peak_memory_bytes": runtime_weights + kv_bytes + float(est.activation_bytes),
        "file_bytes": file_bytes, "kv_bytes_per_token": kv_per_token, "kv_tokens": kv_tokens,
    }
    return out, notes


def _traffic(estimator, shape, sparse: bool | float, serving: dict, workload, gpu, notes: list[str]) -> dict:
    """The figures under the workload's traffic (request rate, trace or concurrency > 1), {} without traffic."""
    from planner.perf.runtimes import get_runtime
    from planner.perf.traffic import has_traffic, traffic_figures

    if not has_traffic(workload):
        return {}

    def project(wl):
        return estimator(shape, wl, gpu, sparse_2to4=sparse, **serving)

    figures, traffic_notes = traffic_figures(project, workload, get_runtime(workload.runtime) if workload.runtime
                                             else None)
    notes += traffic_notes
    return figures


def _format_note(est, scheme: str, workload) -> str:
    """What the runtime's kernel table made of a weight format, from the serving model (decode phase)."""
    if est.serving is None:
        return (f"{scheme}: no serving runtime in the projection, so the weights' smaller bytes are not projected "
                "as speed (dense rate)")
    text = est.serving.decode.formats.get(scheme)
    return f"{scheme} in decode: {text}" if text else f"{scheme}: projected with {workload.runtime}'s kernel table"


def _all_reduce_source(est) -> str:
    return f"{est.runtime}'s all-reduce figures" if est.runtime else "no runtime: all-reduce not projected"


def goal_metric(goal: Goal, dense: dict) -> str:
    """The figure a goal is judged by; its fallback (cost in GPU-hours where the GPU has no price, KV capacity in
    bytes per token where it has no memory figure) where the target lacks the data."""
    spec = goal_spec(goal)
    if spec.fallback and dense.get(spec.predicted) is None:
        return spec.fallback
    return spec.predicted


def predict(shape, spec, workload, gpu, goal: Goal, dense: dict, *, estimator: Callable | None = None,
            quantize=None, shard=None) -> Prediction:
    """The candidate's goal figure against the dense figures `dense` (from `figures(shape, NoPruning(), ...)`)."""
    from planner.prune.specs import NoPruning

    metric = goal_metric(goal, dense)
    spec = spec if spec is not None else NoPruning()
    figs, notes = figures(shape, spec, workload, gpu, estimator=estimator, quantize=quantize, shard=shard)
    gspec = goal_spec(goal)
    if metric != gspec.predicted and gspec.fallback_note:
        notes.append(gspec.fallback_note.format(gpu=gpu.id))
    value, dense_value = figs.get(metric), dense.get(metric)
    speedup = None
    if value and dense_value:
        speedup = dense_value / value if _lower_is_better(metric) else value / dense_value
    kind = get_kind(spec)
    new_shape, ratio = kind.pruned_shape(shape, spec)
    params_before = total_params(shape)
    params_after, removed = kind.params_after(shape, new_shape, ratio)
    return Prediction(metric=metric, value=value, dense_value=dense_value, speedup=speedup, figures=figs,
                      shape=_shape_dict(new_shape), params=params_after, params_removed_frac=removed / params_before,
                      ratio=ratio, notes=notes)
