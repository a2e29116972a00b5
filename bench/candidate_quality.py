"""Candidate quality, side by side in one run: held-out perplexity and pruning wall time of

- Wanda / SparseGPT at 50% and 60% unstructured: uniform layer sparsity against OWL's outlier-weighted and the
  block-influence layer allocation (planner/prune/masked/allocation.py); both at 2:4;
- MLP channels -25% / -50% and attention heads (1 of 3 KV groups) with and without the least-squares
  reconstruction of the consumer projection (planner/prune/structured/reconstruct.py);
- layers -3 / -6 chosen by block influence, angular distance and ablation;
- llm-compressor's Wanda and SparseGPT (uniform, 50% and 2:4) through bench/masked_vs_llmcompressor.py's workers,
  when its bench venv exists (see that script's docstring).

Same model (default: the embedded SmolLM2-135M), same calibration blocks of the bundled calibration text, same
held-out windows of the bundled held-out text (planner.evaluate.perplexity). Our rows run in this process one
after the other on a fresh copy of the model; wall time is the `apply_pruning` call only.

    python bench/candidate_quality.py                      # 32 x 512 calibration, 16384 held-out tokens
    python bench/candidate_quality.py --quick              # 8 x 256 calibration, 8192 held-out tokens
    python bench/candidate_quality.py --rows wanda-50 mlp-25   # rows whose name starts with these
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (row name, spec as a dict), in the order they run (the acceptance figures first); the peer's rows come last
ROWS = [
    ("mlp-25", {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation"}),
    ("mlp-25-reconstruct", {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation", "reconstruct": True}),
    ("mlp-25-obs", {"kind": "mlp_channels", "ratio": 0.25, "criterion": "obs"}),
    ("mlp-50", {"kind": "mlp_channels", "ratio": 0.5, "criterion": "activation"}),
    ("mlp-50-reconstruct", {"kind": "mlp_channels", "ratio": 0.5, "criterion": "activation", "reconstruct": True}),
    ("mlp-50-obs", {"kind": "mlp_channels", "ratio": 0.5, "criterion": "obs"}),
    ("wanda-50-uniform", {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda"}),
    ("wanda-50-owl", {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda", "allocation": "owl"}),
    ("wanda-50-bi", {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda",
                       "allocation": "block_influence"}),
    ("sparsegpt-50-uniform", {"kind": "unstructured", "sparsity": 0.5, "criterion": "sparsegpt"}),
    ("sparsegpt-50-owl", {"kind": "unstructured", "sparsity": 0.5, "criterion": "sparsegpt", "allocation": "owl"}),
    ("sparsegpt-50-bi", {"kind": "unstructured", "sparsity": 0.5, "criterion": "sparsegpt",
                       "allocation": "block_influence"}),
    ("heads-25", {"kind": "heads", "ratio": 0.25, "criterion": "activation", "mode": "kv_group"}),
    ("heads-25-reconstruct", {"kind": "heads", "ratio": 0.25, "criterion": "activation", "mode": "kv_group",
                              "reconstruct": True}),
    ("heads-25-obs", {"kind": "heads", "ratio": 0.25, "criterion": "obs", "mode": "kv_group"}),
    ("wanda-2:4", {"kind": "nm", "n": 2, "m": 4, "criterion": "wanda"}),
    ("sparsegpt-2:4", {"kind": "nm", "n": 2, "m": 4, "criterion": "sparsegpt"}),
    ("layers-3-block_influence", {"kind": "layers", "num_layers": 3, "criterion": "block_influence"}),
    ("layers-3-angular", {"kind": "layers", "num_layers": 3, "criterion": "angular"}),
    ("layers-3-ablation", {"kind": "layers", "num_layers": 3, "criterion": "ablation"}),
    ("layers-6-block_influence", {"kind": "layers", "num_layers": 6, "criterion": "block_influence"}),
    ("layers-6-angular", {"kind": "layers", "num_layers": 6, "criterion": "angular"}),
    ("layers-6-ablation", {"kind": "layers", "num_layers": 6, "criterion": "ablation"}),
    ("wanda-60-uniform", {"kind": "unstructured", "sparsity": 0.6, "criterion": "wanda"}),
    ("wanda-60-owl", {"kind": "unstructured", "sparsity": 0.6, "criterion": "wanda", "allocation": "owl"}),
    ("wanda-60-bi", {"kind": "unstructured", "sparsity": 0.6, "criterion": "wanda",
                       "allocation": "block_influence"}),
    ("sparsegpt-60-uniform", {"kind": "unstructured", "sparsity": 0.6, "criterion": "sparsegpt"}),
    ("sparsegpt-60-owl", {"kind": "unstructured", "sparsity": 0.6, "criterion": "sparsegpt", "allocation": "owl"}),
    ("sparsegpt-60-bi", {"kind": "unstructured", "sparsity": 0.6, "criterion": "sparsegpt",
                       "allocation": "block_influence"}),
]
# llm-compressor rows: (row name, criterion, pattern) as bench/masked_vs_llmcompressor.py's workers take them
PEER_ROWS = [("peer-wanda-50", "wanda", "unstructured"), ("peer-sparsegpt-50", "sparsegpt", "unstructured"),
             ("peer-wanda-2:4", "wanda", "2:4"), ("peer-sparsegpt-2:4", "sparsegpt", "2:4")]


def run_ours(pristine, spec: dict, calib) -> tuple[float, object]:
    import planner.kinds  # noqa: F401  (registers every kind)
    from planner.prune import apply_pruning
    from planner.prune.specs import parse_spec

    model = copy.deepcopy(pristine)
    gc.collect()
    start = time.perf_counter()
    apply_pruning(model, parse_spec(spec), calib, progress=False)
    return time.perf_counter() - start, model


def main() -> int:
    import torch

    from masked_vs_llmcompressor import PEER_PYTHON, bench_inputs, evaluate, run_worker
    from planner.evaluate.perplexity import perplexity_of_ids

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--peer-python", default=PEER_PYTHON, help="python of the virtualenv with llmcompressor")
    p.add_argument("--no-peer", action="store_true", help="skip llm-compressor's rows")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--quick", action="store_true", help="8 x 256 calibration, 8192 held-out tokens")
    p.add_argument("--rows", nargs="*", help="run only rows whose name starts with one of these")
    args = p.parse_args()
    if args.quick:
        args.samples, args.seq_len, args.eval_tokens = 8, 256, 8192
    folder, calib, eval_ids = bench_inputs(args)
    from transformers import AutoModelForCausalLM

    pristine = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    dense = perplexity_of_ids(pristine, eval_ids)["ppl"]
    print(f"model {folder}; calibration {args.samples} x {args.seq_len} tokens; held-out {eval_ids.numel()} tokens; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"dense held-out ppl {dense:.3f}\n")
    wanted = lambda name: not args.rows or any(name.startswith(r) for r in args.rows)  # noqa: E731
    print(f"{'row':<28}{'ppl':>9}{'vs dense':>10}{'seconds':>9}")
    results = {}
    for name, spec in ROWS:
        if not wanted(name):
            continue
        seconds, model = run_ours(pristine, spec, calib)
        ppl = perplexity_of_ids(model, eval_ids)["ppl"]
        del model
        results[name] = (ppl, seconds)
        print(f"{name:<28}{ppl:>9.3f}{ppl / dense - 1:>+10.1%}{seconds:>9.1f}", flush=True)
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
                ppl = evaluate(folder, save, eval_ids, pattern)["ppl"]
                results[name] = (ppl, run["seconds"])
                print(f"{name:<28}{ppl:>9.3f}{ppl / dense - 1:>+10.1%}{run['seconds']:>9.1f}", flush=True)
    elif not args.no_peer:
        print(f"llm-compressor rows skipped: {args.peer_python} does not exist")
    nonuniform = [(f"{c}-{s}-{a}", f"{c}-{s}-uniform") for c in ("wanda", "sparsegpt") for s in ("50", "60")
                  for a in ("owl", "bi")]
    pairs = [(a, b) for a, b in (*nonuniform,
                                 ("wanda-2:4", "peer-wanda-2:4"), ("sparsegpt-2:4", "peer-sparsegpt-2:4"),
                                 ("wanda-50-uniform", "peer-wanda-50"), ("sparsegpt-50-uniform", "peer-sparsegpt-50"))
             if a in results and b in results]
    if pairs:
        print("\nratios (ppl a / ppl b, time a / time b)")
        for a, b in pairs:
            print(f"  {a} / {b}: ppl {results[a][0] / results[b][0]:.3f}, time {results[a][1] / results[b][1]:.2f}")
    for cut in ("mlp-25", "mlp-50", "heads-25"):
        plain, rec = results.get(cut), results.get(f"{cut}-reconstruct")
        if plain and rec:
            print(f"  {cut}: one-shot increase {plain[0] / dense - 1:+.1%} -> {rec[0] / dense - 1:+.1%} with "
                  f"reconstruction ({(plain[0] - dense) / max(rec[0] - dense, 1e-9):.2f}x lower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
