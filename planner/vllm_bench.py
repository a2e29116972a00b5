"""`--runtime vllm`: the latency benchmark delegated to vLLM's own serving benchmark.

For each checkpoint, `vllm serve` is started on a local port and `vllm bench serve` sends it the workload's requests
(random token prompts of exactly prompt_len tokens, exactly gen_len output tokens with --ignore-eos) at a request
rate and a maximum concurrency; its saved JSON (--save-result --save-detailed) is parsed into the benchmark's
records: per-request end-to-end, TTFT and TPOT samples, the TTFT / TPOT / ITL / E2EL percentiles vLLM computed
itself, the throughput, and the vLLM version. Nothing here runs without vLLM and a CUDA GPU: `vllm_missing()`
names what is absent, and `plan run --runtime vllm` refuses (exit 2) before any work.

    cmd = bench_command(VllmBench(checkpoint="runs/x/1-mlp/model", dtype="bf16", prompt_len=512, gen_len=128,
                                  num_prompts=10, request_rate=None, concurrency=1, port=8011, result_dir="/tmp/r",
                                  result_file="dense.json"))
    parse_bench_result(json.load(open("/tmp/r/dense.json")))   # -> samples and percentiles
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InputError

PERCENTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SERVER_START_S = 900  # loading + CUDA graph capture of a large model
REQUIRED_KEYS = ("completed", "duration", "request_throughput", "output_throughput")


def vllm_missing() -> str | None:
    """None when `vllm bench serve` can run here; otherwise what is missing (the package, or a CUDA GPU)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'planner[vllm]', or pip install vllm)"
    if vllm_executable() is None:
        return "the `vllm` command is neither beside this Python nor on PATH (vLLM >= 0.9 ships `vllm bench serve`)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and torch sees none"
    return None


def vllm_executable() -> str | None:
    """The `vllm` command of this environment (beside sys.executable, e.g. .venv/bin/vllm), else the one on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "vllm"
    return str(beside) if beside.is_file() else shutil.which("vllm")


def vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


@dataclass
class VllmBench:
    """One `vllm bench serve` run against one checkpoint."""

    checkpoint: str
    dtype: str
    prompt_len: int
    gen_len: int
    num_prompts: int
    request_rate: float | None  # requests/s (Poisson arrivals); None: all at once ("inf")
    concurrency: int  # at most this many requests in flight
    port: int
    result_dir: str
    result_file: str
    seed: int = 0
    gpu_memory_utilization: float = 0.85

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_command(b: VllmBench) -> list[str]:
    """`vllm serve` for the checkpoint: the workload's context length, the benchmark dtype, CUDA graphs on."""
    return ["vllm", "serve", b.checkpoint, "--host", "127.0.0.1", "--port", str(b.port),
            "--dtype", VLLM_DTYPES.get(b.dtype, "auto"), "--max-model-len", str(b.prompt_len + b.gen_len),
            "--gpu-memory-utilization", str(b.gpu_memory_utilization), "--seed", str(b.seed)]


def bench_command(b: VllmBench) -> list[str]:
    """`vllm bench serve` sending exactly prompt_len-token prompts and reading exactly gen_len tokens back."""
    rate = "inf" if b.request_rate is None or math.isinf(b.request_rate) else repr(float(b.request_rate))
    return ["vllm", "bench", "serve", "--backend", "vllm", "--base-url", b.url(), "--model", b.checkpoint,
            "--dataset-name", "random", "--random-input-len", str(b.prompt_len),
            "--random-output-len", str(b.gen_len), "--num-prompts", str(b.num_prompts),
            "--request-rate", rate, "--max-concurrency", str(b.concurrency), "--ignore-eos",
            "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", ",".join(map(str, PERCENTILES)),
            "--seed", str(b.seed), "--save-result", "--save-detailed", "--result-dir", b.result_dir,
            "--result-filename", b.result_file]


def _percentile_key(p: float, metric: str) -> str:
    # vLLM names them p{int(p)} for whole percentiles and p{p} otherwise (benchmarks/serve.py)
    word = str(int(p)) if int(p) == p else str(p)
    return f"p{word}_{metric}_ms"


