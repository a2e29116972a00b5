"""Non-uniform layer sparsity for masks: the same overall sparsity s, spread over the decoder layers by a per-layer
statistic of the dense model gathered on calibration text.

    {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda", "allocation": "owl"}

- `owl`: outlier-weighted layerwise sparsity (OWL: Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A
  Missing Secret Sauce for Pruning LLMs to High Sparsity", https://arxiv.org/abs/2310.05175). D_l = share of the
  layer's Wanda scores |W_ij| * ||X_j||_2 above M times their mean; more outliers, less pruning.
- `block_influence`: the layer's block influence BI_l = 1 - mean cos(input, output) (ShortGPT, Men et al. 2024,
  arXiv:2403.03853, the statistic planner already uses to drop whole layers); a block that changes the residual
  stream more is pruned less.

Either statistic x_l becomes S_l = s - (2 lambda (x_l - min x) / (max x - min x) - mean of the same), OWL's
mapping: every layer within [s - lambda, s + lambda] and, the decoder layers being of equal size, overall s.

The statistic comes from one pass of the dense model over a quarter of the calibration samples; the pruning pass
after it is the usual layer-by-layer one, so the extra time is about a quarter of one forward pass.
"""

from __future__ import annotations

import math

# OWL's hyper-parameters as the paper sets them for LLaMA (sec. 4.1: M = 5, lambda = 0.08, searched over
# M in {3, 5, 7, 10} and lambda in {0.02, 0.05, 0.08, 0.1, 0.2}); not tuned on this project's held-out text
OUTLIER_MULTIPLE = 5.0
LAMBDA = 0.08
SAMPLE_SHARE = 0.25  # share of the calibration samples the outlier pass sees


def outlier_fraction(scores: list) -> float:
    """Share of all scores (of one layer's linears together) above OUTLIER_MULTIPLE x their mean."""
    import torch

    flat = torch.cat([s.reshape(-1) for s in scores])
    return float((flat > OUTLIER_MULTIPLE * flat.mean()).double().mean())


def layer_sparsities(fractions: list[float], sparsity: float, lam: float = LAMBDA) -> list[float]:
    """Per-layer sparsity from a per-layer statistic: the higher, the less pruning; mean = `sparsity`, spread
    2 x `lam`, narrowed where a layer would leave [0, 1)."""
    lo, hi = min(fractions), max(fractions)
    if hi == lo:
        return [sparsity] * len(fractions)
    spread = [2 * lam * (f - lo) / (hi - lo) for f in fractions]  # in [0, 2 lambda]
    mean = sum(spread) / len(spread)
    deviation = [d - mean for d in spread]  # subtracted from the target
    scale = min(1.0, sparsity / max(deviation), (1.0 - 1e-6 - sparsity) / -min(deviation))
    return [sparsity - scale * d for d in deviation]


def block_influences(model, adapter, calib_ids, chunk: int) -> list[float]:
    """BI_l for every decoder layer, on SAMPLE_SHARE of `calib_ids` (dense model)."""
    from planner.prune.structured.layers import block_influence

    samples = max(1, math.ceil(calib_ids.shape[0] * SAMPLE_SHARE))
    return block_influence(model, adapter, calib_ids[:samples], chunk, progress=False)


STATISTICS = {"owl": "outlier_fractions", "block_influence": "block_influences"}


def allocate(model, adapter, calib_ids, chunk: int, allocation: str, sparsity: float) -> list[float]:
    """Per-layer sparsity for `allocation` (a key of STATISTICS) at overall `sparsity`."""
    statistic = globals()[STATISTICS[allocation]](model, adapter, calib_ids, chunk)
    return layer_sparsities(statistic, sparsity)


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
