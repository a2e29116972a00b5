"""Keep pruning masks fixed through recovery: weights that were zero stay exactly zero.

Masks come from the masked pruning engines (`PruneResult.masks`: full module name -> bool tensor in the module's
weight layout, True = kept; GPT-2 Conv1D weights are (in, out)). During training the gradient of every pruned
position is zeroed by a hook, and after every optimizer step the mask is re-applied: with zero gradients Adam's
update is already zero, the re-apply also covers optimizers or rounding that would move a zero.
"""

from __future__ import annotations

from typing import Any


class MaskKeeper:
    def __init__(self, model, masks: dict[str, Any]):
        import torch

        self.masks: dict[str, Any] = {}
        self._hooks: list[Any] = []
        for name, mask in masks.items():
            weight = _weight_of(model, name)
            mask = torch.as_tensor(mask).to(device=weight.device, dtype=torch.bool)
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}")
            self.masks[name] = mask
        self.bind(model)

    def __len__(self) -> int:
        return len(self.masks)

    def bind(self, model) -> None:
        """Find the weights again by name (after peft wrapping/unwrapping the modules are new objects)."""
        self.weights = {name: _weight_of(model, name) for name in self.masks}

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, weight in self.weights.items():
                weight.masked_fill_(~self.masks[name], 0)

    def zero_pruned_grads(self) -> None:
        """Register gradient hooks that zero the gradient of every pruned weight (call `remove_hooks` after)."""
        for name, weight in self.weights.items():
            if weight.requires_grad:
                pruned = ~self.masks[name]
                self._hooks.append(weight.register_hook(lambda g, pruned=pruned: g.masked_fill(pruned, 0)))

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def violations(self) -> int:
        """Number of pruned positions that are not exactly zero (0 when the masks were kept)."""
        return int(sum(int((w[~self.masks[n]] != 0).sum()) for n, w in self.weights.items()))


def _weight_of(model, name: str):
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"mask names module {name!r}, which the model does not have") from None
    weight = getattr(module, "weight", None)
    if weight is None:
        raise ValueError(f"mask names module {name!r}, which has no weight")
    return weight
