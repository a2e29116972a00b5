"""The latency benchmark engine on tiny models: exact lengths, honest token timestamps, A B A B order."""

import pytest
import torch

import planner.latency as lat
from planner.errors import InputError
from planner.latency import BenchConfig, Subject, benchmark, prompt_ids, time_request
from planner.run.results import Latency
from tiny import save_tiny, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_prompt_ids_have_the_workload_shape(tok):
    ids = prompt_ids(tok, 40, 3)
    assert ids.shape == (3, 40) and ids.dtype == torch.long
    long = prompt_ids(tok, 4000, 2)  # longer than the bundled text: repeated, still exact
    assert long.shape == (2, 4000)


def test_time_request_generates_exactly_gen_len_and_times_the_first_token(tok):
    model = tiny_model("llama")
    ids = prompt_ids(tok, 24, 2)
    e2e, ttft, tpot = time_request(model, ids, 6)
    assert 0 < ttft < e2e
    assert tpot == pytest.approx((e2e - ttft) / 5, rel=1e-6)


def test_min_new_tokens_prevents_an_early_stop(tok):
    model = tiny_model("gpt2")
    # make the end-of-sequence token (id 0) win every step: without min_new_tokens generate would stop at once
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[0].fill_(1.0)
        model.transformer.ln_f.bias.fill_(1.0)
    e2e, ttft, tpot = time_request(model, prompt_ids(tok, 8, 1), 5)  # raises if fewer tokens came out
    assert tpot is not None


def test_variants_are_interleaved_and_samples_recorded(tok, monkeypatch):
    order = []

    def fake(model, ids, gen_len):
        order.append(model.name_for_test)
        return 10.0, 2.0, 2.0

    a, b = tiny_model("llama"), tiny_model("llama", seed=1)
    a.name_for_test, b.name_for_test = "A", "B"
    monkeypatch.setattr(lat, "time_request", fake)
    cfg = BenchConfig(prompt_len=8, gen_len=3, requests=3, warmup=1, measure_memory=False)
    out = benchmark([Subject("A", a), Subject("B", b)], tok, cfg, "CPU test", progress=False)
    assert order == ["A", "B", "A", "B", "B", "A", "A", "B"]  # warm-up round, then timed rounds A B, B A, A B
    assert out["A"]["samples_ms"] == [10.0] * 3 and out["B"]["ttft_samples_ms"] == [2.0] * 3
    assert Latency(**out["A"]).p95_ms == 10.0


def test_real_benchmark_with_memory_probe(tok, tmp_path):
    folder = save_tiny(tmp_path, "llama")
    model = tiny_model("llama")
    cfg = BenchConfig(prompt_len=16, gen_len=4, batch_size=2, requests=3, warmup=1)
    out = benchmark([Subject("dense", model, str(folder))], tok, cfg, "CPU test", progress=False)
    row = Latency(**out["dense"])
    assert row.requests == 3 and len(row.ttft_samples_ms) == 3 and len(row.tpot_samples_ms) == 3
    assert all(t < e for t, e in zip(row.ttft_samples_ms, row.samples_ms))
    # a fresh process with torch and a tiny model: more than the interpreter, far less than 4 GiB
    assert row.peak_memory_kind == "process-peak-rss"
    assert 50 * 2**20 < row.peak_memory_bytes < 4 * 2**30


def test_bad_benchmark_settings(tok):
    model = tiny_model("llama")
    with pytest.raises(InputError, match="max_position_embeddings 256"):
        benchmark([Subject("d", model)], tok, BenchConfig(prompt_len=250, gen_len=10, measure_memory=False),
                  "cpu", progress=False)
    with pytest.raises(InputError, match="did you mean"):
        BenchConfig(runtime="hf-eagr").check()
    with pytest.raises(InputError, match="requests"):
        BenchConfig(requests=0).check()


def test_vllm_is_skipped_cleanly_without_it(tok):
    reason = lat.vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are present here")
    with pytest.raises(InputError, match="not available"):
        benchmark([Subject("d", None, "x")], tok, BenchConfig(runtime="vllm"), "cpu", progress=False)


# -- 2:4 through semi-structured sparse kernels: which layers qualify, and the fallback messages ----------------


