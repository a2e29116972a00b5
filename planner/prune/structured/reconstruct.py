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
tokens closely and generalises badly here: on SmolLM2-135M, with 16 x 256 calibration tokens, a 25% cut of layer
10's down_proj inputs left 6.2% relative output error on held-out text before the fit, 1.7% on the calibration
tokens after it, and 6.8% on held-out text after it. So delta is chosen per layer by 2-fold cross-validation over
the calibration samples (fit on one half, measure the other, both ways; RIDGE_GRID) and the delta of the better one
is used with the whole G: on six layers the held-out error then came within 1% of the best delta in hindsight (5.4%
for layer 10 with 32 x 512 tokens), and the 25% cut's held-out perplexity rise fell from +40.9% to +30.3%.

The error that fit leaves when a set R goes is, with H = (G + delta I)^-1,

    E(R) = trace(W_R (H_RR)^-1 W_R^T),

so `obs` removes units greedily by least E (ZipLM's structured OBS step): the cheapest units go, W and H are
updated as if they were gone (H <- H - H_:R (H_RR)^-1 H_R:), the costs are recomputed, and so on. Channels go a
few at a time (SlimGPT's grouped greedy step: at most OBS_STEPS updates per layer); heads one at a time. The
choice uses SparseGPT's 1% delta (a large delta would make E the weights' magnitude alone); the re-fit that follows
uses the cross-validated one.

Layers go in order, each calibrated on the outputs of the already-pruned layers before it
(planner.prune.masked.calibration). The target T is, by default (TARGET = "dense"), not the uncut projection's
output on those inputs but what the layer's output should be: the dense model's output of the same layer on the
dense model's own inputs (carried alongside, one more forward per layer). Where the consumer's output is added
straight to the layer's output (out = r + W x: the down projection of a pre-norm or parallel block, checked
numerically per model by adds_to_output), t = dense out - r, so the re-fit also corrects what the cuts upstream
changed in the residual stream (the asymmetric calibration of GPTAQ, Li et al. 2025, arXiv:2504.02692, applied to
a structured cut). Elsewhere (o_proj after head cuts; post-norm blocks) the target stays the uncut output. Each
token's squared error is weighted by 1 / the mean square of its dense output, since the next layer's norm divides
by that root mean square (token_weights). Measured on SmolLM2-135M (bench/candidate_quality.py, 32 x 512
calibration tokens, held-out texts A / B of 16384 tokens), MLP channels -25%: chosen by obs and re-fit towards the
uncut output +29% on A (the figure recorded with the self target); towards the dense output +27.4% / +34.8%;
chosen by activation and re-fit towards the dense output +27.6% / +35.3% unweighted, +27.1% / +35.0% weighted.
What helps far more is calibration text (RECONSTRUCT_SAMPLES below). Only weights change
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


def fit_error(new_kept, gram, cross, kept) -> float:
    """sum over tokens of ||t - W'_K x_K||^2 less sum ||t||^2 (which no fit changes), from G = sum x x^T and
    C = sum t x^T: tr(W'_K G_KK W'_K^T) - 2 tr(W'_K C_K^T)."""
    w = new_kept.detach().double()
    g = gram.double().index_select(0, kept).index_select(1, kept)
    c = cross.double().index_select(1, kept)
    return float((w @ g * w).sum() - 2.0 * (w * c).sum())


def cross_validated_ridge(weight, folds, kept, crosses=None) -> float:
    """delta (absolute) for refit_kept from two Grams of disjoint calibration samples (and their cross terms
    C = sum t x^T when the target t is not the uncut projection's own output): the RIDGE_GRID value (x the fold's
    mean diagonal) whose fit on one fold leaves the least error on the other, both ways."""
    w = weight.detach().double()
    crosses = crosses or [w @ f.double() for f in folds]
    errors = []
    for share in RIDGE_GRID:
        total = 0.0
        for fit, check in ((0, 1), (1, 0)):
            delta = share * (float(folds[fit].diagonal().mean()) or 1.0)
            new = refit_kept(weight, folds[fit], kept, cross=crosses[fit], ridge=delta).double()
            total += fit_error(new, folds[check], crosses[check], kept)
        errors.append(total)
    best = RIDGE_GRID[min(range(len(errors)), key=errors.__getitem__)]
    # the fold's delta, not the fold's share: a ridge of fixed size weighs less against twice the tokens
    return best * sum(float(f.diagonal().mean()) for f in folds) / 2


