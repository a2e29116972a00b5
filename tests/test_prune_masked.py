"""Masked pruning (unstructured and N:M; magnitude, Wanda, SparseGPT) on tiny random models of every family."""

from __future__ import annotations

import json

import pytest
import torch

import planner.prune.masked as masked
from planner.arch import get_adapter
from planner.errors import InputError
from planner.prune import apply_pruning
from planner.prune.masked.calibration import InputStats
from planner.prune.masked.patterns import (
    global_mask,
    nm_mask,
    nm_violations,
    split_count,
    unstructured_mask,
)
from planner.prune.masked.sparsegpt import sparsegpt_prune
from planner.prune.masked.wanda import wanda_scores
from planner.prune.specs import SemiStructuredPruning, UnstructuredPruning
from tiny import FAMILIES, example_ids, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the test machine is shared: one thread avoids OpenMP oversubscription, which makes tiny GEMMs 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def out_in(tensor, family):
    """A weight or mask in (out, in) layout (GPT-2's Conv1D stores (in, out))."""
    tensor = tensor.detach()
    return tensor.t() if family == "gpt2" else tensor


def layer_inputs(model, module, ids):
    """Every input row the module sees when `model` runs on `ids` (in chunks of 4 samples, as the engine does)."""
    rows = []
    handle = module.register_forward_hook(lambda m, a, o: rows.append(a[0].reshape(-1, a[0].shape[-1]).float()))
    with torch.no_grad():
        for start in range(0, ids.shape[0], 4):
            model(input_ids=ids[start : start + 4], use_cache=False)
    handle.remove()
    return torch.cat(rows)


# -- patterns -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
@pytest.mark.parametrize("compare", ["row", "matrix"])
def test_unstructured_mask_prunes_exactly_the_target_and_the_lowest(sparsity, compare):
    scores = torch.rand(7, 13, generator=torch.Generator().manual_seed(1))
    keep = unstructured_mask(scores, sparsity, compare)
    assert keep.shape == scores.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == int(sparsity * 91 + 0.5)
    if compare == "matrix" and sparsity > 0:
        assert scores[~keep].max() < scores[keep].min()  # the lowest scores overall
    if compare == "row":
        for r in range(7):
            if (~keep[r]).any() and keep[r].any():
                assert scores[r][~keep[r]].max() < scores[r][keep[r]].min()  # the lowest within each row


def test_split_count_sums_exactly():
    counts = split_count(0.37, [13] * 11)
    assert sum(counts) == int(0.37 * 143 + 0.5)
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_prunes_exactly_n_lowest_per_group(n, m):
    scores = torch.rand(6, 32, generator=torch.Generator().manual_seed(2))
    keep = nm_mask(scores, n, m)
    pruned = (~keep).view(6, 32 // m, m).sum(-1)
    assert torch.equal(pruned, torch.full_like(pruned, n))
    groups, kept = scores.view(6, -1, m), keep.view(6, -1, m)
    assert torch.all(torch.where(kept, torch.inf, groups).amin(-1) >= 0)
    assert torch.all(torch.where(kept, -torch.inf, groups).amax(-1) <= torch.where(kept, groups, torch.inf).amin(-1))
    assert nm_violations(keep, n, m) == 0
    assert nm_violations(torch.ones_like(keep), n, m) == 6 * 32 // m


def test_nm_ties_go_to_the_lower_index_every_time():
    # equal scores inside a group (e.g. two zero weights of a dequantized checkpoint): the lower inputs are pruned
    scores = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], [2.0, 1.0, 1.0, 1.0, 3.0, 0.0, 3.0, 0.0]])
    expected = torch.tensor([[False, False, True, True, False, False, True, True],
                             [True, False, False, True, True, False, True, False]])
    for _ in range(3):
        assert torch.equal(nm_mask(scores, 2, 4), expected)
    assert torch.equal(nm_mask(scores.repeat(64, 8), 2, 4), expected.repeat(64, 8))


def test_global_mask_is_exact_with_ties():
    a = torch.tensor([[0.1, 0.2, 0.2, 0.9]])
    b = torch.tensor([[0.2, 0.2], [0.5, 0.05]])
    keeps = global_mask([a, b], 0.5)  # 8 weights, prune 4: 0.05, 0.1 and the first two of the four 0.2s
    assert keeps[0].tolist() == [[False, False, False, True]]
    assert keeps[1].tolist() == [[True, True], [True, False]]


