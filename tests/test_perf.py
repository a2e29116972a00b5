"""The serving-stack performance model: runtime profiles, the step model, the kernel table, local calibration and
the validation against published tables."""

import math
import sys
from pathlib import Path

import pytest

from planner.arch import ModelShape
from planner.errors import InputError
from planner.gpus import get_gpu
from planner.perf.runtimes import for_target, get_runtime, resolve_runtime, runtime_catalog
from planner.profile.roofline import estimate
from planner.workload import Workload

SMOLLM_135M = ModelShape(family="llama", model_type="llama", num_layers=30, hidden_size=576, intermediate_size=1536,
                         num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152, gated_mlp=True,
                         tied_embeddings=True, max_positions=8192)
LLAMA2_7B = ModelShape(family="llama", model_type="llama", num_layers=32, hidden_size=4096, intermediate_size=11008,
                       num_heads=32, num_kv_heads=32, head_dim=128, vocab_size=32000, gated_mlp=True,
                       tied_embeddings=False, max_positions=4096)


def speedup(shape, cut, workload, gpu, **kw) -> float:
    dense = estimate(shape, workload, gpu, **kw).request_ms
    return dense / estimate(shape.model_copy(update=cut), workload, gpu, **kw).request_ms


def test_every_runtime_profile_loads_and_cites_its_figures():
    catalog = runtime_catalog()
    assert set(catalog) == {"hf-eager", "hf-compile", "vllm", "tensorrt-llm"}
    for spec in catalog.values():
        for field in ("host_ms_per_layer", "step_ms", "kernels_per_layer", "kernel_floor_us", "efficiency"):
            assert len(spec.sources[field]) > 20, (spec.id, field)
        assert all(entry.source for entry in spec.kernels)
    assert get_runtime("trtllm").id == "tensorrt-llm" and get_runtime("transformers").id == "hf-eager"


def test_unknown_or_misplaced_runtime_is_bad_input():
    with pytest.raises(InputError, match=r"unknown runtime 'vlm'; did you mean vllm.*accepted: hf-compile, hf-eager"):
        get_runtime("vlm")
    with pytest.raises(InputError, match="does not run on cpu"):
        resolve_runtime("vllm", get_gpu("cpu"))
    with pytest.raises(InputError, match="unknown runtime"):
        Workload(runtime="tensor-rt-lm")


def test_default_runtime_and_cpu_dtype():
    assert for_target(Workload(), get_gpu("a100")).runtime == "vllm"
    local = for_target(Workload(), get_gpu("cpu"))
    assert local.runtime == "hf-eager" and local.dtype == "fp32"
    assert for_target(Workload(dtype="bf16"), get_gpu("cpu")).dtype == "bf16"  # an explicit dtype is kept


def test_small_model_under_eager_is_overhead_bound_and_width_cuts_buy_nothing():
    w = Workload(runtime="hf-eager")
    est = estimate(SMOLLM_135M, w, "h100")
    assert est.decode_bound == "overhead" and est.decode_overhead_share > 0.9
    assert est.decode.bound == "memory"  # the bare roofline still says memory
    # eager decode of a 135M model: tens of ms per token, not the roofline's ~0.1 ms
    assert est.tpot_ms > 100 * est.roofline_decode_ms_per_token
    assert speedup(SMOLLM_135M, {"intermediate_size": 768}, w, "h100") < 1.03
    assert speedup(SMOLLM_135M, {"num_kv_heads": 2, "num_heads": 6}, w, "h100") < 1.03
    assert speedup(SMOLLM_135M, {"num_layers": 27}, w, "h100") > 1.08


def test_large_model_under_vllm_is_memory_bound_and_width_cuts_pay():
    w = Workload(runtime="vllm")
    est = estimate(LLAMA2_7B, w, "a100")
    assert est.decode_bound == "memory" and est.decode_overhead_share < 0.3
    assert speedup(LLAMA2_7B, {"intermediate_size": 8256}, w, "a100") > 1.12


