"""Candidate quality, side by side in one run: held-out perplexity (on two held-out texts) and pruning wall time of

- Wanda / SparseGPT at 50% and 60% unstructured: uniform layer sparsity against the block-influence and OWL layer
  allocations and the Fisher per-matrix allocation (planner/prune/masked/allocation.py); both at 2:4, in every
  layer and with the 3 layers of highest block influence left dense (dense_layers: 3);
- MLP channels -25% / -50% and attention heads (1 of 3 KV groups): the plain cut (activation importance), the cut
  with the least-squares re-fit of the consumer projection (`reconstruct: true`), and the units chosen by the re-fit's
  own error (criterion `obs`) (planner/prune/structured/reconstruct.py); MLP rows "-obs-self" re-fit towards the
  uncut projection's own output instead of the dense model's layer output (reconstruct.TARGET);
- layers -3 / -6 chosen by block influence, angular distance and ablation;
- llm-compressor's Wanda and SparseGPT (uniform, 50% and 2:4) through bench/masked_vs_llmcompressor.py's workers,
  when its bench venv exists (see that script's docstring), evaluated by the same code as ours.

Same model (default: the embedded SmolLM2-135M), same calibration blocks (the first samples x seq-len tokens of the
bundled calibration text; rows that re-fit get --refit-samples blocks, by default the RECONSTRUCT_SAMPLES that
plan run gives such a candidate, and say so in their notes), two held-out texts cut from the bundled held-out text: "A", its first --eval-tokens
tokens (tutorial/*), and "B", --eval-tokens tokens from token 49152 on (faq/*, other documents). Our rows run in
this process one after the other on a fresh copy of the model; wall time is the `apply_pruning` call only.

    python bench/candidate_quality.py                      # 32 x 512 calibration, 16384 held-out tokens per text
    python bench/candidate_quality.py --quick              # 8 x 256 calibration, 4096 held-out tokens per text
    python bench/candidate_quality.py --rows wanda-50 mlp-25   # rows whose name starts with these

Recorded 2026-12-03 (SmolLM2-135M fp32, one thread, 32 x 512 calibration, re-fitting rows 96 x 512; held-out ppl of
texts A / B, dense 14.131 / 14.814; rows from four invocations of this code on a shared 2-core machine):

    wanda-50-uniform      29.387 / 32.906      wanda-50-bi           26.741 / 29.831   (0.910 / 0.907 of uniform)
    sparsegpt-50-uniform  24.339 / 27.364      sparsegpt-50-bi       23.613 / 26.419   (0.970 / 0.965)
    mlp-25                21.372 / 23.676      mlp-25-reconstruct    16.933 / 18.405   (+51.2% -> +19.8%, +59.8% -> +24.2%)
                                               mlp-25-obs            16.946 / 18.493   (+51.2% -> +19.9%, +59.8% -> +24.8%)
    mlp-50                53.024 / 65.536      mlp-50-obs            23.367 / 27.527   (+275% -> +65%, +342% -> +86%)
    wanda-2:4             83.730 / 96.693      peer-wanda-2:4        83.730 / 96.693   (llm-compressor 0.14.0.1)

Recorded 2026-12-03, second session (same settings; Fisher allocation with 2 Fisher samples; N:M with the 3 layers
of highest block influence, 0, 1 and 29, left dense):

    wanda-50-uniform      29.387 / 32.906      wanda-50-fisher       26.324 / 29.551   (0.896 / 0.898 of uniform)
                                               wanda-50-bi           26.741 / 29.831   (0.910 / 0.907)
    sparsegpt-50-uniform  24.339 / 27.364      sparsegpt-50-fisher   22.517 / 25.284   (0.925 / 0.924)
    wanda-2:4             83.730 / 96.693      wanda-2:4-dense3      48.745 / 54.110   (0.582 / 0.560; 45% overall)
    sparsegpt-2:4         42.593 / 49.325      sparsegpt-2:4-dense3  33.521 / 38.149   (0.787 / 0.773)
    pruning time, one run, one thread: wanda-50-uniform 118.7 s, -bi 121.0 s, -fisher 119.2 s (1.00x); uniform and
    fisher alternated twice with nothing else running: 115.3 / 106.6 s against 113.0 / 114.9 s (1.03x); the Fisher
    pass alone takes 16.6-18.5 s, so at most 1.14-1.19x of a 98.5-118.7 s uniform prune on this machine
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXT_B_OFFSET = 49_152  # held-out token where text B starts (inside faq/*, past text A's tutorial/* tokens)


def _masked(criterion: str, sparsity: float, allocation: str = "uniform") -> dict:
    return {"kind": "unstructured", "sparsity": sparsity, "criterion": criterion, "allocation": allocation}


# (row name, spec as a dict), in the order they run; the peer's rows come last
ROWS = [
    *[(f"{c}-{s}-{a}", _masked(c, s / 100, {"uniform": "uniform", "bi": "block_influence", "owl": "owl",
                                             "fisher": "fisher"}[a]))
      for s in (50, 60) for c in ("wanda", "sparsegpt") for a in (("uniform", "bi", "owl", "fisher") if s == 50
                                                                   else ("uniform", "bi", "fisher"))],
    *[(f"{c}-2:4{suffix}", {"kind": "nm", "n": 2, "m": 4, "criterion": c, "dense_layers": d})
      for c in ("wanda", "sparsegpt") for suffix, d in (("", 0), ("-dense3", 3))],
    *[(f"mlp-{r}{suffix}", {"kind": "mlp_channels", "ratio": r / 100, **extra}) for r in (25, 50)
      for suffix, extra in (("", {"criterion": "activation"}),
                            ("-reconstruct", {"criterion": "activation", "reconstruct": True}),
                            ("-obs", {"criterion": "obs"}),
                            ("-obs-self", {"criterion": "obs", "_target": "self"}))],
    *[(f"heads-25{suffix}", {"kind": "heads", "ratio": 0.25, "mode": "kv_group", **extra})
      for suffix, extra in (("", {"criterion": "activation"}),
                            ("-reconstruct", {"criterion": "activation", "reconstruct": True}),
                            ("-obs", {"criterion": "obs"}))],
    *[(f"layers-{n}-{c}", {"kind": "layers", "num_layers": n, "criterion": c}) for n in (3, 6)
      for c in ("block_influence", "angular", "ablation")],
]
# llm-compressor rows: (row name, criterion, pattern) as bench/masked_vs_llmcompressor.py's workers take them
PEER_ROWS = [("peer-wanda-50", "wanda", "unstructured"), ("peer-sparsegpt-50", "sparsegpt", "unstructured"),
             ("peer-wanda-2:4", "wanda", "2:4"), ("peer-sparsegpt-2:4", "sparsegpt", "2:4")]
# ours / peer comparisons
PEER_PAIRS = [("wanda-50-uniform", "peer-wanda-50"), ("sparsegpt-50-uniform", "peer-sparsegpt-50"),
              ("wanda-2:4", "peer-wanda-2:4"), ("sparsegpt-2:4", "peer-sparsegpt-2:4")]


def run_ours(pristine, spec: dict, calib) -> tuple[float, object, dict]:
    import planner.kinds  # noqa: F401  (registers every kind)
    from planner.prune import apply_pruning
    from planner.prune.specs import parse_spec

    from planner.prune.structured import reconstruct

    spec = dict(spec)
    target = spec.pop("_target", "dense")  # the re-fit's target (reconstruct.TARGET): "-self" rows set "self"
    model = copy.deepcopy(pristine)
    gc.collect()
    saved, reconstruct.TARGET = reconstruct.TARGET, target
    try:
        start = time.perf_counter()
        result = apply_pruning(model, parse_spec(spec), calib, progress=False)
        return time.perf_counter() - start, model, result.details
    finally:
        reconstruct.TARGET = saved


def refits(spec: dict) -> bool:
    """Whether a row's spec re-fits after its cut (reconstruct.rebuilds)."""
    import planner.kinds  # noqa: F401  (registers every kind)
    from planner.prune.specs import parse_spec
    from planner.prune.structured.reconstruct import rebuilds

    return rebuilds(parse_spec({k: v for k, v in spec.items() if k != "_target"}))


