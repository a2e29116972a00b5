"""Non-uniform sparsity for masks: the same overall sparsity s, spread over the decoder layers (or over every
decoder linear) by a statistic of the dense model gathered on calibration text.

    {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda", "allocation": "fisher"}

- `owl`: outlier-weighted layerwise sparsity (OWL: Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A
  Missing Secret Sauce for Pruning LLMs to High Sparsity", https://arxiv.org/abs/2310.05175). D_l = share of the
  layer's Wanda scores |W_ij| * ||X_j||_2 above M times their mean; more outliers, less pruning.
- `block_influence`: the layer's block influence BI_l = 1 - mean cos(input, output) (ShortGPT, Men et al. 2024,
  arXiv:2403.03853, the statistic planner already uses to drop whole layers); a block that changes the residual
  stream more is pruned less.
- `fisher`: one ratio per decoder linear, from the loss the weights it would lose cost the model: the mean over
  the matrix's weights of the Optimal Brain Damage saliency F_ii w_i^2 / 2 (LeCun et al. 1990) of the weights the
  Wanda score would remove at s, F the diagonal empirical Fisher information (per-sample squared gradients of the
  dense model's language-model loss on FISHER_SAMPLES calibration samples). Unlike the two layer statistics it
  sees how an error in one matrix reaches the loss through everything after it, and it tells a layer's value
  projection from its key projection. (Fisher-based sensitivity for allocating compression across layers:
  e.g. Kwon et al. 2022, arXiv:2204.09656; Frantar & Alistarh 2022 (OBC), arXiv:2208.11580.)

A statistic x (per layer, or per matrix weighted by its size) becomes S = s - (2 lambda (x - min x) / (max x -
min x) - mean of the same), OWL's mapping: every ratio within [s - lambda, s + lambda] and overall s. The pruned
counts are then rounded over the whole model at once (matrix_sparsities), so the model loses exactly
round(s x decoder-linear weights), not one rounding per matrix.

OWL and block influence come from one pass of the dense model over a quarter of the calibration samples, Fisher
from a forward and backward pass per sample over FISHER_SAMPLES samples; the pruning pass after it is the usual
layer-by-layer one.
"""

from __future__ import annotations

import math
from typing import Any

# OWL's hyper-parameters as the paper sets them for LLaMA (sec. 4.1: M = 5, lambda = 0.08, searched over
# M in {3, 5, 7, 10} and lambda in {0.02, 0.05, 0.08, 0.1, 0.2}); not tuned on this project's held-out text
OUTLIER_MULTIPLE = 5.0
LAMBDA = 0.08
# lambda per allocation. OWL: the paper's. Block influence: measured on SmolLM2-135M at 50% with Wanda
# (bench/candidate_quality.py, 32 x 512 calibration tokens, held-out texts A / B of 16384 tokens; ppl / uniform):
# lambda 0.08 -> 0.923 / 0.921, 0.12 -> 0.910 / 0.907, 0.16 -> 0.915 / 0.914, 0.2 -> 0.930 / 0.918. The gain comes
# from the few layers that change the residual stream most (layer 0's BI is 0.99, most layers' 0.02-0.07): mapping
# log(BI) (lambda 0.12: 0.929 / 0.917) or BI's rank (0.16: 1.047 / 1.014) instead, which spreads the middle layers
# apart, did worse.
# Fisher, per matrix, lambda 0.12 (block influence's, not searched), on the same model and texts, 32 x 512
# calibration, Wanda, ppl / uniform: 2 Fisher samples 0.896 / 0.898, 4 samples 0.884 / 0.891. Tried and not kept:
# the same statistic summed per layer (one ratio a layer) 0.910 / 0.905 at lambda 0.12, 0.928 / 0.924 at 0.2; block
# influence per sub-block (attention, MLP) 0.913 / 0.906; each layer's (or sub-block's) relative output error when
# pruned alone 0.920 / 0.926 and 0.918 / 0.921 (token-weighted 0.909 / 0.918, 0.911 / 0.908): the statistics local
# to a layer all stop near 0.91, the loss gradient is what tells the matrices apart.
SPREAD = {"owl": LAMBDA, "block_influence": 0.12, "fisher": 0.12}
SAMPLE_SHARE = 0.25  # share of the calibration samples the outlier pass sees
FISHER_SAMPLES = 2  # calibration samples whose gradients estimate the Fisher diagonal (one backward pass each)


