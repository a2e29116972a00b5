"""The quantization engine (torchao) on tiny random models: every decoder projection quantized, weights within the
rounding bound of an independent computation, logits close to dense, smaller storage, clear refusals that leave
the weights untouched, and export + reload with equal logits."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys

import pytest
import torch
from tiny import example_ids, tiny_model, tiny_tokenizer

from planner.errors import InputError
from planner.quant.specs import QuantSpec

pytest.importorskip("torchao")

from planner.quant.engine import (  # noqa: E402
    export_quantized, load_quantized, quantize_model, require_torchao, target_linears)

INT8 = QuantSpec(scheme="int8-weight-only")
W8A8 = QuantSpec(scheme="w8a8-int8")
INT4_G32 = QuantSpec(scheme="int4-weight-only", group_size=32)
LINEARS_PER_LAYER = 7  # q k v o gate up down


@pytest.fixture(autouse=True)
def one_thread():
    # the machine is shared: one thread avoids OpenMP oversubscription on tiny GEMMs
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ids():
    return example_ids(2, 32)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def effective_weight(module):
    """The weight a (quantized) linear multiplies by, read back through its forward on the identity matrix."""
    with torch.inference_mode():
        return module(torch.eye(module.in_features)).T


def quantized(spec, family="llama", seed=0):
    dense = tiny_model(family, seed)
    model = copy.deepcopy(dense)
    result = quantize_model(model, spec)
    return dense, model, result


# -- int8 weight-only -------------------------------------------------------------------------------------------


def test_int8_quantizes_every_decoder_linear_and_nothing_else():
    dense, model, result = quantized(INT8)
    layers = model.config.num_hidden_layers
    assert result.linears_quantized == layers * LINEARS_PER_LAYER == 21
    targets = target_linears(model)
    assert {type(m.weight).__name__ for m in targets.values()} == {"Int8Tensor"}
    assert all(m.weight.qdata.dtype == torch.int8 for m in targets.values())
    assert result.params_quantized == sum(m.weight.numel() for m in target_linears(dense).values()) == 110_592
    # embeddings and LM head stay dense fp32, equal to the original
    assert type(model.lm_head.weight) is torch.nn.Parameter and model.lm_head.weight.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, dense.lm_head.weight)
    assert torch.equal(model.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert "embeddings and LM head left dense (model.embed_tokens, lm_head)" in result.notes
    assert result.backend.startswith("torchao 0.") and "Int8WeightOnlyConfig" in result.backend


def test_int8_weights_round_to_the_per_row_grid():
    dense, model, _ = quantized(INT8)
    for name, module in target_linears(model).items():
        w = target_linears(dense)[name].weight.detach()
        # symmetric, one scale per output channel: amax / ((127 - -128) / 2), the row's extreme lands on +-127
        step = w.abs().amax(dim=1, keepdim=True) / 127.5
        expected = torch.round(w / step).clamp(-128, 127) * step
        got = effective_weight(module)
        assert (got - w).abs().le(step / 2 * 1.001 + 1e-7).all(), name
        # a row's extreme sits on a rounding tie (127.5 steps), where float rounding may pick either neighbour
        extreme = w.abs() == w.abs().amax(dim=1, keepdim=True)
        torch.testing.assert_close(got[~extreme], expected[~extreme], atol=1e-6, rtol=1e-5)


def test_int8_logits_close_to_dense(ids):
    dense, model, _ = quantized(INT8)
    ref, out = logits(dense, ids), logits(model, ids)
    # measured: 0.017 (norm ratio), top-1 agreement 0.98 over 3 seeds' worst case 0.95
    assert (out - ref).norm() / ref.norm() < 0.04
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_int8_storage_is_a_quarter_of_fp32_plus_row_scales():
    _, model, result = quantized(INT8)
    assert result.dense_bytes == 110_592 * 4
    # one int8 per weight, and per output channel an fp32 scale and an int8 zero point (stored, 0: symmetric)
    rows = sum(m.out_features for m in target_linears(model).values())
    assert result.quantized_bytes == 110_592 + (4 + 1) * rows
    assert result.quantized_bytes / result.dense_bytes == pytest.approx(0.267, abs=0.001)


def test_w8a8_logits_close_to_dense(ids):
    dense, model, result = quantized(W8A8)
    assert result.linears_quantized == 21 and "Int8DynamicActivationInt8WeightConfig" in result.backend
    assert "activations are quantized per token at run time" in result.notes
    ref, out = logits(dense, ids), logits(model, ids)
    assert (out - ref).norm() / ref.norm() < 0.06  # measured 0.023-0.034
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


# -- int4 weight-only (CPU tinygemm layout) -----------------------------------------------------------------------


def test_int4_weights_within_half_a_step_of_each_group(ids):
    dense, model, result = quantized(INT4_G32)
    assert result.linears_quantized == 21 and "PrototypeInt4WeightOnlyConfig" in result.backend
    assert {type(m.weight).__name__ for m in target_linears(model).values()} == {"Int4OpaqueTensor"}
    for name, module in target_linears(model).items():
        w = target_linears(dense)[name].weight.detach()
        groups = w.view(w.shape[0], -1, 32)
        step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15  # asymmetric, 16 levels
        error = (effective_weight(module).reshape(groups.shape) - groups).abs()
        assert error.le(step / 2 * 1.01 + 1e-6).all(), name
        assert error.mean() > 0  # really rounded
    ref, out = logits(dense, ids), logits(model, ids)
    # random weights at 4 bits: measured 0.21-0.25 (norm ratio), top-1 agreement 0.70-0.80 over 3 seeds
    assert (out - ref).norm() / ref.norm() < 0.35
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.6


def test_int4_storage_is_half_a_byte_per_weight_plus_group_scales():
    _, model, result = quantized(INT4_G32)
    groups = 110_592 // 32
    # packed nibbles, then a (scale, zero) pair per group in fp32
    assert result.quantized_bytes == 110_592 // 2 + groups * 2 * 4
    assert result.quantized_bytes / result.dense_bytes == pytest.approx(0.1875)


def test_int4_export_refused_on_cpu(tmp_path):
    _, model, result = quantized(INT4_G32)
    assert any(n.startswith("no checkpoint export:") for n in result.notes)
    with pytest.raises(InputError, match="Int4OpaqueTensor.*no safetensors serialization"):
        export_quantized(model, None, tmp_path / "q", INT4_G32)
    assert not (tmp_path / "q").exists()


# -- refusals, before any weight changes ---------------------------------------------------------------------------


def test_group_size_that_does_not_divide_is_refused_untouched():
    model = tiny_model("llama")  # hidden 64: q/k/v/gate/up have 64 input features
    before = weights_digest(model)
    with pytest.raises(InputError) as err:
        quantize_model(model, QuantSpec(scheme="int4-weight-only", group_size=128))
    msg = str(err.value)
    assert "group_size 128 does not divide the 64 input features of model.layers.0.self_attn.q_proj" in msg
    assert "group sizes that divide every layer's input: 32, 64" in msg
    assert weights_digest(model) == before
    assert all(type(m.weight) is torch.nn.Parameter for m in target_linears(model).values())


def test_group_size_the_cpu_kernel_lacks_is_refused():
    model = tiny_model("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2)
    before = weights_digest(model)
    with pytest.raises(InputError, match="group_size 256 is not supported on cpu .accepted there: 32, 64, 128."):
        quantize_model(model, QuantSpec(scheme="int4-weight-only", group_size=256))
    assert weights_digest(model) == before


def test_output_width_the_cpu_int4_kernel_cannot_pack_is_refused():
    model = tiny_model("llama", intermediate_size=72)  # a pruned MLP width, not a multiple of 16
    before = weights_digest(model)
    with pytest.raises(InputError, match="model.layers.0.mlp.gate_proj: its 72 output features are not a "
                                         "multiple of 16"):
        quantize_model(model, INT4_G32)
    assert weights_digest(model) == before


def test_fp8_on_cpu_is_refused_naming_what_cpu_accepts():
    model = tiny_model("llama")
    before = weights_digest(model)
    with pytest.raises(InputError) as err:
        quantize_model(model, QuantSpec(scheme="fp8"))
    msg = str(err.value)
    assert "scheme 'fp8' cannot run on cpu" in msg and "compute capability 8.9" in msg
    assert "accepted on cpu: int8-weight-only, int4-weight-only, w8a8-int8" in msg
    assert weights_digest(model) == before


def test_already_quantized_model_is_refused():
    _, model, _ = quantized(INT8)
    with pytest.raises(InputError, match="already quantized .Int8Tensor."):
        quantize_model(model, W8A8)


def test_gpt2_conv1d_projections_are_refused():
    model = tiny_model("gpt2")
    before = weights_digest(model)
    with pytest.raises(InputError, match="Conv1D, not nn.Linear"):
        quantize_model(model, INT8)
    assert weights_digest(model) == before


@pytest.mark.parametrize("family", ["qwen2", "mistral", "opt"])
def test_other_linear_families_quantize(family, ids):
    dense, model, result = quantized(INT8, family)
    assert result.linears_quantized == len(target_linears(dense))
    ref, out = logits(dense, ids), logits(model, ids)
    assert (out - ref).norm() / ref.norm() < 0.05


# -- export and reload --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [INT8, W8A8], ids=lambda s: s.scheme)
def test_export_reload_gives_equal_logits_and_a_smaller_file(spec, tmp_path, ids):
    dense, model, _ = quantized(spec)
    dense.save_pretrained(tmp_path / "dense")
    dense_file = (tmp_path / "dense" / "model.safetensors").stat().st_size
    meta = export_quantized(model, tiny_tokenizer(), tmp_path / "q", spec)
    assert meta["quantize"] == spec.model_dump()
    assert meta["files"] == {"model.safetensors": meta["file_bytes"]}
    # the projections go to ~1/4 (int8 + scales); embeddings and LM head (164 kB of 611 kB) stay fp32
    assert meta["file_bytes"] / dense_file == pytest.approx(0.49, abs=0.02)
    assert not hasattr(model.config, "quantization_config") and model.hf_quantizer is None  # model left as it was

    loaded = load_quantized(tmp_path / "q")
    assert loaded.tokenizer is not None
    assert {type(m.weight).__name__ for m in target_linears(loaded.model).values()} == {"Int8Tensor"}
    assert type(loaded.model.lm_head.weight) is torch.nn.Parameter
    loaded.model.set_attn_implementation("eager")  # the tiny model runs eager attention; sdpa rounds differently
    torch.testing.assert_close(logits(loaded.model, ids), logits(model, ids), atol=1e-5, rtol=1e-5)


def test_export_of_a_dense_model_is_refused(tmp_path):
    with pytest.raises(InputError, match="not quantized as int8 weight-only.*run quantize_model first"):
        export_quantized(tiny_model("llama"), None, tmp_path / "q", INT8)
    assert not (tmp_path / "q").exists()


def test_load_of_a_plain_checkpoint_is_refused(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    with pytest.raises(InputError, match="not a torchao-quantized checkpoint"):
        load_quantized(tmp_path / "dense")


# -- torchao stays optional -------------------------------------------------------------------------------------


def test_import_planner_does_not_import_torchao():
    code = ("import sys, planner, planner.quant, planner.quant.specs, planner.quant.engine; "
            "print('torchao' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_torchao_is_an_input_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(InputError, match=r"pip install 'planner\[quant\]'"):
        require_torchao()
    model = tiny_model("llama")
    with pytest.raises(InputError, match="needs torchao"):
        quantize_model(model, INT8)


# -- the embedded model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_int8_keeps_perplexity_and_round_trips(tmp_path):
    from planner.data import heldout_text
    from planner.evaluate.perplexity import perplexity
    from planner.models import load_model

    loaded = load_model(None, dtype="fp32")
    model, tok = loaded.model, loaded.tokenizer
    dense_ppl = perplexity(model, tok, heldout_text(), seq_len=128, max_tokens=512)["ppl"]
    result = quantize_model(model, INT8)
    assert result.linears_quantized == 30 * LINEARS_PER_LAYER
    ppl = perplexity(model, tok, heldout_text(), seq_len=128, max_tokens=512)["ppl"]
    assert ppl / dense_ppl == pytest.approx(1.0, abs=0.03)
    # SmolLM2's hidden size 576 = 4.5 x 128: the default int4 group size cannot be used
    with pytest.raises(InputError, match="group_size 128 does not divide the 576 input features"):
        quantize_model(load_model(None, dtype="fp32").model, QuantSpec(scheme="int4-weight-only"))

    meta = export_quantized(model, tok, tmp_path / "q", INT8)
    dense_bytes = sum(f.stat().st_size for f in loaded.source.path.glob("*.safetensors"))
    assert meta["file_bytes"] / dense_bytes < 0.45
    ids = tok(heldout_text()[:2000], return_tensors="pt")["input_ids"][:, :64]
    again = load_quantized(tmp_path / "q").model
    torch.testing.assert_close(logits(again, ids), logits(model, ids), atol=1e-4, rtol=1e-4)
