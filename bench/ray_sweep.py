"""A candidate sweep, sequential against Ray, side by side in one run: the wall time of `plan run --all K` with
`--executor sequential` and with `--executor ray` (a local Ray instance on this machine), on the same plan.

The plan is made first (default: the embedded SmolLM2-135M, `--goal checkpoint-size --gpu cpu --threads 1`), or
given with --plan. Both runs start as fresh `plan run` processes (the same imports to pay), write their own run
folders, and their figures are compared: held-out perplexity of every variant must agree (a Ray task uses 1 torch
thread where the sequential run uses every core, so the last digits may differ).

What parallelism can buy here: a task per candidate runs up to (cores / --ray-threads) candidates at once. What it
cannot: the dense baseline (teacher, quality:dense) runs once before the tasks and latency once after them, in the
driver, one variant at a time (the interleaved A/B rule); every task loads its own copy of the dense model; Ray
takes seconds to start; and on a small CPU the sequential run already spreads one candidate over every core.

    python bench/ray_sweep.py                                  # top 3 candidates, the run's default figures
    python bench/ray_sweep.py --all 2 --requests 2 --ppl-tokens 512 --recovery-minutes 0.2 --no-probe   # smoke
    python bench/ray_sweep.py --plan plan.json --ray-threads 2            # 2 CPUs per task
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_plan(args, folder: Path) -> Path:
    import planner
    from planner.decide.plan import save_plan

    t = time.perf_counter()
    plan = planner.plan("checkpoint-size", "cpu", model=args.model, threads=1, probe=not args.no_probe,
                        recovery_minutes=args.recovery_minutes)
    path = save_plan(plan, folder / "plan.json")
    print(f"plan: {len(plan.candidates)} candidates for {plan.goal.value} on cpu ({time.perf_counter() - t:.0f} s); "
          f"running the top {min(args.all, len(plan.candidates))}: "
          + "; ".join(c.label for c in plan.candidates[:args.all]), flush=True)
    return path


def timed_run(plan: Path, out: Path, executor: str, threads: int | None, args) -> float:
    cmd = [sys.executable, "-m", "planner", "run", str(plan), "--all", str(args.all), "--out", str(out),
           "--executor", executor, "--requests", str(args.requests), "--ppl-tokens", str(args.ppl_tokens),
           "--no-report", "--quiet"] + (["--threads", str(threads)] if threads else [])
    if args.slices is not None:
        cmd += ["--slices", args.slices]
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{executor} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def stage_seconds(out: Path) -> dict[str, float]:
    data = json.loads((out / "results.json").read_text())
    return {s["name"]: s["seconds"] for s in data["stages"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default=None, help="an existing plan.json (default: make one on the embedded model)")
    p.add_argument("--model", default=None, help="model for the plan (default: the embedded SmolLM2-135M)")
    p.add_argument("--all", type=int, default=3, help="candidates to run (default 3)")
    p.add_argument("--requests", type=int, default=10, help="timed requests per variant (plan run's default 10)")
    p.add_argument("--ppl-tokens", type=int, default=16_384, help="held-out tokens for perplexity (default 16384)")
    p.add_argument("--slices", default=None, help="plan run --slices (default: every bundled slice)")
    p.add_argument("--recovery-minutes", type=float, default=None,
                   help="the plan's recovery allowance per candidate (default: planner's, 10 minutes)")
    p.add_argument("--no-probe", action="store_true", help="make the plan without the one-shot quality probe")
    p.add_argument("--seq-threads", type=int, default=None, help="plan run --threads of the sequential run "
                                                                      "(default: torch's choice, every core)")
    p.add_argument("--ray-threads", type=int, default=None,
                   help="plan run --threads of the Ray run: CPUs and torch threads per task, and the driver's torch "
                        "threads (default: 1 CPU per task, torch's choice in the driver)")
    p.add_argument("--keep", default=None, help="keep the run folders under this folder")
    args = p.parse_args(argv)

    try:
        import ray
    except ImportError:
        sys.exit("needs Ray: pip install 'planner[ray]'")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        plan = Path(args.plan) if args.plan else make_plan(args, folder)
        n = cores()
        per_task = args.ray_threads or 1
        print(f"this host: {n} cores; sequential: one candidate after another, "
              f"{args.seq_threads or 'default'} torch threads; ray: a local instance of {n} CPUs, {per_task} per "
              f"task, so up to {max(n // per_task, 1)} candidates at once (Ray {ray.__version__})", flush=True)
        seq = timed_run(plan, folder / "sequential", "sequential", args.seq_threads, args)
        print(f"sequential: {seq:.1f} s", flush=True)
        par = timed_run(plan, folder / "ray", "ray", args.ray_threads, args)
        print(f"ray:        {par:.1f} s", flush=True)
        print(f"ray / sequential wall time: {par / seq:.2f} ({seq / par:.2f}x faster)" if par < seq else
              f"ray / sequential wall time: {par / seq:.2f} (ray {par / seq:.2f}x slower)")

        a, b = stage_seconds(folder / "sequential"), stage_seconds(folder / "ray")
        serial = ("teacher", "quality:dense", "latency")
        cand = [k for k in a if k not in serial]
        print(f"driver stages (run once, serially, in both): sequential {sum(a[k] for k in serial):.1f} s, ray "
              f"{sum(b[k] for k in serial):.1f} s; candidate stages summed: sequential {sum(a[k] for k in cand):.1f} "
              f"s, ray {sum(b[k] for k in cand):.1f} s of task time (each task also loads the dense model)")
        ppl, threads = {}, {}
        for name in ("sequential", "ray"):
            data = json.loads((folder / name / "results.json").read_text())
            ppl[name] = {v["name"]: v["quality"]["heldout_ppl"] for v in data["variants"]}
            threads[name] = data["provenance"]["device"].get("torch_threads")
        print(f"torch threads in the driver (as recorded): sequential {threads['sequential']}, ray {threads['ray']}"
              + ("; OMP_NUM_THREADS is set" if os.environ.get("OMP_NUM_THREADS") else ""))
        worst = max(abs(ppl["ray"][k] / ppl["sequential"][k] - 1) for k in ppl["sequential"])
        print("held-out ppl, sequential vs ray: " + ", ".join(f"{k} {ppl['sequential'][k]:.3f} / {ppl['ray'][k]:.3f}"
                                                             for k in ppl["sequential"])
              + f" (largest difference {worst:.1e})")
        print(f"on {n} cores, Ray can at best overlap {max(n // per_task, 1)} candidates' prune/recover/"
              "quality stages; it cannot shorten the dense baseline or the latency stage (serial, in the driver, so "
              "no two variants are timed at once), pays Ray's start-up and one dense-model load per task, and "
              "competes with a sequential run that already uses every core for one candidate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
