"""Importance of prunable units (an MLP channel, an attention head, a KV group with its query heads).

A unit owns a contiguous slice of features in several projections of one layer: output rows of the projections
that produce it (gate/up, q/k/v) and input columns of the one that consumes it (down, o). Three criteria:

- `magnitude`: L2 norm of all the unit's weights. Needs no data; blind to how large the activations are.
- `activation`: L2 norm, over calibration tokens, of the unit's contribution to the consumer's output,
  ||X_u W_u^T||_F. For a single channel this is ||x_j|| * ||w_j|| (the Wanda idea applied to whole channels);
  for a head it is the exact norm of what that head adds to the residual stream.
- `taylor`: first-order Taylor estimate of the loss change when the unit is removed, (sum over the unit's
  weights of grad * weight)^2, summed over calibration batches (Molchanov et al., "Importance Estimation for
  Neural Network Pruning", CVPR 2019).
- `obs` (not here: reconstruct.obs_choose): the error left after re-fitting the consumer without the unit,
  chosen layer by layer on the already-pruned model's activations.

Every function returns, for each key of `groups`, a float tensor of shape (num_units,): higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from planner.errors import InputError
from planner.prune.structured.slicing import is_conv1d, weight_dim

def _criteria() -> tuple[str, ...]:
    from typing import get_args

    from planner.prune.specs import MlpChannelPruning

    return get_args(MlpChannelPruning.model_fields["criterion"].annotation)


CRITERIA = _criteria()  # the channel criteria of the specs


@dataclass(frozen=True)
class UnitSlice:
    """The features of `module` on `side` ("out" or "in") that belong to units, `unit_size` contiguous each."""

    module: Any
    side: str
    unit_size: int


@dataclass(frozen=True)
class UnitGroup:
    """The projections of one layer pruned together. `consumer` (side "in") receives the units' outputs."""

    num_units: int
    producers: tuple[UnitSlice, ...]
    consumer: UnitSlice

    @property
    def slices(self) -> tuple[UnitSlice, ...]:
        return (*self.producers, self.consumer)


def per_unit_sum(tensor, dim: int, unit_size: int, num_units: int):
    """Sum `tensor` within each unit along `dim` (and over every other dimension)."""
    moved = tensor.movedim(dim, 0).reshape(num_units, unit_size, -1)
    return moved.float().sum(dim=(1, 2))


def magnitude(groups: dict) -> dict:
    import torch

    scores = {}
    with torch.no_grad():
        for key, group in groups.items():
            total = torch.zeros(group.num_units)
            for s in group.slices:
                w = s.module.weight.detach()
                total += per_unit_sum(w.float() ** 2, weight_dim(s.module, s.side), s.unit_size, group.num_units).cpu()
            scores[key] = total.sqrt()
    return scores


def batches(calib_ids, batch_size: int, device) -> Iterator:
    for start in range(0, calib_ids.shape[0], batch_size):
        yield calib_ids[start : start + batch_size].to(device)


def progress_bar(calib_ids, batch_size: int, device, desc: str, progress: bool | None):
    """Calibration batches with a progress bar (progress=None: only on a terminal)."""
    from tqdm.auto import tqdm

    steps = list(batches(calib_ids, batch_size, device))
    return tqdm(steps, desc=desc, leave=False, disable=None if progress is None else not progress)


def require_calibration(calib_ids, criterion: str):
    if calib_ids is None or calib_ids.dim() != 2 or calib_ids.shape[0] < 1 or calib_ids.shape[1] < 2:
        got = None if calib_ids is None else tuple(calib_ids.shape)
        raise InputError(f"criterion {criterion!r} needs calibration token ids of shape (samples, seq_len >= 2); "
                         f"got {got}")


