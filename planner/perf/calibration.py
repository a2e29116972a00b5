"""This host's serving figures, from what was measured on it: the local profile, then `plan run` results.

1. **From the profile** (`plan profile` / `plan` with `--gpu cpu`): the measured forward passes give this host's
   achieved fractions of its measured peaks and its per-layer host time:

   - memory efficiency = the decode GEMMs' roofline memory time / their measured time (weights stream once per step);
   - compute efficiency = the prefill GEMMs' roofline math time / their measured time;
   - host ms per layer = (measured decode step - its GEMM time - its attention at the memory rate) / layers: on a
     CPU every other op of a step is dispatch-dominated;
   - `other` efficiency = the non-GEMM ops' roofline time in prefill / what is left of the measured prefill.

2. **From `plan run` results** (`plan calibrate results.json`, or automatically at the end of `plan run`): the dense
   model's measured TTFT and TPOT through the runtime (generate() with its sampling and streamer) against the
   projection of the same workload; the difference sets `step_ms` (per token) and `request_ms` (per request).
   Stored in the cache (`cache_dir()/calibration/`), keyed by host, device, threads, runtime and dtype, with the
   results file it came from.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from planner.perf.serving import Rates, is_gemm

PROJECTION_CATEGORIES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                         "lm_head")


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _gemm_measured_ms(phase) -> float:
    return sum(ms for category, ms in phase.by_category.items() if category in PROJECTION_CATEGORIES)


def rates_from_measurement(measured, num_layers: int, runtime, key: dict | None = None) -> Rates:
    """This host's Rates for `runtime` from a profile's Measured section (see the module docstring)."""
    roof = measured.local_roofline
    peak, bandwidth = roof.peak_flops, roof.bandwidth
    dec_ops, pre_ops = roof.decode.ops, roof.prefill.ops

    gemm_dec = _gemm_measured_ms(measured.decode)
    mem_roof = sum(op.total_bytes for op in dec_ops if is_gemm(op.name)) / bandwidth * 1e3
    memory = _clamp(mem_roof / gemm_dec, 0.02, 1.0) if gemm_dec > 0 else 0.5

    gemm_pre = _gemm_measured_ms(measured.prefill)
    math_roof = sum(op.total_flops for op in pre_ops if is_gemm(op.name)) / peak * 1e3
    compute = _clamp(math_roof / gemm_pre, 0.02, 1.0) if gemm_pre > 0 else 0.5

    attn_dec = sum(op.total_bytes for op in dec_ops if op.name in ("attn_scores", "attn_values")) / bandwidth * 1e3
    host_total = max(0.0, measured.decode.median_ms - gemm_dec - attn_dec / memory)
    host_per_layer = host_total / max(1, num_layers)

    rest = measured.prefill.median_ms - gemm_pre - host_total
    small_roof = sum(max(op.total_flops / peak, op.total_bytes / bandwidth) for op in pre_ops
                     if not is_gemm(op.name)) * 1e3
    other = _clamp(small_roof / rest, 0.005, 1.0) if rest > 0 else 1.0

    priors = runtime.cpu or {}
    step_ms, request_ms = float(priors.get("step_ms", runtime.step_ms)), float(priors.get("request_ms", 0.0))
    source = f"{measured.label} (profile: decode and prefill breakdown)"
    stored = load_calibration(key) if key else None
    if stored is not None:
        step_ms, request_ms = stored["step_ms"], stored["request_ms"]
        source += f"; per-step and per-request host time from {stored['source']}"
    else:
        source += f"; per-step host time: profiles/runtimes/{runtime.id}.yaml CPU prior (run `plan calibrate`)"
    return Rates(runtime=runtime.id, memory=memory, compute=compute, other=other, host_ms_per_layer=host_per_layer,
                 host_ms_fixed=0.0, step_ms=step_ms, request_ms=request_ms, kernel_floor_us=0.0,
                 kernels_per_layer=runtime.kernels_per_layer, kernels_fixed=runtime.kernels_fixed, overlap=False,
                 fused_attention=False, source=source)


# -- the store -------------------------------------------------------------------------------------------------


def host_key(*, device: str, threads: int | None, runtime: str, dtype: str) -> dict:
    return {"host": platform.node(), "device": device, "threads": threads, "runtime": runtime, "dtype": dtype}


def _path(key: dict) -> Path:
    from planner.paths import cache_dir

    name = "-".join(str(key[k]) for k in ("host", "device", "threads", "runtime", "dtype"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir() / "calibration" / f"{safe}.json"


def load_calibration(key: dict) -> dict | None:
    path = _path(key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    try:
        return {"step_ms": float(data["step_ms"]), "request_ms": float(data["request_ms"]),
                "source": str(data["source"])}
    except (KeyError, TypeError, ValueError):
        return None


def save_calibration(key: dict, *, step_ms: float, request_ms: float, source: str, evidence: dict) -> Path:
    from planner.documents import write_atomic

    path = _path(key)
    doc = {"document": "planner-calibration", "version": 1, "key": key, "step_ms": step_ms, "request_ms": request_ms,
           "source": source, "evidence": evidence,
           "created_at": datetime.datetime.now().isoformat(timespec="seconds")}
    return write_atomic(path, json.dumps(doc, indent=2), what="calibration")


def calibrate_from_results(results, results_path: str) -> dict:
    """Fit this host's per-step and per-request host time from a run's dense measurement; store it; return it.

    The projection to compare with is the run's own plan projection when it targeted this host (`--gpu cpu`); the
    workload of the latency benchmark is re-projected from the run's cached profile."""
    from planner.errors import InputError

    dense = results.dense
    latency = dense.latency if dense is not None else None
    if latency is None or not latency.ttft_p50_ms or not latency.tpot_p50_ms:
        raise InputError(f"{results_path}: the dense variant has no measured TTFT and TPOT to calibrate with")
    plan = results.plan
    if plan is None or plan.gpu != "cpu":
        raise InputError(f"{results_path}: calibration needs a run of a plan made for --gpu cpu (this host); "
                         f"this plan targets {getattr(plan, 'gpu', None)!r}")
    predicted = plan.dense_predicted or {}
    rates = plan.dense_rates
    if rates is None or not predicted.get("tpot_ms") or not predicted.get("ttft_ms"):
        raise InputError(f"{results_path}: the plan has no serving-model projection of the dense model "
                         "(made by an older planner); make the plan again and re-run")
    if latency.prompt_len != plan.workload.prompt_len or latency.gen_len != plan.workload.gen_len:
        raise InputError(f"{results_path}: the latency benchmark ran {latency.prompt_len}+{latency.gen_len} tokens "
                         f"but the plan projected {plan.workload.prompt_len}+{plan.workload.gen_len}; run with the "
                         "plan's workload to calibrate")
    step_ms, request_ms = fit_host_times(rates, predicted_ttft_ms=predicted["ttft_ms"],
                                         predicted_tpot_ms=predicted["tpot_ms"], measured_ttft_ms=latency.ttft_p50_ms,
                                         measured_tpot_ms=latency.tpot_p50_ms)
    device = results.provenance.device
    key = host_key(device=device.kind, threads=device.torch_threads, runtime=latency.runtime, dtype=latency.dtype)
    source = f"plan run results {results_path} (dense TTFT {latency.ttft_p50_ms:.1f} ms, TPOT {latency.tpot_p50_ms:.2f} ms)"
    path = save_calibration(key, step_ms=step_ms, request_ms=request_ms, source=source,
                            evidence={"measured_ttft_ms": latency.ttft_p50_ms, "measured_tpot_ms": latency.tpot_p50_ms,
                                      "predicted_ttft_ms": predicted["ttft_ms"],
                                      "predicted_tpot_ms": predicted["tpot_ms"]})
    return {"key": key, "step_ms": step_ms, "request_ms": request_ms, "path": str(path), "source": source}