def outlier_fraction(scores: list) -> float:
    """Share of all scores (of one layer's linears together) above OUTLIER_MULTIPLE x their mean."""
    import torch

    flat = torch.cat([s.reshape(-1) for s in scores])
    return float((flat > OUTLIER_MULTIPLE * flat.mean()).double().mean())


def layer_sparsities(fractions: list[float], sparsity: float, lam: float = LAMBDA,
                     sizes: list[int] | None = None) -> list[float]:
    """Per-layer (or per-matrix) sparsity from a statistic: the higher, the less pruning; mean = `sparsity`
    (weighted by `sizes`, the weights of each, where they differ), spread 2 x `lam`, narrowed where a ratio would
    leave [0, 1)."""
    lo, hi = min(fractions), max(fractions)
    if hi == lo:
        return [sparsity] * len(fractions)
    sizes = sizes or [1] * len(fractions)
    spread = [2 * lam * (f - lo) / (hi - lo) for f in fractions]  # in [0, 2 lambda]
    mean = sum(d * n for d, n in zip(spread, sizes)) / sum(sizes)
    deviation = [d - mean for d in spread]  # subtracted from the target
    scale = min(1.0, sparsity / max(deviation), (1.0 - 1e-6 - sparsity) / -min(deviation))
    return [sparsity - scale * d for d in deviation]


def block_influences(model, adapter, calib_ids, chunk: int) -> list[float]:
    """BI_l for every decoder layer, on SAMPLE_SHARE of `calib_ids` (dense model). The decoder layers run one
    after the other on captured hidden states, as in the pruning pass (no LM head: its logits are not needed)."""
    import torch

    from planner.prune.masked.calibration import capture_first_inputs, run_layer

    samples = max(1, math.ceil(calib_ids.shape[0] * SAMPLE_SHARE))
    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids[:samples], chunk)
    influences = []
    for layer in layers:
        entering = list(inputs.hidden)
        run_layer(layer, inputs, replace=True)
        cos_sum, count = 0.0, 0
        for hidden, out in zip(entering, inputs.hidden):
            cos = torch.nn.functional.cosine_similarity(hidden.float(), out.float(), dim=-1)
            cos_sum += float(cos.double().sum())
            count += cos.numel()
        influences.append(1.0 - cos_sum / count)
    return influences


def dense_layers(model, adapter, calib_ids, chunk: int, count: int) -> set[int]:
    """N:M by layer skipping: the `count` decoder layers with the highest block influence (kept dense)."""
    if not count:
        return set()
    layers = len(adapter.get_layers(model))
    if count >= layers:
        from planner.errors import InputError

        raise InputError(f"dense_layers {count} leaves no layer to prune: the model has {layers} decoder layers; "
                         f"give 0 to {layers - 1}")
    influence = block_influences(model, adapter, calib_ids, chunk)
    return set(sorted(range(layers), key=lambda i: (-influence[i], i))[:count])


def matrix_sparsities(linears, conv1d: bool, wanted_sparsity: dict[str, float]) -> list[dict[str, float]]:
    """Per layer, {module name: sparsity} for `linears` ((layer, role, name, module) in model order) such that
    the pruned counts, round(sparsity x weights) per matrix as the mask functions take them, add up to exactly
    round(sum over matrices of wanted_sparsity[name] x its weights): cumulative rounding over the whole model."""
    from planner.prune.masked.patterns import out_in, rounded

    out: list[dict[str, float]] = [{} for _ in range(1 + max(i for i, _, _, _ in linears))]
    wanted = 0.0
    done = 0
    for i, _, name, module in linears:
        numel = out_in(module, conv1d).numel()
        wanted += wanted_sparsity[name] * numel
        count = rounded(wanted) - done
        done += count
        out[i][name] = count / numel
    return out


STATISTICS = {"owl": "outlier_fractions", "block_influence": "block_influences"}  # per layer


