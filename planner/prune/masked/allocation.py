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
mapping: every layer within [s - lambda, s + lambda] and, the decoder layers being of equal size, overall s. The
pruned counts are then rounded over the whole model at once (matrix_sparsities), so the model loses exactly
round(s x decoder-linear weights), not one rounding per matrix.

The statistic comes from one pass of the dense model over a quarter of the calibration samples; the pruning pass
after it is the usual layer-by-layer one, so the extra time is about a quarter of one forward pass.
"""

from __future__ import annotations

import math

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
SPREAD = {"owl": LAMBDA, "block_influence": 0.12}
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
    """BI_l for every decoder layer, on SAMPLE_SHARE of `calib_ids` (dense model). The decoder layers run one
    after the other on captured hidden states, as in the pruning pass (no LM head: its logits are not needed)."""
    import torch

    from planner.prune.masked.calibration import capture_first_inputs

    samples = max(1, math.ceil(calib_ids.shape[0] * SAMPLE_SHARE))
    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids[:samples], chunk)
    influences = []
    with torch.no_grad():
        for layer in layers:
            cos_sum, count = 0.0, 0
            for i, hidden in enumerate(inputs.hidden):
                out = layer(hidden, *inputs.extra_args[i], **inputs.extra_kwargs[i])
                out = (out[0] if isinstance(out, tuple) else out).detach()
                cos = torch.nn.functional.cosine_similarity(hidden.float(), out.float(), dim=-1)
                cos_sum += float(cos.double().sum())
                count += cos.numel()
                inputs.hidden[i] = out
            influences.append(1.0 - cos_sum / count)
    return influences


def matrix_sparsities(linears, conv1d: bool, layer_sparsity: list[float]) -> list[dict[str, float]]:
    """Per layer, {module name: sparsity} for `linears` ((layer, role, name, module) in model order) such that
    the pruned counts, round(sparsity x weights) per matrix as the mask functions take them, add up to exactly
    round(sum over layers of layer_sparsity x the layer's weights): cumulative rounding over the whole model."""
    from planner.prune.masked.patterns import out_in, rounded

    out: list[dict[str, float]] = [{} for _ in layer_sparsity]
    wanted = 0.0
    done = 0
    for i, _, name, module in linears:
        numel = out_in(module, conv1d).numel()
        wanted += layer_sparsity[i] * numel
        count = rounded(wanted) - done
        done += count
        out[i][name] = count / numel
    return out


STATISTICS = {"owl": "outlier_fractions", "block_influence": "block_influences"}


def allocate(model, adapter, calib_ids, chunk: int, allocation: str, sparsity: float) -> list[float]:
    """Per-layer sparsity for `allocation` (a key of STATISTICS) at overall `sparsity`."""
    statistic = globals()[STATISTICS[allocation]](model, adapter, calib_ids, chunk)
    return layer_sparsities(statistic, sparsity, SPREAD[allocation])


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