def held_out_texts(folder: str, eval_tokens: int, seq_len: int) -> dict:
    """{"A": windows, "B": windows} of the bundled held-out text (see the module docstring)."""
    from transformers import AutoTokenizer

    from planner.data import heldout_text, token_blocks

    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = eval_tokens // seq_len
    text = heldout_text()
    return {"A": token_blocks(tokenizer, text, windows, seq_len),
            "B": token_blocks(tokenizer, text, windows, seq_len, offset=TEXT_B_OFFSET)}


def perplexities(model, texts: dict) -> dict:
    from planner.evaluate.perplexity import perplexity_of_ids

    return {name: perplexity_of_ids(model, ids)["ppl"] for name, ids in texts.items()}


def peer_model(folder: str, weights: str):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.load_state_dict(load_file(weights), strict=False)
    return model


def main() -> int:
    import torch

    from masked_vs_llmcompressor import PEER_PYTHON, bench_inputs, run_worker

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--peer-python", default=PEER_PYTHON, help="python of the virtualenv with llmcompressor")
    p.add_argument("--no-peer", action="store_true", help="skip llm-compressor's rows")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens per text")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--quick", action="store_true", help="8 x 256 calibration, 4096 held-out tokens per text")
    p.add_argument("--rows", nargs="*", help="run only rows whose name starts with one of these")
    p.add_argument("--exact", action="store_true", help="--rows are whole row names, not prefixes")
    p.add_argument("--refit-samples", type=int, default=None,
                   help="calibration samples of the rows that re-fit (default: what plan run gives them, "
                        "planner.prune.structured.reconstruct.RECONSTRUCT_SAMPLES; --quick: --samples)")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args()
    if args.quick:
        args.samples, args.seq_len, args.eval_tokens = 8, 256, 4096
    if args.refit_samples is None:
        from planner.prune.structured.reconstruct import RECONSTRUCT_SAMPLES

        args.refit_samples = args.samples if args.quick else RECONSTRUCT_SAMPLES
    folder, calib, _ = bench_inputs(args)
    texts = held_out_texts(folder, args.eval_tokens, args.seq_len)
    from transformers import AutoModelForCausalLM

    pristine = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    dense = perplexities(pristine, texts)
    print(f"model {folder}; calibration {args.samples} x {args.seq_len} tokens; held-out texts A and B of "
          f"{texts['A'].numel()} tokens each; torch threads {torch.get_num_threads()}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"dense held-out ppl: A {dense['A']:.3f}, B {dense['B']:.3f}\n")
    wanted = lambda name: not args.rows or any(name == r or not args.exact and name.startswith(r)  # noqa: E731
                                               for r in args.rows)
    print(f"{'row':<28}{'ppl A':>9}{'vs dense':>10}{'ppl B':>9}{'vs dense':>10}{'seconds':>9}  notes")
    results: dict[str, dict] = {}

    def report(name: str, ppl: dict, seconds: float, note: str = "") -> None:
        results[name] = {"ppl": ppl, "seconds": seconds, "note": note}
        print(f"{name:<28}{ppl['A']:>9.3f}{ppl['A'] / dense['A'] - 1:>+10.1%}{ppl['B']:>9.3f}"
              f"{ppl['B'] / dense['B'] - 1:>+10.1%}{seconds:>9.1f}  {note}", flush=True)

    refit_calib = None
    for name, spec in ROWS:
        if not wanted(name):
            continue
        note = ""
        rows_calib = calib
        if refits(spec) and args.refit_samples != args.samples:  # as plan run calibrates a re-fitting candidate
            if refit_calib is None:
                refit_calib = bench_inputs(argparse.Namespace(**{**vars(args), "samples": args.refit_samples}))[1]
            rows_calib = refit_calib
            note = f"{args.refit_samples} x {args.seq_len} calibration; "
        seconds, model, details = run_ours(pristine, spec, rows_calib)
        overall = f"overall {details.get('pruned_weights', 0) / max(1, details.get('prunable_weights', 0)):.4f}"
        if details.get("layer_sparsity") and spec.get("allocation", "uniform") != "uniform":
            ls = details["layer_sparsity"]
            matrices = list(details["modules"].values())
            note += f"layers {min(ls):.2f}..{max(ls):.2f}, matrices {min(matrices):.2f}..{max(matrices):.2f}, {overall}"
        elif spec.get("dense_layers"):
            left = [i for i, r in enumerate(details["layer_sparsity"]) if r == 0.0]
            note += f"layers {left} left dense, {overall}"
        report(name, perplexities(model, texts), seconds, note)
        del model
    if not args.no_peer and Path(args.peer_python).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(calib, f"{tmp}/calib.pt")
            for name, criterion, pattern in PEER_ROWS:
                if not wanted(name):
                    continue
                save = f"{tmp}/{name.replace(':', 'of')}.safetensors"
                run = run_worker(args.peer_python, "peer", criterion, pattern, folder, f"{tmp}/calib.pt", save,
                                 args.threads)
                if "error" in run:
                    print(f"{name:<28} FAILED {run['error']}", flush=True)
                    continue
                report(name, perplexities(peer_model(folder, save), texts), run["seconds"], "llm-compressor")
    elif not args.no_peer:
        print(f"llm-compressor rows skipped: {args.peer_python} does not exist")
    summary(results, dense)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "dense": dense, "rows": results}, indent=2))
    return 0


