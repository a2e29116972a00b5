"""How long `run_profile` takes, and how much the profiler inflates what it measures.

Runs the whole profile (load, local peaks, warm-up, unprofiled repeats, profiled repeats, projection) on the
embedded model at the default workload and prints, side by side from the same run:

- wall-clock seconds of the whole profile, and of each stage;
- per phase: median time without the profiler, median time under torch.profiler with module labels, and the ratio
  (the profiler's overhead).

    python bench/profile_overhead.py                 # embedded SmolLM2-135M, prompt 512, gen 128, a100
    python bench/profile_overhead.py --threads 1 --prompt-len 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--gpu", default="a100")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    import torch

    from planner.profile import run_profile
    from planner.workload import Workload

    imported = time.perf_counter()
    stages: list[tuple[str, float]] = []

    def on_step(message: str) -> None:
        stages.append((message, time.perf_counter()))

    workload = Workload(prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size)
    began = time.perf_counter()
    profile = run_profile(args.model, args.gpu, workload, repeats=args.repeats, threads=args.threads,
                          on_step=on_step)
    done = time.perf_counter()

    m = profile.measured
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: {profile.model.name}; workload: prompt {workload.prompt_len}, gen {workload.gen_len}, "
          f"batch {workload.batch_size}; {m.label}; torch {torch.__version__}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"import planner + torch: {imported - start:6.1f} s")
    print(f"run_profile total:      {done - began:6.1f} s  (measured part {m.seconds:.1f} s; "
          f"local peaks {'from cache' if m.peaks.cached else 'measured now'})")
    marks = [("config, meta model, local device, projection", began)] + stages + [("", done)]
    for (message, at), (_, until) in zip(marks, marks[1:]):
        print(f"  {until - at:6.1f} s  {message}")
    print()
    print(f"{'phase':<8} {'unprofiled ms':>14} {'profiled ms':>12} {'ratio':>7} {'categorised':>12} "
          f"{'framework':>10}")
    for phase in (m.prefill, m.decode):
        plain, profiled = phase.median_ms, statistics.median(phase.profiled_ms)
        print(f"{phase.phase:<8} {plain:14.1f} {profiled:12.1f} {profiled / plain:7.3f} "
              f"{100 * phase.coverage:11.1f}% {100 * phase.category_share.get('framework', 0.0):9.1f}%")
    print()
    print("unprofiled repeats (ms): prefill", [round(x, 1) for x in m.prefill.unprofiled_ms],
          "decode", [round(x, 1) for x in m.decode.unprofiled_ms])
    print("profiled repeats (ms):   prefill", [round(x, 1) for x in m.prefill.profiled_ms],
          "decode", [round(x, 1) for x in m.decode.profiled_ms])
    for note in m.notes:
        print("note:", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
