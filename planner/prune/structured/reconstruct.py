"""Reconstruction after a structured cut: re-fit the consumer projection (down_proj after MLP channels, o_proj
after heads) by least squares so the block's output is preserved on calibration activations.

    {"kind": "mlp_channels", "ratio": 0.5, "criterion": "activation", "reconstruct": true}

For a consumer y = W x with inputs x (all features) and kept features K (R removed), the kept weights W'_K that
minimise sum over calibration tokens of ||W x - W'_K x_K||^2 + delta ||W'_K - W_K||^2 are

    W'_K = W_K + W_R G_RK (G_KK + delta I)^-1,     G = sum over tokens of x x^T,

the removed features' contribution projected onto the kept ones (the structured analogue of SparseGPT's update;
ZipLM, Kurtic et al. 2023, arXiv:2302.04089; SlimGPT, Ling et al. 2024, arXiv:2412.18110). delta is 1% of G's
mean diagonal, SparseGPT's dampening. Layers go in order, each calibrated on the outputs of the already-pruned
layers before it (planner.prune.masked.calibration), so a layer's fit also absorbs upstream error in its inputs.
Only weights change value; shapes are those of the plain cut, so the export is an ordinary dense checkpoint.
"""

from __future__ import annotations

from typing import Callable

DAMPENING = 0.01  # share of mean(diag G) added to G_KK, as SparseGPT's dampening (arXiv:2301.00774, sec. 3)


def _damped(gram, dampening: float):
    g = gram.detach().double().clone()
    mean_diag = float(g.diagonal().mean()) or 1.0
    g.diagonal().add_(dampening * mean_diag)
    g.diagonal()[g.diagonal() <= 0] = 1.0  # inputs that never fire
    return g, dampening * mean_diag


def refit_kept(weight, gram, kept, cross=None, dampening: float | None = None):
    """W'_K for `weight` (out, in), `gram` (in, in) = sum x x^T, `kept` (1-D LongTensor of input features):
    argmin ||T - W'_K X_K||^2 + delta ||W'_K - W_K||^2 with `cross` (out, in) = sum t x^T (default W G: the target
    is the uncut projection's own output). Computed in float64; returned in the weight's dtype."""
    import torch

    dampening = DAMPENING if dampening is None else dampening
    w = weight.detach().double()
    kept = kept.to(w.device)
    g, delta = _damped(gram.to(w.device), dampening)
    c = (w @ gram.detach().double().to(w.device)) if cross is None else cross.detach().double().to(w.device)
    w_kept = w.index_select(1, kept)
    rhs = c.index_select(1, kept) + delta * w_kept  # (out, K)
    factor = torch.linalg.cholesky(g.index_select(0, kept).index_select(1, kept))
    return torch.cholesky_solve(rhs.t(), factor).t().to(weight.dtype)


def _gather(layer, consumer, inputs):
    """G = sum h h^T of the consumer's inputs h over every chunk of `inputs` (the layer runs up to the consumer)."""
    from planner.prune.masked.calibration import collect_stats

    return collect_stats(layer, {"consumer": consumer}, inputs, hessian=True).xtx["consumer"]


def cut_layer_by_layer(model, adapter, calib_ids, consumer_of: Callable, cut: Callable, chunk: int = 4) -> None:
    """For every decoder layer i in order: gather G of `consumer_of(i, layer)`'s inputs on the current (already
    pruned upstream) hidden states, call `cut(i, layer)` (slices the layer; returns the consumer, the kept input
    features of its original weight, and that weight), re-fit the consumer, then run the pruned layer to produce
    the next layer's inputs."""
    import torch

    from planner.prune.masked.calibration import capture_first_inputs, run_layer
    from planner.prune.structured.slicing import is_conv1d

    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids, chunk)
    for i, layer in enumerate(layers):
        gram = _gather(layer, consumer_of(i, layer), inputs)
        module, kept, original = cut(i, layer)
        w = original.t() if is_conv1d(module) else original  # (out, in)
        new = refit_kept(w, gram, kept)
        with torch.no_grad():
            module.weight.copy_(new.t() if is_conv1d(module) else new)
        del gram
        if i + 1 < len(layers):
            run_layer(layer, inputs, replace=True)
