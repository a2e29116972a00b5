"""Slice projections to a subset of their output or input features, in place, keeping the module class.

`nn.Linear` stores weight as (out, in); GPT-2's `Conv1D` stores it as (in, out). Slicing outputs also slices the
bias; slicing inputs leaves the bias alone (it is added once per output feature).
"""

from __future__ import annotations


def is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_dim(module, side: str) -> int:
    """The weight dimension that indexes output (`side="out"`) or input (`side="in"`) features."""
    if side not in ("out", "in"):
        raise ValueError(f"side must be 'out' or 'in', got {side!r}")
    out_dim = 1 if is_conv1d(module) else 0
    return out_dim if side == "out" else 1 - out_dim


def features(module, side: str) -> int:
    return int(module.weight.shape[weight_dim(module, side)])


def slice_projection(module, keep, side: str) -> None:
    """Keep only features `keep` (1-D LongTensor of indices, in the order wanted) on `side` of `module`."""
    import torch

    keep = keep.to(module.weight.device)
    dim = weight_dim(module, side)
    with torch.no_grad():
        weight = module.weight.index_select(dim, keep).clone()
        module.weight = torch.nn.Parameter(weight, requires_grad=module.weight.requires_grad)
        if side == "out" and getattr(module, "bias", None) is not None:
            module.bias = torch.nn.Parameter(module.bias.index_select(0, keep).clone(),
                                             requires_grad=module.bias.requires_grad)
    # the attributes the module's forward and repr read
    if is_conv1d(module):
        module.nf, module.nx = int(weight.shape[1]), int(weight.shape[0])
    else:
        module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])


def unit_indices(units, unit_size: int):
    """Feature indices covered by whole units (unit u covers [u*unit_size, (u+1)*unit_size)), in unit order."""
    import torch

    units = torch.as_tensor(units, dtype=torch.long)
    offsets = torch.arange(unit_size, dtype=torch.long)
    return (units[:, None] * unit_size + offsets[None, :]).reshape(-1)
