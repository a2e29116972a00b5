"""How `plan run` would execute a plan: in memory or layer by layer, what it would hold, how long its passes take.

A plan made from a config only (a 70B model on a laptop) cannot be run where it was made, and a user needs to know
before renting a machine what `plan run` would need: the plan carries `RunExecution`, projected from the config
(`planner.perf.footprint`, `planner.layered.memory`) and this machine's measured GEMM rate; nothing in it is measured.

    execution = run_execution(shape, device="cpu (...)", device_kind="cpu", available_bytes=24e9,
                              serving_dtype="bf16", flops=2.1e11, candidates=plan.candidates,
                              target=get_gpu("a100"))
    execution.here.mode       # "in-memory" | "layer-by-layer" | "does-not-fit" (here: this machine)
    execution.on_target       # the same on one target GPU, at its datasheet memory and peak
    execution.lines()         # what `plan` prints
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from planner.arch import ModelShape
from planner.perf.footprint import (PROCESS_BASE_BYTES, dtype_bytes, embedding_parameters, in_memory_bytes,
                                    layer_parameters, linear_parameters, parameter_count)

ExecutionMode = Literal["in-memory", "layer-by-layer", "does-not-fit"]
HELDOUT_PASS_TOKENS = 16_384  # `plan run`'s default held-out perplexity tokens (--ppl-tokens)
PPL_SEQ_LEN = 512  # `plan run`'s default perplexity window (--ppl-seq-len)
DEFAULT_CALIBRATION = (32, 512)  # CalibrationSpec's defaults (samples, tokens each)
# a disk read rate to put the streamed bytes in minutes: an example the printout names ("at 1 GB/s"), not a claim
# about any disk; scale it to yours
EXAMPLE_READ_RATE = 1e9


class Placement(BaseModel):
    """`plan run` on one device: what it holds there, whether that fits, and the compute time of one candidate's
    layer-by-layer passes at the device's rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: str  # "this machine: cpu (...)" or the target GPU's name
    run_dtype: str
    weights_bytes: int
    layer_bytes: int
    embedding_bytes: int
    in_memory_bytes: int  # dense teacher + one student, whole, + the interpreter
    layered_minimum_bytes: int  # the least --max-memory the layer-by-layer path accepts
    available_bytes: int | None = None  # the device's memory (RAM on a CPU); None: unknown
    mode: ExecutionMode
    recovery_bytes: int | None = None  # the most demanding recovery among the candidates, in memory
    recovery_fits: bool | None = None
    pass_minutes: float | None = None  # calibration + held-out perplexity forward passes, one candidate
    rate: str = ""  # where pass_minutes' FLOP rate came from

    def lines(self, recovery_method: str | None) -> list[str]:
        gb = _gb
        out = [f"plan run on {self.device} ({self.run_dtype}): weights {gb(self.weights_bytes)}, one decoder layer "
               f"{gb(self.layer_bytes)}, embeddings {gb(self.embedding_bytes)}; in memory it holds "
               f"{gb(self.in_memory_bytes)}" + (f" of {gb(self.available_bytes)}" if self.available_bytes else "")
               + f" -> {self.mode}"]
        if self.mode != "in-memory":
            out.append(f"  layer by layer: --max-memory >= {gb(self.layered_minimum_bytes)}; each candidate streams "
                       f"{gb(2 * self.weights_bytes)} from disk"
                       + f" (~{_minutes(2 * self.weights_bytes / EXAMPLE_READ_RATE / 60)} at 1 GB/s)"
                       + (f" and computes ~{_minutes(self.pass_minutes)} (calibration + held-out perplexity, "
                          f"{self.rate})" if self.pass_minutes is not None else ""))
        if recovery_method and self.recovery_bytes:
            verdict = "fits" if self.recovery_fits else "does NOT fit: choose LoRA recovery or a larger device"
            out.append(f"  recovery ({recovery_method}) holds the whole student: ~{gb(self.recovery_bytes)} -> "
                       f"{verdict}")
        return out


