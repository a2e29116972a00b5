"""Structured MLP-channel pruning: remove the same number of intermediate channels from every layer.

For a gated MLP (SwiGLU: down(act(gate(x)) * up(x))) channel j is row j of gate and up and column j of down;
for a plain MLP (GPT-2 c_fc/c_proj, OPT fc1/fc2) it is row j of the first projection, its bias entry, and
column j of the second. The result is a smaller dense MLP, so it is faster on every runtime.

    {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation", "round_to": 64}
    {"kind": "mlp_channels", "ratio": 0.25, "criterion": "obs"}      # chosen by least re-fit error, re-fit

`reconstruct: true` (implied by criterion `obs`) re-fits the down projection after the cut (reconstruct.py).
"""

from __future__ import annotations

from planner.arch import get_adapter
from planner.errors import InputError
from planner.prune.base import PruneResult
from planner.prune.structured.common import count_parameters, keep_top
from planner.prune.structured.importance import UnitGroup, UnitSlice, require_calibration, unit_scores
from planner.prune.structured import reconstruct
from planner.prune.structured.rounding import kept_count
from planner.prune.structured.slicing import features, is_conv1d, slice_projection


def mlp_groups(model, adapter) -> dict[int, UnitGroup]:
    """Per layer: the projections that share the intermediate channels (unit = one channel)."""
    return {i: mlp_group(layer, adapter) for i, layer in enumerate(adapter.get_layers(model))}


def mlp_group(layer, adapter) -> UnitGroup:
    """The projections of one decoder layer that share its intermediate channels."""
    producers = [UnitSlice(adapter.projection(layer, "gate"), "out", 1)] if adapter.gate else []
    producers.append(UnitSlice(adapter.projection(layer, "up"), "out", 1))
    down = adapter.projection(layer, "down")
    return UnitGroup(features(down, "in"), tuple(producers), UnitSlice(down, "in", 1))


def set_mlp_width(layer, adapter, kept: int) -> None:
    """Llama-style MLPs remember their width: tell them the new one after a cut."""
    mlp = getattr(layer, adapter.mlp, None) if adapter.mlp else None
    if mlp is not None and hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = kept


def prune_mlp_channels(model, spec, calib_ids=None, batch_size: int = 4, progress: bool | None = None,
                       **_) -> PruneResult:
    adapter = get_adapter(model)
    width = adapter.shape(model.config).intermediate_size
    kept = kept_count(width, spec.ratio, spec.round_to, "mlp_channels")
    groups = mlp_groups(model, adapter)
    widths = sorted({g.num_units for g in groups.values()})
    if widths != [width]:
        raise InputError(f"mlp_channels needs the same MLP width in every layer ({width} in the config); "
                         f"this model has {widths}")
    rebuild = reconstruct.rebuilds(spec)
    if (spec.criterion != "magnitude" or rebuild) and kept < width:
        require_calibration(calib_ids, spec.criterion if spec.criterion != "magnitude" else "reconstruct")
    params_before = count_parameters(model)
    details = {"criterion": spec.criterion, "ratio": spec.ratio, "round_to": spec.round_to,
               "intermediate_size_before": width, "intermediate_size_after": kept,
               "achieved_ratio": 1.0 - kept / width, "reconstruct": rebuild}
    if kept == width:  # ratio 0: nothing to score or slice
        details["kept_channels"] = {}
        return PruneResult("mlp_channels", params_before, params_before, details=details)

    # obs chooses inside the layer loop, from the consumer's inputs after the upstream layers were cut
    scores = None if spec.criterion == "obs" else unit_scores(spec.criterion, model, calib_ids, groups, batch_size,
                                                              progress)
    kept_channels = {}

    def cut(i, _layer=None, gram=None):
        consumer = groups[i].consumer.module
        original = consumer.weight.detach().clone() if rebuild else None
        if scores is None:
            w = original.t() if is_conv1d(consumer) else original
            kept_channels[i] = reconstruct.obs_choose(w, gram, 1, [width - kept])
        else:
            kept_channels[i] = keep_top(scores[i], kept)
        for s in groups[i].slices:
            slice_projection(s.module, kept_channels[i], s.side)
        return consumer, kept_channels[i], original

    if rebuild:
        fit = reconstruct.cut_layer_by_layer(model, adapter, calib_ids, lambda i, _: groups[i].consumer.module, cut,
                                             batch_size)
        details["ridge"], details["reconstruct_target"] = fit["ridge"], fit["target"]
    else:
        for i in groups:
            cut(i)
    kept_channels = {i: keep.tolist() for i, keep in kept_channels.items()}
    for layer in adapter.get_layers(model):
        set_mlp_width(layer, adapter, kept)
    adapter.set_shape(model.config, intermediate_size=kept)
    details["kept_channels"] = kept_channels
    return PruneResult("mlp_channels", params_before, count_parameters(model), details=details)
