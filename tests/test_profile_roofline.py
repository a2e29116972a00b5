"""The analytic roofline: exact FLOP and byte counts, boundedness on catalog GPUs, config-only shapes."""

import pytest
import torch
from transformers import LlamaConfig

from planner.arch import get_adapter
from planner.errors import InputError
from planner.gpus import get_gpu
from planner.models import build_meta_model
from planner.profile.roofline import RooflineEstimate, estimate, gemm_cost, parameter_count, sparse_2to4_density
from planner.workload import Workload
from tiny import FAMILIES, tiny_config, tiny_model


def llama2_7b_shape():
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    return get_adapter(config).shape(config)


def shape_of(family):
    config = tiny_config(family)
    return get_adapter(config).shape(config)


# -- one GEMM -------------------------------------------------------------------------------------------------


def test_gemm_cost_exact():
    op = gemm_cost(7, 11, 13, 2)
    assert op.flops == 2 * 7 * 11 * 13
    assert op.bytes == (7 * 13 + 11 * 13 + 7 * 11) * 2
    assert op.weight_bytes == 11 * 13 * 2
    assert op.intensity == pytest.approx(op.flops / op.bytes)
    sparse = gemm_cost(7, 11, 13, 2, weight_density=0.5625)
    assert sparse.flops == op.flops
    assert sparse.bytes == (7 * 13 + 11 * 13 * 0.5625 + 7 * 11) * 2


