"""Structured pruning (MLP channels, heads, layers) on tiny random models of every family: exactness, export
and reload, importance criteria against independent computations, and clear errors for impossible requests."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import FAMILIES, example_ids, tiny_model, tiny_tokenizer

import planner.prune.structured  # noqa: F401  registers the structured kinds
from planner.arch import get_adapter
from planner.errors import InputError
from planner.export import export_model, read_metadata
from planner.prune import apply_pruning
from planner.prune.specs import HeadPruning, LayerPruning, MlpChannelPruning
from planner.prune.structured import default_round_to
from planner.prune.structured.channels import mlp_groups
from planner.prune.structured.importance import activation, unit_scores
from planner.prune.structured.slicing import weight_dim

LLAMA_LIKE = ("llama", "qwen2", "mistral")
CRITERIA = ("magnitude", "activation", "taylor")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def ids():
    return example_ids(4, 24)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def zero_features(module, index, side: str) -> None:
    """Zero the weights (and, for outputs, the bias entries) of features `index` on `side`."""
    with torch.no_grad():
        module.weight.index_fill_(weight_dim(module, side), torch.as_tensor(index), 0.0)
        if side == "out" and getattr(module, "bias", None) is not None:
            module.bias[torch.as_tensor(index)] = 0.0


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- ratio 0 is the identity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_leaves_logits_identical(family, ids):
    model = tiny_model(family)
    before = logits(model, ids)
    specs = [MlpChannelPruning(ratio=0.0, criterion="activation", round_to=64), LayerPruning(num_layers=0)]
    if family in LLAMA_LIKE:
        specs += [HeadPruning(ratio=0.0), HeadPruning(ratio=0.0, mode="per_group")]
    for spec in specs:
        result = apply_pruning(model, spec, ids)
        assert result.params_after == result.params_before
        assert torch.equal(logits(model, ids), before), spec


# -- removing zeroed structure changes nothing -------------------------------------------------------------------


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family", FAMILIES)
def test_zeroed_mlp_channels_are_removed_exactly(family, criterion, ids):
    model = tiny_model(family)
    adapter = get_adapter(model)
    width = adapter.shape(model.config).intermediate_size
    gen = torch.Generator().manual_seed(1)
    zeroed = {}
    for i, layer in enumerate(adapter.get_layers(model)):
        zeroed[i] = set(torch.randperm(width, generator=gen)[: width // 4].tolist())
        roles = [("gate", "out"), ("up", "out"), ("down", "in")] if adapter.gate else [("up", "out"), ("down", "in")]
        for role, side in roles:
            zero_features(adapter.projection(layer, role), sorted(zeroed[i]), side)
    before = logits(model, ids)
    # Channels the criterion scores 0 tie with the zeroed ones. Besides those, ReLU (OPT) leaves a few random channels
    # dead on these tokens, and taylor scores 0 a channel that only fires at the last position (it has no label).
    silent = unit_scores(criterion, model, ids, mlp_groups(model, adapter), progress=False)
    dead = {i: set(torch.nonzero(silent[i] == 0).flatten().tolist()) for i in zeroed}

    result = apply_pruning(model, MlpChannelPruning(ratio=0.25, criterion=criterion), ids)

    kept = width - width // 4
    assert adapter.shape(model.config).intermediate_size == kept
    for i, layer in enumerate(adapter.get_layers(model)):
        assert zeroed[i] <= dead[i]
        assert set(range(width)) - set(result.details["kept_channels"][i]) <= dead[i]
        down = adapter.projection(layer, "down")
        assert down.weight.shape[weight_dim(down, "in")] == kept
        if adapter.conv1d:
            assert down.nx == kept and adapter.projection(layer, "up").nf == kept
    exact = all(dead[i] == zeroed[i] for i in zeroed)
    assert exact or family == "opt" or criterion == "taylor"
    positions = slice(None) if exact or criterion != "taylor" else slice(None, -1)
    torch.testing.assert_close(logits(model, ids)[:, positions], before[:, positions], atol=1e-5, rtol=0)
    per_channel = 64 * 3 if adapter.gate else 64 * 2 + 1  # gate/up rows + down column; plain MLPs: + a bias entry
    assert result.params_before - result.params_after == 3 * (width // 4) * per_channel


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family,mode,ratio", [("llama", "kv_group", 0.5), ("qwen2", "kv_group", 0.5),
                                               ("llama", "per_group", 0.5), ("mistral", "per_group", 0.25)])
def test_zeroed_heads_are_removed_exactly(family, mode, ratio, criterion, ids):
    model = tiny_model(family)
    adapter = get_adapter(model)
    shape = adapter.shape(model.config)
    hd, group = shape.head_dim, shape.group_size
    dead_heads = {}
    for i, layer in enumerate(adapter.get_layers(model)):
        if mode == "kv_group":
            dead_kv = (i + 1) % shape.num_kv_heads  # a different group per layer
            heads = list(range(dead_kv * group, (dead_kv + 1) * group))
            kv_cols = list(range(dead_kv * hd, (dead_kv + 1) * hd))
            zero_features(adapter.projection(layer, "k"), kv_cols, "out")
            zero_features(adapter.projection(layer, "v"), kv_cols, "out")
        else:
            heads = [j * group + (i + j) % group for j in range(shape.num_kv_heads)]  # one per group
        cols = [h * hd + d for h in heads for d in range(hd)]
        zero_features(adapter.projection(layer, "q"), cols, "out")
        zero_features(adapter.projection(layer, "o"), cols, "in")
        dead_heads[i] = set(heads)
    before = logits(model, ids)

    result = apply_pruning(model, HeadPruning(ratio=ratio, criterion=criterion, mode=mode), ids)

    after = adapter.shape(model.config)
    assert after.head_dim == hd
    assert after.num_heads == shape.num_heads - len(dead_heads[0])
    assert after.num_kv_heads == (shape.num_kv_heads - 1 if mode == "kv_group" else shape.num_kv_heads)
    for i, layer in enumerate(adapter.get_layers(model)):
        assert not dead_heads[i] & set(result.details["kept_heads"][i])
        assert adapter.projection(layer, "q").weight.shape == (after.q_dim, shape.hidden_size)
        assert adapter.projection(layer, "k").weight.shape == (after.kv_dim, shape.hidden_size)
        assert adapter.projection(layer, "o").weight.shape == (shape.hidden_size, after.q_dim)
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=0)


def make_identity_layer(model, index: int) -> None:
    """Zero what layer `index` adds to the residual stream (attention and MLP outputs): it becomes the identity."""
    adapter = get_adapter(model)
    layer = adapter.get_layers(model)[index]
    for role in ("o", "down"):
        proj = adapter.projection(layer, role)
        with torch.no_grad():
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_block_influence_removes_an_identity_layer_exactly(family, ids):
    model = tiny_model(family)
    make_identity_layer(model, 1)
    before = logits(model, ids)

    result = apply_pruning(model, LayerPruning(num_layers=1, criterion="block_influence"), ids)

    assert result.details["removed_layers"] == [1]
    assert result.details["kept_layers"] == [0, 2]
    assert result.details["scores"][1] == pytest.approx(0.0, abs=1e-6)
    adapter = get_adapter(model)
    assert len(adapter.get_layers(model)) == adapter.shape(model.config).num_layers == 2
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=0)


def test_ablation_scores_are_perplexity_without_each_layer(ids):
    from planner.evaluate.perplexity import perplexity_of_ids

    model = tiny_model("llama")
    make_identity_layer(model, 2)
    dense_ppl = perplexity_of_ids(model, ids)["ppl"]
    reference = []
    for i in range(3):  # independent: a deep copy with layer i really removed
        copy_i = copy.deepcopy(model)
        del copy_i.model.layers[i]
        copy_i.config.num_hidden_layers = 2
        reference.append(perplexity_of_ids(copy_i, ids)["ppl"])

    result = apply_pruning(model, LayerPruning(num_layers=1, criterion="ablation"), ids)

    scores = [result.details["scores"][i] for i in range(3)]
    assert scores == pytest.approx(reference, rel=1e-5)
    assert scores[2] == pytest.approx(dense_ppl, rel=1e-5)
    assert result.details["removed_layers"] == [min(range(3), key=scores.__getitem__)]


# -- export: a smaller dense checkpoint that loads with plain from_pretrained ------------------------------------


def _export_cases():
    cases = []
    for family in FAMILIES:
        cases.append((family, MlpChannelPruning(ratio=0.5, criterion="activation", round_to=8)))
        cases.append((family, LayerPruning(num_layers=1)))
    cases += [(f, HeadPruning(ratio=0.5, criterion="taylor")) for f in ("llama", "qwen2")]
    cases += [(f, HeadPruning(ratio=0.25, mode="per_group")) for f in ("mistral",)]
    cases += [(f, MlpChannelPruning(ratio=0.5, round_to=8, reconstruct=True)) for f in ("llama", "gpt2", "opt")]
    cases += [(f, HeadPruning(ratio=0.5, mode=mode, reconstruct=True))
              for f, mode in (("llama", "kv_group"), ("qwen2", "per_group"))]
    cases += [(f, MlpChannelPruning(ratio=0.5, round_to=8, criterion="obs")) for f in ("llama", "gpt2")]
    cases += [("llama", HeadPruning(ratio=0.5, criterion="obs")),
              ("qwen2", HeadPruning(ratio=0.5, mode="per_group", criterion="obs"))]
    return cases


@pytest.mark.parametrize("family,spec", _export_cases(), ids=lambda x: getattr(x, "kind", x))
def test_export_reloads_with_from_pretrained(family, spec, ids, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    if spec.kind == "layers":
        make_identity_layer(model, 1)  # the middle layer goes: the last one must be renumbered
    result = apply_pruning(model, spec, ids)
    meta = export_model(model, tokenizer, tmp_path / "pruned", {"prune": spec.model_dump()})

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert meta["parameters"] == result.params_after == sum(p.numel() for p in reloaded.parameters())
    assert read_metadata(tmp_path / "pruned")["file_bytes"] > 0
    adapter = get_adapter(reloaded)
    assert adapter.shape(reloaded.config) == adapter.shape(model.config)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert a.shape == b.shape, name
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=1e-5, rtol=0)

    # generation with a KV cache agrees with the in-memory model and with cache-free greedy decoding
    prompt = ids[:1, :6]
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0))
    uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(cached, uncached)


# -- importance criteria against independent computations --------------------------------------------------------


def test_activation_importance_is_each_groups_output_contribution(ids):
    from planner.prune.structured.heads import head_groups
    model = tiny_model("llama")
    adapter = get_adapter(model)
    shape = adapter.shape(model.config)
    groups = head_groups(model, adapter, shape, "kv_group")
    scores = activation(model, ids, groups, batch_size=2, progress=False)

    o_proj = adapter.projection(adapter.get_layers(model)[0], "o")
    captured = []
    handle = o_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    logits(model, ids)
    handle.remove()
    x = captured[0]
    width = shape.group_size * shape.head_dim
    for g in range(shape.num_kv_heads):  # contribution = o(x) - o(x with that group's heads silenced)
        silenced = x.clone()
        silenced[..., g * width:(g + 1) * width] = 0
        with torch.no_grad():
            expected = torch.linalg.vector_norm(o_proj(x) - o_proj(silenced))
        assert float(scores[0][g]) == pytest.approx(float(expected), rel=1e-4)


def test_taylor_importance_matches_finite_differences(ids):
    from planner.prune.structured.importance import next_token_loss, taylor

    model = tiny_model("llama").double()
    adapter = get_adapter(model)
    groups = mlp_groups(model, adapter)
    scores = taylor(model, ids, groups, batch_size=ids.shape[0], progress=False)  # one batch: (sum g*w)^2

    def loss_with_channel_scaled(layer_index, channel, factor):
        trial = copy.deepcopy(model)
        layer = adapter.get_layers(trial)[layer_index]
        with torch.no_grad():
            for role, side in (("gate", "out"), ("up", "out"), ("down", "in")):
                w = adapter.projection(layer, role).weight
                w.narrow(weight_dim(adapter.projection(layer, role), side), channel, 1).mul_(factor)
            return float(next_token_loss(trial, ids))  # float64 here; the built-in loss upcasts only to float32

    eps = 1e-2  # RMSNorm computes in float32 even in a float64 model: a larger step keeps rounding out
    for layer_index, channel in [(0, 3), (2, 77)]:
        # d loss / d alpha at alpha=1, scaling the channel's weights by alpha, is sum(grad * weight)
        slope = (loss_with_channel_scaled(layer_index, channel, 1 + eps)
                 - loss_with_channel_scaled(layer_index, channel, 1 - eps)) / (2 * eps)
        assert float(scores[layer_index][channel]) == pytest.approx(slope**2, rel=1e-3)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_source_weights_untouched_by_scoring(ids):
    model = tiny_model("qwen2")
    before = state(model)

    for criterion in CRITERIA:
        unit_scores(criterion, model, ids, mlp_groups(model, get_adapter(model)), progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


# -- impossible requests are clear errors, raised before the model is touched ------------------------------------


@pytest.mark.parametrize("family,spec,match", [
    ("llama", HeadPruning(ratio=0.9), "removes all 2 KV groups"),
    ("llama", HeadPruning(ratio=0.2), "removes no whole unit"),
    ("mistral", HeadPruning(ratio=0.5), "removes all 1 KV groups"),
    ("mistral", HeadPruning(ratio=0.1, mode="per_group"), "smallest step is 1/4"),
    ("mistral", HeadPruning(ratio=0.9, mode="per_group"), "removes all 4 query heads per KV group"),
    ("gpt2", HeadPruning(ratio=0.5), "not supported for 'gpt2'"),
    ("opt", HeadPruning(ratio=0.5), "not supported for 'opt'"),
    ("llama", LayerPruning(num_layers=3), "would remove all 3 decoder layers"),
    ("gpt2", LayerPruning(num_layers=5), "accepted: 0 to 2"),
    ("llama", MlpChannelPruning(ratio=0.9, round_to=64), "leaves 0"),
    ("llama", MlpChannelPruning(ratio=0.1, round_to=64), "removes nothing"),
    ("qwen2", MlpChannelPruning(ratio=0.5, criterion="activation"), "needs calibration token ids"),
    ("llama", LayerPruning(num_layers=1), "needs calibration token ids"),
])
def test_impossible_requests_raise_input_error_and_leave_model_alone(family, spec, match):
    model = tiny_model(family)
    before = state(model)
    config_before = model.config.to_dict()
    with pytest.raises(InputError, match=match):
        apply_pruning(model, spec, None)
    assert model.config.to_dict() == config_before
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_per_group_needs_grouped_query_attention(ids):
    model = tiny_model("llama", num_key_value_heads=4)
    with pytest.raises(InputError, match="per_group' needs grouped-query attention"):
        apply_pruning(model, HeadPruning(ratio=0.5, mode="per_group"), ids)


def test_gpt2_layer_removal_refuses_position_dependent_scaling(ids):
    model = tiny_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(InputError, match="scale_attn_by_inverse_layer_idx"):
        apply_pruning(model, LayerPruning(num_layers=1), ids)


def test_round_to_is_honoured_and_achieved_ratio_reported(ids):
    model = tiny_model("llama")  # intermediate 128
    result = apply_pruning(model, MlpChannelPruning(ratio=0.3, criterion="magnitude", round_to=32), ids)
    assert model.config.intermediate_size == 96  # 89.6 -> nearest multiple of 32
    assert result.details["achieved_ratio"] == pytest.approx(0.25)


# -- default round_to --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu,dtype,expected", [
    ("a100", "bf16", 64), ("h100-sxm", "fp16", 64), ("l4", "fp8", 128), ("a100", "tf32", 32),
    ("t4", "fp16", 8), ("v100-sxm", "fp32", 4), ("mi300x", "bf16", 64),
    (None, "fp32", 16), ("cpu", "fp32", 16), (None, "bf16", 32),
])
def test_default_round_to(gpu, dtype, expected):
    assert default_round_to(gpu, dtype) == expected


def test_default_round_to_rejects_unknown_dtype():
    with pytest.raises(InputError, match="unknown dtype 'fp12'"):
        default_round_to(None, "fp12")


# -- the embedded model ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_prunes_exports_and_generates(embedded_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from planner.data import calibration_text, token_blocks
    from planner.models import load_model

    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    calib = token_blocks(tok, calibration_text(), 2, 64)
    apply_pruning(model, MlpChannelPruning(ratio=0.5, criterion="activation", round_to=64), calib)
    apply_pruning(model, HeadPruning(ratio=0.34, criterion="magnitude"), calib)
    result = apply_pruning(model, LayerPruning(num_layers=2), calib)
    assert (model.config.intermediate_size, model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.num_hidden_layers) == (768, 6, 2, 28)
    export_model(model, tok, tmp_path / "small", {})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after
    prompt = tok("def fibonacci(n):", return_tensors="pt").input_ids
    torch.testing.assert_close(logits(reloaded, prompt), logits(model, prompt), atol=1e-4, rtol=0)
    out = reloaded.generate(prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == prompt.shape[1] + 8


# -- reconstruction after a cut ----------------------------------------------------------------------------------


def test_refit_is_the_least_squares_solution_and_exact_when_the_removed_inputs_are_redundant():
    from planner.prune.structured.reconstruct import refit_kept

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :2] @ torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)], dim=1)  # 8 inputs
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    kept = torch.arange(6)
    # inputs 6, 7 are linear in inputs 0, 1: the kept weights can reproduce the output exactly
    new = refit_kept(w, x.t() @ x, kept, dampening=0.0)
    torch.testing.assert_close(x[:, :6] @ new.t(), x @ w.t(), atol=1e-9, rtol=0)
    # in general: the solution of the normal equations (independent solver), within the dampening's effect
    y = torch.randn(400, 8, generator=g, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 5, 7])
    reference = torch.linalg.lstsq(y[:, kept], y @ w.t()).solution.t()
    torch.testing.assert_close(refit_kept(w, y.t() @ y, kept, dampening=0.0), reference, atol=1e-9, rtol=0)
    assert refit_kept(w.float(), (y.t() @ y).float(), kept).dtype == torch.float32


@pytest.mark.parametrize("spec", [MlpChannelPruning(ratio=0.5, round_to=8),
                                  HeadPruning(ratio=0.5), HeadPruning(ratio=0.5, mode="per_group")],
                         ids=lambda s: f"{s.kind}-{getattr(s, 'mode', '')}")
def test_reconstruction_keeps_the_same_units_and_lowers_the_output_error(spec, ids):
    dense = tiny_model("llama")
    reference = logits(dense, ids)
    plain, rebuilt, chosen = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)
    a = apply_pruning(plain, spec, ids)
    b = apply_pruning(rebuilt, spec.model_copy(update={"reconstruct": True}), ids)
    c = apply_pruning(chosen, spec.model_copy(update={"criterion": "obs"}), ids)
    for key in ("kept_channels", "kept_heads"):
        assert a.details.get(key) == b.details.get(key)
    assert b.details["reconstruct"] and c.details["reconstruct"]
    assert b.params_after == a.params_after == c.params_after
    assert len(b.details["ridge"]) == 3 and all(share > 0 for share in b.details["ridge"])
    error = lambda m: float((logits(m, ids) - reference).square().mean())  # noqa: E731
    assert error(rebuilt) < 0.8 * error(plain), (error(rebuilt), error(plain))
    assert error(chosen) < 0.8 * error(plain), (error(chosen), error(plain))


def _correlated_inputs(tokens: int, seed: int):
    """x (tokens, 8): inputs 6 and 7 are combinations of inputs 0-2 plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 6, generator=g, dtype=torch.float64)
    mix = torch.tensor([[0.5, -1.0], [2.0, 0.25], [0.0, 1.0]], dtype=torch.float64)
    return torch.cat([x, x[:, :3] @ mix + 0.01 * torch.randn(tokens, 2, generator=g, dtype=torch.float64)], dim=1)