def _two_four_tiny(**overrides):
    """A tiny llama (64 hidden, 128 MLP) with every decoder linear pruned to 2:4 by magnitude."""
    from planner.prune import apply_pruning
    from planner.prune.specs import SemiStructuredPruning

    model = tiny_model("llama", **overrides)
    apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="magnitude"))
    return model


def test_semi_structured_plan_converts_every_2to4_linear_that_meets_the_kernel_shapes():
    from planner.prune.masked.runtime import semi_structured_plan

    model = _two_four_tiny()
    plan = semi_structured_plan(model, (8, 0), "bf16", backend="cusparselt")
    assert plan.fallback is None and plan.backend == "cusparselt"
    assert len(plan.layers) == 3 * 7  # q, k, v, o, gate, up, down in 3 layers
    # cuSPARSELt takes bf16 weights from 16x16 in multiples of 16: 64x64, 32x64 (k/v: 2 kv heads), 128x64, 64x128
    assert [d.name for d in plan.to_convert] == [d.name for d in plan.layers]
    shapes = {d.name.split(".")[-1]: d.shape for d in plan.layers[:7]}
    assert shapes == {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
                      "gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}
    record = plan.record()
    assert record["fallback"] is None and len(record["converted"]) == 21 and record["skipped"] == {}


def test_semi_structured_plan_names_shape_and_pattern_reasons():
    from planner.prune.masked.runtime import semi_structured_plan

    model = _two_four_tiny()
    with torch.no_grad():  # one layer dense again: it no longer holds 2 zeros in every group of 4
        model.model.layers[0].self_attn.q_proj.weight.normal_()
    # on CUTLASS ((32, 64) minimums) too, every other layer of this model qualifies
    plan = semi_structured_plan(model, (8, 6), "fp16", backend="cutlass")
    reasons = {d.name: d.reason for d in plan.layers if not d.convert}
    assert list(reasons) == ["model.layers.0.self_attn.q_proj"]
    assert reasons["model.layers.0.self_attn.q_proj"].startswith("not 2:4: ")
    assert "1024 groups of 4 inputs hold fewer than 2 zeros" in reasons["model.layers.0.self_attn.q_proj"]
    # a 48-wide model with 12-wide heads: k/v are 24x48, q/o 48x48, gate/up 128x48, down 48x128
    narrow = _two_four_tiny(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12)
    cutlass = {d.name.split(".")[-1]: d.reason for d in
               semi_structured_plan(narrow, (8, 0), "bf16", backend="cutlass").layers[:7] if not d.convert}
    assert set(cutlass) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cutlass["q_proj"] == ("shape 48x48 is not supported by cutlass at bf16: both dimensions must be at least "
                                 "and a multiple of (32, 64)")
    cusparselt = {d.name.split(".")[-1]: d.reason for d in
                  semi_structured_plan(narrow, (8, 0), "bf16", backend="cusparselt").layers[:7] if not d.convert}
    assert cusparselt == {name: ("shape 24x48 is not supported by cusparselt at bf16: both dimensions must be at "
                                 "least and a multiple of (16, 16)") for name in ("k_proj", "v_proj")}


def test_semi_structured_fallback_messages():
    from planner.prune.masked.runtime import semi_structured_plan

    model = _two_four_tiny()
    cases = {
        (None, "bf16", "cusparselt"): "cpu is not a CUDA GPU: no sparse tensor cores; the 2:4 model ran on dense kernels",
        ((7, 5), "fp16", "cusparselt"): "has no sparse tensor cores (2:4 needs 8.0+)",
        ((8, 0), "fp32", "cusparselt"): "dtype fp32 has no 2:4 kernel in torch (fp16, bf16)",
        ((9, 0), "bf16", "cutlass"): "no cuSPARSELt, and its CUTLASS 2:4 kernels are built for compute capability 8.x",
    }
    for (cap, dtype, backend), expected in cases.items():
        plan = semi_structured_plan(model, cap, dtype, backend=backend, where="cpu" if cap is None else None)
        assert expected in plan.fallback, (cap, dtype, plan.fallback)
        assert plan.backend is None and plan.to_convert == []
        assert all(d.reason.startswith("qualifies, but ") for d in plan.layers)  # every layer is 2:4 and fits
        record = plan.record([])
        assert record["converted"] == [] and record["fallback"] == plan.fallback and len(record["skipped"]) == 21
    # the same device with a kernel: no fallback
    assert semi_structured_plan(model, (9, 0), "bf16", backend="cusparselt").fallback is None
    # a kernel but nothing qualifies (the dense model): the record says the model ran dense
    dense = semi_structured_plan(tiny_model("llama"), (9, 0), "bf16", backend="cusparselt").record([])
    assert dense["fallback"] == "no layer qualified for the 2:4 kernels; the model ran on dense kernels"
    assert all(r.startswith("not 2:4") for r in dense["skipped"].values())


def test_conversion_needs_cuda():
    from planner.prune.masked.runtime import apply_semi_structured, semi_structured_plan

    model = _two_four_tiny()
    plan = semi_structured_plan(model, (8, 0), "bf16", backend="cusparselt")
    with pytest.raises(InputError, match="need the model on a CUDA device, not cpu"):
        apply_semi_structured(model, plan)


def test_a_2to4_subject_on_cpu_is_timed_dense_and_says_so(tok):
    model = _two_four_tiny()
    cfg = BenchConfig(prompt_len=8, gen_len=3, requests=2, warmup=0, measure_memory=False)
    out = benchmark([Subject("dense", tiny_model("llama")), Subject("2:4", model, sparse_2to4=True)], tok, cfg,
                    "CPU test", progress=False)
    assert "sparse_kernels" not in out["dense"]
    row = Latency(**out["2:4"])
    k = row.sparse_kernels
    assert k.converted == [] and k.backend is None and k.dtype == "fp32"
    assert k.fallback == "cpu is not a CUDA GPU: no sparse tensor cores; the 2:4 model ran on dense kernels"
    assert len(k.skipped) == 21
    # results written before the field existed still load
    old = {key: v for key, v in out["dense"].items()}
    assert Latency(**old).sparse_kernels is None and Latency(**old).vllm_bench is None


def test_hf_compile_uses_cuda_graphs_on_cuda_only():
    assert lat.compile_mode("cuda") == "reduce-overhead"
    assert lat.compile_mode("cpu") is None


def test_run_stage_marks_2to4_checkpoints_from_their_metadata(tmp_path):
    import json

    from planner.run.stages import _is_2to4

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "planner.json").write_text(json.dumps({"prune": {"kind": "nm", "n": 2, "m": 4}}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "planner.json").write_text(json.dumps({"prune": {"kind": "nm", "n": 4, "m": 8}}))
    assert _is_2to4(tmp_path / "a") and not _is_2to4(tmp_path / "b") and not _is_2to4(tmp_path / "missing")


# -- vLLM's own benchmark ---------------------------------------------------------------------------------------


def _vllm_sample():
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "data" / "vllm_bench_serve_sample.json").read_text())


