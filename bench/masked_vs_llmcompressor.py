"""Masked pruning, side by side: planner's engine against llm-compressor (the peer), in one run.

Same model (default: the embedded SmolLM2-135M), same calibration blocks (32 x 512 tokens of the bundled
calibration text), same held-out evaluation (planner.evaluate.perplexity on the bundled held-out text). For each
of Wanda and SparseGPT at 50% unstructured and at 2:4, ours and the peer's run one after the other, each in its own
subprocess, so wall time and peak RSS are per method. Magnitude (ours) runs as the baseline both must beat.

The peer lives in a separate virtualenv (it is not a project dependency):

    python -m venv /work/benchenv && /work/benchenv/bin/pip install torch==2.13.0 && \
        /work/benchenv/bin/pip install llmcompressor==0.14.0.1
    python bench/masked_vs_llmcompressor.py                     # full bench, ~1 h on 2 busy CPU cores
    python bench/masked_vs_llmcompressor.py --quick             # 8 x 128 calibration, 4096 eval tokens

Recorded (2026-12-03, llmcompressor 0.14.0.1 with transformers 5.17 in the bench venv, one thread each, Wanda
2:4, held-out perplexity of the first --eval-tokens tokens; ours with float64 input sums):

    calibration   eval tokens   ours      llm-compressor   ours / peer
    32 x 512      16384         83.730    83.730           1.0000  (identical masks in all 210 linears)
    16 x 256      16384         95.997    96.114           0.9988
     8 x 128       4096        137.073   135.747           1.0098

Both compute the same masks in exact arithmetic (the peer's per-sample running mean of ||x||^2 is our sum over
tokens / samples, one factor for every input; both calibrate on the unpruned layer and propagate the pruned one's
outputs); the differences are float32 rounding in the peer's sums moving near-ties, amplified layer by layer
(with 8 x 128 tokens the masks agree in layers 0-1 and differ in 1% of layer 11's weights). Our float32 sums gave
136.387 at 8 x 128 with 4 samples per forward, the float64 ones 137.073 with 1, 4 or 8 (masked_rounding_sensitivity.py).

Every worker prunes and saves only the decoder linear weights; the parent evaluates every pruned model with the
same code in this environment, so differences in perplexity come from the pruning alone. Wall time is the pruning
call only (the peer's `oneshot`, our `apply_pruning`), not model loading. Peak RSS is the worker's high-water mark
during pruning: the mark is reset through /proc/self/clear_refs after loading (else ru_maxrss since start, which
includes the loader's transient copies); it includes the model itself, whose RSS before pruning is printed too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = "/work/benchenv/bin/python"
# (engine, criterion, pattern); pattern "unstructured" = 50% unstructured. Who goes first alternates, so a drift
# in machine load does not always favour the same engine.
RUNS = [
    ("ours", "magnitude", "unstructured"),
    ("ours", "magnitude", "2:4"),
    ("ours", "wanda", "unstructured"),
    ("peer", "wanda", "unstructured"),
    ("peer", "sparsegpt", "unstructured"),
    ("ours", "sparsegpt", "unstructured"),
    ("ours", "wanda", "2:4"),
    ("peer", "wanda", "2:4"),
    ("peer", "sparsegpt", "2:4"),
    ("ours", "sparsegpt", "2:4"),
]


def status_mib(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0), so the peak measured covers the pruning alone and not the
    transient copies made while loading the checkpoint."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    hwm = status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def linear_weights(model) -> dict:
    from planner.arch import get_adapter

    return {f"{name}.weight": m.weight.detach().contiguous() for _, _, name, m in get_adapter(model).iter_linears(model)}


# -- worker: prune once, save the decoder linears --------------------------------------------------------------


def worker(args) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = torch.load(args.calib)
    gc.collect()
    reset = reset_peak_rss()
    loaded_rss = status_mib("VmRSS") or peak_rss_mib()
    start = time.perf_counter()
    if args.worker == "ours":
        prune_ours(model, args.criterion, args.pattern, ids)
    else:
        prune_peer(model, args.criterion, args.pattern, ids)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    save_file(linear_weights(model), args.save)
    print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mib": peak, "loaded_rss_mib": loaded_rss,
                                  "peak_is_pruning_only": reset, "threads": torch.get_num_threads()}))


def prune_ours(model, criterion: str, pattern: str, ids) -> None:
    import planner.prune.masked  # noqa: F401  (registers the engines)
    from planner.prune import apply_pruning
    from planner.prune.specs import SemiStructuredPruning, UnstructuredPruning

    spec = (UnstructuredPruning(sparsity=0.5, criterion=criterion) if pattern == "unstructured"
            else SemiStructuredPruning(n=2, m=4, criterion=criterion))
    apply_pruning(model, spec, ids, progress=False)


def prune_peer(model, criterion: str, pattern: str, ids) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

    modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[criterion]
    recipe = modifier(sparsity=0.5, mask_structure="0:0" if pattern == "unstructured" else "2:4",
                      targets=["Linear"], ignore=["re:.*lm_head"])
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")


# -- parent: calibration, workers, evaluation, table -----------------------------------------------------------


def run_worker(python: str, engine: str, criterion: str, pattern: str, folder: str, calib: str, save: str,
               threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [python, __file__, "--worker", engine, "--criterion", criterion, "--pattern", pattern,
           "--model", folder, "--calib", calib, "--save", save]
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def evaluate(folder: str, weights: str | None, eval_ids, pattern: str) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from planner.evaluate.perplexity import perplexity_of_ids
    from planner.prune.masked import weight_sparsity

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if weights:
        state = load_file(weights)
        missing = set(state) - set(model.state_dict())
        assert not missing, missing
        model.load_state_dict(state, strict=False)
    n, m = (2, 4) if pattern == "2:4" else (0, 0)
    out = perplexity_of_ids(model, eval_ids, batch_size=4)
    out.update(weight_sparsity(model, n, m))
    return out


def bench_inputs(args):
    """(model folder, calibration blocks, held-out windows) from --model, --samples, --seq-len, --eval-tokens,
    --threads: the same for every masked-pruning bench, so their figures can be set side by side."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.models import resolve_source

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or str(resolve_source(None).path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    calib = token_blocks(tokenizer, calibration_text(), args.samples, args.seq_len)
    held = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"][: args.eval_tokens]
    eval_ids = torch.tensor(held[: len(held) // args.seq_len * args.seq_len]).view(-1, args.seq_len)
    return folder, calib, eval_ids


def parent(args) -> int:
    import torch

    folder, calib, eval_ids = bench_inputs(args)
    peer_ok = Path(args.peer_python).is_file()
    print(f"model {folder}\ncalibration {args.samples} x {args.seq_len} tokens (bundled calibration text); held-out "
          f"{eval_ids.numel()} tokens in {eval_ids.shape[0]} windows of {args.seq_len}; torch threads "
          f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not peer_ok:
        print(f"PEER NOT AVAILABLE: {args.peer_python} does not exist; measuring our engine only")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = f"{tmp}/calib.pt"
        torch.save(calib, calib_file)
        dense = evaluate(folder, None, eval_ids, "dense")
        print(f"dense: ppl {dense['ppl']:.3f}")
        for engine, criterion, pattern in RUNS:
            if args.only and criterion not in args.only:
                continue
            if engine == "peer" and not peer_ok:
                continue
            save = f"{tmp}/{engine}-{criterion}-{pattern.replace(':', 'of')}.safetensors"
            python = sys.executable if engine == "ours" else args.peer_python
            load = os.getloadavg()[0]
            run = run_worker(python, engine, criterion, pattern, folder, calib_file, save, args.threads)
            run.update(engine=engine, criterion=criterion, pattern=pattern, load_before=load)
            if "error" not in run:
                run.update(evaluate(folder, save, eval_ids, pattern))
                print(f"{engine} {criterion} {pattern}: ppl {run['ppl']:.3f}, {run['seconds']:.1f} s, peak RSS "
                      f"{run['peak_rss_mib']:.0f} MiB (before pruning {run['loaded_rss_mib']:.0f}), sparsity "
                      f"{run['sparsity']:.4f}" + (f", 2:4 violations {run['nm_violations']}" if pattern == "2:4" else ""),
                      flush=True)
            else:
                print(f"{engine} {criterion} {pattern}: FAILED {run['error']}", flush=True)
            results.append(run)
    table(dense, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"dense": dense, "runs": results, "args": vars(args)}, indent=2))
    return 0


def table(dense: dict, results: list[dict]) -> None:
    by = {(r["engine"], r["criterion"], r["pattern"]): r for r in results if "error" not in r}
    print(f"\nmeasured on this CPU, one run; dense held-out ppl {dense['ppl']:.3f}")
    head = (f"{'method':<11}{'pattern':<13}{'ppl ours':>9}{'ppl peer':>9}{'ours/peer':>10}{'beats mag':>10}"
            f"{'s ours':>8}{'s peer':>8}{'time x':>7}{'MiB ours':>9}{'MiB peer':>9}{'mem x':>7}")
    print(head)
    print("-" * len(head))
    for pattern in ("unstructured", "2:4"):
        mag = by.get(("ours", "magnitude", pattern))
        if mag:
            print(f"{'magnitude':<11}{pattern:<13}{mag['ppl']:>9.3f}{'-':>9}{'-':>10}{'-':>10}{mag['seconds']:>8.1f}"
                  f"{'-':>8}{'-':>7}{mag['peak_rss_mib']:>9.0f}{'-':>9}{'-':>7}")
        for criterion in ("wanda", "sparsegpt"):
            ours, peer = by.get(("ours", criterion, pattern)), by.get(("peer", criterion, pattern))
            if not ours:
                continue
            beats = "yes" if mag and ours["ppl"] < mag["ppl"] else ("no" if mag else "-")
            if peer:
                print(f"{criterion:<11}{pattern:<13}{ours['ppl']:>9.3f}{peer['ppl']:>9.3f}"
                      f"{ours['ppl'] / peer['ppl']:>10.3f}{beats:>10}{ours['seconds']:>8.1f}{peer['seconds']:>8.1f}"
                      f"{ours['seconds'] / peer['seconds']:>7.2f}{ours['peak_rss_mib']:>9.0f}"
                      f"{peer['peak_rss_mib']:>9.0f}{ours['peak_rss_mib'] / peer['peak_rss_mib']:>7.2f}")
            else:
                print(f"{criterion:<11}{pattern:<13}{ours['ppl']:>9.3f}{'n/a':>9}{'n/a':>10}{beats:>10}"
                      f"{ours['seconds']:>8.1f}{'n/a':>8}{'n/a':>7}{ours['peak_rss_mib']:>9.0f}{'n/a':>9}{'n/a':>7}")
    print("ratios: ours / peer (time x <= 1 means ours is faster); 'beats mag': lower ppl than magnitude, same pattern")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--peer-python", default=PEER_PYTHON, help="python of the virtualenv with llmcompressor")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16_384, help="cap on held-out tokens (same for all)")
    p.add_argument("--only", nargs="*", help="criteria to run (magnitude wanda sparsegpt)")
    p.add_argument("--quick", action="store_true", help="8 x 128 calibration, 4096 eval tokens")
    p.add_argument("--json", help="also write all figures to this file")
    p.add_argument("--threads", type=int, help="torch threads for every worker and the evaluation (default: torch's)")
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--criterion", help=argparse.SUPPRESS)
    p.add_argument("--pattern", help=argparse.SUPPRESS)
    p.add_argument("--calib", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.samples, args.seq_len, args.eval_tokens = 8, 128, 4096
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