def test_obs_removes_the_units_the_others_can_stand_in_for():
    from planner.prune.structured.reconstruct import obs_choose, output_error, refit_kept

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :2]], dim=1)  # inputs 6, 7 repeat inputs 0, 1
    gram = x.t() @ x
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    w[:, 2:6] *= 0.2  # the smallest contributions, yet the only ones nothing else can rebuild
    kept = obs_choose(w, gram, 1, [2])
    removed = sorted(set(range(8)) - set(kept.tolist()))
    assert len(kept) == 6 and len(set(removed) & {0, 6}) == 1 and len(set(removed) & {1, 7}) == 1
    total = float((w @ gram * w).sum())
    assert output_error(w, refit_kept(w, gram, kept, dampening=1e-9), gram, kept) < 1e-9 * total
    by_activation = torch.sort((gram.diagonal() * w.square().sum(0)).argsort(descending=True)[:6]).values
    assert output_error(w, refit_kept(w, gram, by_activation, dampening=1e-9), gram, by_activation) > 1e-3 * total
    # units of 2 features with a quota per group of units: one unit from each group of two
    kept_units = obs_choose(w, gram, 2, [1, 1], [0, 0, 1, 1])
    assert len(kept_units) == 2 and sum(1 for u in kept_units.tolist() if u < 2) == 1


