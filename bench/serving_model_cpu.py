"""The serving model checked on this CPU: a `--gpu cpu` plan's predicted TTFT, TPOT, p50 and speedups beside the
same figures measured here, dense and pruned interleaved in one run (planner.latency, hf-eager).

    python bench/serving_model_cpu.py --threads 1                      # the embedded model, top 2 candidates
    python bench/serving_model_cpu.py --threads 1 --prompt-len 256 --gen-len 64 --requests 6

The pruned models are timed without recovery: recovery changes weights, not shapes, so it cannot change latency.
The plan is made exactly as `plan --goal p95-latency --gpu cpu --threads N` makes it (cached profile included).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--top", type=int, default=2, help="candidates to time beside dense")
    parser.add_argument("--budget", type=float, default=0.3, help="--max-ppl-increase for the plan (more candidates)")
    args = parser.parse_args(argv)

    import torch

    from planner.decide.engine import decide
    from planner.decide.rules import load_rules
    from planner.gpus import get_gpu
    from planner.latency import BenchConfig, Subject, benchmark
    from planner.models import load_model
    from planner.perf.runtimes import for_target
    from planner.profile import load_or_run_profile
    from planner.profile.facts import profile_facts
    from planner.profile.roofline import estimator_like
    from planner.prune import apply_pruning
    from planner.prune.masked.calibration import calibration_ids
    from planner.workload import Goal, QualityBudget, Workload

    torch.set_num_threads(args.threads)
    gpu = get_gpu("cpu")
    workload = for_target(Workload(prompt_len=args.prompt_len, gen_len=args.gen_len), gpu)
    profile = load_or_run_profile(None, gpu, workload, threads=args.threads)
    rates = profile.projected.serving.rates
    estimator = estimator_like(profile.projected)
    plan = decide(goal=Goal.P95_LATENCY, gpu=gpu, workload=workload, budget=QualityBudget(max_ppl_increase=args.budget),
                  shape=profile.model.shape, ruleset=load_rules(), profile_facts=profile_facts(profile),
                  params=profile.model.parameters, estimator=estimator)
    chosen = [c for c in plan.candidates if c.prune.kind in ("layers", "mlp_channels", "heads")][: args.top]
    print(f"rates: {rates.source}")
    loaded = load_model(None, dtype="fp32")
    calib = calibration_ids(loaded.tokenizer)
    subjects = [Subject("dense", loaded.model)]
    for c in chosen:
        student = copy.deepcopy(loaded.model)
        apply_pruning(student, c.prune, calib)
        subjects.append(Subject(c.name, student))
    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, requests=args.requests, warmup=1,
                         runtime="hf-eager", dtype="fp32", device="cpu", measure_memory=False)
    measured = benchmark(subjects, loaded.tokenizer, config, measured_on=f"cpu, {args.threads} thread(s)")
    predicted = {"dense": plan.dense_predicted} | {c.name: c.predicted for c in chosen}

    def med(values):
        return statistics.median(values) if values else None

    print(f"{'variant':40} {'figure':6} {'predicted':>10} {'measured':>10} {'error':>7}")
    dense_measured = None
    for s in subjects:
        m = measured[s.name]
        figures = {"ttft": med(m["ttft_samples_ms"]), "tpot": med(m["tpot_samples_ms"]), "p50": med(m["samples_ms"])}
        dense_measured = dense_measured or figures
        p = predicted[s.name]
        for key, pkey in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("p50", "p50_ms")):
            err = p[pkey] / figures[key] - 1
            print(f"{s.name[:40]:40} {key:6} {p[pkey]:>10.1f} {figures[key]:>10.1f} {err:>+7.0%}")
        if s.name != "dense":
            measured_speedup = dense_measured["p50"] / figures["p50"]
            predicted_speedup = plan.dense_predicted["p50_ms"] / p["p50_ms"]
            print(f"{s.name[:40]:40} {'speedup':6} {predicted_speedup:>9.3f}x {measured_speedup:>9.3f}x "
                  f"{predicted_speedup / measured_speedup - 1:>+7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
