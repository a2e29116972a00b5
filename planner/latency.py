"""The latency benchmark: real requests through a real runtime, dense and pruned interleaved.

Each request is one `generate` call of `batch_size` prompts of exactly `prompt_len` tokens, producing exactly
`gen_len` tokens (greedy; min_new_tokens = max_new_tokens, so an early end-of-sequence cannot shorten a variant's
work). A streamer timestamps every token as the runtime hands it back, so the time to first token is the prefill
plus first-token step of the very request being timed, and the time per output token is the rest divided by
gen_len - 1. After warm-up, the variants take turns (A B, B A, A B ...) so slow drift of the machine (thermal,
other processes) and the position within a round land on all of them alike. Percentiles are computed over the recorded samples (results.percentile).

Runtimes: "hf-eager" (transformers generate), "hf-compile" (generate with a static cache and torch.compile'd
forward; on CUDA in "reduce-overhead" mode, i.e. replayed as CUDA graphs), "vllm" (delegated to vLLM's own serving
benchmark, planner.vllm_bench: only where vLLM is installed and a CUDA GPU is present; otherwise refused with what is
missing).

2:4 variants (`Subject.sparse_2to4`): on CUDA their qualifying linears are converted to PyTorch semi-structured
sparse tensors before timing (planner.prune.masked.runtime.semi_structured_plan / apply_semi_structured), so the
sparse tensor cores do the GEMMs; on a device or dtype without a 2:4 kernel they stay dense. Either way the variant's
record says which layers were converted, which were not and why, and when the whole model fell back to dense.

Peak memory: on CUDA, torch.cuda.max_memory_allocated around one request (this model's weights plus the request's
activations and KV cache); on CPU, the peak RSS of a fresh process that loads the checkpoint and serves one
request (in-process RSS cannot separate two resident models, and the allocator keeps freed pages).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from planner.errors import InputError, did_you_mean
from planner.workload import require_positions

RUNTIMES = ("hf-eager", "hf-compile", "vllm")
BENCH_DTYPES = ("fp32", "bf16", "fp16")  # dtypes a checkpoint is timed at
# the benchmark's bounds, checked by BenchConfig and, before any work, by `plan run` for its options
BENCH_MINIMUMS = {"prompt_len": 1, "gen_len": 1, "batch_size": 1, "requests": 1, "warmup": 0}


def check_bench_settings(settings: Mapping[str, Any], label: Callable[[str], str] = "benchmark {}".format) -> None:
    """Check the benchmark settings among `settings` (runtime, dtype and BENCH_MINIMUMS; absent or None: not set) and
    raise an InputError naming the first bad one; `label` turns a setting's name into the one the user knows."""
    runtime, dtype = settings.get("runtime"), settings.get("dtype")
    if runtime is not None and runtime not in RUNTIMES:
        raise InputError(did_you_mean(runtime, RUNTIMES, "runtime"))
    if dtype is not None and dtype not in BENCH_DTYPES:
        raise InputError(did_you_mean(dtype, BENCH_DTYPES, "benchmark dtype"))
    for name, minimum in BENCH_MINIMUMS.items():
        value = settings.get(name)
        if value is not None and value < minimum:
            raise InputError(f"{label(name)} must be >= {minimum}, got {value}")