def summary(results: dict, dense: dict) -> None:
    have = lambda *names: all(n in results for n in names)  # noqa: E731
    ratio = lambda a, b, t: results[a]["ppl"][t] / results[b]["ppl"][t]  # noqa: E731
    lines = []
    for s in ("50", "60"):
        for c in ("wanda", "sparsegpt"):
            for a in ("bi", "owl", "fisher"):
                row, base = f"{c}-{s}-{a}", f"{c}-{s}-uniform"
                if have(row, base):
                    lines.append(f"  {row} / uniform: ppl A {ratio(row, base, 'A'):.3f}, B {ratio(row, base, 'B'):.3f}"
                                 f"; time {results[row]['seconds'] / results[base]['seconds']:.2f}x")
    for c in ("wanda", "sparsegpt"):
        row, base = f"{c}-2:4-dense3", f"{c}-2:4"
        if have(row, base):
            lines.append(f"  {row} / {base}: ppl A {ratio(row, base, 'A'):.3f}, B {ratio(row, base, 'B'):.3f}")
    for a, b in PEER_PAIRS:
        if have(a, b):
            lines.append(f"  {a} / llm-compressor: ppl A {ratio(a, b, 'A'):.4f}, B {ratio(a, b, 'B'):.4f}; time "
                         f"{results[a]['seconds'] / results[b]['seconds']:.2f}x")
    for cut in ("mlp-25", "mlp-50", "heads-25"):
        for variant in ("reconstruct", "obs", "obs-self"):
            plain, rebuilt = results.get(cut), results.get(f"{cut}-{variant}")
            if plain and rebuilt:
                parts = []
                for t in ("A", "B"):
                    before, after = plain["ppl"][t] / dense[t] - 1, rebuilt["ppl"][t] / dense[t] - 1
                    parts.append(f"{t} {before:+.1%} -> {after:+.1%} ({before / max(after, 1e-9):.2f}x lower)")
                lines.append(f"  {cut}-{variant}: one-shot increase " + ", ".join(parts))
    if lines:
        print("\nratios (a / b: below 1 = a better)")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
