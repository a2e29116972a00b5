"""Reconstruction after a structured cut: re-fit the consumer projection (down_proj after MLP channels, o_proj
after heads) by least squares so the block's output is preserved on calibration activations; optionally choose
the units to remove by the error that re-fit leaves (criterion `obs`).

    {"kind": "mlp_channels", "ratio": 0.5, "criterion": "activation", "reconstruct": true}
    {"kind": "mlp_channels", "ratio": 0.5, "criterion": "obs"}

For a consumer y = W x with inputs x (all features) and kept features K (R removed), the kept weights W'_K that
minimise sum over calibration tokens of ||W x - W'_K x_K||^2 + delta ||W'_K - W_K||^2 are

    W'_K = W_K + W_R G_RK (G_KK + delta I)^-1,     G = sum over tokens of x x^T,

the removed features' contribution projected onto the kept ones (the structured analogue of SparseGPT's update;
ZipLM, Kurtic et al. 2023, arXiv:2302.04089; SlimGPT, Ling et al. 2024, arXiv:2412.18110).

delta decides how far the fit trusts the calibration text. SparseGPT's 1% of G's mean diagonal fits the calibration
tokens closely and generalises badly here: on SmolLM2-135M, with 16 x 256 calibration tokens, a 25% cut of down_proj
inputs left 7.1% relative output error on held-out text (layer 10) before the fit, 1.7% on the calibration tokens
after it, and 7.7% on held-out text after it. So delta is chosen per layer by 2-fold cross-validation over the
calibration samples (fit on one half, measure the other, both ways; RIDGE_GRID) and the delta of the better one is
used with the whole G: on the same layers the held-out error then came within 1% of the best delta in hindsight.

The error that fit leaves when a set R goes is, with H = (G + delta I)^-1,

    E(R) = trace(W_R (H_RR)^-1 W_R^T),

so `obs` removes units greedily by least E (ZipLM's structured OBS step): the cheapest units go, W and H are
updated as if they were gone (H <- H - H_:R (H_RR)^-1 H_R:), the costs are recomputed, and so on. Channels go a
few at a time (SlimGPT's grouped greedy step: at most OBS_STEPS updates per layer); heads one at a time. The
choice uses SparseGPT's 1% delta (a large delta would make E the weights' magnitude alone); the re-fit that follows
uses the cross-validated one.

Layers go in order, each calibrated on the outputs of the already-pruned layers before it
(planner.prune.masked.calibration), so a layer's fit also absorbs upstream error in its inputs. Only weights change
value; shapes are those of the plain cut, so the export is an ordinary dense checkpoint. Llama-style projections
have no bias, so FLAP's bias compensation (An et al. 2024, arXiv:2312.11983) has nothing to write to; the
least-squares re-fit subsumes it where a bias exists (the mean is one more direction of x).
"""

from __future__ import annotations

from typing import Callable

DAMPENING = 0.01  # share of mean(diag G) added to G_KK, as SparseGPT's dampening (arXiv:2301.00774, sec. 3)
# delta / mean(diag G) tried by the cross-validation (half-decades; the best fell between 0.3 and 3 on SmolLM2-135M)
RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
OBS_STEPS = 64  # greedy updates per layer when removing single channels (each removes ceil(count / OBS_STEPS))


def _damped(gram, dampening: float):
    g = gram.detach().double().clone()
    mean_diag = float(g.diagonal().mean()) or 1.0
    g.diagonal().add_(dampening * mean_diag)
    g.diagonal()[g.diagonal() <= 0] = 1.0  # inputs that never fire
    return g, dampening * mean_diag


