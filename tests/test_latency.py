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
