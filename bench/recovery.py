"""Recovery on the embedded model: does the default recovery budget close the gap that 50% MLP-channel pruning
opens? Everything is measured in this one run, on this machine's CPU:

    held-out perplexity of the dense model, of the pruned model before recovery and after it,
    the share of the perplexity gap to dense that recovery closed, the wall time it took,
    and (when planner.evaluate.agreement is present) teacher agreement before and after on capability slices.

    python bench/recovery.py                         # default RecoverySpec (distill, its default budget)
    python bench/recovery.py --method lora --threads 1 --json /tmp/recovery.json

The pruning is planner.prune.apply_pruning(MlpChannelPruning(ratio=0.5, criterion="activation")) on calibration
text; recovery trains on calibration text; perplexity is over the held-out text only.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["distill", "lora", "finetune"], default=None,
                   help="recovery method (default: RecoverySpec's default)")
    p.add_argument("--max-minutes", type=float, default=None, help="override the spec's minutes budget")
    p.add_argument("--ratio", type=float, default=0.5, help="MLP channels removed (default 0.5)")
    p.add_argument("--calib-samples", type=int, default=16, help="pruning calibration blocks of 512 tokens")
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens for perplexity (default 8192)")
    p.add_argument("--slices", default="code,instruction",
                   help="agreement slices, comma-separated, or 'none' (default code,instruction)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    import torch

    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.evaluate.perplexity import perplexity
    from planner.models import load_model
    from planner.prune import apply_pruning
    from planner.prune.specs import MlpChannelPruning
    from planner.recover import recover
    from planner.recover.specs import RecoverySpec

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = RecoverySpec()
    if args.method:
        spec = spec.model_copy(update={"method": args.method})
    if args.max_minutes:
        spec = spec.model_copy(update={"max_minutes": args.max_minutes})
    device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"measured on {device}; recovery spec: {spec.model_dump_json()}", flush=True)

    loaded = load_model()
    dense, tokenizer = loaded.model, loaded.tokenizer
    text = heldout_text()

    def ppl(model) -> dict:
        return perplexity(model, tokenizer, text, seq_len=512, max_tokens=args.eval_tokens)

    t = time.perf_counter()
    dense_ppl = ppl(dense)
    eval_seconds = time.perf_counter() - t
    print(f"dense held-out ppl {dense_ppl['ppl']:.3f} over {dense_ppl['tokens']} tokens ({eval_seconds:.0f} s)",
          flush=True)

    student = copy.deepcopy(dense)
    calib = token_blocks(tokenizer, calibration_text(), args.calib_samples, 512)
    pruned = apply_pruning(student, MlpChannelPruning(ratio=args.ratio, criterion="activation"), calib)
    print(f"pruned: {pruned.params_before:,} -> {pruned.params_after:,} parameters, intermediate_size "
          f"{student.config.intermediate_size} ({pruned.seconds:.0f} s)", flush=True)

    slices = _slices(args.slices)
    traces = {}
    agreement_before = {}
    if slices:
        from planner.evaluate.agreement import slice_agreement, teacher_traces

        for s in slices:
            traces[s.name] = teacher_traces(dense, tokenizer, s, progress=False)
            agreement_before[s.name] = slice_agreement(student, dense, tokenizer, s, traces[s.name], progress=False)

    start = time.perf_counter()
    result = recover(student, dense, tokenizer, spec, eval_fn=ppl, progress=True)
    call_seconds = time.perf_counter() - start

    agreement_after = {}
    for s in slices:
        from planner.evaluate.agreement import slice_agreement

        agreement_after[s.name] = slice_agreement(student, dense, tokenizer, s, traces[s.name], progress=False)

    gap = result.ppl_before - dense_ppl["ppl"]
    closed = (result.ppl_before - result.ppl_after) / gap if gap > 0 else float("nan")
    rows = [
        ("dense", f"{dense_ppl['ppl']:.3f}"),
        ("pruned, before recovery", f"{result.ppl_before:.3f}"),
        ("pruned, after recovery", f"{result.ppl_after:.3f}"),
        ("perplexity gap closed", f"{100 * closed:.1f}%"),
        ("recovery training time", f"{result.seconds:.0f} s ({result.steps} steps, {result.tokens:,} tokens, "
                                   f"stopped by {result.stopped_by})"),
        ("recover() call incl. 2 evaluations", f"{call_seconds:.0f} s"),
        ("training loss first -> last", f"{result.initial_loss:.4f} -> {result.final_loss:.4f}"),
    ]
    for name in agreement_before:
        b, a = agreement_before[name], agreement_after[name]
        rows.append((f"agreement '{name}': top-1 / KL",
                     f"{_fmt(b['top1_agreement'])} / {_fmt(b['kl'])} -> {_fmt(a['top1_agreement'])} / {_fmt(a['kl'])}"
                     f" ({a['positions']} positions; exact match {b['exact_match_hits']} -> "
                     f"{a['exact_match_hits']} of {a['teacher_correct']} the dense model gets right)"))
    print(f"\nRecovery of SmolLM2-135M after {args.ratio:.0%} MLP-channel pruning, {spec.method} "
          f"(held-out ppl over {dense_ppl['tokens']} tokens, measured on {device})")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    if args.json:
        out = {"device": device, "spec": spec.model_dump(), "dense_ppl": dense_ppl, "gap_closed": closed,
               "recover_call_seconds": call_seconds, "result": result.model_dump(),
               "agreement_before": agreement_before, "agreement_after": agreement_after,
               "prune": {"params_before": pruned.params_before, "params_after": pruned.params_after,
                         "seconds": pruned.seconds}}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


def _slices(names: str):
    if names.strip().lower() == "none":
        return []
    try:
        from planner.evaluate.agreement import slice_agreement  # noqa: F401
        from planner.evaluate.prompts import bundled_slice
    except ImportError:
        print("planner.evaluate.agreement is not available: no agreement figures", file=sys.stderr)
        return []
    return [bundled_slice(n.strip()) for n in names.split(",") if n.strip()]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