def refit_kept(weight, gram, kept, cross=None, dampening: float | None = None, ridge: float | None = None):
    """W'_K for `weight` (out, in), `gram` (in, in) = sum x x^T, `kept` (1-D LongTensor of input features):
    argmin ||T - W'_K X_K||^2 + delta ||W'_K - W_K||^2 with `cross` (out, in) = sum t x^T (default W G: the target
    is the uncut projection's own output). delta = `ridge` if given, else `dampening` (default DAMPENING) x the mean
    of diag G. Computed in float64; returned in the weight's dtype."""
    import torch

    dampening = DAMPENING if dampening is None else dampening
    w = weight.detach().double()
    kept = kept.to(w.device)
    gram = gram.detach().double().to(w.device)
    g = gram.index_select(0, kept).index_select(1, kept)
    delta = ridge if ridge is not None else dampening * (float(gram.diagonal().mean()) or 1.0)
    g.diagonal().add_(delta)
    g.diagonal()[g.diagonal() <= 0] = 1.0  # inputs that never fire
    c = (w @ gram) if cross is None else cross.detach().double().to(w.device)
    rhs = c.index_select(1, kept) + delta * w.index_select(1, kept)  # (out, K)
    factor = torch.linalg.cholesky(g)
    return torch.cholesky_solve(rhs.t(), factor).t().to(weight.dtype)


def output_error(weight, new_kept, gram, kept) -> float:
    """sum over tokens of ||W x - W'_K x_K||^2, for inputs with `gram` = sum x x^T (the error a re-fit leaves)."""
    w = weight.detach().double()
    diff = w.clone()
    diff[:, kept] -= new_kept.detach().double()
    return float((diff @ gram.double() * diff).sum())


def cross_validated_ridge(weight, folds, kept) -> float:
    """delta (absolute) for refit_kept from two Grams of disjoint calibration samples: the RIDGE_GRID value
    (x the fold's mean diagonal) whose fit on one fold leaves the least error on the other, both ways."""
    errors = []
    for share in RIDGE_GRID:
        total = 0.0
        for fit, check in ((folds[0], folds[1]), (folds[1], folds[0])):
            delta = share * (float(fit.diagonal().mean()) or 1.0)
            total += output_error(weight, refit_kept(weight, fit, kept, ridge=delta).double(), check, kept)
        errors.append(total)
    best = RIDGE_GRID[min(range(len(errors)), key=errors.__getitem__)]
    # the fold's delta, not the fold's share: a ridge of fixed size weighs less against twice the tokens
    return best * sum(float(f.diagonal().mean()) for f in folds) / 2


def removal_costs(w, h, unit_size: int):
    """E({u}) = trace(W_u (H_uu)^-1 W_u^T) for every unit u of `unit_size` contiguous input features."""
    import torch

    if unit_size == 1:
        return w.square().sum(0) / h.diagonal()
    units = w.shape[1] // unit_size
    cols = torch.arange(units * unit_size, device=w.device).view(units, unit_size)
    blocks = h[cols[:, :, None], cols[:, None, :]]  # (units, s, s)
    w_units = w.t().reshape(units, unit_size, -1)  # (units, s, out)
    solved = torch.linalg.solve(blocks, w_units)
    return (solved * w_units).sum(dim=(1, 2))


