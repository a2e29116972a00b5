"""What the probe's steps share: fresh copies of one pristine model, and the structured importance scores.

Every step starts from the model as loaded, so two steps of one kind and criterion that differ only in how much they
remove (MLP channels at 12.5% and 50%, 3 and 9 layers) score the same units on the same weights with the same
calibration tokens: `shared_importance()` computes those scores once and hands the same numbers to every ratio.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any


class PristineCopies:
    """Working copies of `pristine`, which is never modified.

    A step that left every weight a plain tensor of its original shape and the config as it was (a mask: zeros
    inside dense tensors) is undone in place from the pristine weights; one that changed shapes, module lists or
    tensor types (a structured cut, quantization) gets a new deep copy. On SmolLM2-135M the in-place restore takes
    0.1 s and the deep copy 0.5 s (bench/probe_time.py prints both)."""

    def __init__(self, pristine):
        self.pristine = pristine
        self._work = None
        self.deep_copies = 0
        self.restores = 0

    def fresh(self):
        """A model equal to the pristine one, free to modify."""
        if self._work is not None and self._restore_in_place(self._work):
            self.restores += 1
        else:
            self._work = None  # drop the old copy before making the next one: two copies at once are enough
            self._work = copy.deepcopy(self.pristine)
            self.deep_copies += 1
        return self._work

    def _restore_in_place(self, work) -> bool:
        import torch

        if work.config.to_dict() != self.pristine.config.to_dict():
            return False
        mine, theirs = work.state_dict(), self.pristine.state_dict()
        if mine.keys() != theirs.keys():
            return False
        for name, tensor in mine.items():
            original = theirs[name]
            if type(tensor) is not torch.Tensor or tensor.shape != original.shape or tensor.dtype != original.dtype:
                return False
        with torch.no_grad():
            for name, tensor in mine.items():
                tensor.copy_(theirs[name])
        return True


def _unit_layout(groups: dict) -> tuple:
    """What the scores of `groups` depend on besides the weights: units per layer and how each projection holds them
    (tells MLP channels, KV groups and per-group query heads apart)."""
    return tuple((key, g.num_units, tuple((s.side, s.unit_size) for s in g.slices)) for key, g in groups.items())


@contextmanager
def shared_importance():
    """Within the block, the structured engines compute each importance score once per (criterion, unit layout,
    calibration tensor) and block influence once per calibration tensor. Only valid while every scored model is a
    fresh copy of the same pristine model, which the probe guarantees.

    It swaps the scoring functions the engines look up (planner.prune.structured.channels/heads.unit_scores,
    .layers.block_influence) for memoizing wrappers and puts them back on exit. A score cache argument of
    `apply_pruning` would make this unnecessary."""
    from planner.prune.structured import channels, heads, layers

    memo: dict[tuple, Any] = {}
    original_units = channels.unit_scores
    original_influence = layers.block_influence

    def unit_scores(criterion, model, calib_ids, groups, *args, **kwargs):
        if criterion == "magnitude":  # no calibration pass to save
            return original_units(criterion, model, calib_ids, groups, *args, **kwargs)
        key = ("units", criterion, id(calib_ids), _unit_layout(groups))
        if key not in memo:
            memo[key] = original_units(criterion, model, calib_ids, groups, *args, **kwargs)
        return {k: v.clone() for k, v in memo[key].items()}

    def block_influence(model, adapter, calib_ids, *args, **kwargs):
        key = ("block_influence", id(calib_ids), len(adapter.get_layers(model)))
        if key not in memo:
            memo[key] = original_influence(model, adapter, calib_ids, *args, **kwargs)
        return list(memo[key])

    saved = {(channels, "unit_scores"): channels.unit_scores, (heads, "unit_scores"): heads.unit_scores,
             (layers, "block_influence"): layers.block_influence}
    channels.unit_scores = heads.unit_scores = unit_scores
    layers.block_influence = block_influence
    try:
        yield memo
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
