"""torchao quantization on the embedded SmolLM2-135M, on this CPU: measured decode and prefill time against dense,
held-out perplexity, and the size of each export. One run, variants interleaved, ratios side by side.

    python bench/quant_cpu.py                          # fp32 and bf16, int8 and int4 weight-only (~10 min, 1 thread)
    python bench/quant_cpu.py --quick                  # fewer rounds and tokens, to check the script runs
    python bench/quant_cpu.py --schemes int8-weight-only,w8a8-int8 --dtypes fp32

Latency: `planner.latency.benchmark` (transformers generate, eager, batch 1, greedy, exactly `--gen-len` tokens):
prefill = time to first token of a `--prompt-len` prompt, decode = time per output token after it. Variants of one
dtype take turns (A B C, C B A, ...); times are medians over requests, ratios are medians over rounds of
(dense / variant) within the same round. "weights GB/s" is the bytes every decode step reads (all weights as
stored, scales included) over the decode time per token: how far the step is from memory-bound.

Quality: perplexity on `planner.data.heldout_text()`, windows of `--ppl-seq` tokens.

int4 on CPU runs torchao's CPU tinygemm layout (Int4OpaqueTensor); SmolLM2's width 576 is not a multiple of
128, hence group size 64 by default. That layout has no checkpoint export in torchao 0.18 (its size is then
"not exportable"); the in-memory size of the quantized projections is printed for every variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--schemes", default="int8-weight-only,int4-weight-only",
                   help="comma-separated QuantSpec schemes besides dense (default int8 and int4 weight-only)")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size (default 64: 576 = 9 x 64)")
    p.add_argument("--dtypes", default="fp32,bf16",
                   help="serving dtypes, each its own interleaved group with its own dense (default fp32,bf16)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ppl-tokens", type=int, default=512, help="held-out tokens per perplexity (default 512)")
    p.add_argument("--ppl-seq", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="2 rounds, prompt 32, gen 8, 256 perplexity tokens")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_len, args.gen_len, args.ppl_tokens = 2, 32, 8, 256
    return args


def stored_model_bytes(model) -> int:
    from planner.quant.engine import stored_bytes

    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += stored_bytes(t)
    return total


def build_variants(dense, tokenizer, dtype: str, schemes, group_size: int, scratch: Path):
    """[(name, model, QuantResult | None, export bytes or why there is no export)] for one dtype, dense first."""
    import torch

    from planner.errors import InputError
    from planner.export import export_model
    from planner.models import TORCH_DTYPES
    from planner.quant.engine import export_quantized, quantize_model
    from planner.quant.specs import QuantSpec

    base = copy.deepcopy(dense).to(getattr(torch, TORCH_DTYPES[dtype]))
    meta = export_model(base, tokenizer, scratch / f"dense-{dtype}")
    variants = [("dense", base, None, meta["file_bytes"])]
    for scheme in schemes:
        spec = QuantSpec(scheme=scheme, group_size=group_size if scheme == "int4-weight-only" else None)
        model = copy.deepcopy(base)
        try:
            result = quantize_model(model, spec)
        except InputError as exc:
            print(f"  {spec.label} at {dtype}: skipped: {exc}")
            continue
        try:
            size = export_quantized(model, tokenizer, scratch / f"{scheme}-{dtype}", spec)["file_bytes"]
        except InputError as exc:
            size = str(exc)
        variants.append((spec.label, model, result, size))
    return variants


def median_ratio(dense: list[float], other: list[float]) -> float:
    return statistics.median(d / o for d, o in zip(dense, other))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from planner.data import heldout_text
    from planner.evaluate.perplexity import perplexity_of_tokens
    from planner.latency import BenchConfig, Subject, benchmark
    from planner.models import load_model
    from planner.quant.engine import require_torchao, stored_bytes, target_linears

    torchao = require_torchao()
    loaded = load_model(None, dtype="fp32")
    tok = loaded.tokenizer
    schemes = [s for s in args.schemes.split(",") if s]
    print(f"# torchao quantization bench: {loaded.source.name}")
    print(f"device: {platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), "
          f"{torch.get_num_threads()} torch thread(s); torch {torch.__version__}, torchao {torchao.__version__}; "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"workload: prompt {args.prompt_len}, gen {args.gen_len}, batch 1, hf-eager generate; "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")
    heldout_ids = tok(heldout_text(), add_special_tokens=False)["input_ids"]
    figures = []
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as scratch:
        for dtype in [d for d in args.dtypes.split(",") if d]:
            print(f"\n## {dtype}", flush=True)
            variants = build_variants(loaded.model, tok, dtype, schemes, args.group_size, Path(scratch))
            subjects = [Subject(name, model) for name, model, _, _ in variants]
            config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, requests=args.rounds,
                                 warmup=args.warmup, dtype=dtype, measure_memory=False)
            timed = benchmark(subjects, tok, config, measured_on="this CPU", progress=False)
            dense_t = timed["dense"]
            header = (f"{'variant':<28} {'decode ms/tok':>13} {'decode x':>9} {'prefill ms':>11} {'prefill x':>10} "
                      f"{'weights MB':>10} {'GB/s':>6} {'proj. MB':>9} {'export MB':>10} {'ppl':>8} {'ppl x':>6}")
            print(header)
            print("-" * len(header))
            dense_ppl = None
            for name, model, result, size in variants:
                t = timed[name]
                tpot, ttft = statistics.median(t["tpot_samples_ms"]), statistics.median(t["ttft_samples_ms"])
                weights = stored_model_bytes(model)
                ppl = perplexity_of_tokens(model, heldout_ids, args.ppl_seq, args.ppl_tokens)["ppl"]
                dense_ppl = dense_ppl or ppl
                proj = result.quantized_bytes if result else sum(stored_bytes(m.weight)
                                                                 for m in target_linears(model).values())
                row = dict(dtype=dtype, variant=name, decode_ms_per_token=tpot,
                           decode_speedup=median_ratio(dense_t["tpot_samples_ms"], t["tpot_samples_ms"]),
                           prefill_ms=ttft, prefill_speedup=median_ratio(dense_t["ttft_samples_ms"],
                                                                         t["ttft_samples_ms"]),
                           weights_bytes=weights, weights_gb_per_s=weights / (tpot / 1000) / 1e9,
                           projection_bytes=proj, export_bytes=size if isinstance(size, int) else None,
                           export_refused=None if isinstance(size, int) else size, ppl=ppl, ppl_ratio=ppl / dense_ppl,
                           backend=result.backend if result else "dense",
                           decode_samples_ms=t["tpot_samples_ms"], prefill_samples_ms=t["ttft_samples_ms"])
                figures.append(row)
                export = f"{size / 1e6:10.1f}" if isinstance(size, int) else f"{'n/a':>10}"
                print(f"{name:<28} {tpot:13.2f} {row['decode_speedup']:8.2f}x {ttft:11.1f} "
                      f"{row['prefill_speedup']:9.2f}x {weights / 1e6:10.1f} {row['weights_gb_per_s']:6.2f} "
                      f"{proj / 1e6:9.1f} {export} {ppl:8.3f} {row['ppl_ratio']:5.3f}x", flush=True)
            dense_size = variants[0][3]
            for name, _, result, size in variants[1:]:
                if isinstance(size, int):
                    print(f"  {name}: export {size / dense_size:.3f}x the dense {dtype} checkpoint "
                          f"({result.backend})")
                else:
                    print(f"  {name}: no export: {size}")
            del variants, subjects
    print("\nx = dense / variant (above 1: faster); ppl x = variant / dense (above 1: worse). "
          f"Perplexity: {args.ppl_tokens} held-out tokens, windows of {args.ppl_seq}. "
          f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