def parse_bench_result(data: Any, source: str = "vllm bench result") -> dict[str, Any]:
    """The figures of one saved `vllm bench serve` result (--save-result; --save-detailed for per-request samples):
    {"completed", "duration_s", "request_rate", "max_concurrency", "request_throughput", "output_throughput",
    "percentiles": {metric: {"mean", "p50", "p95", "p99"}} in ms, "samples_ms": {"e2e", "ttft", "tpot"}}.

    Per-request samples: TTFT = ttfts[i]; end-to-end = TTFT + the sum of that request's inter-token latencies;
    TPOT = that sum / (output tokens - 1). A document that is not such a result is an InputError naming the key."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: not a vllm bench serve result (a JSON object was expected)")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise InputError(f"{source}: not a vllm bench serve result: missing {', '.join(missing)}")
    percentiles: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        row = {}
        if f"mean_{metric}_ms" in data:
            row["mean"] = float(data[f"mean_{metric}_ms"])
        for p in PERCENTILES:
            key = _percentile_key(p, metric)
            if key in data:
                row[f"p{p}"] = float(data[key])
        if "p50" not in row and f"median_{metric}_ms" in data:
            row["p50"] = float(data[f"median_{metric}_ms"])
        if row:
            percentiles[metric] = row
    if "ttft" not in percentiles:
        raise InputError(f"{source}: no TTFT figures (run with --percentile-metrics {','.join(METRICS)})")
    samples: dict[str, list[float]] = {"e2e": [], "ttft": [], "tpot": []}
    ttfts, itls, outs = data.get("ttfts"), data.get("itls"), data.get("output_lens")
    if isinstance(ttfts, list) and isinstance(itls, list) and isinstance(outs, list):
        if not len(ttfts) == len(itls) == len(outs):
            raise InputError(f"{source}: ttfts, itls and output_lens differ in length")
        errors = data.get("errors") or [""] * len(ttfts)
        for ttft, gaps, out, error in zip(ttfts, itls, outs, errors):
            if error or not out:  # a failed request has no timing
                continue
            decode_s = float(sum(gaps))
            samples["ttft"].append(float(ttft) * 1000)
            samples["e2e"].append((float(ttft) + decode_s) * 1000)
            if out > 1:
                samples["tpot"].append(decode_s * 1000 / (out - 1))
    rate = data.get("request_rate")
    return {"completed": int(data["completed"]), "duration_s": float(data["duration"]),
            "request_rate": None if rate in (None, "inf") or (isinstance(rate, float) and math.isinf(rate))
            else float(rate),
            "max_concurrency": data.get("max_concurrency"),
            "request_throughput": float(data["request_throughput"]),
            "output_throughput": float(data["output_throughput"]), "percentiles": percentiles,
            "samples_ms": samples}


def _wait_healthy(server: subprocess.Popen, url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    raise RuntimeError(f"vllm serve did not answer {url}/health within {timeout_s:.0f} s")


def run_bench(b: VllmBench, warmup: int = 0, log_dir: str | None = None) -> dict[str, Any]:
    """Start `vllm serve`, send `warmup` untimed requests, run the timed benchmark, stop the server; the parsed
    result with the commands and the vLLM version."""
    reason = vllm_missing()
    if reason:
        raise InputError(f"runtime 'vllm' is not available: {reason}; use --runtime hf-eager or hf-compile")
    Path(b.result_dir).mkdir(parents=True, exist_ok=True)
    log = Path(log_dir or b.result_dir) / (Path(b.result_file).stem + ".server.log")
    exe = vllm_executable()

    def command(cmd: list[str]) -> list[str]:
        return [exe] + cmd[1:]

    with open(log, "w") as out:
        server = subprocess.Popen(command(serve_command(b)), stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(server, b.url(), SERVER_START_S)
            if warmup:
                warm = VllmBench(**{**vars(b), "num_prompts": warmup, "result_file": "warmup-" + b.result_file})
                subprocess.run(command(bench_command(warm)), check=True, capture_output=True, text=True)
            done = subprocess.run(command(bench_command(b)), capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"vllm bench serve failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    path = Path(b.result_dir) / b.result_file
    parsed = parse_bench_result(json.loads(path.read_text()), str(path))
    parsed.update(vllm_version=vllm_version(), command=" ".join(bench_command(b)), result_file=str(path),
                  num_prompts=b.num_prompts, server_log=str(log))
    return parsed