def test_gemm_cost_matches_a_real_linear():
    """FLOPs agree with torch's own FLOP counter; bytes are the nbytes of the input, weight and output tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    m, k, n = 9, 48, 40
    linear = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = linear(x)
    op = gemm_cost(m, n, k, dtype_bytes=2)
    assert op.flops == counter.get_total_flops() == 2 * m * n * k
    assert op.bytes == x.nbytes + linear.weight.nbytes + y.nbytes


def test_sparse_density():
    assert sparse_2to4_density(2) == 0.5625
    assert sparse_2to4_density(1) == 0.625


# -- whole models from their config ------------------------------------------------------------------------------


def test_llama2_7b_on_a100_decode_memory_bound_prefill_compute_bound():
    shape = llama2_7b_shape()
    e = estimate(shape, Workload(prompt_len=2048, gen_len=128, batch_size=1, dtype="bf16"), get_gpu("a100"))
    assert e.gpu == "a100-80gb-sxm"
    assert e.ridge_point == pytest.approx(312e12 / 2039e9)
    assert e.decode.bound == "memory"
    assert 0.9 < e.decode.intensity < 1.1  # bf16 GEMV: 2 FLOPs per 2-byte weight
    assert e.prefill.bound == "compute"
    assert e.prefill.intensity > e.ridge_point
    # decode is bounded by streaming the weights: >= 13.5 GB / 2039 GB/s
    assert e.decode_ms_per_token >= e.weight_bytes / 2039e9 * 1e3
    assert e.parameters == 6_738_415_616


def test_llama2_7b_layer_mlp_flop_share_by_hand():
    shape = llama2_7b_shape()
    h, i, p = 4096, 11008, 2048
    e = estimate(shape, Workload(prompt_len=p, gen_len=128), "a100")
    cat = e.prefill.by_category
    # per token and layer: MLP 3 GEMMs h x i; q,k,v,o h x h (no GQA); causal attention (p+1)/2 keys on average,
    # QK^T and AV each 2 * h FLOPs per key
    mlp = 2 * 3 * h * i
    attn_proj = 2 * 4 * h * h
    attn_core = 2 * 2 * h * (p + 1) / 2
    assert cat["mlp"].flops == pytest.approx(mlp * p * 32, rel=1e-12)
    assert cat["attn_proj"].flops == pytest.approx(attn_proj * p * 32, rel=1e-12)
    assert cat["attn_core"].flops == pytest.approx(attn_core * p * 32, rel=1e-12)
    layer_share = cat["mlp"].flops / (cat["mlp"].flops + cat["attn_proj"].flops + cat["attn_core"].flops)
    assert layer_share == pytest.approx(mlp / (mlp + attn_proj + attn_core), rel=1e-12)
    assert layer_share == pytest.approx(0.642, abs=0.001)  # "MLP is 64% of prefill FLOPs"
    assert cat["lm_head"].flops == 2 * 32000 * h  # the last position only
    assert cat["other"].flops == 0  # norms, adds, embedding: bytes-only


def test_gqa_kv_projections_and_cache():
    shape = shape_of("mistral")  # 4 heads, 1 KV head, head_dim 16
    assert shape.kv_dim == 16
    e = estimate(shape, Workload(prompt_len=10, gen_len=4, dtype="fp16"), "t4")
    ops = {op.name: op for op in e.prefill.ops}
    assert ops["k_proj"].flops == 2 * 10 * 16 * 64
    assert ops["q_proj"].flops == 2 * 10 * 64 * 64
    assert e.kv_cache_bytes_per_token == 2 * 3 * 16 * 2
    assert e.kv_cache_bytes == e.kv_cache_bytes_per_token * (10 + 4)
    decode = {op.name: op for op in e.decode.ops}
    # decode attention reads the whole KV cache of one KV head: prompt + gen/2 keys
    assert decode["attn_scores"].bytes == (64 + 12 * 16) * 2


def test_request_time_and_throughput():
    e = estimate(llama2_7b_shape(), Workload(prompt_len=512, gen_len=100, batch_size=4), "h100")
    assert e.request_ms == pytest.approx(e.prefill_ms + 100 * e.decode_ms_per_token)
    assert e.ttft_ms == e.prefill_ms and e.tpot_ms == e.decode_ms_per_token
    assert e.tokens_per_s == pytest.approx(4 * 100 / (e.request_ms / 1e3))
    assert e.time_share["mlp"] + e.time_share["attn_proj"] + e.time_share["attn_core"] + \
        e.time_share["lm_head"] + e.time_share["other"] == pytest.approx(1.0)
    assert e.dominant_phase == ("decode" if 100 * e.decode_ms_per_token > e.prefill_ms else "prefill")
    assert e.prefill.time_ms == pytest.approx(sum(op.time_ms for op in e.prefill.ops))


def test_lower_bound_is_max_of_compute_and_memory_per_op():
    gpu = get_gpu("l4")
    e = estimate(shape_of("llama"), Workload(prompt_len=64, gen_len=8, dtype="fp16"), gpu)
    for op in e.prefill.ops + e.decode.ops:
        compute = op.total_flops / gpu.peak_flops("fp16")
        memory = op.total_bytes / gpu.bandwidth_bytes_per_s
        assert op.time_ms == pytest.approx(max(compute, memory) * 1e3)
        assert op.bound == ("compute" if compute >= memory else "memory")


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_meta_model(family):
    config = tiny_config(family)
    shape = get_adapter(config).shape(config)
    meta = build_meta_model(config)
    assert parameter_count(shape) == sum(p.numel() for p in meta.parameters())


def test_family_specific_ops():
    gpt2 = {op.name for op in estimate(shape_of("gpt2"), Workload(prompt_len=8), "a100").prefill.ops}
    assert "qkv_proj" in gpt2 and "q_proj" not in gpt2 and "rope" not in gpt2 and "act_mul" not in gpt2
    llama = {op.name for op in estimate(shape_of("llama"), Workload(prompt_len=8), "a100").prefill.ops}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "rope", "lm_head"} <= llama


def test_flops_agree_with_torch_flop_counter_on_a_tiny_model():
    """Projection FLOPs equal what torch counts; attention counts the causal half of torch's full-matrix figure."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model("llama")
    p = 24
    ids = torch.randint(0, 320, (2, p))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids, logits_to_keep=1)
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    linear_flops = counts.pop("aten.mm")  # every projection and the LM head
    attention_flops = counts.pop("aten.bmm")  # eager attention: QK^T and AV over the full P x P matrix
    assert not counts
    e = estimate(shape_of("llama"), Workload(prompt_len=p, batch_size=2, dtype="fp32"), "a100")
    cat = e.prefill.by_category
    assert cat["mlp"].flops + cat["attn_proj"].flops + cat["lm_head"].flops == linear_flops
    assert cat["attn_core"].flops * p / ((p + 1) / 2) == pytest.approx(attention_flops)


# -- pruned shapes and 2:4 --------------------------------------------------------------------------------------


