"""Structured pruning on the embedded SmolLM2-135M: measured CPU latency against the roofline's prediction, and
held-out perplexity per importance criterion. One run, variants interleaved, medians and ratios reported.

    python bench/structured_latency.py                 # the full run (~20-30 min on 2 shared cores)
    python bench/structured_latency.py --quick         # fewer repeats / tokens, to check the script runs

Latency: fp32 on this CPU, batch 1. Prefill = one forward over a `--prompt-len` prompt that fills a KV cache and
computes logits of the last position only (as generate and serving stacks do); decode = `--decode-steps` single
token steps on that cache, reported per token. Each round runs every variant once, in a rotated order (A B C, B C A,
...), so a slow spell from other processes on the machine hits all variants alike. Times are medians over rounds;
speedups are medians over rounds of (dense time / variant time) within the same round.

Prediction: `planner.profile.roofline.estimate` for each pruned shape on this CPU's measured peaks
(`planner.profile.peaks.measure_local_peaks`); speedup = dense estimate / pruned estimate.

Quality: perplexity on `planner.data.heldout_text()` (never used for calibration); importance from
`planner.data.calibration_text()`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9, help="interleaved rounds (default 9)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--ppl-tokens", type=int, default=8192, help="held-out tokens per perplexity (default 8192)")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--ablation-samples", type=int, default=2,
                   help="calibration samples per ablation perplexity (one pass per layer; default 2)")
    p.add_argument("--skip-ppl", action="store_true", help="latency only")
    p.add_argument("--quick", action="store_true", help="3 rounds, 2048 perplexity tokens, 4 calibration samples")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.ppl_tokens, args.calib_samples, args.ablation_samples = 3, 2048, 4, 1
    return args


def latency_specs(round_to: int):
    from planner.prune.specs import HeadPruning, LayerPruning, MlpChannelPruning

    return [
        ("dense", None),
        ("mlp channels -25%", MlpChannelPruning(ratio=0.25, criterion="activation", round_to=round_to)),
        ("mlp channels -50%", MlpChannelPruning(ratio=0.50, criterion="activation", round_to=round_to)),
        ("heads -25% (kv groups)", HeadPruning(ratio=0.25, criterion="activation", mode="kv_group")),
        ("layers -4", LayerPruning(num_layers=4, criterion="block_influence")),
        ("layers -8", LayerPruning(num_layers=8, criterion="block_influence")),
    ]


def quality_specs(round_to: int):
    """Specs evaluated for perplexity only (the latency variants are evaluated too)."""
    from planner.prune.specs import HeadPruning, LayerPruning, MlpChannelPruning

    specs = []
    for ratio in (0.25, 0.50):
        for criterion in ("magnitude", "taylor"):
            specs.append((f"mlp channels -{ratio:.0%}", MlpChannelPruning(ratio=ratio, criterion=criterion,
                                                                         round_to=round_to)))
    for criterion in ("magnitude", "taylor"):
        specs.append(("heads -25% (kv groups)", HeadPruning(ratio=0.25, criterion=criterion, mode="kv_group")))
    for n in (4, 8):
        specs.append((f"layers -{n}", LayerPruning(num_layers=n, criterion="ablation")))
    return specs


def prune_copy(dense, spec, calib, ablation_calib):
    from planner.prune import apply_pruning

    model = copy.deepcopy(dense)
    ids = ablation_calib if getattr(spec, "criterion", None) == "ablation" else calib
    result = apply_pruning(model, spec, ids)
    return model.eval(), result


def time_prefill_and_decode(model, prompt, steps: int) -> tuple[float, float]:
    """Seconds for the prefill, and mean seconds per decode step (greedy, on the prefill's KV cache)."""
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - start
        cache = getattr(out, "cache", None) or out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None) or out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        decode_s = (time.perf_counter() - start) / steps
    return prefill_s, decode_s