def test_continuous_batching_sets_the_decode_batch():
    busy = Workload(runtime="vllm", concurrency=64)
    assert estimate(LLAMA2_7B, busy, "a100").decode_batch == 64
    assert estimate(LLAMA2_7B, Workload(runtime="vllm"), "a100").decode_batch == 1
    assert estimate(LLAMA2_7B, Workload(runtime="hf-eager", concurrency=64), "a100").decode_batch == 1
    # a rate is an upper bound under the roofline and grows with the batch under continuous batching
    assert estimate(LLAMA2_7B, busy, "a100").tokens_per_s > 20 * estimate(LLAMA2_7B, Workload(runtime="vllm"),
                                                                          "a100").tokens_per_s


def test_kernel_table_decides_what_2to4_and_int4_are_worth():
    w = Workload(runtime="vllm", prompt_len=16)
    a100_dense, a100_sparse = (estimate(LLAMA2_7B, w, "a100", sparse_2to4=s) for s in (False, True))
    assert a100_sparse.tpot_ms == pytest.approx(a100_dense.tpot_ms, rel=1e-9)  # vLLM's 2:4 kernels need SM90
    assert "no 2:4 kernel" in a100_sparse.serving.decode.formats["2:4"]
    h100_dense, h100_sparse = (estimate(LLAMA2_7B, w, "h100", sparse_2to4=s) for s in (False, True))
    assert h100_sparse.tpot_ms < 0.8 * h100_dense.tpot_ms
    int4 = estimate(LLAMA2_7B, Workload(runtime="hf-compile"), "a100", weight_format="int4-weight-only")
    bf16 = estimate(LLAMA2_7B, Workload(runtime="hf-compile"), "a100")
    assert 1.5 < bf16.tpot_ms / int4.tpot_ms < 2.5
    # no int4 kernel on Volta: the dense rate, said so
    v100 = estimate(LLAMA2_7B, Workload(runtime="vllm", dtype="fp16"), "v100", weight_format="int4-weight-only")
    assert "no int4-weight-only kernel" in v100.serving.decode.formats["int4-weight-only"]


def test_tensor_parallel_splits_work_and_adds_all_reduces():
    w = Workload(runtime="vllm")
    one = estimate(LLAMA2_7B, w, "h100")
    two = estimate(LLAMA2_7B, w, "h100", tensor_parallel=2)
    assert two.serving.decode.work_ms < one.serving.decode.work_ms
    assert two.tpot_ms > one.tpot_ms / 2  # all-reduces and the per-step overhead do not split


def test_bare_roofline_without_a_runtime_is_unchanged():
    est = estimate(LLAMA2_7B, Workload(), "a100")
    assert est.serving is None and est.runtime is None
    assert est.tpot_ms == est.roofline_decode_ms_per_token == pytest.approx(est.decode.time_ms)


def test_published_tables_validate_within_the_acceptance_bounds():
    """bench/validate_projection.py on bench/published: held-out median |error| <= 20%, no row above 35%."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import validate_projection as vp

    rows, shapes = vp.load_rows()
    assert len(rows) >= 15
    assert len({r["gpu"] for r in rows}) >= 3 and len({r["runtime"] for r in rows}) >= 3
    errors = {r["id"]: vp.error(vp.project(r, shapes[r["model"]]), r["value"]) for r in rows}
    held = [abs(errors[r["id"]]) for r in rows if r["model"] not in vp.FIT_MODELS]
    assert len(held) >= 10
    held.sort()
    assert held[len(held) // 2] <= 0.20 and max(held) <= 0.35
    assert all(math.isfinite(e) for e in errors.values())


def test_cpu_rates_come_from_the_measurement(tmp_path, monkeypatch):
    from tiny import save_tiny

    from planner.profile import run_profile

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    folder = save_tiny(tmp_path, "llama")
    profile = run_profile(str(folder), "cpu", Workload(prompt_len=32, gen_len=8), decode_steps=4, repeats=2,
                          threads=1)
    rates = profile.projected.serving.rates
    assert profile.workload.runtime == "hf-eager" and profile.workload.dtype == "fp32"
    assert rates.source.startswith("measured on") and rates.overlap is False and rates.host_ms_per_layer > 0
    assert 0 < rates.memory <= 1 and 0 < rates.compute <= 1
    # the projected forward (without generate()'s per-step time) is the measured decode step, to within noise
    forward = profile.projected.tpot_ms - rates.step_ms
    assert forward == pytest.approx(profile.measured.decode.median_ms, rel=0.5)
