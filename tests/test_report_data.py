"""Results documents built in code for the report and gate tests (no model is run), plus checks that they are
valid documents. `make_results(**overrides)` returns a dict that `Results.model_validate` accepts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from planner.run.results import Results, load_results, save_results

DENSE_SAMPLES = [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107.0, 108.0, 120.0]


def _latency(scale: float, peak_bytes: int) -> dict:
    return {
        "measured_on": "CPU Test CPU 9000, 2 threads",
        "runtime": "hf-eager",
        "dtype": "fp32",
        "prompt_len": 64,
        "gen_len": 16,
        "batch_size": 1,
        "warmup": 2,
        "samples_ms": [round(s * scale, 6) for s in DENSE_SAMPLES],
        "ttft_samples_ms": [round(s * scale * 0.3, 6) for s in DENSE_SAMPLES],
        "tpot_samples_ms": [round(s * scale * 0.04, 6) for s in DENSE_SAMPLES],
        "peak_memory_bytes": peak_bytes,
        "peak_memory_kind": "process-peak-rss",
    }


def _slices(kl: float, top1: float, hits: int) -> dict:
    return {
        name: {"name": name, "source": "bundled", "prompts": 8, "positions": 128, "kl": kl * k,
               "top1_agreement": 1.0 - (1.0 - top1) * k, "gold_prompts": 8, "gold_correct": hits,
               "teacher_correct": 8, "exact_match_hits": hits}
        for name, k in (("code", 1.0), ("facts", 1.1))
    }


def make_results(model: str = "SmolLM2-135M-Instruct", goal: str = "p95-latency") -> dict:
    """Dense + two pruned candidates: candidate-1 (MLP channels 50%, distill) is 1.25x faster with +8% ppl;
    candidate-2 (unstructured 50%) is no faster with +4% ppl."""
    dense_params, pruned_params = 134_515_008, 106_000_000
    return {
        "version": 1,
        "provenance": {
            "planner_version": "0.1.0",
            "packages": {"torch": "2.13.0", "transformers": "5.0.0"},
            "device": {"kind": "cpu", "name": "Test CPU 9000", "cpu_cores": 2, "torch_threads": 2,
                       "memory_bytes": 24_000_000_000, "os": "Linux", "python": "3.11"},
            "input_hashes": {"plan": "ab" * 32, "model": "cd" * 32},
            "started_at": "2025-01-01T00:00:00Z",
            "finished_at": "2025-01-01T00:20:00Z",
            "run_dir": "runs/plan-test",
            "command": "plan run plan.json",
        },
        "plan": {
            "path": "plan.json",
            "goal": goal,
            "gpu": "a100-80gb-sxm",
            "model": model,
            "workload": {"prompt_len": 64, "gen_len": 16, "dtype": "bf16"},
            "candidates": [
                {"rank": 1, "name": "candidate-1", "prune": {"kind": "mlp_channels", "ratio": 0.5},
                 "recovery": {"method": "distill", "max_steps": 40}, "projected_to": "a100-80gb-sxm",
                 "predicted_speedup": 1.42, "predicted": {"p95_ms": 7.1}},
                {"rank": 2, "name": "candidate-2", "prune": {"kind": "unstructured", "sparsity": 0.5},
                 "recovery": {"method": "none"}, "projected_to": "a100-80gb-sxm", "predicted_speedup": 1.0},
            ],
        },
        "variants": [
            {"name": "dense", "role": "dense", "checkpoint": None,
             "size": {"parameters": dense_params, "file_bytes": 538_000_000, "pattern": "dense",
                      "shape": {"num_layers": 30, "intermediate_size": 1536, "num_heads": 9, "num_kv_heads": 3}},
             "quality": {"heldout_ppl": 10.0, "heldout_nll": 2.302585, "heldout_tokens": 8192, "seq_len": 512,
                         "slices": _slices(0.0, 1.0, 8)},
             "latency": _latency(1.0, 1_200_000_000)},
            {"name": "candidate-1", "role": "pruned", "candidate_rank": 1, "checkpoint": "runs/plan-test/candidate-1",
             "size": {"parameters": pruned_params, "file_bytes": 424_000_000, "pattern": "mlp_channels",
                      "shape": {"num_layers": 30, "intermediate_size": 768, "num_heads": 9, "num_kv_heads": 3}},
             "pruning": {"spec": {"kind": "mlp_channels", "ratio": 0.5}, "params_before": dense_params,
                         "params_after": pruned_params, "seconds": 3.2},
             "recovery": {"spec": {"method": "distill", "max_steps": 40}, "steps": 40, "tokens": 40960,
                          "loss_curve": [{"step": s, "loss": 3.0 * 0.97 ** s + 0.5} for s in range(0, 41, 4)],
                          "ppl_before": 19.0, "ppl_after": 10.8, "seconds": 300.0, "stopped_by": "max_steps"},
             "quality": {"heldout_ppl": 10.8, "heldout_nll": 2.379546, "heldout_tokens": 8192, "seq_len": 512,
                         "slices": _slices(0.12, 0.86, 7)},
             "latency": _latency(0.8, 1_000_000_000)},
            {"name": "candidate-2", "role": "pruned", "candidate_rank": 2, "checkpoint": "runs/plan-test/candidate-2",
             "size": {"parameters": dense_params, "nonzero_parameters": 90_000_000, "file_bytes": 538_000_000,
                      "achieved_sparsity": 0.5, "pattern": "unstructured"},
             "pruning": {"spec": {"kind": "unstructured", "sparsity": 0.5}, "params_before": dense_params,
                         "params_after": dense_params, "achieved_sparsity": 0.5, "seconds": 8.0},
             "quality": {"heldout_ppl": 10.4, "heldout_nll": 2.341806, "heldout_tokens": 8192, "seq_len": 512,
                         "slices": _slices(0.05, 0.93, 8)},
             "latency": _latency(1.0, 1_200_000_000)},
        ],
        "stages": [{"name": "load", "seconds": 4.0}, {"name": "prune:candidate-1", "seconds": 3.2}],
    }


def write_results(folder: Path, data: dict, name: str = "results.json") -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def mutate(data: dict, **changes) -> dict:
    out = copy.deepcopy(data)
    out.update(changes)
    return out


def test_fixture_is_a_valid_results_document(tmp_path):
    results = Results.model_validate(make_results())
    assert [v.name for v in results.variants] == ["dense", "candidate-1", "candidate-2"]
    sp = {s.variant: s for s in results.speedups}
    assert sp["candidate-1"].measured == pytest.approx(1.25)
    assert sp["candidate-2"].measured == pytest.approx(1.0)
    again = load_results(save_results(results, tmp_path / "r.json"))
    assert again.model_dump() == results.model_dump()


def make_plan(gpu: str = "a100-80gb-sxm") -> dict:
    """A plan.json matching make_results(): two candidates with reasons, one rejected alternative."""
    basis = f"projected to {gpu} (roofline model)"
    return {
        "version": 1,
        "kind": "planner.plan",
        "model": "",
        "model_name": "SmolLM2-135M-Instruct",
        "goal": "p95-latency",
        "gpu": gpu,
        "workload": {"prompt_len": 64, "gen_len": 16, "dtype": "bf16"},
        "budget": {"max_ppl_increase": 0.10},
        "goal_metric": "p95_ms",
        "dense_goal": 10.0,
        "rules_version": "1+abc",
        "rules_fired": ["structured-mlp-for-memory-bound-decode", "unstructured-no-dense-speedup"],
        "candidates": [
            {"rank": 1, "name": "candidate-1", "label": "MLP channels -50% (activation) + distill",
             "prune": {"kind": "mlp_channels", "ratio": 0.5}, "recovery": {"method": "distill", "max_steps": 40},
             "projected_to": gpu, "basis": basis, "goal_metric": "p95_ms", "predicted_goal": 7.04,
             "predicted_speedup": 1.42, "quality_risk": "medium",
             "chosen_by": ["structured-mlp-for-memory-bound-decode"],
             "reasons": ["decode is memory-bound on the target: fewer weight bytes read per token",
                         "the MLP holds 62% of the projected request time"]},
            {"rank": 2, "name": "candidate-2", "label": "unstructured 50% (wanda)",
             "prune": {"kind": "unstructured", "sparsity": 0.5}, "recovery": {"method": "none"},
             "projected_to": gpu, "basis": basis, "goal_metric": "p95_ms", "predicted_speedup": 1.0,
             "quality_risk": "low", "reasons": ["a quality reference: dense kernels multiply the zeros"]},
        ],
        "rejected": [
            {"name": "layers-4", "label": "4 layers removed (block influence)",
             "prune": {"kind": "layers", "num_layers": 4}, "rules": ["budget"],
             "reasons": ["predicted perplexity increase above the +10% budget"]},
        ],
        "verdict": {"action": "prune", "text": "Prune MLP channels by 50% and distill: 1.42x projected p95."},
    }


def test_plan_fixture_is_a_valid_plan():
    from planner.decide.plan import parse_plan

    plan = parse_plan(make_plan())
    assert [c.rank for c in plan.candidates] == [1, 2]


def make_profile(gpu: str = "a100-80gb-sxm"):
    """A Profile of the SmolLM2-135M shape: projected with the real roofline model, 'measured' figures made up
    in code (as a profile.json would carry them)."""
    from planner.arch import ModelShape
    from planner.profile.nvml import NvmlReport
    from planner.profile.roofline import estimate
    from planner.profile.schema import (LocalDevice, LocalPeaks, Measured, MeasuredOp, MeasuredPhase, MemoryFacts,
                                        ModelInfo, Profile)
    from planner.workload import Workload

    shape = ModelShape(family="llama", model_type="llama", num_layers=30, hidden_size=576, intermediate_size=1536,
                       num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152, gated_mlp=True,
                       tied_embeddings=True)
    workload = Workload(prompt_len=64, gen_len=16, dtype="bf16")
    projected = estimate(shape, workload, gpu)
    local = estimate(shape, workload.model_copy(update={"dtype": "fp32"}), "cpu",
                     peaks={"flops": 2e11, "bandwidth": 2e10})
    label = "measured on cpu (Test CPU 9000, 2 threads)"

    def phase(name: str, total: float) -> MeasuredPhase:
        cats = {"gate_proj": 0.2, "up_proj": 0.2, "down_proj": 0.2, "q_proj": 0.06, "k_proj": 0.02,
                "v_proj": 0.02, "o_proj": 0.06, "attention_core": 0.08, "lm_head": 0.06, "norm": 0.04,
                "framework": 0.06}
        by_category = {c: total * s for c, s in cats.items()}
        parts = {"mlp": 0.6, "attn_proj": 0.16, "attn_core": 0.08, "lm_head": 0.06, "other": 0.10}
        return MeasuredPhase(
            phase=name, label=label, batch_size=1, new_tokens=64 if name == "prefill" else 1,
            context_len=64.0 if name == "prefill" else 72.0, profiled_ms=[total * 1.05] * 3,
            wall_ms=[total * 1.06] * 3, unprofiled_ms=[total] * 3, total_ms=total, by_category=by_category,
            by_part={p: total * s for p, s in parts.items()}, by_module={"model.layers": total * 0.9},
            ops=[MeasuredOp(name="aten::mm", category="gate_proj", part="mlp", calls=30, self_ms=total * 0.2)])

    measured = Measured(label=label, dtype="fp32",
                        peaks=LocalPeaks(label=label, flops=2e11, bandwidth=2e10, dtype="fp32", method="test"),
                        prefill=phase("prefill", 80.0), decode=phase("decode", 9.0), local_roofline=local,
                        seconds=12.0)
    memory = MemoryFacts(label=f"projected to {gpu}", dtype="bf16", weight_bytes=projected.weight_bytes,
                         kv_cache_bytes_per_token=projected.kv_cache_bytes_per_token, kv_sequences=1,
                         kv_tokens_per_sequence=80, kv_cache_bytes=projected.kv_cache_bytes_per_token * 80,
                         activation_peak_bytes=projected.activation_bytes, gpu_memory_bytes=80e9)
    return Profile(
        planner_version="0.1.0", created_at="2025-01-01T00:00:00Z",
        model=ModelInfo(name="SmolLM2-135M-Instruct", spec="", source_kind="embedded", path="/cache/smollm2",
                        weights_present=True, shape=shape, parameters=projected.parameters,
                        parameters_by_role={"mlp": 79_626_240}),
        workload=workload, target_gpu=gpu, target_gpu_name="NVIDIA A100 80GB SXM4",
        local=LocalDevice(kind="cpu", name="Test CPU 9000", threads=2, nvml=NvmlReport(available=False,
                          status="no NVIDIA driver"), label="cpu (Test CPU 9000, 2 threads)"),
        measured=measured, projected=projected, memory=memory, labels={"measured": label})


def test_profile_fixture_round_trips():
    from planner.profile.schema import Profile

    profile = make_profile()
    again = Profile.model_validate_json(profile.model_dump_json())
    assert again.projected.decode.bound == profile.projected.decode.bound