def test_vllm_bench_command_sends_the_workload():
    from planner.vllm_bench import VllmBench, bench_command, serve_command

    b = VllmBench(checkpoint="/runs/x/dense", dtype="bf16", prompt_len=512, gen_len=128, num_prompts=20,
                  request_rate=4.0, concurrency=8, port=8011, result_dir="/tmp/r", result_file="dense.json")
    cmd = bench_command(b)
    assert cmd[:3] == ["vllm", "bench", "serve"]
    pairs = dict(zip(cmd[3::1], cmd[4::1]))
    assert pairs["--base-url"] == "http://127.0.0.1:8011" and pairs["--model"] == "/runs/x/dense"
    assert pairs["--random-input-len"] == "512" and pairs["--random-output-len"] == "128"
    assert pairs["--num-prompts"] == "20" and pairs["--request-rate"] == "4.0" and pairs["--max-concurrency"] == "8"
    assert pairs["--percentile-metrics"] == "ttft,tpot,itl,e2el" and pairs["--metric-percentiles"] == "50,95,99"
    assert "--ignore-eos" in cmd and "--save-detailed" in cmd and pairs["--result-filename"] == "dense.json"
    assert bench_command(VllmBench(**{**vars(b), "request_rate": None}))[
        cmd.index("--request-rate") + 1] == "inf"
    serve = serve_command(b)
    assert serve[:3] == ["vllm", "serve", "/runs/x/dense"]
    assert dict(zip(serve, serve[1:]))["--dtype"] == "bfloat16" and dict(zip(serve, serve[1:]))["--max-model-len"] == "640"


