"""Small helpers shared by the structured engines."""

from __future__ import annotations


def count_parameters(model) -> int:
    """Parameters of `model`, a tied tensor counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def keep_top(scores, count: int):
    """Indices of the `count` highest scores, in ascending index order (so kept features keep their order)."""
    import torch

    order = torch.argsort(scores.float(), descending=True, stable=True)
    return torch.sort(order[:count]).values