# -- a GPU's figures, from bench/gpu_check.py ------------------------------------------------------------------


def fit_host_times(rates: dict, *, predicted_ttft_ms: float, predicted_tpot_ms: float, measured_ttft_ms: float,
                   measured_tpot_ms: float) -> tuple[float, float]:
    """(step_ms, request_ms) that make the serving model reproduce a measured TTFT and TPOT: the per-token error goes
    to the per-step host time, what is left of the first-token error to the per-request time (as for the CPU)."""
    step_ms = max(0.0, rates["step_ms"] + measured_tpot_ms - predicted_tpot_ms)
    first_token_delta = measured_ttft_ms - predicted_ttft_ms - (step_ms - rates["step_ms"])
    request_ms = max(0.0, rates.get("request_ms", 0.0) + first_token_delta)
    return step_ms, request_ms


def gpu_key(*, gpu: str, runtime: str, dtype: str) -> dict:
    """The store key of a catalog GPU's figures measured by bench/gpu_check.py (any host with that GPU)."""
    return {"host": "gpu", "device": gpu, "threads": None, "runtime": runtime, "dtype": dtype}


def save_gpu_calibration(*, gpu: str, runtime: str, dtype: str, step_ms: float, request_ms: float, source: str,
                         evidence: dict) -> Path:
    return save_calibration(gpu_key(gpu=gpu, runtime=runtime, dtype=dtype), step_ms=step_ms, request_ms=request_ms,
                            source=source, evidence=evidence)


def calibrated_gpu_rates(gpu, workload) -> Rates | None:
    """The runtime profile's rates for a catalog GPU with the per-step and per-request host time measured on that GPU
    by bench/gpu_check.py, or None when none was stored (or the target is the local host)."""
    from planner.perf.runtimes import resolve_runtime
    from planner.perf.serving import rates_from_profile

    if gpu.measured_local or not getattr(workload, "runtime", None):
        return None
    runtime = resolve_runtime(workload.runtime, gpu)
    stored = load_calibration(gpu_key(gpu=gpu.id, runtime=runtime.id, dtype=workload.dtype))
    if stored is None:
        return None
    rates = rates_from_profile(runtime, gpu)
    return rates.model_copy(update={"step_ms": stored["step_ms"], "request_ms": stored["request_ms"],
                                    "source": f"{rates.source}; per-step and per-request host time measured on "
                                              f"{gpu.id} by {stored['source']}"})
