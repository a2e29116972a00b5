"""How much of a Wanda / SparseGPT perplexity figure is floating-point rounding? One run, one calibration set.

Layer-wise pruning is chaotic: each layer's mask is chosen from activations that went through the already-pruned
layers before it, so a rounding difference that flips one near-tie early on changes the inputs of every later
layer. Here the same engine prunes the same model with the same calibration blocks several times, changing only
how many calibration samples go through each forward (`chunk_samples`: the order in which the per-input sums
are accumulated), and the held-out perplexity of each result is printed. The spread is the figure's own
rounding noise; a peer's figure inside that spread matches ours. Wanda's input sums are float64 and a decoder
layer's forward is batch-invariant on CPU, so Wanda's spread is now zero (8 x 128 tokens, chunks 1, 4, 8: 137.073
each; the float32 sums gave 136.387 with chunk 4); SparseGPT's Hessian stays float32 and still moves.

    python bench/masked_rounding_sensitivity.py                           # Wanda 2:4, chunks 4 and 8
    python bench/masked_rounding_sensitivity.py --criterion sparsegpt --pattern unstructured --chunks 2,4,8

Identical settings to bench/masked_vs_llmcompressor.py (32 x 512 calibration tokens of the bundled calibration
text, 16384 held-out tokens in windows of 512), so its figures can be set beside these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--criterion", choices=["wanda", "sparsegpt"], default="wanda")
    p.add_argument("--pattern", choices=["2:4", "unstructured"], default="2:4")
    p.add_argument("--chunks", default="4,8", help="comma-separated chunk_samples to try (default 4,8)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    import planner.prune.masked  # noqa: F401  (registers the engines)
    from masked_vs_llmcompressor import bench_inputs, linear_weights
    from planner.evaluate.perplexity import perplexity_of_ids
    from planner.prune import apply_pruning
    from planner.prune.specs import SemiStructuredPruning, UnstructuredPruning

    folder, calib, eval_ids = bench_inputs(args)
    spec = (SemiStructuredPruning(n=2, m=4, criterion=args.criterion) if args.pattern == "2:4"
            else UnstructuredPruning(sparsity=0.5, criterion=args.criterion))
    print(f"model {folder}; {args.criterion} {args.pattern}; calibration {tuple(calib.shape)}; held-out "
          f"{eval_ids.numel()} tokens; torch threads {torch.get_num_threads()}")
    rows, first = [], None
    for chunk in [int(c) for c in args.chunks.split(",")]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        start = time.perf_counter()
        apply_pruning(model, spec, calib, progress=False, chunk_samples=chunk)
        seconds = time.perf_counter() - start
        masks = {k: v != 0 for k, v in linear_weights(model).items()}
        ppl = perplexity_of_ids(model, eval_ids, batch_size=4)["ppl"]
        differ = None
        if first is None:
            first = masks
        else:
            differ = sum(int((masks[k] != first[k]).sum()) for k in masks) / sum(m.numel() for m in masks.values())
        rows.append({"chunk_samples": chunk, "ppl": ppl, "seconds": seconds, "mask_differs_from_first": differ})
        print(f"chunk_samples {chunk:>3}: ppl {ppl:.3f}  ({seconds:.0f} s)"
              + (f"  masks differ from the first run in {differ:.2%} of weights" if differ is not None else ""),
              flush=True)
        del model
    ppls = [r["ppl"] for r in rows]
    print(f"spread: {min(ppls):.3f} .. {max(ppls):.3f} ({max(ppls) / min(ppls) - 1:.1%}) from rounding alone")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