def test_vllm_bench_result_is_parsed_into_samples_and_percentiles():
    from planner.vllm_bench import parse_bench_result

    data = _vllm_sample()  # a sample in vLLM's documented format, not a measurement
    parsed = parse_bench_result(data)
    assert parsed["completed"] == 4 and parsed["request_rate"] is None and parsed["max_concurrency"] == 1
    s = parsed["samples_ms"]
    assert s["ttft"] == pytest.approx([t * 1000 for t in data["ttfts"]])
    assert s["e2e"] == pytest.approx([(t + sum(i)) * 1000 for t, i in zip(data["ttfts"], data["itls"])])
    assert s["tpot"] == pytest.approx([sum(i) * 1000 / 3 for i in data["itls"]])
    assert parsed["percentiles"]["ttft"] == {"mean": data["mean_ttft_ms"], "p50": data["p50_ttft_ms"],
                                             "p95": data["p95_ttft_ms"], "p99": data["p99_ttft_ms"]}
    assert set(parsed["percentiles"]) == {"ttft", "tpot", "itl", "e2el"}
    # vLLM's own e2el percentiles agree with the per-request samples we derive
    from planner.run.results import percentile

    assert percentile(s["e2e"], 95) == pytest.approx(data["p95_e2el_ms"])
    assert percentile(s["tpot"], 50) == pytest.approx(data["p50_tpot_ms"])
    # without --save-detailed: percentiles only
    brief = {k: v for k, v in data.items() if k not in ("ttfts", "itls", "output_lens", "errors")}
    assert parse_bench_result(brief)["samples_ms"] == {"e2e": [], "ttft": [], "tpot": []}
    # failed requests carry no timing
    failed = {**data, "errors": ["", "timeout", "", ""]}
    assert len(parse_bench_result(failed)["samples_ms"]["ttft"]) == 3
    for bad, message in (([], "a JSON object was expected"), ({"completed": 1}, "missing duration"),
                         ({k: data[k] for k in ("completed", "duration", "request_throughput",
                                                "output_throughput")}, "no TTFT figures")):
        with pytest.raises(InputError, match=message):
            parse_bench_result(bad)


def test_runtime_vllm_is_refused_before_any_work_without_vllm():
    from planner.run.stages import RunOptions
    from planner.vllm_bench import vllm_missing

    missing = vllm_missing()
    if missing is None:
        pytest.skip("vLLM and a GPU are present here")
    with pytest.raises(InputError, match=r"--runtime vllm is not available here: .*use --runtime hf-eager"):
        RunOptions(runtime="vllm").check()
    with pytest.raises(InputError, match="--concurrency must be >= 1"):
        RunOptions(concurrency=0).check()
    with pytest.raises(InputError, match="--request-rate must be > 0"):
        RunOptions(request_rate=0.0).check()
    # unset, they leave the fingerprint of older runs unchanged
    assert "request_rate" not in RunOptions().fingerprint() and RunOptions(concurrency=4).fingerprint()["concurrency"] == 4


# -- a GPU's measured figures feed its later projections --------------------------------------------------------