@dataclass
class BenchConfig:
    prompt_len: int = 512
    gen_len: int = 128
    batch_size: int = 1
    requests: int = 10  # timed requests per variant
    warmup: int = 2  # untimed requests per variant first
    runtime: str = "hf-eager"
    dtype: str = "fp32"
    device: str = "cpu"
    measure_memory: bool = True
    request_rate: float | None = None  # vllm: requests/s (Poisson); None: all requests at once
    concurrency: int = 1  # vllm: at most this many requests in flight
    out_dir: str | None = None  # vllm: where its result files and server logs go (default: a temporary folder)

    def check(self) -> None:
        check_bench_settings(vars(self))
        if self.concurrency < 1:
            raise InputError(f"benchmark concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise InputError(f"benchmark request rate must be > 0 requests/s, got {self.request_rate}")


@dataclass
class Subject:
    """One variant to time: a loaded model (hf runtimes) and/or its checkpoint folder (vllm, memory)."""

    name: str
    model: Any
    checkpoint: str | None = None
    sparse_2to4: bool = False  # a 2:4 model: served through semi-structured sparse kernels where the device has them


class TokenClock:
    """A generate() streamer that timestamps each put(); the first put is the prompt, then one per step."""

    def __init__(self, device_type: str):
        self.times: list[float] = []
        self.device_type = device_type

    def put(self, value) -> None:
        # generate hands over value.cpu(), which already waited for the device; the timestamp is honest
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def prompt_ids(tokenizer, prompt_len: int, batch_size: int, vocab_size: int | None = None):
    """(batch_size, prompt_len) token ids cut from the bundled calibration text (real text, fixed length)."""
    import torch

    from planner.data import calibration_text

    need = prompt_len * batch_size
    text = calibration_text()
    ids = tokenizer(text[: need * 8], add_special_tokens=False)["input_ids"]  # >= 1 token per 8 chars: enough
    if len(ids) < need:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < need:  # repeat the text for very long prompts: timing depends on length, not on content
        ids = ids * (need // len(ids) + 1)
    block = torch.tensor(ids[:need], dtype=torch.long).view(batch_size, prompt_len)
    if vocab_size is not None:
        block = block.clamp_max(vocab_size - 1)
    return block


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def pad_id(model) -> int:
    gen = model.generation_config
    pad = gen.pad_token_id if gen.pad_token_id is not None else gen.eos_token_id
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    return 0 if pad is None else int(pad)


def time_request(model, input_ids, gen_len: int) -> tuple[float, float | None, float | None]:
    """One request: (end-to-end ms, time to first token ms, time per output token ms)."""
    import torch

    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = torch.ones_like(ids)
    clock = TokenClock(device.type)
    pad = pad_id(model)
    _sync(device.type)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen_len, min_new_tokens=gen_len,
                             do_sample=False, num_beams=1, streamer=clock, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
    _sync(device.type)
    end = time.perf_counter()
    produced = out.shape[1] - ids.shape[1]
    if produced != gen_len:
        raise RuntimeError(f"generate produced {produced} tokens, expected exactly {gen_len}")
    e2e = (end - start) * 1000
    if len(clock.times) < 2:
        return e2e, None, None
    first = clock.times[1]
    ttft = (first - start) * 1000
    tpot = (end - first) * 1000 / (gen_len - 1) if gen_len > 1 else None
    return e2e, ttft, tpot


def compile_mode(device_type: str) -> str | None:
    """torch.compile mode of hf-compile: "reduce-overhead" (CUDA graphs: one replay per step instead of a launch per
    kernel) on CUDA; the default mode elsewhere (CUDA graphs do not exist on a CPU)."""
    return "reduce-overhead" if device_type == "cuda" else None


def _prepare_compiled(model, config: BenchConfig):
    import torch

    # a static KV cache gives torch.compile fixed shapes to specialise on (and CUDA graphs fixed addresses)
    model.generation_config.cache_implementation = "static"
    device = next(model.parameters()).device
    model.forward = torch.compile(model.forward, dynamic=False, mode=compile_mode(device.type))
    return model


def prepare_semi_structured(model, config: BenchConfig) -> dict[str, Any]:
    """Serve a 2:4 model's qualifying linears through semi-structured sparse kernels (CUDA, fp16/bf16); return the
    record of results.SparseKernels: converted layers, the others with their reason, and the fallback to dense
    when this device or dtype has no 2:4 kernel (the model is then left as it is)."""
    from planner.prune.masked.runtime import apply_semi_structured, semi_structured_plan

    device = next(model.parameters()).device
    if device.type != "cuda":
        return semi_structured_plan(model, None, config.dtype, where=device.type).record([])
    import torch

    plan = semi_structured_plan(model, torch.cuda.get_device_capability(device), config.dtype,
                                where=torch.cuda.get_device_name(device))
    if plan.fallback is not None:
        return plan.record([])
    return apply_semi_structured(model, plan)


def benchmark(subjects: list[Subject], tokenizer, config: BenchConfig, measured_on: str,
              progress: bool = True) -> dict[str, dict]:
    """Time every subject; returns name -> fields of results.Latency (samples, memory, runtime...)."""
    config.check()
    if config.runtime == "vllm":
        return benchmark_vllm(subjects, tokenizer, config, measured_on, progress)
    vocab = min(getattr(s.model.config, "vocab_size", 1 << 30) for s in subjects)
    ids = prompt_ids(tokenizer, config.prompt_len, config.batch_size, vocab)
    sparse: dict[str, dict] = {}
    for s in subjects:
        require_positions(config.prompt_len, config.gen_len, getattr(s.model.config, "max_position_embeddings", None),
                          "choose a shorter workload")
        if s.sparse_2to4:
            sparse[s.name] = prepare_semi_structured(s.model, config)
        if config.runtime == "hf-compile":
            _prepare_compiled(s.model, config)
    samples = {s.name: {"e2e": [], "ttft": [], "tpot": []} for s in subjects}
    total = (config.warmup + config.requests) * len(subjects)
    bar = _progress(total, "latency", progress)
    try:
        for _ in range(config.warmup):
            for s in subjects:
                time_request(s.model, ids, config.gen_len)
                bar.update(1)
        for i in range(config.requests):
            # interleaved, and the order flips every round (A B, B A, ...): a slow drift of the machine and any
            # advantage of going first or second land on every variant alike
            for s in (subjects if i % 2 == 0 else subjects[::-1]):
                e2e, ttft, tpot = time_request(s.model, ids, config.gen_len)
                rec = samples[s.name]
                rec["e2e"].append(e2e)
                if ttft is not None:
                    rec["ttft"].append(ttft)
                if tpot is not None:
                    rec["tpot"].append(tpot)
                bar.update(1)
    finally:
        bar.close()
    out = {}
    for s in subjects:
        memory, kind = (None, None)
        if config.measure_memory:
            memory, kind = peak_memory(s, ids, config)
        rec = samples[s.name]
        out[s.name] = dict(measured_on=measured_on, runtime=config.runtime, dtype=config.dtype,
                           prompt_len=config.prompt_len, gen_len=config.gen_len, batch_size=config.batch_size,
                           warmup=config.warmup, samples_ms=rec["e2e"], ttft_samples_ms=rec["ttft"],
                           tpot_samples_ms=rec["tpot"], peak_memory_bytes=memory, peak_memory_kind=kind)
        if s.name in sparse:
            out[s.name]["sparse_kernels"] = sparse[s.name]
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# -- peak memory ----------------------------------------------------------------------------------------------


def weights_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    return total


def _tensor_bytes(t) -> int:
    """Bytes a tensor holds; a 2:4 semi-structured weight holds its packed values and metadata, not its dense shape."""
    import torch

    sparse_cls = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    if sparse_cls is not None and isinstance(t, sparse_cls):
        names, _ = t.__tensor_flatten__()
        return sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
    return t.numel() * t.element_size()


def peak_memory(subject: Subject, ids, config: BenchConfig) -> tuple[int | None, str | None]:
    device = next(subject.model.parameters()).device
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        time_request(subject.model, ids, config.gen_len)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        # the other variants' weights are resident too: count this model's weights plus what the request added
        return weights_bytes(subject.model) + max(0, peak - base), "cuda-max-allocated"
    if subject.checkpoint is None:
        return None, None
    return peak_rss_subprocess(subject.checkpoint, config, ids, pad_id(subject.model)), "process-peak-rss"


_RSS_SCRIPT = r"""
import json, sys, threading, time
import psutil, torch
from transformers import AutoModelForCausalLM
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
model = AutoModelForCausalLM.from_pretrained(cfg["checkpoint"], dtype=getattr(torch, cfg["dtype"])).eval()
ids = torch.tensor(cfg["ids"], dtype=torch.long)
proc = psutil.Process()
peak = [proc.memory_info().rss]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
with torch.inference_mode():
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg["gen_len"],
                   min_new_tokens=cfg["gen_len"], do_sample=False, pad_token_id=cfg["pad"],
                   temperature=None, top_p=None, top_k=None)
peak[0] = max(peak[0], proc.memory_info().rss)
done.set()
t.join()
print("PEAK_RSS", peak[0])
"""


def peak_rss_subprocess(checkpoint: str, config: BenchConfig, ids=None, pad: int = 0) -> int | None:
    """Peak RSS (bytes) of a fresh Python process that loads `checkpoint` and serves one request of the workload's
    shape. It includes the interpreter and torch themselves, identically for every variant."""
    import torch

    from planner.models import TORCH_DTYPES

    if ids is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(checkpoint)
        ids = prompt_ids(tok, config.prompt_len, config.batch_size)
    cfg = {"checkpoint": str(checkpoint), "dtype": TORCH_DTYPES[config.dtype], "ids": ids.tolist(),
           "gen_len": config.gen_len, "pad": pad, "threads": torch.get_num_threads()}
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                          timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS "):
            return int(line.split()[1])
    raise RuntimeError(f"memory probe of {checkpoint} failed: {proc.stderr.strip()[-2000:]}")


# -- vLLM (optional) ----------------------------------------------------------------------------------------


def vllm_unavailable_reason() -> str | None:
    """None when vLLM can run here; otherwise why not (not installed, no `vllm` command, no CUDA GPU)."""
    from planner.vllm_bench import vllm_missing

    return vllm_missing()


VLLM_DENSE_NOTE = ("vLLM serves the exported checkpoint, which stores the 2:4 zeros densely; its 2:4 kernels "
                   "(compressed-tensors sparse-24) need a checkpoint in that format, so the model ran on dense kernels")


def benchmark_vllm(subjects: list[Subject], tokenizer, config: BenchConfig, measured_on: str,
                   progress: bool = True) -> dict[str, dict]:
    """Each exported checkpoint served by `vllm serve` and timed by `vllm bench serve` (planner.vllm_bench), one
    after the other (one server holds the GPU at a time): the workload's prompt and generation lengths, `requests`
    timed requests after `warmup` untimed ones, at the configured request rate and concurrency."""
    import tempfile

    from planner.vllm_bench import VllmBench, run_bench

    reason = vllm_unavailable_reason()
    if reason:
        raise InputError(f"runtime 'vllm' is not available: {reason}; use --runtime hf-eager or hf-compile")
    for s in subjects:
        if s.checkpoint is None:
            raise InputError(f"variant {s.name!r} has no checkpoint folder for vLLM to load")
    out_dir = config.out_dir or tempfile.mkdtemp(prefix="planner-vllm-")
    out = {}
    for i, s in enumerate(subjects):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.name)
        bench = VllmBench(checkpoint=s.checkpoint, dtype=config.dtype, prompt_len=config.prompt_len,
                          gen_len=config.gen_len, num_prompts=config.requests * config.batch_size,
                          request_rate=config.request_rate, concurrency=max(config.concurrency, config.batch_size),
                          port=8011 + i, result_dir=out_dir, result_file=f"{safe}.json")
        parsed = run_bench(bench, warmup=config.warmup)
        samples = parsed["samples_ms"]
        out[s.name] = dict(measured_on=measured_on, runtime="vllm", dtype=config.dtype, prompt_len=config.prompt_len,
                           gen_len=config.gen_len, batch_size=1, warmup=config.warmup, samples_ms=samples["e2e"],
                           ttft_samples_ms=samples["ttft"], tpot_samples_ms=samples["tpot"],
                           vllm_bench={k: parsed[k] for k in ("vllm_version", "command", "num_prompts", "completed",
                                                              "request_rate", "max_concurrency", "duration_s",
                                                              "request_throughput", "output_throughput",
                                                              "percentiles")})
        if s.sparse_2to4:
            out[s.name]["sparse_kernels"] = {"format": "2:4", "device": measured_on, "dtype": config.dtype,
                                             "backend": None, "converted": [], "skipped": {},
                                             "fallback": VLLM_DENSE_NOTE}
    return out