def _contribution_sq(x, consumer: UnitSlice, num_units: int):
    """Per unit: squared Frobenius norm of x_u @ W_u^T over all tokens of `x` (..., in_features)."""
    import torch

    w = consumer.module.weight.detach().float()
    w_io = w if is_conv1d(consumer.module) else w.t()  # (in, out)
    x = x.reshape(-1, x.shape[-1]).float()
    s = consumer.unit_size
    if s == 1:  # rank one per unit: ||x_j w_j^T||_F^2 = ||x_j||^2 ||w_j||^2
        return (x * x).sum(0) * (w_io * w_io).sum(1)
    contrib = torch.einsum("tus,uso->uto", x.view(-1, num_units, s), w_io.view(num_units, s, -1))
    return (contrib * contrib).sum(dim=(1, 2))


def activation_sq(x, group: UnitGroup):
    """Per unit of `group`: squared norm of its contribution to the consumer's output over the tokens of `x` (the
    consumer's input), float64 on the CPU; the `activation` score is the square root of its sum over batches."""
    return _contribution_sq(x, group.consumer, group.num_units).double().cpu()


def activation(model, calib_ids, groups: dict, batch_size: int = 4, progress: bool | None = None) -> dict:
    import torch

    require_calibration(calib_ids, "activation")
    device = next(model.parameters()).device
    sums = {key: torch.zeros(g.num_units, dtype=torch.float64) for key, g in groups.items()}

    def hook_for(key):
        group = groups[key]

        def hook(module, args):
            sums[key] += activation_sq(args[0], group)

        return hook

    handles = [g.consumer.module.register_forward_pre_hook(hook_for(k)) for k, g in groups.items()]
    try:
        with torch.inference_mode():
            for batch in progress_bar(calib_ids, batch_size, device, "activation importance", progress):
                model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {key: s.sqrt().float() for key, s in sums.items()}


def taylor(model, calib_ids, groups: dict, batch_size: int = 4, progress: bool | None = None) -> dict:
    import torch

    require_calibration(calib_ids, "taylor")
    device = next(model.parameters()).device
    params = {}
    for g in groups.values():
        for s in g.slices:
            params[id(s.module.weight)] = s.module.weight
            bias = getattr(s.module, "bias", None)
            if s.side == "out" and bias is not None:
                params[id(bias)] = bias
    was_trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    scores = {key: torch.zeros(g.num_units, dtype=torch.float64) for key, g in groups.items()}
    try:
        # gradients only where they are read: the activations still carry them through every layer
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
        for batch in progress_bar(calib_ids, batch_size, device, "taylor importance", progress):
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                next_token_loss(model, batch).backward()
            with torch.no_grad():
                for key, g in groups.items():
                    first_order = torch.zeros(g.num_units)
                    for s in g.slices:
                        dim = weight_dim(s.module, s.side)
                        w = s.module.weight
                        first_order += per_unit_sum(w.grad * w, dim, s.unit_size, g.num_units).cpu()
                        bias = getattr(s.module, "bias", None)
                        if s.side == "out" and bias is not None:
                            first_order += per_unit_sum(bias.grad * bias, 0, s.unit_size, g.num_units).cpu()
                    scores[key] += first_order.double() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.requires_grad_(was_trainable[name])
    return {key: s.float() for key, s in scores.items()}


def next_token_loss(model, batch):
    """Mean next-token cross-entropy, in at least float32 (and in float64 for a float64 model)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def unit_scores(criterion: str, model, calib_ids, groups: dict, batch_size: int = 4,
                progress: bool | None = None) -> dict:
    if criterion == "magnitude":
        return magnitude(groups)
    if criterion == "activation":
        return activation(model, calib_ids, groups, batch_size, progress)
    if criterion == "taylor":
        return taylor(model, calib_ids, groups, batch_size, progress)
    if criterion == "obs":
        raise InputError("criterion 'obs' has no score on the dense model: it chooses units layer by layer, by "
                         "the error the consumer's re-fit leaves (planner.prune.structured.reconstruct.obs_choose)")
    raise InputError(f"unknown importance criterion {criterion!r}; accepted: {', '.join(CRITERIA)}")
