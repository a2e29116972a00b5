"""A model larger than the memory it is given, pruned and evaluated one decoder layer at a time (planner.layered):
peak RSS of the process tree against the model's fp32 weight bytes, and parity with the in-memory path.

1. build: a random-weight Llama of TinyLlama's shape (hidden 2048, 22 layers, intermediate 5632, 32 heads, 4 KV
   heads, tied embeddings) with the embedded SmolLM2 tokenizer's vocabulary (49152), 4.3 GB in fp32, written shard
   by shard: each layer's tensors generated, written, freed; the model is never held whole.
2. jobs, each in a fresh subprocess (its RSS measured alone: a thread of this process sums the RSS of the job and
   its children every 20 ms; the job also reports the kernel's high-water mark, ru_maxrss): Wanda 50% unstructured,
   then MLP channels -25% (activation importance), each pruned layer by layer into an exported checkpoint, then the
   held-out perplexity of that export, layer by layer. Acceptance: peak RSS <= 40% of the fp32 weight bytes.
3. parity: a small random Llama (same vocabulary) that fits both ways: the layered weights and perplexity against
   planner.prune.apply_pruning + planner.evaluate.perplexity on the whole model.

    .venv/bin/python bench/big_model_layered.py                  # the 4.3 GB model (minutes on 2 cores)
    .venv/bin/python bench/big_model_layered.py --layers 2       # the same steps on a 2-layer model (quick)
    .venv/bin/python bench/big_model_layered.py --threads 2 --calib-samples 32 --ppl-tokens 16384

Everything is written under a temporary folder (--workdir) that is removed at the end (each export right after its
job): about twice the model's size on disk at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ACCEPT_RATIO = 0.40
JOBS = {
    "wanda-50": {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda"},
    "mlp-25": {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation"},
}
PPL_TOLERANCE = 1e-5  # relative: the layered LM head sums the softmax in vocabulary blocks, in another order


def tinyllama_config(layers: int, hidden: int = 2048, intermediate: int = 5632, heads: int = 32, kv_heads: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=49152,
                       max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2)


def embedded_tokenizer():
    from planner.models import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source(None))


def build_random_llama(config, folder: Path, seed: int = 0) -> int:
    """Write a random-weight model of `config` to `folder` (one shard per decoder layer + one for the rest, an index,
    the config and the embedded tokenizer) without holding it whole; returns its fp32 weight bytes."""
    import torch
    from accelerate import init_empty_weights
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from planner.layered.writer import INDEX_FILE, SafetensorsStream

    folder.mkdir(parents=True, exist_ok=True)
    shards = config.num_hidden_layers + 1
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(seed)

    def random(shape):
        if len(shape) == 1:
            return torch.ones(shape)  # norms
        return torch.randn(shape, generator=gen).mul_(0.02)

    with init_empty_weights():
        shapes = {n: tuple(p.shape) for n, p in LlamaDecoderLayer(config, 0).named_parameters()}
    for i in range(config.num_hidden_layers):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        stream = SafetensorsStream(folder / name)
        for local, shape in shapes.items():
            tensor = random(shape)
            stream.add(f"model.layers.{i}.{local}", tensor)
            weight_map[f"model.layers.{i}.{local}"] = name
            total += tensor.numel() * 4
            del tensor
        stream.close()
    name = f"model-{shards:05d}-of-{shards:05d}.safetensors"
    stream = SafetensorsStream(folder / name)
    rows = 4096  # the embedding in row blocks too
    stream.begin("model.embed_tokens.weight", torch.float32, (config.vocab_size, config.hidden_size))
    for start in range(0, config.vocab_size, rows):
        stream.write(random((min(rows, config.vocab_size - start), config.hidden_size)))
    stream.end()
    stream.add("model.norm.weight", torch.ones(config.hidden_size))
    stream.close()
    total += (config.vocab_size + 1) * config.hidden_size * 4
    weight_map.update({"model.embed_tokens.weight": name, "model.norm.weight": name})
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.dtype = torch.float32
    config.save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    return total


# -- a job, in its own process ----------------------------------------------------------------------------------


def job(args) -> None:
    """Prune `args.model` with JOBS[args.job] layer by layer into `args.out`, then the export's held-out perplexity;
    print one JSON line."""
    import resource

    import torch
    from transformers import AutoTokenizer

    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.layered import LayeredModel, layered_perplexity_of_tokens, prune_layered
    from planner.prune.specs import parse_spec

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    spec = parse_spec(JOBS[args.job])
    calib = token_blocks(tokenizer, calibration_text(), args.calib_samples, args.calib_seq)
    start = time.perf_counter()
    pruned = prune_layered(LayeredModel(args.model, "cpu"), spec, calib, Path(args.out), tokenizer,
                           {"bench": "big_model_layered", "job": args.job}, progress=not args.quiet)
    prune_s = time.perf_counter() - start
    ids = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    start = time.perf_counter()
    ppl = layered_perplexity_of_tokens(LayeredModel(args.out, "cpu"), ids, seq_len=args.ppl_seq_len,
                                       max_tokens=args.ppl_tokens, progress=not args.quiet)
    ppl_s = time.perf_counter() - start
    print(json.dumps({"job": args.job, "prune_s": prune_s, "ppl_s": ppl_s, "ppl": ppl["ppl"], "tokens": ppl["tokens"],
                      "achieved_sparsity": pruned.result.achieved_sparsity, "params_after": pruned.result.params_after,
                      "file_bytes": pruned.exported["file_bytes"],
                      "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


class TreeRss:
    """Peak of the summed RSS of a process and all its children, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.process, *self.process.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_job(name: str, model: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--job", name, "--model", str(model), "--out", str(out),
           "--threads", str(args.threads), "--calib-samples", str(args.calib_samples), "--calib-seq",
           str(args.calib_seq), "--ppl-tokens", str(args.ppl_tokens), "--ppl-seq-len", str(args.ppl_seq_len),
           "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rss = TreeRss(proc.pid)
    stdout, stderr = proc.communicate()
    peak = rss.stop()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"job {name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_rss_bytes=peak, wall_s=wall)
    return result


# -- parity -----------------------------------------------------------------------------------------------------


def parity(workdir: Path, args) -> list[dict]:
    """Layered against in-memory on a small random Llama: max |weight difference| and relative ppl difference."""
    import torch
    from transformers import AutoModelForCausalLM

    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.evaluate.perplexity import perplexity_of_tokens
    from planner.layered import LayeredModel, layered_perplexity_of_tokens, prune_layered
    from planner.prune import apply_pruning
    from planner.prune.specs import parse_spec

    folder = workdir / "small"
    build_random_llama(tinyllama_config(4, hidden=256, intermediate=704, heads=8, kv_heads=4), folder, seed=1)
    tokenizer = embedded_tokenizer()
    calib = token_blocks(tokenizer, calibration_text(), 8, 128)
    ids = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    rows = []
    for name, spec_dict in JOBS.items():
        spec = parse_spec(spec_dict)
        whole = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        apply_pruning(whole, spec, calib)
        out = workdir / f"small-{name}"
        prune_layered(LayeredModel(folder, "cpu"), spec, calib, out, tokenizer, {})
        layered = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        a, b = whole.state_dict(), layered.state_dict()
        if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
            raise SystemExit(f"parity {name}: the layered export has other tensors or shapes")
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        ppl_whole = perplexity_of_tokens(whole, ids, seq_len=128, max_tokens=2048)["ppl"]
        ppl_layered = layered_perplexity_of_tokens(LayeredModel(out, "cpu"), ids, seq_len=128, max_tokens=2048)["ppl"]
        rows.append({"job": name, "max_abs_weight_diff": diff, "ppl_whole": ppl_whole, "ppl_layered": ppl_layered,
                     "ppl_rel_diff": abs(ppl_layered - ppl_whole) / ppl_whole})
    return rows


# -- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22: TinyLlama's 1.1B, 4.3 GB fp32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each job (default 1)")
    parser.add_argument("--calib-samples", type=int, default=16, help="calibration samples (default 16)")
    parser.add_argument("--calib-seq", type=int, default=512, help="calibration sample length (default 512)")
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="held-out tokens (default 8192)")
    parser.add_argument("--ppl-seq-len", type=int, default=512, help="perplexity window (default 512)")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        return job(args)

    workdir = Path(tempfile.mkdtemp(prefix="planner-big-layered-", dir=args.workdir))
    try:
        model = workdir / "model"
        start = time.perf_counter()
        fp32_bytes = build_random_llama(tinyllama_config(args.layers), model)
        print(f"built a random Llama ({args.layers} layers, hidden 2048, intermediate 5632, vocab 49152, tied): "
              f"{fp32_bytes / 1e9:.2f} GB fp32 in {time.perf_counter() - start:.0f} s, written shard by shard")
        print(f"settings: {args.threads} thread(s); calibration {args.calib_samples} x {args.calib_seq} tokens; "
              f"held-out {args.ppl_tokens} tokens in windows of {args.ppl_seq_len}")
        ok = True
        for name in JOBS:
            out = workdir / f"export-{name}"
            r = run_job(name, model, out, args)
            shutil.rmtree(out, ignore_errors=True)
            ratio = r["peak_rss_bytes"] / fp32_bytes
            ok &= ratio <= ACCEPT_RATIO
            print(f"{name}: peak RSS {r['peak_rss_bytes'] / 1e9:.3f} GB (sampled; kernel high-water mark "
                  f"{r['ru_maxrss_bytes'] / 1e9:.3f} GB) = {ratio:.1%} of the {fp32_bytes / 1e9:.2f} GB fp32 weights "
                  f"(accept <= {ACCEPT_RATIO:.0%}: {'ok' if ratio <= ACCEPT_RATIO else 'FAIL'}); prune+export "
                  f"{r['prune_s']:.0f} s, held-out ppl of the export {r['ppl']:.1f} over {r['tokens']} tokens in "
                  f"{r['ppl_s']:.0f} s, job wall {r['wall_s']:.0f} s; export {r['file_bytes'] / 1e9:.2f} GB, "
                  f"{r['params_after'] / 1e6:.0f}M parameters"
                  + (f", sparsity {r['achieved_sparsity']:.3f}" if r["achieved_sparsity"] is not None else ""))
        shutil.rmtree(model, ignore_errors=True)
        if not args.skip_parity:
            for row in parity(workdir, args):
                good = row["max_abs_weight_diff"] == 0.0 and row["ppl_rel_diff"] <= PPL_TOLERANCE
                ok &= good
                print(f"parity {row['job']} (4-layer random Llama, hidden 256): max |weight diff| "
                      f"{row['max_abs_weight_diff']:.3g} (accept 0: the same weights), ppl whole "
                      f"{row['ppl_whole']:.4f} layered {row['ppl_layered']:.4f}, relative diff "
                      f"{row['ppl_rel_diff']:.2e} (accept <= {PPL_TOLERANCE:g}): {'ok' if good else 'FAIL'}")
        print("PASS" if ok else "FAIL")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