def allocate(model, adapter, calib_ids, chunk: int, allocation: str, sparsity: float) -> dict[str, float]:
    """{decoder linear's full name: sparsity} for `allocation` (a key of STATISTICS, or "fisher") at overall
    `sparsity`."""
    from planner.prune.masked.patterns import out_in

    linears = list(adapter.iter_linears(model))
    if allocation == "fisher":
        saliency = fisher_saliencies(model, adapter, calib_ids, sparsity)
        sizes = [out_in(module, adapter.conv1d).numel() for _, _, _, module in linears]
        ratios = layer_sparsities([saliency[name] for _, _, name, _ in linears], sparsity, SPREAD[allocation], sizes)
        return {name: r for (_, _, name, _), r in zip(linears, ratios)}
    statistic = globals()[STATISTICS[allocation]](model, adapter, calib_ids, chunk)
    per_layer = layer_sparsities(statistic, sparsity, SPREAD[allocation])
    return {name: per_layer[i] for i, _, name, _ in linears}


def fisher_saliencies(model, adapter, calib_ids, sparsity: float) -> dict[str, float]:
    """For every decoder linear (full name): the mean over its weights of F_ii w_i^2 over the weights its Wanda
    scores would remove at `sparsity` (each output row its lowest), F_ii the sum over FISHER_SAMPLES calibration
    samples of the squared gradient of the dense model's loss on that sample. The model is left as it was.

    Every sample's forward runs first (with gradients, gathering the inputs' norms for the Wanda masks); then each
    sample's loss is back-propagated on its own, and each weight's gradient is folded into its matrix's sum as soon
    as it is computed and dropped: the pass holds the masks and the activations of FISHER_SAMPLES samples, never a
    Fisher matrix or a full set of gradients."""
    import torch

    from planner.prune.masked.calibration import InputStats
    from planner.prune.masked.patterns import out_in, unstructured_mask
    from planner.prune.masked.wanda import wanda_scores

    samples = calib_ids[: min(FISHER_SAMPLES, calib_ids.shape[0])]
    linears = {name: module for _, _, name, module in adapter.iter_linears(model)}
    device = next(model.parameters()).device
    total = {name: 0.0 for name in linears}
    kept: dict[str, Any] = {}

    def fold(name):
        def hook(weight):
            with torch.no_grad():
                # float32 at least: a 16-bit square of gradient x weight (~1e-10) would underflow to 0
                cost = (weight.grad.float() * weight.float()).square_().masked_fill_(kept[name], 0.0)
                total[name] += float(cost.sum(dtype=torch.float64))
            weight.grad = None

        return hook

    trainable = {id(p): p.requires_grad for p in model.parameters()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for module in linears.values():
            module.weight.requires_grad_(True)
        stats = InputStats(linears, hessian=False)
        with stats, torch.enable_grad():
            losses = []
            for k in range(samples.shape[0]):
                ids = samples[k : k + 1].to(device)
                losses.append(model(input_ids=ids, labels=ids, use_cache=False).loss)
                if k == 0:
                    stats.end_first_chunk()
        with torch.no_grad():
            for name, module in linears.items():
                keep = unstructured_mask(wanda_scores(out_in(module, adapter.conv1d), stats.input_sq_sum(name)),
                                         sparsity, compare="row").bool()
                kept[name] = keep.t() if adapter.conv1d else keep  # in the weight's own layout
        del stats
        for name, module in linears.items():
            handles.append(module.weight.register_post_accumulate_grad_hook(fold(name)))
        for loss in losses:  # one sample's gradient at a time: the empirical Fisher sums their squares
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(trainable[id(p)])
            p.grad = None
    return {name: total[name] / module.weight.numel() for name, module in linears.items()}


def outlier_fractions(model, adapter, calib_ids, chunk: int) -> list[float]:
    """D_l for every decoder layer, from the dense model's Wanda scores over SAMPLE_SHARE of `calib_ids`."""
    import torch

    from planner.prune.masked.patterns import out_in
    from planner.prune.masked.calibration import InputStats

    samples = max(1, math.ceil(calib_ids.shape[0] * SAMPLE_SHARE))
    modules = {name: module for _, _, name, module in adapter.iter_linears(model)}
    stats = InputStats(modules, hessian=False)
    device = next(model.parameters()).device
    with stats, torch.no_grad():
        for start in range(0, samples, chunk):
            model(input_ids=calib_ids[start : min(start + chunk, samples)].to(device), use_cache=False)
            if start == 0:
                stats.end_first_chunk()
    from planner.prune.masked.wanda import wanda_scores

    per_layer: dict[int, list] = {}
    for i, _, name, module in adapter.iter_linears(model):
        per_layer.setdefault(i, []).append(wanda_scores(out_in(module, adapter.conv1d), stats.input_sq_sum(name)))
    return [outlier_fraction(per_layer[i]) for i in sorted(per_layer)]