def test_nm_rejects_bad_patterns():
    with pytest.raises(InputError, match="4:4"):
        nm_mask(torch.rand(2, 8), 4, 4)
    with pytest.raises(InputError, match="not a multiple of M=8"):
        nm_mask(torch.rand(2, 12), 2, 8)


# -- criteria on one layer ------------------------------------------------------------------------------------


def test_wanda_scores_are_weight_magnitude_times_input_norm():
    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(6, 3, bias=False)
    x = torch.randn(2, 5, 6, generator=gen)
    stats = InputStats({"lin": layer}, hessian=False)
    with stats, torch.no_grad():
        layer(x[:1])
        layer(x[1:])
    by_hand = torch.empty(3, 6, dtype=torch.float64)
    for i in range(3):
        for j in range(6):
            by_hand[i, j] = abs(float(layer.weight[i, j].detach())) * float(x[..., j].double().pow(2).sum().sqrt())
    torch.testing.assert_close(wanda_scores(layer.weight, stats.input_sq_sum("lin")), by_hand)
    assert stats.tokens["lin"] == 10


def test_input_sums_are_exact_to_float64_whatever_the_chunking():
    gen = torch.Generator().manual_seed(4)
    layer = torch.nn.Linear(4, 2, bias=False)
    # a wide dynamic range, where float32 sums lose ~1e-7 of the total depending on the order of the additions
    x = torch.randn(64, 50, 4, generator=gen) * torch.logspace(-3, 3, 64).view(64, 1, 1)
    exact = x.double().square().sum(dim=(0, 1))
    for chunk in (1, 5, 64):
        stats = InputStats({"lin": layer}, hessian=False)
        with stats, torch.no_grad():
            for start in range(0, 64, chunk):
                layer(x[start : start + chunk])
        got = stats.input_sq_sum("lin")
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, exact, rtol=1e-12, atol=0)


def test_wanda_masks_do_not_depend_on_how_the_calibration_tokens_are_chunked():
    """The per-input sums are float64, and a layer's forward is batch-invariant, so the same tokens give the same
    masks whether they pass one sample or several at a time (in float32 the sums' rounding moved near-ties)."""
    import planner.prune.masked  # noqa: F401

    ids = example_ids(8, 24, seed=2)
    masks = []
    for chunk in (1, 3, 8):
        model = tiny_model("llama")
        result = apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="wanda"), ids, progress=False,
                               chunk_samples=chunk)
        masks.append(result.masks)
    for other in masks[1:]:
        assert all(torch.equal(masks[0][name], other[name]) for name in masks[0])


def test_sparsegpt_at_zero_sparsity_leaves_the_weight_unchanged():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 40, generator=gen)
    x = torch.randn(200, 40, generator=gen)
    new, keep = sparsegpt_prune(w, 2 * x.t() @ x / 200, sparsity=0.0, block_size=16)
    assert keep.all()
    assert torch.equal(new, w)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.0, 2, 4)])