def predicted_ms(shape, prompt_len: int, decode_steps: int, peaks: dict) -> tuple[float, float]:
    from planner.profile.roofline import estimate
    from planner.workload import Workload

    workload = Workload(prompt_len=prompt_len, gen_len=decode_steps, batch_size=1, dtype="fp32")
    est = estimate(shape, workload, "cpu", peaks={"flops": peaks["flops"], "bandwidth": peaks["bandwidth"]})
    return est.prefill_ms, est.decode_ms_per_token


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from planner.arch import get_adapter
    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.evaluate.perplexity import perplexity
    from planner.models import load_model
    from planner.profile.peaks import measure_local_peaks
    from planner.prune.structured import default_round_to

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    loaded = load_model()
    dense, tok = loaded.model, loaded.tokenizer
    adapter = get_adapter(dense)
    calib = token_blocks(tok, calibration_text(), args.calib_samples, args.calib_len)
    ablation_calib = calib[: args.ablation_samples]
    round_to = default_round_to(None, "fp32")
    heldout = heldout_text()
    print(f"# structured pruning bench: {loaded.source.name}")
    print(f"device: measured on {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, "
          f"fp32; load average before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"calibration: {args.calib_samples} x {args.calib_len} tokens of calibration text "
          f"(ablation: {args.ablation_samples} samples); round_to={round_to} (default_round_to(cpu, fp32))")

    # -- build the latency variants --------------------------------------------------------------------------
    variants = []
    for name, spec in latency_specs(round_to):
        if spec is None:
            model, result = dense, None
        else:
            model, result = prune_copy(dense, spec, calib, ablation_calib)
        shape = adapter.shape(model.config)
        params = sum(p.numel() for p in model.parameters())
        variants.append({"name": name, "spec": spec, "model": model, "shape": shape, "params": params,
                         "prune_s": result.seconds if result else 0.0, "details": result.details if result else {}})
        print(f"  built {name:<24} params {params / 1e6:7.2f}M  layers {shape.num_layers}  mlp "
              f"{shape.intermediate_size}  heads {shape.num_heads}/{shape.num_kv_heads} kv"
              + (f"  (pruned in {result.seconds:.1f}s)" if result else ""), flush=True)

    # -- roofline prediction on this CPU's measured peaks ----------------------------------------------------
    peaks = measure_local_peaks("fp32", cache=False)  # now, under the same load as the latency rounds
    print(f"local peaks (measured now): "
          f"{peaks['flops'] / 1e9:.1f} GFLOP/s fp32 GEMM, {peaks['bandwidth'] / 1e9:.1f} GB/s copy")
    for v in variants:
        v["pred_prefill_ms"], v["pred_decode_ms"] = predicted_ms(v["shape"], args.prompt_len, args.decode_steps, peaks)

    # -- interleaved latency ---------------------------------------------------------------------------------
    prompt = token_blocks(tok, heldout, 1, args.prompt_len)  # real text, not random ids
    for v in variants:  # warm-up: allocator, oneDNN kernels
        time_prefill_and_decode(v["model"], prompt, 4)
        v["prefill"], v["decode"] = [], []
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            pre, dec = time_prefill_and_decode(v["model"], prompt, args.decode_steps)
            v["prefill"].append(pre)
            v["decode"].append(dec)
        print(f"  round {r + 1}/{args.repeats} done (load {os.getloadavg()[0]:.2f})", flush=True)
    base = variants[0]

    print(f"\n## latency, measured on this CPU (median of {args.repeats} interleaved rounds; prompt "
          f"{args.prompt_len} tokens, batch 1; decode {args.decode_steps} steps) beside the roofline projected "
          f"to this CPU's measured peaks")
    header = (f"{'variant':<24} {'params':>8} {'prefill ms':>11} {'speedup':>8} {'predicted':>9} "
              f"{'decode ms/tok':>13} {'speedup':>8} {'predicted':>9}")
    print(header)
    print("-" * len(header))
    for v in variants:
        pre, dec = statistics.median(v["prefill"]), statistics.median(v["decode"])
        v.update(prefill_ms=pre * 1e3, decode_ms=dec * 1e3,
                 prefill_speedup=statistics.median(b / x for b, x in zip(base["prefill"], v["prefill"])),
                 decode_speedup=statistics.median(b / x for b, x in zip(base["decode"], v["decode"])),
                 pred_prefill_speedup=base["pred_prefill_ms"] / v["pred_prefill_ms"],
                 pred_decode_speedup=base["pred_decode_ms"] / v["pred_decode_ms"])
        print(f"{v['name']:<24} {v['params'] / 1e6:7.2f}M {v['prefill_ms']:11.1f} {v['prefill_speedup']:7.2f}x "
              f"{v['pred_prefill_speedup']:8.2f}x {v['decode_ms']:13.2f} {v['decode_speedup']:7.2f}x "
              f"{v['pred_decode_speedup']:8.2f}x")
    spread = {v["name"]: (min(v["prefill"]) * 1e3, max(v["prefill"]) * 1e3) for v in variants}
    print("prefill min..max ms per variant: " + "; ".join(f"{k} {a:.0f}..{b:.0f}" for k, (a, b) in spread.items()))
    heads = next(v for v in variants if v["name"].startswith("heads"))
    print(f"note: heads -25% by KV group on {base['shape'].num_kv_heads} KV groups removes whole groups: it achieved "
          f"{heads['details'].get('achieved_ratio', 0):.1%} ({heads['shape'].num_heads} of "
          f"{base['shape'].num_heads} query heads kept)")

    # -- held-out perplexity per criterion -------------------------------------------------------------------
    quality = []
    if not args.skip_ppl:
        print(f"\n## held-out perplexity (planner.data.heldout_text, {args.ppl_tokens} tokens, windows of 512)")

        def evaluate(name, criterion, model, params):
            ppl = perplexity(model, tok, heldout, seq_len=512, max_tokens=args.ppl_tokens)["ppl"]
            quality.append({"variant": name, "criterion": criterion, "ppl": ppl, "params": params})
            print(f"  {name:<24} {criterion:<16} ppl {ppl:9.3f}  params {params / 1e6:7.2f}M", flush=True)

        for v in variants:
            evaluate(v["name"], getattr(v["spec"], "criterion", "-"), v["model"], v["params"])
        for v in variants[1:]:
            v["model"] = None  # free memory before building the quality-only variants
        for name, spec in quality_specs(round_to):
            model, result = prune_copy(dense, spec, calib, ablation_calib)
            evaluate(name, spec.criterion, model, result.params_after)
            del model
        by = {(q["variant"], q["criterion"]): q["ppl"] for q in quality}
        act, mag = by[("mlp channels -25%", "activation")], by[("mlp channels -25%", "magnitude")]
        print(f"mlp channels -25%: activation ppl {act:.3f} vs magnitude {mag:.3f} -> "
              f"{'activation lower' if act < mag else 'activation NOT lower'}")

    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}; "
          f"wall {time.perf_counter() - t0:.0f}s")
    if args.json:
        keep = ("name", "params", "prefill_ms", "decode_ms", "prefill_speedup", "decode_speedup",
                "pred_prefill_ms", "pred_decode_ms", "pred_prefill_speedup", "pred_decode_speedup", "prefill",
                "decode")
        out = {"device": f"measured on {platform.processor() or platform.machine()} CPU",
               "threads": torch.get_num_threads(), "load_before": load_before, "load_after": load_after,
               "peaks": peaks, "args": vars(args),
               "latency": [{k: v[k] for k in keep} | {"shape": v["shape"].model_dump()} for v in variants],
               "quality": quality}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