def test_gpu_calibration_is_used_by_later_projections_for_that_gpu(tmp_path, monkeypatch):
    from planner.gpus import get_gpu
    from planner.perf.calibration import calibrated_gpu_rates, fit_host_times, save_gpu_calibration
    from planner.profile.roofline import estimate
    from planner.workload import Workload
    from tiny import tiny_config

    from planner.arch import get_adapter

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path))
    gpu, workload = get_gpu("h100-sxm"), Workload(prompt_len=64, gen_len=8, runtime="hf-eager")
    shape = get_adapter(tiny_config("llama")).shape(tiny_config("llama"))
    assert calibrated_gpu_rates(gpu, workload) is None
    before = estimate(shape, workload, gpu)
    rates = before.serving.rates.model_dump()
    # a GPU that measured 1 ms more per token and 3 ms more on the first token than projected
    step_ms, request_ms = fit_host_times(rates, predicted_ttft_ms=before.ttft_ms, predicted_tpot_ms=before.tpot_ms,
                                         measured_ttft_ms=before.ttft_ms + 3.0, measured_tpot_ms=before.tpot_ms + 1.0)
    assert step_ms == pytest.approx(rates["step_ms"] + 1.0) and request_ms == pytest.approx(rates["request_ms"] + 2.0)
    save_gpu_calibration(gpu="h100-sxm", runtime="hf-eager", dtype="bf16", step_ms=step_ms, request_ms=request_ms,
                         source="test", evidence={})
    calibrated = calibrated_gpu_rates(gpu, workload)
    assert calibrated.step_ms == pytest.approx(step_ms) and "measured on h100-sxm by test" in calibrated.source
    after = estimate(shape, workload, gpu, rates=calibrated)
    assert after.tpot_ms == pytest.approx(before.tpot_ms + 1.0)
    assert after.ttft_ms == pytest.approx(before.ttft_ms + 3.0)
    # another GPU, runtime or dtype is not affected
    assert calibrated_gpu_rates(get_gpu("a100"), workload) is None
    assert calibrated_gpu_rates(gpu, workload.model_copy(update={"runtime": "hf-compile"})) is None


def test_report_shows_sparse_kernels_and_vllm_figures():
    import html
    import re

    from test_report_data import make_results

    from planner.report.render import render_html
    from planner.vllm_bench import parse_bench_result

    data = make_results()
    lat = data["variants"][1]["latency"]
    lat["sparse_kernels"] = {"format": "2:4", "device": "cpu", "dtype": "fp32", "backend": None, "converted": [],
                             "skipped": {"a": "qualifies, but cpu is not a CUDA GPU", "b": "not 2:4: 3 of 4 groups"},
                             "fallback": "cpu is not a CUDA GPU: no sparse tensor cores; the 2:4 model ran on dense kernels"}
    parsed = parse_bench_result(_vllm_sample())  # a sample, not a measurement
    lat["vllm_bench"] = {"vllm_version": "sample", "command": "vllm bench serve", "num_prompts": 4,
                         **{k: parsed[k] for k in ("completed", "request_rate", "max_concurrency", "duration_s",
                                                   "request_throughput", "output_throughput", "percentiles")}}
    page = render_html(data)

    def table(tid):
        start = page.index(f'id="{tid}"')
        return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page[start:page.index("</table>", start)])))

    sparse = table("sparse-kernels-table")
    assert "dense (fallback): cpu is not a CUDA GPU" in sparse and "1: not 2:4: 3 of 4 groups" in sparse
    vllm = table("vllm-bench-table")
    ttft = parsed["percentiles"]["ttft"]
    assert "sample" in vllm and "all at once" in vllm and f"{ttft['p50']:.1f} / {ttft['p95']:.1f}" in vllm


def test_conversion_bookkeeping_with_a_stand_in_for_the_cuda_kernel():
    """What apply_semi_structured does around torch.sparse.to_sparse_semi_structured, with a CPU stand-in for it:
    qualifying layers get the converted weight, a layer the kernel refuses stays dense with the kernel's message."""
    from planner.prune.masked.runtime import convert_layers, semi_structured_plan

    model = _two_four_tiny()
    plan = semi_structured_plan(model, (9, 0), "bf16", backend="cusparselt")
    before = model.model.layers[1].mlp.up_proj.weight.detach().clone()

    def stand_in(weight):
        if weight.shape == (32, 64):  # k/v: pretend this torch build refuses them
            raise RuntimeError("Error original_tensor.shape torch.Size([32, 64]) is not supported!\nmore")
        return weight * 2  # visible in the model afterwards

    record = convert_layers(model, plan, stand_in)
    assert len(record["converted"]) == 15 and record["fallback"] is None and record["backend"] == "cusparselt"
    assert record["skipped"]["model.layers.0.self_attn.k_proj"] == (
        "conversion refused: Error original_tensor.shape torch.Size([32, 64]) is not supported!")
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, before * 2)
    assert not model.model.layers[1].mlp.up_proj.weight.requires_grad


def test_weights_bytes_counts_dense_tensors_by_shape():
    model = tiny_model("llama")
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size()
                                                                    for b in model.buffers())
    assert lat.weights_bytes(model) == expected