def test_sparsegpt_reconstructs_better_than_masking_alone(sparsity, n, m):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, 64, generator=gen)
    x = torch.randn(300, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated inputs
    new, keep = sparsegpt_prune(w, 2 * x.t() @ x / 300, sparsity=sparsity, n=n, m=m, block_size=32)
    assert bool((new[~keep] == 0).all()) and int((~keep).sum()) == 24 * 64 // 2
    masked_only = w * keep  # same zeros, no weight update
    assert (x @ (new - w).t()).norm() < 0.8 * (x @ (masked_only - w).t()).norm()
    if m:
        assert nm_violations(keep, n, m) == 0


# -- whole models ---------------------------------------------------------------------------------------------

SPECS = [
    UnstructuredPruning(sparsity=0.5, criterion="wanda"),
    UnstructuredPruning(sparsity=0.37, criterion="sparsegpt"),
    UnstructuredPruning(sparsity=0.3, criterion="magnitude", scope="global"),
    UnstructuredPruning(sparsity=0.6, criterion="magnitude"),
    SemiStructuredPruning(n=2, m=4, criterion="sparsegpt"),
    SemiStructuredPruning(n=4, m=8, criterion="wanda"),
    SemiStructuredPruning(n=2, m=4, criterion="magnitude"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.criterion}")
def test_every_family_gets_exact_masks_and_keeps_head_and_embeddings(family, spec):
    model = tiny_model(family)
    adapter = get_adapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = apply_pruning(model, spec, example_ids(6, 24), progress=False)
    linears = {name: module for _, _, name, module in adapter.iter_linears(model)}
    assert set(result.masks) == set(linears)
    total = pruned = 0
    for name, module in linears.items():
        keep = result.masks[name]
        assert keep.shape == module.weight.shape and keep.dtype == torch.bool
        assert bool((module.weight[~keep] == 0).all())
        k = out_in(keep, family)
        if spec.kind == "nm":
            assert nm_violations(k, spec.n, spec.m) == 0
            assert int((~k).sum()) == k.numel() * spec.n // spec.m
        elif spec.scope == "layer":
            assert int((~k).sum()) == int(spec.sparsity * k.numel() + 0.5)
        total += keep.numel()
        pruned += int((~keep).sum())
    target = spec.n / spec.m if spec.kind == "nm" else spec.sparsity
    if spec.kind == "unstructured" and spec.scope == "global":
        assert pruned == int(spec.sparsity * total + 0.5)
    assert result.achieved_sparsity == pytest.approx(pruned / total)
    assert abs(result.achieved_sparsity - target) < 1e-3
    assert len(result.details["layers"]) == adapter.shape(model.config).num_layers
    assert result.params_before == result.params_after
    state = model.state_dict()
    linear_weights = {f"{name}.weight" for name in linears}
    for key, value in before.items():
        if key not in linear_weights:  # LM head, embeddings, norms, biases untouched
            assert torch.equal(state[key], value), key
    logits = model(input_ids=example_ids(1, 8)).logits
    assert torch.isfinite(logits).all()


# -- non-uniform layer sparsity -----------------------------------------------------------------------------------


def test_layer_sparsities_keep_the_mean_and_the_range_and_prune_high_statistics_less():
    from planner.prune.masked.allocation import LAMBDA, layer_sparsities

    stats = [0.02, 0.5, 0.1, 0.9, 0.3]
    ratios = layer_sparsities(stats, 0.5)
    assert sum(ratios) / len(ratios) == pytest.approx(0.5)
    assert max(ratios) - min(ratios) == pytest.approx(2 * LAMBDA)
    assert sorted(range(5), key=ratios.__getitem__) == sorted(range(5), key=lambda i: -stats[i])
    assert layer_sparsities([0.3, 0.3], 0.5) == [0.5, 0.5]
    low = layer_sparsities(stats, 0.05)  # lambda shrinks so no layer goes below 0
    assert min(low) >= 0.0 and sum(low) / 5 == pytest.approx(0.05)


def test_outlier_fraction_counts_scores_above_m_times_the_mean():
    from planner.prune.masked.allocation import OUTLIER_MULTIPLE, outlier_fraction

    scores = torch.ones(1000)
    scores[:7] = 20 * OUTLIER_MULTIPLE  # mean ~ 1 + 7*100/1000 = 1.7: 7 scores above 5 x 1.7
    assert outlier_fraction([scores[:500], scores[500:]]) == pytest.approx(7 / 1000)


@pytest.mark.parametrize("allocation", ["owl", "block_influence", "fisher"])
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_non_uniform_allocation_prunes_each_layer_at_its_ratio_and_the_target_overall(allocation, criterion):
    model = tiny_model("llama", num_hidden_layers=4)
    result = apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion=criterion, allocation=allocation),
                           example_ids(8, 24), progress=False)
    ratios = result.details["layer_sparsity"]
    assert result.details["allocation"] == allocation and len(ratios) == 4
    assert sum(ratios) / 4 == pytest.approx(0.5) and len(set(ratios)) > 1
    assert result.details["layers"] == pytest.approx(ratios, abs=1e-3)
    assert result.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
    # exactly round(0.5 x weights) overall (parameter-weighted), each layer within one weight per matrix of its ratio
    total = result.details["prunable_weights"]
    assert result.details["pruned_weights"] == int(0.5 * total + 0.5)
    for i, layer in enumerate(get_adapter(model).get_layers(model)):
        weights = sum(module.weight.numel() for _, _, name, module in get_adapter(model).iter_linears(model)
                      if name.startswith(f"model.layers.{i}."))
        assert abs(result.details["layers"][i] - ratios[i]) * weights <= 7


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fisher_saliency_is_the_obd_cost_of_the_weights_wanda_would_remove(family):
    from planner.prune.masked import allocation

    model = tiny_model(family, num_hidden_layers=2)
    adapter = get_adapter(model)
    ids = example_ids(3, 16)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = allocation.fisher_saliencies(model, adapter, ids, 0.5)
    # the model is left as it was: weights, requires_grad, no gradients
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    # by hand: per-sample squared gradients of the loss (FISHER_SAMPLES of them), inputs' squared norms over the
    # same samples, each row's lowest half of |W| ||X|| removed, mean of F w^2 over the matrix
    linears = {name: module for _, _, name, module in adapter.iter_linears(model)}
    sq = {name: 0.0 for name in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: sq.__setitem__(
        name, sq[name] + a[0].detach().double().reshape(-1, a[0].shape[-1]).square().sum(0))) for name, m in
        linears.items()]
    fisher = {name: 0.0 for name in linears}
    for k in range(allocation.FISHER_SAMPLES):
        loss = model(input_ids=ids[k : k + 1], labels=ids[k : k + 1]).loss
        grads = torch.autograd.grad(loss, [m.weight for m in linears.values()])
        for name, g in zip(linears, grads):
            fisher[name] = fisher[name] + g.double().square()
    for h in hooks:
        h.remove()
    assert set(got) == set(linears)
    for name, module in linears.items():
        w = out_in(module.weight, family).double()
        f = out_in(fisher[name], family)
        removed = ~unstructured_mask(w.abs() * sq[name].sqrt().view(1, -1), 0.5, compare="row").bool()
        assert got[name] == pytest.approx(float((f * w.square())[removed].sum()) / w.numel(), rel=1e-4)


