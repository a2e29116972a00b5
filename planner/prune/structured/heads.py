"""Structured attention-head pruning, GQA-aware. head_dim and RoPE are untouched; only head counts change.

With grouped-query attention, query head h reads KV head h // group_size. Two ways keep that valid:

- `kv_group`: remove whole KV groups: k/v rows of the KV head, q rows of its query heads, o columns of those.
  Saves attention FLOPs and KV-cache memory alike.
- `per_group`: remove the same number of query heads from every group (q rows and o columns); every KV head
  stays, so the KV cache is unchanged.

Counts are whole units (nearest to the requested ratio); the ratio achieved is reported. Only families whose
config states head_dim independently of hidden_size (Llama, Mistral, Qwen2, ...) can express fewer heads: GPT-2
and OPT compute head_dim = hidden_size / num_heads, so a checkpoint with fewer heads would not load there.

    {"kind": "heads", "ratio": 0.25, "criterion": "activation", "mode": "kv_group"}
    {"kind": "heads", "ratio": 0.25, "criterion": "obs"}     # chosen by least o_proj re-fit error, re-fit
"""

from __future__ import annotations

import math

from planner.arch import get_adapter
from planner.errors import InputError
from planner.prune.base import PruneResult
from planner.prune.structured.common import count_parameters, keep_top
from planner.prune.structured.importance import UnitGroup, UnitSlice, require_calibration, unit_scores
from planner.prune.structured.reconstruct import cut_layer_by_layer, rebuilds
from planner.prune.structured.slicing import slice_projection, unit_indices


def _nearest_count(units: int, ratio: float) -> int:
    return int(math.floor(units * ratio + 0.5))


def plan_head_counts(shape, spec) -> tuple[int, int]:
    """(num_heads, num_kv_heads) after pruning; an InputError when the request cannot be honoured."""
    heads, kv, group = shape.num_heads, shape.num_kv_heads, shape.group_size
    if shape.family != "llama":
        raise InputError(
            f"head pruning is not supported for {shape.model_type!r}: its config derives head_dim from "
            "hidden_size / num_heads, so fewer heads cannot be saved as a loadable checkpoint. Supported: Llama-"
            "style families (llama, mistral, qwen2, ...); for this model use mlp_channels or layers"
        )
    if spec.ratio == 0.0:
        return heads, kv
    if spec.mode == "kv_group":
        removed = _nearest_count(kv, spec.ratio)
        what, units, step = "KV groups", kv, f"1/{kv} = {1 / kv:.1%}"
    else:
        if group == 1:
            raise InputError(f"heads mode 'per_group' needs grouped-query attention; this model has one query head "
                             f"per KV head ({heads} heads); use mode 'kv_group'")
        removed = _nearest_count(group, spec.ratio)
        what, units, step = "query heads per KV group", group, f"1/{group} = {1 / group:.1%}"
    if removed == 0:
        raise InputError(f"heads ratio {spec.ratio!r} removes no whole unit of {units} {what} (mode "
                         f"{spec.mode!r}); the smallest step is {step}")
    if removed >= units:
        raise InputError(f"heads ratio {spec.ratio!r} removes all {units} {what} (mode {spec.mode!r}); "
                         f"accepted: ratios that keep at least one, below {(units - 0.5) / units:.2f}")
    if spec.mode == "kv_group":
        return (kv - removed) * group, kv - removed
    return kv * (group - removed), kv


def head_groups(model, adapter, shape, mode: str) -> dict[int, UnitGroup]:
    """Per layer: q/k/v/o slices of each unit (a KV group with its query heads, or one query head)."""
    hd, group = shape.head_dim, shape.group_size
    groups = {}
    for i, layer in enumerate(adapter.get_layers(model)):
        q, k, v, o = (adapter.projection(layer, r) for r in ("q", "k", "v", "o"))
        if mode == "kv_group":
            producers = (UnitSlice(q, "out", group * hd), UnitSlice(k, "out", hd), UnitSlice(v, "out", hd))
            groups[i] = UnitGroup(shape.num_kv_heads, producers, UnitSlice(o, "in", group * hd))
        else:
            groups[i] = UnitGroup(shape.num_heads, (UnitSlice(q, "out", hd),), UnitSlice(o, "in", hd))
    return groups