def test_cross_validated_ridge_trusts_folds_that_agree_and_distrusts_folds_that_do_not():
    from planner.prune.structured.reconstruct import RIDGE_GRID, cross_validated_ridge

    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 8, generator=g, dtype=torch.float64)
    kept = torch.arange(7)  # input 7 goes

    def fold(sign: float):
        x = torch.randn(400, 8, generator=g, dtype=torch.float64)
        x[:, 7] = sign * x[:, 0]  # the removed input is +- a kept one
        return x.t() @ x

    agree = [fold(1.0), fold(1.0)]
    mean_diag = sum(float(f.diagonal().mean()) for f in agree) / 2
    # the kept inputs stand in for the removed one on both halves: the smallest delta fits best
    assert cross_validated_ridge(w, agree, kept) == pytest.approx(RIDGE_GRID[0] * mean_diag)
    # what one half teaches (x7 = x0) is wrong on the other (x7 = -x0): the fit is held close to W_K
    disagree = [fold(1.0), fold(-1.0)]
    mean_diag = sum(float(f.diagonal().mean()) for f in disagree) / 2
    assert cross_validated_ridge(w, disagree, kept) >= 3.0 * mean_diag


def test_reconstruction_needs_calibration_even_with_magnitude(ids):
    model = tiny_model("llama")
    before = state(model)
    with pytest.raises(InputError, match="reconstruct"):
        apply_pruning(model, MlpChannelPruning(ratio=0.5, criterion="magnitude", reconstruct=True), None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_old_specs_without_the_new_fields_load_with_defaults():
    from planner.prune.specs import UnstructuredPruning, parse_spec

    assert parse_spec({"kind": "mlp_channels", "ratio": 0.25}).reconstruct is False
    assert parse_spec({"kind": "heads", "ratio": 0.25}).reconstruct is False
    assert parse_spec({"kind": "unstructured", "sparsity": 0.5}).allocation == "uniform"
    spec = MlpChannelPruning(ratio=0.25, reconstruct=True)
    assert parse_spec(spec.model_dump()) == spec
    assert parse_spec(UnstructuredPruning(sparsity=0.5, allocation="owl").model_dump()).allocation == "owl"


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_angular_distance_removes_a_run_of_identity_layers_exactly(family, ids):
    model = tiny_model(family, num_hidden_layers=4) if family != "gpt2" else tiny_model(family, n_layer=4)
    make_identity_layer(model, 1)
    make_identity_layer(model, 2)
    before = logits(model, ids)

    result = apply_pruning(model, LayerPruning(num_layers=2, criterion="angular"), ids)

    assert result.details["removed_layers"] == [1, 2]
    assert result.details["kept_layers"] == [0, 3]
    assert result.details["scores"][1] == pytest.approx(0.0, abs=1e-3)  # the run starting at layer 1
    assert min(result.details["scores"].values()) == result.details["scores"][1]
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=0)