def test_fisher_allocation_prunes_each_matrix_less_the_more_its_pruned_weights_cost(monkeypatch):
    from planner.prune.masked import allocation

    model = tiny_model("llama", num_hidden_layers=3)
    linears = list(get_adapter(model).iter_linears(model))
    saliency = {name: float(j % 5 + (j == 4) * 40) for j, (_, _, name, _) in enumerate(linears)}  # one outlier
    monkeypatch.setattr(allocation, "fisher_saliencies", lambda *args: saliency)
    ratios = allocation.allocate(model, get_adapter(model), example_ids(2, 8), 4, "fisher", 0.5)
    sizes = {name: module.weight.numel() for _, _, name, module in linears}
    assert sum(ratios[n] * sizes[n] for n in ratios) / sum(sizes.values()) == pytest.approx(0.5)
    order = sorted(ratios, key=lambda n: saliency[n])
    assert all(ratios[a] >= ratios[b] - 1e-12 for a, b in zip(order, order[1:]))
    assert max(ratios.values()) - min(ratios.values()) == pytest.approx(2 * allocation.SPREAD["fisher"])


def test_matrix_sparsities_round_once_over_the_whole_model():
    from planner.prune.masked.allocation import matrix_sparsities
    from planner.prune.masked.patterns import rounded

    model = tiny_model("llama", num_hidden_layers=4)
    linears = list(get_adapter(model).iter_linears(model))
    ratios = [0.3137, 0.55, 0.61, 0.5263]
    wanted = {name: ratios[i] + 0.0013 * j for j, (i, _, name, _) in enumerate(linears)}  # one per matrix
    per_layer = matrix_sparsities(linears, False, wanted)
    counts = [rounded(per_layer[i][name] * module.weight.numel()) for i, _, name, module in linears]
    assert all(abs(per_layer[i][name] * module.weight.numel() - c) < 1e-6 for (i, _, name, module), c
               in zip(linears, counts))
    assert sum(counts) == rounded(sum(wanted[name] * module.weight.numel() for _, _, name, module in linears))
    # each matrix within one weight of its own ratio
    assert all(abs(c - wanted[name] * module.weight.numel()) <= 1 for (_, _, name, module), c in zip(linears, counts))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_nm_dense_layers_leaves_the_most_influential_layers_untouched(criterion):
    from planner.prune.masked.allocation import block_influences
    from planner.prune.masked.calibration import CHUNK_SAMPLES

    model = tiny_model("llama", num_hidden_layers=5)
    before = {name: module.weight.detach().clone() for _, _, name, module in get_adapter(model).iter_linears(model)}
    ids = example_ids(8, 24)
    influence = block_influences(model, get_adapter(model), ids, CHUNK_SAMPLES)
    top = sorted(range(5), key=lambda i: -influence[i])[:2]
    result = apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion=criterion, dense_layers=2), ids,
                           progress=False)
    adapter = get_adapter(model)
    for i, _, name, module in adapter.iter_linears(model):
        if i in top:  # left dense: the very same weights, an all-ones mask
            assert torch.equal(module.weight, before[name]) and bool(result.masks[name].all())
        else:
            assert nm_violations(module.weight != 0, 2, 4) == 0
            assert int((module.weight == 0).sum()) * 2 == module.weight.numel()
    assert [result.details["layers"][i] for i in top] == [0.0, 0.0]
    assert result.achieved_sparsity == pytest.approx(0.5 * 3 / 5)
    assert result.details["target_sparsity"] == pytest.approx(0.5 * 3 / 5)