def _choose(scores, shape, mode: str, new_heads: int, new_kv: int):
    """(kept query heads, kept KV heads), ascending, so each kept group's query heads stay contiguous."""
    import torch

    group = shape.group_size
    if mode == "kv_group":
        kv_kept = keep_top(scores, new_kv)
        q_kept = unit_indices(kv_kept, group)  # query heads of KV head j are j*group .. j*group+group-1
        return q_kept, kv_kept
    per_group = new_heads // shape.num_kv_heads
    chosen = [keep_top(scores[j * group:(j + 1) * group], per_group) + j * group for j in range(shape.num_kv_heads)]
    return torch.cat(chosen), torch.arange(shape.num_kv_heads)


def _choose_obs(o_weight, gram, shape, mode: str, new_heads: int, new_kv: int):
    """(kept query heads, kept KV heads) by least o_proj re-fit error (reconstruct.obs_choose); `o_weight` (out, in)."""
    import torch

    from planner.prune.structured.reconstruct import obs_choose

    group, hd, kv = shape.group_size, shape.head_dim, shape.num_kv_heads
    if mode == "kv_group":
        kv_kept = obs_choose(o_weight, gram, group * hd, [kv - new_kv])
        return unit_indices(kv_kept, group), kv_kept
    removed_per_group = group - new_heads // kv
    q_kept = obs_choose(o_weight, gram, hd, [removed_per_group] * kv, [h // group for h in range(kv * group)])
    return q_kept, torch.arange(kv)


def prune_heads(model, spec, calib_ids=None, batch_size: int = 4, progress: bool | None = None,
                **_) -> PruneResult:
    adapter = get_adapter(model)
    shape = adapter.shape(model.config)
    new_heads, new_kv = plan_head_counts(shape, spec)
    changed = new_heads < shape.num_heads
    rebuild = rebuilds(spec)
    if (spec.criterion != "magnitude" or rebuild) and changed:
        require_calibration(calib_ids, spec.criterion if spec.criterion != "magnitude" else "reconstruct")
    params_before = count_parameters(model)
    details = {"criterion": spec.criterion, "mode": spec.mode, "ratio": spec.ratio,
               "num_heads_before": shape.num_heads, "num_heads_after": new_heads,
               "num_kv_heads_before": shape.num_kv_heads, "num_kv_heads_after": new_kv,
               "head_dim": shape.head_dim, "achieved_ratio": 1.0 - new_heads / shape.num_heads,
               "kept_heads": {}, "kept_kv_heads": {}, "reconstruct": rebuild}
    if not changed:
        return PruneResult("heads", params_before, params_before, details=details)

    groups = head_groups(model, adapter, shape, spec.mode)
    # obs chooses inside the layer loop, from o_proj's inputs after the upstream layers were cut
    scores = None if spec.criterion == "obs" else unit_scores(spec.criterion, model, calib_ids, groups, batch_size,
                                                              progress)
    hd = shape.head_dim

    def cut(i, layer, gram=None):
        o_proj = adapter.projection(layer, "o")
        original = o_proj.weight.detach().clone() if rebuild else None
        if scores is None:
            q_kept, kv_kept = _choose_obs(original, gram, shape, spec.mode, new_heads, new_kv)
        else:
            q_kept, kv_kept = _choose(scores[i], shape, spec.mode, new_heads, new_kv)
        q_cols, kv_cols = unit_indices(q_kept, hd), unit_indices(kv_kept, hd)
        slice_projection(adapter.projection(layer, "q"), q_cols, "out")
        slice_projection(o_proj, q_cols, "in")
        if spec.mode == "kv_group":
            slice_projection(adapter.projection(layer, "k"), kv_cols, "out")
            slice_projection(adapter.projection(layer, "v"), kv_cols, "out")
        _update_attention(getattr(layer, adapter.attn), new_heads, new_kv)
        details["kept_heads"][i] = q_kept.tolist()
        details["kept_kv_heads"][i] = kv_kept.tolist()
        return o_proj, q_cols, original

    if rebuild:
        fit = cut_layer_by_layer(model, adapter, calib_ids, lambda i, layer: adapter.projection(layer, "o"), cut,
                                 batch_size)
        details["ridge"], details["reconstruct_target"] = fit["ridge"], fit["target"]
    else:
        for i, layer in enumerate(adapter.get_layers(model)):
            cut(i, layer)
    adapter.set_shape(model.config, num_heads=new_heads, num_kv_heads=new_kv)
    return PruneResult("heads", params_before, count_parameters(model), details=details)


def _update_attention(attn, heads: int, kv_heads: int) -> None:
    """Head counts the attention module computed at construction (repeat_kv reads num_key_value_groups)."""
    values = {"num_heads": heads, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "num_key_value_groups": heads // kv_heads}
    for name, value in values.items():
        if hasattr(attn, name):
            setattr(attn, name, value)