# -- re-fit towards the dense model ------------------------------------------------------------------------------


def _first_inputs(model, ids):
    from planner.prune.masked.calibration import capture_first_inputs

    adapter = get_adapter(model)
    return adapter, adapter.get_layers(model), capture_first_inputs(model, adapter.get_layers(model), ids, 2)


@pytest.mark.parametrize("family", ("llama", "gpt2", "opt"))
def test_only_projections_that_add_to_the_output_are_steered_to_it(family, ids):
    from planner.prune.structured.reconstruct import adds_to_output

    model = tiny_model(family)
    adapter, layers, inputs = _first_inputs(model, ids)
    down, o = adapter.projection(layers[0], "down"), adapter.projection(layers[0], "o")
    assert adds_to_output(layers[0], down, inputs)  # pre-norm: out = h + down(...)
    assert not adds_to_output(layers[0], o, inputs)  # the MLP runs on o's output before the addition


def test_dense_target_statistics_are_those_of_the_layers_own_arithmetic(ids):
    from planner.prune.masked.calibration import LayerInputs, run_layer
    from planner.prune.structured.reconstruct import gather_towards

    model = tiny_model("llama")
    adapter, layers, inputs = _first_inputs(model, ids)
    layer, down = layers[0], adapter.projection(layers[0], "down")
    seen = []
    handle = down.register_forward_hook(lambda m, a, out: seen.append(a[0].reshape(-1, a[0].shape[-1]).double()))
    dense = LayerInputs(list(inputs.hidden), inputs.extra_args, inputs.extra_kwargs)
    run_layer(layer, dense, replace=True)
    outs = dense.hidden
    handle.remove()
    a = torch.cat(seen)
    w = down.weight.detach().double()
    for shift in (0.0, 0.5):
        targets = [o + shift for o in outs]
        # each token weighted by 1 / mean square of its target
        weights = torch.cat([1.0 / t.reshape(-1, t.shape[-1]).double().square().mean(-1) for t in targets])
        gram, cross = gather_towards(layer, down, inputs, targets)
        close = lambda x, y: float((x - y).norm()) <= 1e-5 * float(y.norm())  # noqa: E731 (float32 products)
        assert close(gram, (a * weights[:, None]).t() @ a)
        # the consumer is asked for its own output y plus the shift: C = W G + shift x sum of w_t a_t
        expected = w @ gram + shift * (a * weights[:, None]).sum(0).expand(w.shape[0], -1)
        assert close(cross, expected)