def removal_costs(w, h, unit_size: int, units=None):
    """E({u}) = trace(W_u (H_uu)^-1 W_u^T) for units u of `unit_size` contiguous input features (`units`: a 1-D
    LongTensor of unit indices; default all)."""
    import torch

    if units is None:
        units = torch.arange(w.shape[1] // unit_size, device=w.device)
    cols = units[:, None] * unit_size + torch.arange(unit_size, device=w.device)  # (units, s)
    if unit_size == 1:
        return w[:, cols[:, 0]].square().sum(0) / h.diagonal()[cols[:, 0]]
    blocks = h[cols[:, :, None], cols[:, None, :]]  # (units, s, s)
    w_units = w.t()[cols]  # (units, s, out)
    return (torch.linalg.solve(blocks, w_units) * w_units).sum(dim=(1, 2))


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
        eligible = (alive & (left[group] > 0)).nonzero().view(-1)  # removed units' H blocks are zero: skip them
        costs = removal_costs(w, h, unit_size, eligible)
        take = min(step, int(left.sum()))
        chosen = eligible[torch.topk(costs, take, largest=False).indices].sort().values
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


def _is_part(diff, y) -> bool:
    """Whether `diff` equals `y` (as many numbers; OPT's layers flatten tokens before the MLP)."""
    y = y.double()
    if diff.numel() != y.numel():
        return False
    return float((diff.reshape(-1) - y.reshape(-1)).norm()) <= 1e-4 * (float(y.norm()) + 1e-12)


def adds_to_output(layer, consumer, inputs) -> bool:
    """Whether the consumer's output is added straight to the layer's output (out = r + W a, r not depending on
    W a: true of a pre-norm or parallel block's MLP down projection), tested on the first chunk by running the
    layer once more with the consumer's output zeroed."""
    import torch

    if not inputs.hidden:
        return False
    seen = {}

    def keep(module, args, out):
        seen["y"] = out.detach()

    def zero(module, args, out):
        return torch.zeros_like(out)

    hidden, args, kwargs = inputs.hidden[0], inputs.extra_args[0], inputs.extra_kwargs[0]
    outs = []
    with torch.no_grad():
        for hook in (keep, zero):
            handle = consumer.register_forward_hook(hook)
            try:
                out = layer(hidden, *args, **kwargs)
            finally:
                handle.remove()
            outs.append((out[0] if isinstance(out, tuple) else out).detach().double())
    return _is_part(outs[0] - outs[1], seen["y"])


def gather_towards(layer, consumer, inputs, targets):
    """(G, C) over every chunk of `inputs`, running the layer as it is now (its consumer not yet cut): G = sum a
    a^T of the consumer's inputs a, C = sum t a^T with t = targets[k] - (out - y), the output the consumer should
    produce so that the layer's output equals `targets` (the dense model's output of this layer on the dense
    model's inputs): the residual it adds to is out - y (see adds_to_output). Accumulated in float64."""
    import torch

    seen = {}

    def hook(module, args, out):
        seen["a"], seen["y"] = args[0].detach(), out.detach()

    gram = cross = None
    handle = consumer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for k, hidden in enumerate(inputs.hidden):
                out = layer(hidden, *inputs.extra_args[k], **inputs.extra_kwargs[k])
                out = (out[0] if isinstance(out, tuple) else out).detach()
                a = seen["a"].reshape(-1, seen["a"].shape[-1]).float()
                t = (targets[k] - out + seen["y"].reshape(out.shape)).reshape(-1, out.shape[-1]).float()
                if gram is None:
                    gram = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
                    cross = torch.zeros(t.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
                aw = a * token_weights(targets[k], a.shape[0])[:, None]
                gram += (aw.t() @ a).double()
                cross += (t.t() @ aw).double()
    finally:
        handle.remove()
    return gram, cross


def token_weights(target, tokens: int):
    """Per-token weights of the squared error: 1 / mean square of the dense output at that token. The next
    layer's norm divides its input by that root mean square, so an error matters relative to it; unweighted, the
    few tokens with outsized residual norms (the first token of every sample) would dominate the fit."""
    return 1.0 / target.reshape(tokens, -1).float().square().mean(-1).clamp_min(1e-12)


def _halves(inputs):
    """The chunks of `inputs` in two halves (LayerInputs each), or None when there is a single chunk."""
    from planner.prune.masked.calibration import LayerInputs

    n = len(inputs.hidden)
    if n < 2:
        return None
    h = (n + 1) // 2
    return [LayerInputs(inputs.hidden[part], inputs.extra_args[part], inputs.extra_kwargs[part])
            for part in (slice(0, h), slice(h, n))]


def _split(items: list, halves) -> list:
    """`items` (one per chunk) cut as _halves cut the chunks."""
    return [items[: len(halves[0].hidden)], items[len(halves[0].hidden):]] if halves else [items]


def cut_layer_by_layer(model, adapter, calib_ids, consumer_of: Callable, cut: Callable, chunk: int = 4,
                       target: str | None = None) -> dict:
    """For every decoder layer i in order: gather G of `consumer_of(i, layer)`'s inputs on the current (already
    pruned upstream) hidden states, call `cut(i, layer, gram)` (chooses the units, possibly from G; slices the
    layer; returns the consumer, the kept input features of its original weight, and that weight), re-fit the
    consumer with a cross-validated delta, then run the pruned layer to produce the next layer's inputs.

    `target` (default TARGET) "self": the re-fit preserves the uncut consumer's output on the pruned model's
    inputs. "dense": it steers the layer's output towards the dense model's output of the same layer on the dense
    model's inputs, so the error of the cuts upstream is corrected too (where the consumer's output adds straight
    to the layer's output, see adds_to_output, checked on the first layer; elsewhere "self"). The units are chosen
    as for "self" (the removal cost of obs).

    Returns {"ridge": delta / mean(diag G) per layer, "target": the target used per layer}."""
    import torch

    from planner.prune.masked.calibration import LayerInputs, capture_first_inputs, run_layer
    from planner.prune.structured.slicing import is_conv1d

    target = TARGET if target is None else target
    if target not in ("self", "dense"):
        raise ValueError(f"target must be 'self' or 'dense', got {target!r}")
    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids, chunk)
    steer = target == "dense" and adds_to_output(layers[0], consumer_of(0, layers[0]), inputs)
    # the dense model's hidden states, carried alongside (a list of their own: run_layer replaces its items)
    dense = LayerInputs(list(inputs.hidden), inputs.extra_args, inputs.extra_kwargs) if steer else None
    shares = []
    for i, layer in enumerate(layers):
        consumer = consumer_of(i, layer)
        halves = _halves(inputs)  # anew each layer: run_layer replaces the chunks
        if steer:
            run_layer(layer, dense, replace=True)  # the dense layer's outputs: the targets, and its next inputs
            stats = [gather_towards(layer, consumer, part, outs)
                     for part, outs in zip(halves or [inputs], _split(dense.hidden, halves))]
            folds = [g for g, _ in stats] if halves else None
            crosses = [c for _, c in stats] if halves else None
            gram, cross = sum(g for g, _ in stats), sum(c for _, c in stats)
        else:
            folds = [_gather(layer, consumer, half) for half in halves] if halves else None
            crosses = cross = None
            gram = folds[0] + folds[1] if folds else _gather(layer, consumer, inputs)
        module, kept, original = cut(i, layer, gram)
        w = original.t() if is_conv1d(module) else original  # (out, in)
        mean_diag = float(gram.diagonal().mean()) or 1.0
        ridge = cross_validated_ridge(w, folds, kept, crosses) if folds else DAMPENING * mean_diag
        shares.append(ridge / mean_diag)
        new = refit_kept(w, gram, kept, cross=cross, ridge=ridge)
        with torch.no_grad():
            module.weight.copy_(new.t() if is_conv1d(module) else new)
        del gram, folds, crosses, cross
        if i + 1 < len(layers):
            run_layer(layer, inputs, replace=True)
    return {"ridge": shares, "target": ["dense" if steer else "self"] * len(layers)}


TARGET = "dense"  # the re-fit's default target in cut_layer_by_layer (bench/candidate_quality.py sets both)


# Calibration samples (of 512 tokens) a re-fitting candidate gets by default: the fit has as many unknowns per
# output as kept inputs (1152 for SmolLM2's MLP at -25%), and 32 x 512 tokens leave it short of data. Measured on
# SmolLM2-135M, MLP channels -25% (activation + re-fit, bench/candidate_quality.py, held-out texts A / B):
# 32 x 512 tokens +27.1% / +35.0% held-out perplexity, 96 x 512 +19.8% / +24.2% (the plain cut: +51.2% / +59.8%
# with 32 x 512, +46.2% / +53.6% with 96 x 512). The pass costs about three times as long.
RECONSTRUCT_SAMPLES = 96


def calibration_for(spec):
    """The default CalibrationSpec of a structured spec: RECONSTRUCT_SAMPLES x 512 tokens where it re-fits."""
    from planner.prune.specs import CalibrationSpec

    return CalibrationSpec(num_samples=RECONSTRUCT_SAMPLES) if rebuilds(spec) else CalibrationSpec()


def rebuilds(spec) -> bool:
    """Whether a structured spec re-fits its consumer: `reconstruct: true`, or criterion `obs` (which chooses by
    the re-fit's own error, so the re-fit always follows)."""
    return bool(getattr(spec, "reconstruct", False)) or getattr(spec, "criterion", None) == "obs"