def test_nm_dense_layers_bad_values_are_input_errors():
    model = tiny_model("llama", num_hidden_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="dense_layers 3 leaves no layer to prune.*3 decoder layers; give 0 to 2"):
        apply_pruning(model, SemiStructuredPruning(criterion="wanda", dense_layers=3), example_ids(2, 8))
    with pytest.raises(InputError, match="dense_layers 1 .*criterion 'magnitude' takes dense_layers 0"):
        apply_pruning(model, SemiStructuredPruning(criterion="magnitude", dense_layers=1), example_ids(2, 8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError):
        SemiStructuredPruning(dense_layers=-1)


def test_non_uniform_allocation_refuses_magnitude():
    with pytest.raises(InputError, match="allocation 'owl'.*'wanda' and 'sparsegpt'"):
        apply_pruning(tiny_model("llama"), UnstructuredPruning(sparsity=0.5, criterion="magnitude",
                                                               allocation="owl"), example_ids(2, 8))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_wanda_uses_inputs_from_the_already_pruned_layers(family):
    """Layer 1's mask must be |W|*||X|| with X the input layer 1 gets when layer 0 is already pruned."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    ids = example_ids(8, 24)
    role, path = adapter.linear_roles()[0]  # q_proj / c_attn
    original = out_in(adapter.projection(adapter.get_layers(model)[1], role).weight, family).clone()
    dense_inputs = layer_inputs(model, adapter.projection(adapter.get_layers(model)[1], role), ids)
    result = apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="wanda"), ids, progress=False)
    module = adapter.projection(adapter.get_layers(model)[1], role)
    pruned_inputs = layer_inputs(model, module, ids)  # layer 0 is pruned; layer 1's pruning does not change its input
    assert not torch.allclose(pruned_inputs, dense_inputs)
    scores = original.abs() * pruned_inputs.pow(2).sum(0).sqrt()
    expected = unstructured_mask(scores, 0.5, "row")
    got = out_in(result.masks[f"{adapter.layers}.1.{path}"], family)
    assert (got != expected).float().mean() < 0.005  # equal up to float near-ties
    from_dense_inputs = unstructured_mask(original.abs() * dense_inputs.pow(2).sum(0).sqrt(), 0.5, "row")
    assert (got != from_dense_inputs).float().mean() > 0.02  # the test can tell the two apart


@pytest.mark.parametrize("spec", [UnstructuredPruning(sparsity=0.5, criterion="sparsegpt"),
                                  SemiStructuredPruning(n=2, m=4, criterion="sparsegpt")], ids=["50%", "2:4"])
def test_sparsegpt_layer_error_is_below_magnitude_on_a_tiny_model(spec):
    ids = example_ids(8, 32)
    dense = tiny_model("llama")
    layer0 = get_adapter(dense).get_layers(dense)[0]
    names = [path for _, path in get_adapter(dense).linear_roles()]

    def errors(criterion):
        model = tiny_model("llama")
        apply_pruning(model, spec.model_copy(update={"criterion": criterion}), ids, progress=False)
        layer = get_adapter(model).get_layers(model)[0]
        out = {}
        for path in names:
            ref = get_adapter(dense).projection(layer0, dict((p, r) for r, p in get_adapter(dense).linear_roles())[path])
            x = layer_inputs(dense, ref, ids)  # layer 0's calibration inputs (dense: nothing pruned before it)
            pruned = get_adapter(model).projection(layer, dict((p, r) for r, p in get_adapter(model).linear_roles())[path])
            out[path] = float((x @ (pruned.weight - ref.weight).detach().t()).norm())
        return out

    sparsegpt, magnitude, wanda = errors("sparsegpt"), errors("magnitude"), errors("wanda")
    for path in names:
        assert sparsegpt[path] < magnitude[path], path
    assert sum(sparsegpt.values()) < sum(wanda.values())


def test_bf16_model_keeps_its_dtype_and_an_exact_pattern():
    model = tiny_model("llama").to(torch.bfloat16)
    result = apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="sparsegpt"), example_ids(4, 16),
                           progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert masked.weight_sparsity(model, 2, 4)["nm_violations"] == 0
    assert result.achieved_sparsity == 0.5


def test_sparsegpt_at_zero_sparsity_leaves_the_model_unchanged():
    model = tiny_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = apply_pruning(model, UnstructuredPruning(sparsity=0.0, criterion="sparsegpt"), example_ids(4, 16),
                           progress=False)
    assert result.achieved_sparsity == 0.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_export_keeps_the_zeros_and_records_the_pattern(tmp_path):
    from transformers import AutoModelForCausalLM

    from planner.export import export_model, read_metadata

    model = tiny_model("gpt2")
    result = apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="wanda"), example_ids(4, 16),
                           progress=True)
    meta = export_model(model, tiny_tokenizer(), tmp_path / "out", metadata={"pruning": masked.masked_metadata(result)})
    saved = read_metadata(tmp_path / "out")
    assert saved["pruning"]["pattern"] == "2:4"
    assert saved["pruning"]["achieved_sparsity"] == pytest.approx(0.5)
    assert saved["pruning"]["criterion"] == "wanda"
    assert saved["parameters"] == meta["parameters"] == result.params_after
    json.dumps(saved)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    counted = masked.weight_sparsity(reloaded, 2, 4)
    assert counted["nm_violations"] == 0 and counted["sparsity"] >= 0.5
    ids = example_ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # llama: untied LM head; gpt2: tied, stored once
def test_bitmask_copy_is_lossless_and_smaller_by_the_sparsity(family, tmp_path):
    from planner.export import load_compressed, write_compressed

    model = tiny_model(family)
    result = apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="magnitude"), example_ids(2, 8),
                           progress=False)
    nbytes = write_compressed(model, tmp_path)
    state = load_compressed(tmp_path)
    assert set(state) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    # every pruned linear keeps half its fp32 values plus one bit per weight; everything else as it is
    pruned = sum(m.numel() for m in result.masks.values())
    unique = {v.data_ptr(): v.numel() for v in model.state_dict().values()}
    dense_bytes = 4 * sum(unique.values())
    expected = dense_bytes - 4 * pruned + 4 * pruned * 0.5 + pruned / 8
    assert nbytes == pytest.approx(expected, rel=0.02)  # + the safetensors header


def test_loading_a_missing_bitmask_copy_is_an_input_error(tmp_path):
    from planner.errors import InputError
    from planner.export import load_compressed

    with pytest.raises(InputError, match="no compressed weights"):
        load_compressed(tmp_path)


def test_calibration_from_a_tokenizer_when_no_ids_are_given():
    from planner.prune.specs import CalibrationSpec

    model = tiny_model("mistral")
    result = apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="wanda"), None, progress=False,
                           tokenizer=tiny_tokenizer(), calibration=CalibrationSpec(num_samples=3, seq_len=20))
    assert result.details["calibration"] == {"samples": 3, "seq_len": 20, "tokens": 60}
    assert result.achieved_sparsity == 0.5


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_is_an_input_error_and_leaves_the_model_alone():
    model = tiny_model("llama", hidden_size=60, intermediate_size=120)  # 60 inputs: not a multiple of 8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="not a multiple of M=8"):
        apply_pruning(model, SemiStructuredPruning(n=4, m=8, criterion="magnitude"), progress=False)
    with pytest.raises(InputError, match="needs calibration tokens"):
        apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="sparsegpt"), progress=False)
    with pytest.raises(InputError, match="scope 'global'"):
        apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="wanda", scope="global"),
                      example_ids(2, 8), progress=False)
    with pytest.raises(InputError, match=r"\(N, L\) LongTensor"):
        apply_pruning(model, UnstructuredPruning(sparsity=0.5, criterion="wanda"), example_ids(2, 8).float(),
                      progress=False)
    with pytest.raises(InputError, match="3:3"):
        apply_pruning(model, SemiStructuredPruning(n=3, m=3, criterion="wanda"), example_ids(2, 8), progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# -- runtime --------------------------------------------------------------------------------------------------


def test_runtime_note_never_promises_speed_from_dense_zeros():
    unstructured = UnstructuredPruning(sparsity=0.5)
    two_four, four_eight = SemiStructuredPruning(n=2, m=4), SemiStructuredPruning(n=4, m=8)
    assert "no speedup expected: dense kernels multiply the zeros" in masked.runtime_note("cpu", unstructured)
    assert "no speedup expected" in masked.runtime_note("a100", unstructured)
    assert "no speedup expected" in masked.runtime_note("cpu", two_four)
    assert "no speedup expected" in masked.runtime_note("t4", two_four, dtype="fp16")
    assert "no speedup expected" in masked.runtime_note("a100", four_eight)
    note = masked.runtime_note("a100", two_four, dtype="bf16")
    assert "sparse tensor cores" in note and "no speedup" not in note and "measure" in note.lower()
    with pytest.raises(InputError):
        masked.runtime_note("a10", two_four)  # unknown GPU id


def test_semi_structured_conversion_refuses_cpu():
    from planner.prune.masked.runtime import semi_structured_support, to_semi_structured

    ok, why = semi_structured_support("cpu")
    assert not ok and "dense kernels multiply the zeros" in why
    model = tiny_model("llama")
    apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="magnitude"), progress=False)
    with pytest.raises(InputError, match="cannot convert"):
        to_semi_structured(model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semi_structured_conversion_on_cuda_matches_dense_zeros():
    from planner.prune.masked.runtime import semi_structured_support, to_semi_structured

    ok, why = semi_structured_support("cuda")
    if not ok:
        pytest.skip(why)
    model = tiny_model("llama", hidden_size=128, intermediate_size=256)
    apply_pruning(model, SemiStructuredPruning(n=2, m=4, criterion="magnitude"), progress=False)
    model = model.half().cuda()
    ids = example_ids(2, 32).cuda()
    with torch.no_grad():
        dense = model(input_ids=ids).logits.float()
        report = to_semi_structured(model)
        sparse = model(input_ids=ids).logits.float()
    assert report["converted"], report
    torch.testing.assert_close(sparse, dense, atol=2e-2, rtol=2e-2)


# -- the embedded model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wanda_beats_magnitude_at_two_four_on_the_embedded_model(embedded_path):
    from planner.data import calibration_text, heldout_text, token_blocks
    from planner.evaluate.perplexity import perplexity
    from planner.models import load_model

    def pruned_ppl(criterion):
        loaded = load_model(str(embedded_path))
        ids = token_blocks(loaded.tokenizer, calibration_text(), 4, 128)
        result = apply_pruning(loaded.model, SemiStructuredPruning(n=2, m=4, criterion=criterion), ids,
                               progress=False)
        assert masked.weight_sparsity(loaded.model, 2, 4)["nm_violations"] == 0
        assert result.achieved_sparsity == 0.5
        return perplexity(loaded.model, loaded.tokenizer, heldout_text(), seq_len=256, max_tokens=512)["ppl"]

    wanda, magnitude = pruned_ppl("wanda"), pruned_ppl("magnitude")
    assert wanda < 0.8 * magnitude, (wanda, magnitude)


def test_fisher_saliency_of_a_bf16_model_is_close_to_the_float32_one_and_keeps_the_dtype():
    """bf16 gradients squared would underflow in bf16: the saliencies are summed in float32 and up."""
    from planner.prune.masked import allocation

    model = tiny_model("llama", num_hidden_layers=2)
    ids = example_ids(2, 16)
    full = allocation.fisher_saliencies(model, get_adapter(model), ids, 0.5)
    model = model.to(torch.bfloat16)
    half = allocation.fisher_saliencies(model, get_adapter(model), ids, 0.5)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(v > 0 for v in half.values())
    assert all(half[n] == pytest.approx(full[n], rel=0.05) for n in full)  # bf16 weights and gradients: ~2% apart
