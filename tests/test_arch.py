import pytest
import torch

from planner.arch import get_adapter, supported_model_types
from planner.errors import InputError
from tiny import FAMILIES, tiny_config, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_every_projection(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    shape = adapter.shape(model.config)
    layers = adapter.get_layers(model)
    assert len(layers) == shape.num_layers == 3
    found = list(adapter.iter_linears(model))
    roles_per_layer = len(adapter.linear_roles())
    assert len(found) == 3 * roles_per_layer
    for _, role, name, module in found:
        weight = module.weight
        # (out, in) for Linear, (in, out) for GPT-2's Conv1D
        out_features, in_features = (weight.shape[1], weight.shape[0]) if adapter.conv1d else weight.shape
        if role == "q":
            assert (out_features, in_features) == (shape.q_dim, shape.hidden_size)
        elif role in ("k", "v"):
            assert (out_features, in_features) == (shape.kv_dim, shape.hidden_size)
        elif role == "qkv":
            assert (out_features, in_features) == (shape.q_dim + 2 * shape.kv_dim, shape.hidden_size)
        elif role == "o":
            assert (out_features, in_features) == (shape.hidden_size, shape.q_dim)
        elif role in ("gate", "up"):
            assert (out_features, in_features) == (shape.intermediate_size, shape.hidden_size)
        elif role == "down":
            assert (out_features, in_features) == (shape.hidden_size, shape.intermediate_size)
        assert dict(model.named_modules())[name] is module
    from planner.arch import get_submodule

    assert get_submodule(model, adapter.embed).weight.shape == (shape.vocab_size, shape.hidden_size)
    assert get_submodule(model, adapter.lm_head).weight.shape == (shape.vocab_size, shape.hidden_size)
    get_submodule(layers[0], adapter.input_norm)
    get_submodule(layers[0], adapter.post_attn_norm)
    get_submodule(model, adapter.final_norm)


@pytest.mark.parametrize(
    "family,expected",
    [
        ("llama", dict(num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128, gated_mlp=True)),
        ("mistral", dict(num_heads=4, num_kv_heads=1, head_dim=16, intermediate_size=128, gated_mlp=True)),
        ("gpt2", dict(num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=256, gated_mlp=False)),
        ("opt", dict(num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=128, gated_mlp=False)),
    ],
)
def test_shape_from_config(family, expected):
    shape = get_adapter(tiny_config(family)).shape(tiny_config(family))
    for key, value in expected.items():
        assert getattr(shape, key) == value, key


def test_set_shape_keeps_head_dim_explicit():
    config = tiny_config("llama")
    adapter = get_adapter(config)
    adapter.set_shape(config, num_heads=2, num_kv_heads=1, intermediate_size=64, num_layers=2)
    shape = adapter.shape(config)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim) == (2, 1, 16)
    assert (shape.intermediate_size, shape.num_layers) == (64, 2)


def test_unsupported_family_lists_supported():
    from transformers import BertConfig

    with pytest.raises(InputError) as err:
        get_adapter(BertConfig())
    assert "'bert'" in str(err.value)
    for t in ("llama", "gpt2", "opt", "qwen2", "mistral"):
        assert t in supported_model_types() and t in str(err.value)


def test_tiny_models_run():
    from tiny import example_ids

    for family in FAMILIES:
        logits = tiny_model(family)(example_ids()).logits
        assert logits.shape == (2, 16, 320) and torch.isfinite(logits).all()