@pytest.mark.parametrize("spec", [MlpChannelPruning(ratio=0.5, round_to=8, criterion="obs"),
                                  HeadPruning(ratio=0.5, reconstruct=True)], ids=["mlp-obs", "heads"])
def test_dense_target_is_used_where_it_can_be_and_beats_the_self_target_on_calibration(spec, ids, monkeypatch):
    dense = tiny_model("llama")
    reference = logits(dense, ids)
    fits = {}
    for target in ("self", "dense"):
        monkeypatch.setattr("planner.prune.structured.reconstruct.TARGET", target)
        model = copy.deepcopy(dense)
        result = apply_pruning(model, spec, ids)
        fits[target] = (result, float((logits(model, ids) - reference).square().mean()))
    result = fits["dense"][0]
    if spec.kind == "mlp_channels":
        assert result.details["reconstruct_target"] == ["dense"] * 3
        assert fits["dense"][1] < fits["self"][1], fits
    else:  # o_proj's output goes through the MLP before the addition: the self target
        assert result.details["reconstruct_target"] == ["self"] * 3
    assert fits["self"][0].details["reconstruct_target"] == ["self"] * 3
    assert (fits["dense"][0].details.get("kept_channels") == fits["self"][0].details.get("kept_channels")
            or spec.kind == "mlp_channels")