class RunExecution(BaseModel):
    """How `plan run` would execute the plan here and on one target GPU, and how many target GPUs serving needs.
    Projected from the config; nothing in it is measured but this machine's GEMM rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    here: Placement
    on_target: Placement | None = None
    recovery_method: str | None = None  # the most demanding recovery among the candidates
    target_gpus: int | None = None  # GPUs of the plan's target needed to serve the dense weights + KV cache
    target_gpu: str = ""
    basis: str = ("projected from the config: bytes = parameters x bytes per element; time = forward-pass FLOPs at "
                  "this machine's measured GEMM rate or the target's datasheet peak (compute only, a lower bound; "
                  "disk reads not timed)")

    @property
    def mode(self) -> ExecutionMode:
        return self.here.mode

    def lines(self) -> list[str]:
        out = self.here.lines(self.recovery_method)
        if self.on_target is not None:
            out += self.on_target.lines(self.recovery_method)
        if self.target_gpus is not None:
            out.append(f"serving on {self.target_gpu}: {self.target_gpus} GPU{'s' if self.target_gpus > 1 else ''} "
                       "for the dense weights + KV cache")
        return [line + ("" if line.startswith("  ") else " (projected)") for line in out]


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def _minutes(m: float) -> str:
    return f"{m:,.1f} min" if m < 120 else f"{m / 60:,.1f} h"


def placement(shape: ModelShape, *, device: str, run_dtype: str, available_bytes: float | None, flops: float | None,
              rate: str, calibration: tuple[int, int], hessian: bool, recovery=None) -> Placement:
    """`plan run` on one device. `hessian`: a candidate prunes with SparseGPT (its Gram matrices count);
    `recovery`: the most demanding candidate's RecoverySpec, or None."""
    from planner.layered.memory import layered_minimum, recovery_need

    samples, seq_len = calibration
    tokens = samples * seq_len
    b = dtype_bytes(run_dtype)
    in_memory = in_memory_bytes(shape, "fp32")  # the in-memory stages hold fp32 on any device (planner.run.stages)
    minimum = int(PROCESS_BASE_BYTES + layered_minimum(
        shape, compute_bytes=b, calibration_tokens=tokens, eval_tokens=HELDOUT_PASS_TOKENS,
        seq_len=max(seq_len, PPL_SEQ_LEN), hessian=hessian).total)
    available = int(available_bytes) if available_bytes else None
    if available is None or in_memory <= available:
        mode: ExecutionMode = "in-memory"
    elif minimum <= available:
        mode = "layer-by-layer"
    else:
        mode = "does-not-fit"
    # forward passes of the layer-by-layer path: calibration and held-out tokens through every layer, the held-out
    # ones through the output head too
    pass_flops = 2 * linear_parameters(shape) * (tokens + HELDOUT_PASS_TOKENS) \
        + 2 * shape.vocab_size * shape.hidden_size * HELDOUT_PASS_TOKENS
    rec = int(PROCESS_BASE_BYTES + recovery_need(shape, shape, recovery).total) if recovery is not None else None
    return Placement(device=device, run_dtype=run_dtype, weights_bytes=parameter_count(shape) * b,
                     layer_bytes=layer_parameters(shape) * b, embedding_bytes=embedding_parameters(shape) * b,
                     in_memory_bytes=in_memory, layered_minimum_bytes=minimum, available_bytes=available, mode=mode,
                     recovery_bytes=rec, recovery_fits=None if rec is None or available is None else rec <= available,
                     pass_minutes=pass_flops / flops / 60 if flops else None, rate=rate if flops else "")


def run_execution(shape: ModelShape, *, device: str, device_kind: str, available_bytes: float | None,
                  serving_dtype: str, flops: float | None, candidates=(), facts: dict | None = None,
                  target=None) -> RunExecution:
    """`candidates`: the plan's (their calibration, pruning criterion and recovery set the working set and the
    recovery's need); `facts`: the plan's facts (weights_gb, kv_cache_gb, gpu_usable_memory_gb) for the serving GPU
    count; `target`: the plan's GPU (planner.gpus), None for none."""
    from planner.layered.memory import recovery_need

    calibration = max(((c.calibration.num_samples, c.calibration.seq_len) for c in candidates),
                      key=lambda c: c[0] * c[1], default=DEFAULT_CALIBRATION)
    hessian = any(getattr(c.prune, "criterion", None) == "sparsegpt" for c in candidates)
    recoveries = [c.recovery for c in candidates if c.recovery.method != "none"]
    recovery = max(recoveries, key=lambda r: recovery_need(shape, shape, r).total, default=None)
    common = dict(calibration=calibration, hessian=hessian, recovery=recovery)
    here = placement(shape, device=f"this machine, {device}", run_dtype="fp32" if device_kind == "cpu"
                     else serving_dtype, available_bytes=available_bytes, flops=flops,
                     rate="this machine's measured GEMM rate", **common)
    on_target = None
    if target is not None and getattr(target, "memory_bytes", None) and not getattr(target, "measured_local", False):
        peak = target.peak_flops(serving_dtype) if serving_dtype in ("bf16", "fp16", "fp32") else None
        on_target = placement(shape, device=f"one {target.id}", run_dtype=serving_dtype,
                              available_bytes=target.memory_bytes, flops=peak,
                              rate=f"{target.id} datasheet {serving_dtype} peak", **common)
    return RunExecution(here=here, on_target=on_target, recovery_method=recovery.method if recovery else None,
                        target_gpus=_target_gpus(facts or {}), target_gpu=getattr(target, "id", "") or "")


def _target_gpus(facts: dict) -> int | None:
    weights, kv = facts.get("weights_gb"), facts.get("kv_cache_gb")
    usable = facts.get("gpu_usable_memory_gb") or facts.get("gpu_memory_gb")
    if weights is None or kv is None or not usable:
        return None
    return max(1, math.ceil((weights + kv) / usable))
