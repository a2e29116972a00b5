"""Prove planner on one NVIDIA GPU, in one prepared run of at most ~8 minutes.

    python bench/gpu_check.py --out gpu-check/            # on a machine with one CUDA GPU
    python bench/gpu_check.py --dry-run --out /tmp/gc     # anywhere: every step that does not need CUDA (CI runs it)

Steps, each timed and recorded in one JSON (`gpu_check.json`), then printed as one table:

  nvml         NVML facts of the device and the GPU catalog entry it matches (the match logic is also run on the
               device names NVML reports for the catalog's GPUs)
  profile      the embedded model's profile on this device: kernel breakdown of prefill and decode (torch.profiler,
               CUDA time on a GPU), and its projection to the matched GPU
  serving      measured TTFT / TPOT / p95 of the dense model under hf-eager and hf-compile (CUDA graphs) beside the
               serving model's projection for this GPU, error in %
  gemm         dense against 2:4 (torch semi-structured sparse) GEMM times over tokens per GEMM 1..4096, fp16 and
               bf16, beside what the runtime kernel tables (profiles/runtimes/*.yaml) say about 2:4 at each point
  sparse_2to4  the embedded model pruned 2:4 (magnitude): which linears qualify for the sparse kernels and why not
               the others, its logits against the masked dense model, and dense vs 2:4 end to end (hf-eager)
  calibration  the measured TTFT / TPOT fitted into this GPU's per-step and per-request host time, stored in the
               calibration store, so later projections for this GPU (planner.profile) use them

Without CUDA (or with --dry-run) the CUDA steps are recorded as "skipped: no CUDA" and everything else runs for real:
the catalog match logic, the profile on the CPU, the projections for the target GPU, the 2:4 eligibility plan for the
target GPU's compute capability, a few dense GEMMs on the CPU, and the JSON document itself. Exit codes: 0 when every
step that ran passed, 1 when a step failed (its error is in the JSON), 2 for bad input (no CUDA without --dry-run,
an unknown --gpu, an --out holding other files).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

DOCUMENT = "planner-gpu-check"
VERSION = 1
STEPS = ("nvml", "profile", "serving", "gemm", "sparse_2to4", "calibration")
NO_CUDA = "skipped: no CUDA"
GEMM_TOKENS = tuple(2 ** i for i in range(13))  # 1 .. 4096 tokens per GEMM
GEMM_TOKENS_DRY = (1, 16, 256)
GEMM_DTYPES = ("fp16", "bf16")
BIG_SHAPE = ("7B-class MLP up_proj", 11008, 4096)  # (label, out_features, in_features): Llama-2-7B's MLP
# device names NVML reports for catalog GPUs (nvidia-smi --query-gpu=name on each board), with the board's nominal
# memory in GiB (NVML reports a little less; the match rounds to 16 GB)
NVML_NAMES = {"NVIDIA A100-SXM4-80GB": 80, "NVIDIA A100-SXM4-40GB": 40, "NVIDIA A100 80GB PCIe": 80,
              "NVIDIA H100 80GB HBM3": 80, "NVIDIA H100 PCIe": 80, "NVIDIA H200": 141, "NVIDIA L4": 24,
              "NVIDIA L40S": 48, "NVIDIA A10G": 24, "Tesla T4": 16, "Tesla V100-SXM2-16GB": 16,
              "NVIDIA GeForce RTX 4090": 24}


class BadInput(Exception):
    """Exit 2 with this message."""


class Skip(Exception):
    """The step cannot run here; the message says why."""


# -- settings ---------------------------------------------------------------------------------------------------


class Settings:
    """What the steps share: the device, the target GPU, the workload and the sizes (smaller in a dry run)."""

    def __init__(self, args):
        import torch

        self.dry = args.dry_run or not torch.cuda.is_available()
        self.cuda = not self.dry
        self.device = "cuda" if self.cuda else "cpu"
        self.model = args.model
        self.gpu_arg = args.gpu
        self.gpu = None  # the catalog GpuSpec, set by the nvml step
        self.dtype = args.dtype
        self.prompt_len = args.prompt_len or (512 if self.cuda else 64)
        self.gen_len = args.gen_len or (128 if self.cuda else 8)
        self.requests = args.requests or (10 if self.cuda else 0)
        self.calibrate = not args.no_calibrate
        self.results: dict[str, Any] = {}

    def workload(self, runtime: str | None):
        from planner.workload import Workload

        return Workload(prompt_len=self.prompt_len, gen_len=self.gen_len, batch_size=1, dtype=self.dtype,
                        runtime=runtime)


# -- the steps --------------------------------------------------------------------------------------------------


def step_nvml(s: Settings) -> dict[str, Any]:
    from planner.gpus import get_gpu
    from planner.profile.nvml import match_catalog, query_nvml

    nvml = query_nvml()
    out: dict[str, Any] = {"nvml": nvml.model_dump(mode="json"),
                           "catalog_match_of_nvml_names": {name: match_catalog(name, gib * 2 ** 30)
                                                                      for name, gib in NVML_NAMES.items()}}
    matched = None
    if s.cuda:
        import torch

        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        matched = match_catalog(name, props.total_memory)
        out.update(device_name=name, compute_capability=f"{props.major}.{props.minor}",
                   memory_bytes=props.total_memory, catalog_id=matched, torch_cuda=torch.version.cuda)
    if s.gpu_arg:
        s.gpu = get_gpu(s.gpu_arg)
        if matched and matched != s.gpu.id:
            out["note"] = f"--gpu {s.gpu.id} overrides the matched catalog entry {matched}"
    elif matched:
        s.gpu = get_gpu(matched)
    elif s.cuda:
        raise BadInput(f"this GPU ({out['device_name']}) matches no catalog entry (profiles/gpus/); pass --gpu ID")
    else:
        s.gpu = get_gpu("h100-sxm")  # a dry run plans for a GPU with 2:4 kernels
        out["note"] = "no CUDA device: the dry run targets h100-sxm (--gpu to change)"
    g = s.gpu
    out["catalog_entry"] = {"id": g.id, "name": g.name, "architecture": g.architecture,
                            "compute_capability": g.compute_capability, "memory_gb": g.memory_gb,
                            "bandwidth_gb_s": g.bandwidth_gb_s, "peak_tflops": g.peak_tflops.model_dump(),
                            "sparse_2to4_dtypes": list(g.sparse_2to4.dtypes) if g.sparse_2to4 else []}
    return out


def _phase(phase) -> dict[str, Any]:
    top = sorted(phase.by_category.items(), key=lambda kv: -kv[1])
    return {"median_ms": phase.median_ms, "label": phase.label, "by_category_ms": dict(top)}


def step_profile(s: Settings) -> dict[str, Any]:
    from planner.profile import run_profile

    profile = run_profile(s.model, s.gpu, s.workload("hf-eager"), decode_steps=16 if s.cuda else 4,
                          repeats=3 if s.cuda else 1, device=s.device)
    m, p = profile.measured, profile.projected
    if m is None:
        raise RuntimeError(f"the profile measured nothing: {profile.measured_note}")
    return {"measured_on": m.label, "dtype": m.dtype, "prefill": _phase(m.prefill), "decode": _phase(m.decode),
            "notes": list(getattr(m, "notes", []) or []),
            "projected": {"label": p.label, "ttft_ms": p.ttft_ms, "tpot_ms": p.tpot_ms}}


def _shape(s: Settings):
    from planner.arch import get_adapter
    from planner.models import load_config, resolve_source

    config, _ = load_config(str(resolve_source(s.model).path))
    return get_adapter(config).shape(config)


def _projection(s: Settings, runtime: str) -> dict[str, float]:
    from planner.profile.roofline import estimate

    est = estimate(_shape(s), s.workload(runtime), s.gpu)
    return {"ttft_ms": float(est.ttft_ms), "tpot_ms": float(est.tpot_ms), "p95_ms": float(est.request_ms),
            "rates": est.serving.rates.model_dump(mode="json") if est.serving else None}


def _error(predicted: float | None, measured: float | None) -> float | None:
    return predicted / measured - 1.0 if predicted is not None and measured else None


def _load(s: Settings, dtype: str):
    from planner.models import load_model

    return load_model(s.model, dtype=dtype, device=s.device)


def step_serving(s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"workload": s.workload(None).model_dump(mode="json"), "runtimes": {}}
    for runtime in ("hf-eager", "hf-compile"):
        out["runtimes"][runtime] = {"projected": _projection(s, runtime), "measured": NO_CUDA}
    if not s.cuda:
        out["status"] = NO_CUDA + " (projections only)"
        return out
    from planner.latency import BenchConfig, Subject, benchmark
    from planner.run.results import Latency

    for runtime in ("hf-eager", "hf-compile"):
        loaded = _load(s, s.dtype)  # a fresh copy: hf-compile replaces the forward
        config = BenchConfig(prompt_len=s.prompt_len, gen_len=s.gen_len, requests=s.requests, warmup=2,
                             runtime=runtime, dtype=s.dtype, device=s.device, measure_memory=True)
        lat = Latency.model_validate(benchmark([Subject("dense", loaded.model)], loaded.tokenizer, config,
                                               _device_label(), progress=False)["dense"])
        row = out["runtimes"][runtime]
        row["measured"] = {"ttft_ms": lat.ttft_p50_ms, "tpot_ms": lat.tpot_p50_ms, "p95_ms": lat.p95_ms,
                           "requests": lat.requests, "peak_memory_bytes": lat.peak_memory_bytes}
        pred = row["projected"]
        row["error"] = {k: _error(pred[k], row["measured"][k]) for k in ("ttft_ms", "tpot_ms", "p95_ms")}
        del loaded
        _empty_cache()
    return out


def _device_label() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _empty_cache() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _time_ms(fn: Callable[[], Any], cuda: bool, reps: int) -> float:
    """Median of `reps` timings of fn() after 3 warm-up calls (CUDA events on a GPU)."""
    import statistics

    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def two_four(weight):
    """`weight` with the 2 smallest of every 4 consecutive inputs zeroed (a real 2:4 pattern)."""
    import torch

    out, cols = weight.shape
    groups = weight.reshape(out, cols // 4, 4)
    drop = groups.abs().argsort(dim=-1)[..., :2]
    return groups.scatter(-1, drop, torch.zeros_like(groups)).reshape(out, cols)


def _kernel_table(s: Settings, dtype: str, tokens: int) -> dict[str, Any]:
    from planner.perf.runtimes import get_runtime

    out = {}
    for runtime in ("hf-compile", "vllm"):
        entry = get_runtime(runtime).kernel_for("2:4", s.gpu.architecture, dtype, tokens)
        out[runtime] = entry.math_speedup if entry else None  # None: the table says dense rate here
    return out


def step_gemm(s: Settings) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    shape = _shape(s)
    shapes = [("model MLP up_proj", shape.intermediate_size, shape.hidden_size)]
    if not s.cuda:
        rows = []
        label, n_out, n_in = shapes[0]
        w = torch.randn(n_out, n_in)
        for tokens in GEMM_TOKENS_DRY:
            x = torch.randn(tokens, n_in)
            rows.append({"shape": label, "out": n_out, "in": n_in, "dtype": "fp32", "tokens": tokens,
                         "dense_ms": _time_ms(lambda: F.linear(x, w), False, 5), "sparse_ms": NO_CUDA})
        return {"device": "cpu (dense only)", "rows": rows, "status": NO_CUDA + " (2:4 GEMMs not timed)"}
    from torch.sparse import to_sparse_semi_structured

    from planner.prune.masked.runtime import _kernel_backend, min_shape

    shapes.append(BIG_SHAPE)
    backend = _kernel_backend()
    rows = []
    for dtype in GEMM_DTYPES:
        tdtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        for label, n_out, n_in in shapes:
            w = two_four(torch.randn(n_out, n_in, device="cuda", dtype=tdtype))
            limits = min_shape(backend, dtype)
            try:
                ws = to_sparse_semi_structured(w)
            except (RuntimeError, ValueError) as exc:
                rows.append({"shape": label, "out": n_out, "in": n_in, "dtype": dtype, "backend": backend,
                             "min_shape": limits, "error": str(exc).splitlines()[0]})
                continue
            for tokens in GEMM_TOKENS:
                x = torch.randn(tokens, n_in, device="cuda", dtype=tdtype)
                dense = _time_ms(lambda: F.linear(x, w), True, 20)
                try:
                    sparse = _time_ms(lambda: F.linear(x, ws), True, 20)
                except (RuntimeError, ValueError) as exc:
                    sparse = "failed: " + str(exc).splitlines()[0]
                speedup = dense / sparse if isinstance(sparse, float) and sparse > 0 else None
                rows.append({"shape": label, "out": n_out, "in": n_in, "dtype": dtype, "tokens": tokens,
                             "backend": backend, "dense_ms": dense, "sparse_ms": sparse,
                             "measured_speedup": speedup, "kernel_table_speedup": _kernel_table(s, dtype, tokens)})
    return {"device": _device_label(), "backend": backend, "rows": rows}


def step_sparse(s: Settings) -> dict[str, Any]:
    import torch

    from planner.prune import apply_pruning
    from planner.prune.masked.runtime import semi_structured_plan
    from planner.prune.specs import SemiStructuredPruning

    dtype = "fp16" if s.cuda else "fp32"  # masks are computed at the loaded precision
    loaded = _load(s, dtype)
    model = loaded.model
    result = apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="magnitude"))
    if s.cuda:
        cap = torch.cuda.get_device_capability(0)
        where = _device_label()
    else:
        major, minor = (int(v) for v in (s.gpu.compute_capability or "0.0").split("."))
        cap, where = (major, minor), f"{s.gpu.id} (compute capability {major}.{minor}, from the catalog)"
    # without CUDA, plan for a CUDA build of torch (its wheels ship cuSPARSELt), not for this CPU-only build
    plan = semi_structured_plan(model, cap, "fp16", where=where, backend=None if s.cuda else "cusparselt")
    reasons: dict[str, int] = {}
    for d in plan.layers:
        if not d.convert:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
    out: dict[str, Any] = {"pruned": {"achieved_sparsity": result.achieved_sparsity, "criterion": "magnitude"},
                           "plan": {"device": plan.device, "dtype": plan.dtype, "backend": plan.backend,
                                    "fallback": plan.fallback, "layers": len(plan.layers),
                                    "qualify": len(plan.to_convert), "kept_dense": reasons}}
    if not s.cuda:
        out["end_to_end"] = NO_CUDA
        return out
    from planner.latency import BenchConfig, Subject, benchmark, prompt_ids
    from planner.prune.masked.runtime import apply_semi_structured
    from planner.run.results import Latency

    ids = prompt_ids(loaded.tokenizer, 64, 1).to("cuda")
    with torch.inference_mode():
        masked_logits = model(ids).logits.float()
    record = apply_semi_structured(model, plan)
    with torch.inference_mode():
        sparse_logits = model(ids).logits.float()
    out["conversion"] = {"converted": len(record["converted"]), "refused": len(record["skipped"]) - sum(reasons.values()),
                         "max_abs_logit_diff": float((sparse_logits - masked_logits).abs().max()),
                         "top1_agreement": float((sparse_logits.argmax(-1) == masked_logits.argmax(-1)).float().mean())}
    dense = _load(s, "fp16")
    config = BenchConfig(prompt_len=s.prompt_len, gen_len=s.gen_len, requests=s.requests, warmup=2,
                         runtime="hf-eager", dtype="fp16", device="cuda", measure_memory=False)
    # the 2:4 model is already converted: benchmark() sees dense-looking subjects and times them interleaved
    timed = benchmark([Subject("dense", dense.model), Subject("2:4", model)], loaded.tokenizer, config,
                      _device_label(), progress=False)
    d, p = Latency.model_validate(timed["dense"]), Latency.model_validate(timed["2:4"])
    out["end_to_end"] = {"runtime": "hf-eager", "dtype": "fp16",
                         "dense": {"ttft_ms": d.ttft_p50_ms, "tpot_ms": d.tpot_p50_ms, "p95_ms": d.p95_ms},
                         "2:4": {"ttft_ms": p.ttft_p50_ms, "tpot_ms": p.tpot_p50_ms, "p95_ms": p.p95_ms},
                         "speedup": {k: (getattr(d, k) / getattr(p, k)) if getattr(p, k) else None
                                     for k in ("ttft_p50_ms", "tpot_p50_ms", "p95_ms")}}
    return out


def step_calibration(s: Settings) -> dict[str, Any]:
    from planner.perf.calibration import fit_host_times, gpu_key, save_gpu_calibration

    keys = {rt: gpu_key(gpu=s.gpu.id, runtime=rt, dtype=s.dtype) for rt in ("hf-eager", "hf-compile")}
    if not s.cuda:
        return {"status": NO_CUDA, "would_store": keys}
    if not s.calibrate:
        return {"status": "skipped: --no-calibrate", "would_store": keys}
    serving = s.results.get("serving") or {}
    stored = {}
    for runtime, row in (serving.get("runtimes") or {}).items():
        measured, pred = row.get("measured"), row["projected"]
        if not isinstance(measured, dict) or not measured.get("ttft_ms") or not measured.get("tpot_ms"):
            stored[runtime] = "not stored: no measured TTFT and TPOT"
            continue
        step_ms, request_ms = fit_host_times(pred["rates"], predicted_ttft_ms=pred["ttft_ms"],
                                             predicted_tpot_ms=pred["tpot_ms"], measured_ttft_ms=measured["ttft_ms"],
                                             measured_tpot_ms=measured["tpot_ms"])
        source = (f"bench/gpu_check.py on {_device_label()} ({platform.node()}, "
                  f"{datetime.date.today().isoformat()}; dense TTFT {measured['ttft_ms']:.2f} ms, "
                  f"TPOT {measured['tpot_ms']:.3f} ms)")
        path = save_gpu_calibration(gpu=s.gpu.id, runtime=runtime, dtype=s.dtype, step_ms=step_ms,
                                    request_ms=request_ms, source=source,
                                    evidence={"measured": measured, "projected": {k: pred[k] for k in
                                                                                  ("ttft_ms", "tpot_ms")}})
        stored[runtime] = {"key": keys[runtime], "step_ms": step_ms, "request_ms": request_ms, "path": str(path)}
    return {"stored": stored}


STEP_FUNCTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "nvml": step_nvml, "profile": step_profile, "serving": step_serving, "gemm": step_gemm,
    "sparse_2to4": step_sparse, "calibration": step_calibration}


# -- the document and the table -----------------------------------------------------------------------------------


def _status(data: dict[str, Any]) -> str:
    text = data.get("status") if isinstance(data, dict) else None
    return text if isinstance(text, str) and text.startswith("skipped") else "done"


def run_steps(s: Settings, steps=STEPS, say: Callable[[str], None] = print) -> dict[str, Any]:
    doc: dict[str, Any] = {"document": DOCUMENT, "version": VERSION, "dry_run": s.dry,
                           "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "host": platform.node(), "python": platform.python_version(), "packages": _packages(),
                           "model": s.model or "embedded SmolLM2-135M-Instruct", "steps": {}}
    for name in steps:
        say(f"[gpu_check] {name} ...")
        start = time.perf_counter()
        try:
            data = STEP_FUNCTIONS[name](s)
            status = _status(data)
        except BadInput:
            raise
        except Exception as exc:  # one failing step does not hide the others' figures
            data = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            status = "failed"
        s.results[name] = data
        doc["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 3), "data": data}
    doc["target_gpu"] = s.gpu.id if s.gpu is not None else None
    doc["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return doc


def _packages() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("planner", "torch", "transformers", "vllm", "nvidia-ml-py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def check_document(doc: Any) -> None:
    """Raise ValueError where `doc` is not a gpu_check document (the schema CI checks after the dry run)."""
    if not isinstance(doc, dict) or doc.get("document") != DOCUMENT or doc.get("version") != VERSION:
        raise ValueError("not a planner-gpu-check document of version 1")
    for key in ("dry_run", "started_at", "finished_at", "host", "packages", "model", "steps", "target_gpu"):
        if key not in doc:
            raise ValueError(f"missing {key}")
    if list(doc["steps"]) != list(STEPS):
        raise ValueError(f"steps {list(doc['steps'])} are not {list(STEPS)}")
    for name, step in doc["steps"].items():
        if set(step) != {"status", "seconds", "data"} or not isinstance(step["data"], dict):
            raise ValueError(f"step {name}: needs exactly status, seconds, data")
        if not (step["status"] in ("done", "failed") or step["status"].startswith("skipped")):
            raise ValueError(f"step {name}: bad status {step['status']!r}")
        if not isinstance(step["seconds"], (int, float)) or step["seconds"] < 0:
            raise ValueError(f"step {name}: bad seconds")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{value * 100:+.0f}%" if isinstance(value, (int, float)) else "-"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """One line per step: status, seconds, and its key figures."""
    steps = doc["steps"]
    lines = [f"{'step':<12} {'status':<40} {'s':>6}  figures"]

    def figures(name: str, data: dict[str, Any]) -> str:
        if "error" in data:
            return data["error"][:100]
        if name == "nvml":
            entry = data.get("catalog_entry", {})
            return (f"device {data.get('device_name', 'none')} -> catalog {entry.get('id')} "
                    f"({entry.get('architecture')}, cc {entry.get('compute_capability')})")
        if name == "profile":
            pre, dec = data["prefill"], data["decode"]
            top = next(iter(dec["by_category_ms"]), "-")
            return (f"prefill {_fmt(pre['median_ms'])} ms, decode step {_fmt(dec['median_ms'])} ms "
                    f"(top: {top}) {data['measured_on']}")
        if name == "serving":
            parts = []
            for rt, row in data["runtimes"].items():
                pred, meas = row["projected"], row["measured"]
                if isinstance(meas, dict):
                    err = row["error"]
                    parts.append(f"{rt} TTFT {_fmt(meas['ttft_ms'])} ms ({_pct(err['ttft_ms'])}) TPOT "
                                 f"{_fmt(meas['tpot_ms'], '.3f')} ms ({_pct(err['tpot_ms'])})")
                else:
                    parts.append(f"{rt} projected TTFT {_fmt(pred['ttft_ms'])} ms TPOT {_fmt(pred['tpot_ms'], '.3f')} ms")
            return "; ".join(parts)
        if name == "gemm":
            rows = [r for r in data["rows"] if isinstance(r.get("measured_speedup"), float)]
            if rows:
                best = max(rows, key=lambda r: r["measured_speedup"])
                return (f"{len(rows)} dense/2:4 points; best 2:4 {best['measured_speedup']:.2f}x at "
                        f"{best['tokens']} tokens {best['dtype']} ({best['shape']})")
            return "; ".join(f"{r['tokens']} tok {_fmt(r.get('dense_ms'), '.3f')} ms" for r in data["rows"]
                             if "dense_ms" in r) + " dense"
        if name == "sparse_2to4":
            plan = data["plan"]
            text = f"{plan['qualify']}/{plan['layers']} linears qualify ({plan['device']}, {plan['dtype']})"
            e2e = data.get("end_to_end")
            if isinstance(e2e, dict):
                sp = e2e["speedup"]
                text += f"; end to end TPOT {_fmt(sp['tpot_p50_ms'])}x, p95 {_fmt(sp['p95_ms'])}x"
            return text
        if name == "calibration":
            stored = data.get("stored")
            if isinstance(stored, dict):
                return "; ".join(f"{rt}: step {_fmt(v['step_ms'])} ms, request {_fmt(v['request_ms'])} ms"
                                 if isinstance(v, dict) else f"{rt}: {v}" for rt, v in stored.items())
            return f"would store {len(data.get('would_store', {}))} keys"
        return ""

    for name, step in steps.items():
        text = figures(name, step["data"]) if step["data"] else ""
        lines.append(f"{name:<12} {step['status'][:40]:<40} {step['seconds']:>6.1f}  {text}")
    return lines


# -- command line ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0],
                                epilog="Writes OUT/gpu_check.json and prints one table.")
    p.add_argument("--out", required=True, help="folder for gpu_check.json (new, empty, or an earlier check's)")
    p.add_argument("--dry-run", action="store_true", help="run only what needs no CUDA (also the default without one)")
    p.add_argument("--gpu", default=None, help="catalog id to project to (default: the one this device matches; "
                                               "h100-sxm in a dry run)")
    p.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="bf16", help="serving dtype for profile, serving and calibration: bf16 or fp16")
    p.add_argument("--prompt-len", type=int, default=None, help="default 512 (dry run: 64)")
    p.add_argument("--gen-len", type=int, default=None, help="default 128 (dry run: 8)")
    p.add_argument("--requests", type=int, default=None, help="timed requests per measurement (default 10)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--no-calibrate", action="store_true", help="do not write to the calibration store")
    return p.parse_args(argv)


def _check_args(args) -> list[str]:
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise BadInput("no CUDA device is visible to torch; run with --dry-run for the steps that need none")
    if args.dtype not in ("bf16", "fp16"):
        raise BadInput(f"--dtype must be bf16 or fp16, got {args.dtype!r}")
    for name in ("prompt_len", "gen_len", "requests"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    unknown = [x for x in steps if x not in STEPS]
    if unknown or not steps:
        raise BadInput(f"unknown step(s) {', '.join(unknown) or '(none given)'}; accepted: {', '.join(STEPS)}")
    if steps[0] != "nvml":  # every other step needs the target GPU it picks
        steps = ["nvml"] + [x for x in steps if x != "nvml"]
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(p.name != "gpu_check.json" for p in out.iterdir())):
        raise BadInput(f"--out {args.out!r} must be a new or empty folder (or hold only gpu_check.json)")
    if args.gpu:
        from planner.gpus import get_gpu

        get_gpu(args.gpu)  # an unknown id is an InputError naming the accepted ones
    return [x for x in STEPS if x in steps]


def main(argv: list[str] | None = None, say: Callable[[str], None] = print) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from planner.documents import write_atomic
    from planner.errors import InputError

    args = parse_args(argv)
    try:
        steps = _check_args(args)
        settings = Settings(args)
        doc = run_steps(settings, steps, say)
    except (BadInput, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc["steps"] = {name: doc["steps"].get(name, {"status": "skipped: not asked for (--steps)", "seconds": 0.0,
                                                    "data": {}}) for name in STEPS}
    check_document(doc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = write_atomic(out / "gpu_check.json", json.dumps(doc, indent=2, default=str), what="gpu check")
    for line in summary_lines(doc):
        say(line)
    say(f"[gpu_check] wrote {path}")
    return 1 if any(step["status"] == "failed" for step in doc["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