def test_pruned_shapes_are_cheaper():
    shape = llama2_7b_shape()
    w = Workload(prompt_len=1024, gen_len=128)
    dense = estimate(shape, w, "a100")
    narrow = estimate(shape.model_copy(update={"intermediate_size": 11008 * 3 // 4}), w, "a100")
    shallow = estimate(shape.model_copy(update={"num_layers": 24}), w, "a100")
    assert narrow.prefill.by_category["mlp"].flops == pytest.approx(0.75 * dense.prefill.by_category["mlp"].flops)
    assert narrow.decode_ms_per_token < dense.decode_ms_per_token
    assert shallow.prefill.by_category["attn_proj"].flops == pytest.approx(
        0.75 * dense.prefill.by_category["attn_proj"].flops)
    assert shallow.weight_bytes < dense.weight_bytes


def test_sparse_2to4_only_where_the_gpu_has_it():
    shape = llama2_7b_shape()
    bf16 = Workload(prompt_len=2048, gen_len=128, dtype="bf16")
    dense = estimate(shape, bf16, "a100")
    sparse = estimate(shape, bf16, "a100", sparse_2to4=True)
    assert sparse.sparse_2to4_applied
    d_ops = {op.name: op for op in dense.decode.ops}
    s_ops = {op.name: op for op in sparse.decode.ops}
    assert s_ops["up_proj"].weight_bytes == pytest.approx(d_ops["up_proj"].weight_bytes * 0.5625)
    assert s_ops["up_proj"].peak_flops == 2 * d_ops["up_proj"].peak_flops
    assert s_ops["lm_head"].bytes == d_ops["lm_head"].bytes  # the LM head stays dense
    assert sparse.decode_ms_per_token < dense.decode_ms_per_token
    assert sparse.prefill_ms < dense.prefill_ms
    assert sparse.weight_bytes < dense.weight_bytes
    # T4 has no sparse tensor cores; A100 has none for fp32: zeros are multiplied by dense kernels
    for gpu, dtype in (("t4", "fp16"), ("a100", "fp32")):
        w = bf16.model_copy(update={"dtype": dtype})
        plain, asked = estimate(shape, w, gpu), estimate(shape, w, gpu, sparse_2to4=True)
        assert not asked.sparse_2to4_applied
        assert asked.decode_ms_per_token == plain.decode_ms_per_token
        assert asked.prefill_ms == plain.prefill_ms


@pytest.mark.parametrize("runtime", [None, "vllm"])
def test_sparse_2to4_in_a_share_of_the_layers_is_the_weighted_sum_of_sparse_and_dense(runtime):
    """N:M with layers left dense: every projection op's time (roofline and serving model) and the weight bytes are
    share x the 2:4 figure + (1 - share) x the dense one; share 1 is the all-sparse estimate, 0 the dense one."""
    shape = llama2_7b_shape()
    w = Workload(prompt_len=512, gen_len=64, dtype="bf16", runtime=runtime)
    dense, sparse = estimate(shape, w, "a100"), estimate(shape, w, "a100", sparse_2to4=True)
    part = estimate(shape, w, "a100", sparse_2to4=0.75)
    assert part.sparse_2to4_applied and part.sparse_2to4_share == 0.75 and "in 75% of the layers" in part.label
    assert estimate(shape, w, "a100", sparse_2to4=1.0).prefill_ms == sparse.prefill_ms
    assert estimate(shape, w, "a100", sparse_2to4=0.0).prefill_ms == dense.prefill_ms
    for phase in ("prefill", "decode"):
        ops = {name: {op.name: op for op in getattr(e, phase).ops} for name, e in
               (("d", dense), ("s", sparse), ("p", part))}
        for op in ("up_proj", "o_proj", "lm_head", "attn_scores"):
            assert ops["p"][op].time_ms == pytest.approx(0.75 * ops["s"][op].time_ms + 0.25 * ops["d"][op].time_ms)
    assert part.weight_bytes == pytest.approx(0.75 * sparse.weight_bytes + 0.25 * dense.weight_bytes)
    for phase in ("prefill_ms", "decode_ms_per_token"):  # between the two (equal where the runtime has no 2:4 kernel)
        low, mid, high = (getattr(e, phase) for e in (sparse, part, dense))
        assert low < mid < high or low == mid == high
    assert sparse.prefill_ms < part.prefill_ms < dense.prefill_ms or runtime
    if runtime:  # the serving model's work blends the same way (host time and kernel floors do not change)
        for phase in ("prefill", "decode"):
            works = [getattr(e.serving, phase).work_ms for e in (dense, sparse, part)]
            assert works[2] == pytest.approx(0.75 * works[1] + 0.25 * works[0])


# -- peaks and errors -------------------------------------------------------------------------------------------


def test_measured_peaks_override_and_cpu_needs_them():
    shape = shape_of("llama")
    w = Workload(prompt_len=16, dtype="fp32")
    e = estimate(shape, w, "cpu", peaks={"flops": 1e11, "bandwidth": 2e10})
    assert e.peaks_source == "measured" and e.ridge_point == pytest.approx(5.0)
    assert e.label.startswith("projected to cpu")
    with pytest.raises(InputError, match="measured at run time"):
        estimate(shape, w, "cpu")
    with pytest.raises(InputError, match="bandwidth"):
        estimate(shape, w, "a100", peaks={"flops": 1e12})


def test_dtype_without_a_peak_is_input_error():
    with pytest.raises(InputError, match="no fp8 peak.*bf16"):
        estimate(shape_of("llama"), Workload(dtype="fp8"), "a100")


def test_round_trip_json():
    e = estimate(llama2_7b_shape(), Workload(), "h100", sparse_2to4=True)
    again = RooflineEstimate.model_validate_json(e.model_dump_json())
    assert again == e
    assert again.decode_ms_per_token == e.decode_ms_per_token
