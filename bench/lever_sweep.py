"""Which lever wins where: the decision over model configs x GPUs x goals, as `plan` makes it (serving runtime
vLLM, the default workload: prompt 512, generate 128, batch 1, the GPU's serving dtype), from config shapes alone.

    python bench/lever_sweep.py                 # 6 models (0.5B-70B) x 4 GPUs x 4 goals
    python bench/lever_sweep.py --budget 0.05   # a tighter quality budget

Prints the winning lever of every cell (prune, quantize, shard, prune+quantize, dont_prune), its candidate and
predicted gain, then the counts; and checks three expectations: a 7-8B model at p95 on an A100 ranks a quantization
candidate first; a 70B bf16 model on one 80 GB GPU never gets a pruning-only plan first; a sub-1B model at batch 1
gets no int4 speedup above 1.1x on an A100 or H100 (the published case: 4-bit weights did not make a 0.5B model
decode faster under vLLM on an A100; on low-bandwidth GPUs such as the L4, bytes weigh more and the projection
says so). Model configs come from bench/published/decode.yaml (each with its source).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "llama-2-7b", "llama-3-8b", "qwen2.5-14b", "llama-2-70b")
GPUS = ("a100", "h100", "l4", "a10g")
GOALS = ("p95-latency", "throughput", "peak-memory", "cost-per-token")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.10)
    args = parser.parse_args(argv)

    from planner.api import serving_workload
    from planner.decide.engine import decide
    from planner.decide.rules import load_rules
    from planner.gpus import get_gpu
    from planner.profile.facts import projection_facts
    from planner.profile.roofline import estimate, parameter_count
    from planner.workload import Goal, QualityBudget, Workload
    from validate_projection import load_rows

    _, shapes = load_rows()
    missing = [m for m in MODELS if m not in shapes]
    models = [m for m in MODELS if m in shapes]
    if missing:
        print(f"(not in bench/published: {', '.join(missing)})")
    rules = load_rules()
    counts: collections.Counter = collections.Counter()
    checks = {"7-8B p95 on A100: quantization first": None, "70B on one 80 GB GPU: never pruning-only first": True,
              "sub-1B batch 1 on A100/H100: no int4 speedup above 1.1x": True}
    print(f"{'model':<14} {'gpu':<14} {'goal':<15} {'verdict':<15} top candidate (predicted)")
    for name in models:
        shape = shapes[name]
        params = parameter_count(shape)
        for gpu_id in GPUS:
            gpu = get_gpu(gpu_id)
            workload, _ = serving_workload(Workload(), gpu)
            facts = projection_facts(shape, workload, gpu, estimate(shape, workload, gpu))
            for goal in GOALS:
                plan = decide(goal=Goal(goal), gpu=gpu, workload=workload, shape=shape, ruleset=rules,
                              budget=QualityBudget(max_ppl_increase=args.budget), profile_facts=facts, params=params)
                action = plan.verdict.action
                counts[action] += 1
                top = plan.candidates[0] if plan.candidates else None
                shown = f"{top.label} ({top.predicted_speedup:.2f}x, {top.quality_risk})" if top else \
                    plan.verdict.text[:70]
                print(f"{name:<14} {gpu.id:<14} {goal:<15} {action:<15} {shown}")
                if goal == "p95-latency" and gpu_id == "a100" and 6e9 <= params <= 9e9:
                    ok = top is not None and top.quantize is not None
                    checks["7-8B p95 on A100: quantization first"] = ok and checks[
                        "7-8B p95 on A100: quantization first"] is not False
                if params > 60e9 and gpu.memory_gb and gpu.memory_gb >= 80 and action == "prune":
                    checks["70B on one 80 GB GPU: never pruning-only first"] = False
                if params < 1e9 and workload.batch_size == 1 and gpu.family in ("a100", "h100"):
                    for c in list(plan.candidates) + list(plan.rejected):
                        q = getattr(c, "quantize", None)
                        if q is not None and q.scheme == "int4-weight-only" and c.prune is None and \
                                (c.predicted_speedup or 0) > 1.1 and goal in ("p95-latency", "throughput"):
                            checks["sub-1B batch 1 on A100/H100: no int4 speedup above 1.1x"] = False
    print("\nwinning lever, counts over", sum(counts.values()), "cells:",
          ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
