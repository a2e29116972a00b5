"""The measured breakdown on tiny random models: attribution to categories and modules, real KV-cache decode."""

import pytest
import torch

from planner.profile.measure import (
    ModuleLabels, Runner, base_op_name, classify_op, measure_model, module_map, part_of,
)
from planner.profile.schema import MEASURED_CATEGORIES
from tiny import tiny_model


def test_op_names_and_classification():
    assert base_op_name("aten::add_") == "add"
    assert base_op_name("aten::_softmax") == "_softmax"
    assert classify_op("aten::_scaled_dot_product_flash_attention_for_cpu", "attention") == "attention_core"
    assert classify_op("aten::bmm", "attention") == "attention_core"
    assert classify_op("aten::softmax", "attention") == "attention_core"
    assert classify_op("aten::cat", "attention") == "data_movement"
    assert classify_op("aten::mul", "mlp") == "elementwise"
    assert classify_op("aten::silu", "mlp") == "activation"
    assert classify_op("aten::native_layer_norm", "other") == "norm"
    assert classify_op("aten::embedding", "other") == "embedding"
    assert classify_op("aten::some_new_op", "other") == "other"
    assert part_of("q_proj", "attention") == "attn_proj"
    assert part_of("data_movement", "attention") == "attn_core"
    assert part_of("elementwise", "mlp") == "mlp"
    assert part_of("lm_head", "other") == "lm_head"


def test_module_map_llama():
    info = module_map(tiny_model("llama"))
    assert info["model.layers.1.self_attn.q_proj"].category == "q_proj"
    assert info["model.layers.1.self_attn.q_proj"].group == "layers.1.attention"
    assert info["model.layers.2.mlp.down_proj"].category == "down_proj"
    assert info["model.layers.2.mlp.act_fn"].category == "activation"
    assert info["model.layers.2.mlp"].region == "mlp"
    assert info["model.layers.0.input_layernorm"].category == "norm"
    assert info["model.layers.0.input_layernorm"].group == "layers.0.other"
    assert info["model.embed_tokens"].category == "embedding"
    assert info["lm_head"].category == "lm_head"
    assert info["model.norm"].group == "final_norm"


def test_module_map_gpt2_and_opt():
    gpt2 = module_map(tiny_model("gpt2"))
    assert gpt2["transformer.h.0.attn.c_attn"].category == "qkv_proj"
    assert gpt2["transformer.h.0.mlp.c_fc"].category == "up_proj"
    assert gpt2["transformer.wpe"].category == "embedding"
    opt = module_map(tiny_model("opt"))
    assert opt["model.decoder.layers.1.fc1"].category == "up_proj"
    assert opt["model.decoder.layers.1.fc1"].region == "mlp"
    assert opt["model.decoder.layers.1.activation_fn"].region == "mlp"
    assert opt["model.decoder.layers.1.self_attn.out_proj"].category == "o_proj"


def test_decode_uses_a_real_kv_cache():
    model = tiny_model("llama")
    runner = Runner(model, batch_size=2, prompt_len=12, device="cpu")
    with torch.no_grad():
        token, cache = runner.prefill()
        assert cache.get_seq_length() == 12
        next_token, cache = runner.decode_step(token, cache)
        assert cache.get_seq_length() == 13
        full = model(torch.cat([runner.ids, token], dim=1)).logits[:, -1]
    assert torch.equal(next_token[:, 0], full.argmax(-1))


def test_labels_are_removed():
    model = tiny_model("llama")
    with ModuleLabels(model):
        assert model.lm_head._forward_pre_hooks
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def _check_phase(phase, model, expected_categories, num_layers=3):
    assert phase.total_ms > 0
    # every event is attributed once: categories, roofline parts and modules each add up to the phase time
    for split in (phase.by_category, phase.by_part, phase.by_module):
        assert sum(split.values()) == pytest.approx(phase.total_ms, rel=1e-9)
    assert sum(op.self_ms for op in phase.ops) == pytest.approx(phase.total_ms, rel=1e-9)
    assert set(phase.by_category) <= set(MEASURED_CATEGORIES)
    assert expected_categories <= set(phase.by_category)
    assert phase.coverage >= 0.95 and phase.op_coverage >= 0.95
    assert phase.by_category["framework"] >= 0
    # on CPU the events' self times partition the phase span: nothing is left to attribute but float rounding
    assert abs(phase.unattributed_ms) < 1e-6 * phase.total_ms + 1e-6
    # the profiler's span agrees with a clock read outside it
    median = sorted(range(len(phase.profiled_ms)), key=phase.profiled_ms.__getitem__)[len(phase.profiled_ms) // 2]
    assert 0.5 * phase.wall_ms[median] <= phase.total_ms <= phase.wall_ms[median] + 1.0
    linear_calls = sum(op.calls for op in phase.ops if op.category == "q_proj" and op.name == "aten::linear")
    assert linear_calls == num_layers
    assert {f"layers.{i}.attention" for i in range(num_layers)} <= set(phase.by_module)
    assert all(v > 0 for v in phase.unprofiled_ms)


def test_measure_llama_prefill_and_decode():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prefill, decode, extras = measure_model(model, batch_size=1, prompt_len=24, repeats=2, decode_steps=3,
                                            warmup_steps=1, label="measured on cpu (test)")
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    for phase in (prefill, decode):
        _check_phase(phase, model, projections | {"attention_core", "norm", "embedding", "framework"})
        assert phase.label == "measured on cpu (test)"
    assert len(prefill.profiled_ms) == len(prefill.unprofiled_ms) == 2
    assert len(decode.profiled_ms) == len(decode.unprofiled_ms) == 3
    assert prefill.new_tokens == 24 and decode.new_tokens == 1
    assert decode.context_len == 24 + 1 + 3 / 2
    assert extras["activation_peak_bytes"] is None  # CPU: no allocator statistics
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family,proj", [("gpt2", "qkv_proj"), ("opt", "q_proj")])
def test_measure_other_families(family, proj):
    model = tiny_model(family)
    prefill, decode, _ = measure_model(model, batch_size=2, prompt_len=16, repeats=1, decode_steps=2,
                                       warmup_steps=1)
    if proj == "q_proj":
        _check_phase(prefill, model, {proj, "up_proj", "down_proj", "attention_core"})
    else:
        assert {proj, "up_proj", "down_proj", "attention_core", "activation"} <= set(prefill.by_category)
        assert prefill.coverage >= 0.95
    assert decode.by_part["mlp"] > 0 and decode.by_part["attn_proj"] > 0