def obs_choose(weight, gram, unit_size: int, remove: list[int], unit_group: list[int] | None = None,
               dampening: float | None = None):
    """Units to keep (ascending LongTensor) after removing, greedily by least re-fit error E, `remove[k]` units
    from each group k of units (`unit_group[u]` = the group of unit u; default one group). `weight`: the consumer,
    (out, in); `gram`: (in, in) = sum x x^T of its inputs."""
    import math

    import torch

    dampening = DAMPENING if dampening is None else dampening
    w = weight.detach().double().clone()
    g, _ = _damped(gram.to(w.device), dampening)
    h = torch.cholesky_inverse(torch.linalg.cholesky(g))
    units = w.shape[1] // unit_size
    group = torch.as_tensor(unit_group if unit_group is not None else [0] * units, device=w.device)
    left = torch.as_tensor(remove, dtype=torch.long, device=w.device)
    alive = torch.ones(units, dtype=torch.bool, device=w.device)
    step = math.ceil(int(left.sum()) / OBS_STEPS) if unit_size == 1 and len(remove) == 1 else 1
    while int(left.sum()) > 0:
        costs = removal_costs(w, h, unit_size)
        eligible = alive & (left[group] > 0)
        costs = torch.where(eligible, costs, torch.full_like(costs, torch.inf))
        take = min(step, int(left.sum()))
        chosen = torch.topk(costs, take, largest=False).indices.sort().values
        cols = (chosen[:, None] * unit_size + torch.arange(unit_size, device=w.device)).reshape(-1)
        h_rr_inv = torch.linalg.inv(h[cols][:, cols])
        h_r = h[cols]  # (R, in)
        w -= (w[:, cols] @ h_rr_inv) @ h_r
        h -= h_r.t() @ h_rr_inv @ h_r
        alive[chosen] = False
        left -= torch.bincount(group[chosen], minlength=len(left))
    return alive.nonzero().view(-1).cpu()


def _gather(layer, consumer, inputs):
    """G = sum h h^T of the consumer's inputs h over every chunk of `inputs` (the layer runs up to the consumer)."""
    from planner.prune.masked.calibration import collect_stats

    return collect_stats(layer, {"consumer": consumer}, inputs, hessian=True).xtx["consumer"]


def _halves(inputs):
    """The chunks of `inputs` in two halves (LayerInputs each), or None when there is a single chunk."""
    from planner.prune.masked.calibration import LayerInputs

    n = len(inputs.hidden)
    if n < 2:
        return None
    h = (n + 1) // 2
    return [LayerInputs(inputs.hidden[part], inputs.extra_args[part], inputs.extra_kwargs[part])
            for part in (slice(0, h), slice(h, n))]


def cut_layer_by_layer(model, adapter, calib_ids, consumer_of: Callable, cut: Callable, chunk: int = 4) -> list[float]:
    """For every decoder layer i in order: gather G of `consumer_of(i, layer)`'s inputs on the current (already
    pruned upstream) hidden states, call `cut(i, layer, gram)` (chooses the units, possibly from G; slices the
    layer; returns the consumer, the kept input features of its original weight, and that weight), re-fit the
    consumer with a cross-validated delta, then run the pruned layer to produce the next layer's inputs.
    Returns delta / mean(diag G) of every layer (SparseGPT's 1% where the calibration is one chunk)."""
    import torch

    from planner.prune.masked.calibration import capture_first_inputs, run_layer
    from planner.prune.structured.slicing import is_conv1d

    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids, chunk)
    shares = []
    for i, layer in enumerate(layers):
        consumer = consumer_of(i, layer)
        halves = _halves(inputs)  # anew each layer: run_layer replaces the chunks
        folds = [_gather(layer, consumer, half) for half in halves] if halves else None
        gram = folds[0] + folds[1] if folds else _gather(layer, consumer, inputs)
        module, kept, original = cut(i, layer, gram)
        w = original.t() if is_conv1d(module) else original  # (out, in)
        mean_diag = float(gram.diagonal().mean()) or 1.0
        ridge = cross_validated_ridge(w, folds, kept) if folds else DAMPENING * mean_diag
        shares.append(ridge / mean_diag)
        new = refit_kept(w, gram, kept, ridge=ridge)
        with torch.no_grad():
            module.weight.copy_(new.t() if is_conv1d(module) else new)
        del gram, folds
        if i + 1 < len(layers):
            run_layer(layer, inputs, replace=True)
    return shares


def rebuilds(spec) -> bool:
    """Whether a structured spec re-fits its consumer: `reconstruct: true`, or criterion `obs` (which chooses by
    the re-fit's own error, so the re-fit always follows)."""
    return bool(getattr(spec, "reconstruct", False)) or getattr(spec, "criterion", None) == "obs"
