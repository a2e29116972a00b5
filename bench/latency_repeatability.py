"""How repeatable is the latency benchmark? Dense against dense, in one run.

Two separate copies of the same dense model are timed exactly as `plan run` times dense against pruned
(planner.latency.benchmark: warm-up, then A B, B A, A B ...). Any difference between their percentiles is the benchmark's
own noise; a measured speedup smaller than this noise means nothing. The target: p95 of A and B within 5%.

    python bench/latency_repeatability.py                       # embedded SmolLM2-135M, 128-token prompts, 32 new
    python bench/latency_repeatability.py --prompt-len 512 --gen-len 128 --requests 20
    python bench/latency_repeatability.py --model ./ckpt --device cuda --dtype bf16
    python bench/latency_repeatability.py --threads 1             # on a small shared CPU: fewer stalls, tighter tails
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--requests", type=int, default=30, help="timed requests per copy")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default=None)
    p.add_argument("--runtime", default="hf-eager")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, as `plan run --threads` (default: torch's choice, one per core)")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed relative p95 difference (0.05 = 5%%)")
    args = p.parse_args(argv)

    import copy

    from planner.latency import BenchConfig, Subject, benchmark
    from planner.models import load_model
    from planner.profile.device import pick_device
    from planner.run.provenance import device_info
    from planner.run.results import Latency

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    loaded = load_model(args.model, dtype=args.dtype, device=device)
    twin = copy.deepcopy(loaded.model)  # separate weights: nothing shared between A and B but the code
    label = device_info(device).label
    cfg = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size,
                      requests=args.requests, warmup=args.warmup, runtime=args.runtime, dtype=args.dtype,
                      device=device, measure_memory=False)
    start = time.perf_counter()
    out = benchmark([Subject("A", loaded.model), Subject("B", twin)], loaded.tokenizer, cfg, label)
    wall = time.perf_counter() - start
    a, b = Latency(**out["A"]), Latency(**out["B"])

    print(f"measured on {label}; {loaded.source.name}; runtime {args.runtime}, {args.dtype}, "
          f"prompt {args.prompt_len}, gen {args.gen_len}, batch {args.batch_size}, "
          f"{args.requests} timed + {args.warmup} warm-up requests per copy, interleaved A B / B A; {wall:.0f} s")
    print(f"{'metric':<12}{'A':>12}{'B':>12}{'B / A':>10}")
    rows = [("p50 ms", a.p50_ms, b.p50_ms), ("p95 ms", a.p95_ms, b.p95_ms), ("p99 ms", a.p99_ms, b.p99_ms),
            ("TTFT p50", a.ttft_p50_ms, b.ttft_p50_ms), ("TPOT p50", a.tpot_p50_ms, b.tpot_p50_ms),
            ("tokens/s", a.tokens_per_s, b.tokens_per_s)]
    for name, x, y in rows:
        print(f"{name:<12}{x:>12.2f}{y:>12.2f}{y / x:>10.3f}")
    diff = abs(b.p95_ms - a.p95_ms) / a.p95_ms
    verdict = "PASS" if diff < args.tolerance else "FAIL"
    print(f"p95 dense vs dense differs by {100 * diff:.2f}% (target < {100 * args.tolerance:.0f}%): {verdict}")
    return 0 if diff < args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
