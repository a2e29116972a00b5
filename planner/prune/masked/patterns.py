"""Mask selection from saliency scores: unstructured at a target sparsity, and N:M along the input dimension.

Every function takes scores in the (out, in) layout (GPT-2 Conv1D weights are transposed by the caller) and
returns a bool mask of the same shape, True = weight kept. Lowest scores are pruned; ties go to the lower index
(stable sort), so a mask is a deterministic function of its scores.
"""

from __future__ import annotations

import math

from planner.errors import InputError


def out_in(module, conv1d: bool):
    """The weight in (out, in) layout (a view): GPT-2's Conv1D stores (in, out)."""
    return module.weight.data.t() if conv1d else module.weight.data


def rounded(x: float) -> int:
    """Round half up (Python's round() is banker's rounding, which would make 0.5-boundaries flip-flop)."""
    return int(math.floor(x + 0.5))


def split_count(sparsity: float, sizes: list[int]) -> list[int]:
    """How many weights to prune in each of several groups of `sizes` elements, so the groups together prune
    exactly round(sparsity * sum(sizes)) and each group gets its proportional share (cumulative rounding)."""
    counts, done, start = [], 0, 0
    for size in sizes:
        start += size
        upto = rounded(sparsity * start)
        counts.append(upto - done)
        done = upto
    return counts


def prune_lowest(scores, counts):
    """Keep-mask pruning the `counts[r]` lowest scores of each row r (`counts`: int list or LongTensor)."""
    import torch

    rows, cols = scores.shape
    counts = torch.as_tensor(counts, dtype=torch.long, device=scores.device).view(rows, 1)
    # the k-th smallest value per row is a selection, not a sort: ~5x faster than argsort on CPU
    threshold = torch.full((rows, 1), -torch.inf, dtype=scores.dtype, device=scores.device)
    for k in counts.unique().tolist():
        if k > 0:
            rows_k = counts == k
            kth = scores.kthvalue(k, dim=1, keepdim=True).values
            threshold = torch.where(rows_k, kth, threshold)
    below = scores < threshold
    ties = scores == threshold
    extra = counts - below.sum(dim=1, keepdim=True)
    if torch.equal(ties.sum(dim=1, keepdim=True), extra):  # the usual case: no tie straddles the cut
        return ~(below | ties)
    tie_rank = ties.cumsum(dim=1)  # the first ties (lowest index) are pruned, as a stable sort would
    return ~(below | (ties & (tie_rank <= extra)))


def unstructured_mask(scores, sparsity: float, compare: str = "row"):
    """Prune `sparsity` of the weights by lowest score, comparing within each output row (`compare="row"`, as
    Wanda does) or across the whole matrix (`compare="matrix"`, layer-wise magnitude). Exactly
    round(sparsity * numel) weights are pruned either way."""
    rows, cols = scores.shape
    if compare == "matrix":
        return prune_lowest(scores.reshape(1, -1), [rounded(sparsity * rows * cols)]).view(rows, cols)
    if compare == "row":
        return prune_lowest(scores, split_count(sparsity, [cols] * rows))
    raise ValueError(f"compare must be 'row' or 'matrix', got {compare!r}")


def check_nm(n: int, m: int, in_features: int | None = None, name: str = "") -> None:
    if not 0 < n < m:
        raise InputError(f"N:M pattern {n}:{m} must prune 0 < N < M weights per group (e.g. 2:4 or 4:8)")
    if in_features is not None and in_features % m:
        raise InputError(
            f"layer {name!r} has {in_features} inputs, not a multiple of M={m}; N:M pruning needs whole groups "
            f"of {m} along the input dimension (use unstructured pruning or another M)"
        )


def nm_mask(scores, n: int, m: int):
    """Keep-mask with exactly `n` pruned weights (the lowest scores) in every group of `m` consecutive inputs."""
    import torch

    rows, cols = scores.shape
    check_nm(n, m, cols)
    groups = scores.reshape(rows, cols // m, m)
    lowest = groups.argsort(dim=2, stable=True)[..., :n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, lowest, False)
    return keep.view(rows, cols)


def global_mask(score_list, sparsity: float):
    """Keep-masks for several matrices compared together (global magnitude): exactly round(sparsity * total)
    weights pruned overall. Uses the k-th value as threshold rather than sorting ~10^8 scores."""
    import torch

    flat = torch.cat([s.reshape(-1) for s in score_list])
    k = rounded(sparsity * flat.numel())
    if k == 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in score_list]
    threshold = flat.kthvalue(k).values
    below = flat < threshold
    # scores equal to the threshold: prune the first ones (in model order) until exactly k are pruned
    tied = (flat == threshold).nonzero().view(-1)[: k - int(below.sum())]
    pruned = below
    pruned[tied] = True
    del flat
    masks, start = [], 0
    for s in score_list:
        masks.append(~pruned[start : start + s.numel()].view(s.shape))
        start += s.numel()
    return masks


def nm_violations(keep, n: int, m: int) -> int:
    """Number of groups of `m` consecutive inputs (last dim) with fewer than `n` pruned entries. `keep`: bool
    (True = kept or nonzero), (out, in) layout."""
    cols = keep.shape[-1]
    check_nm(n, m, cols)
    pruned = (~keep).reshape(-1, cols // m, m).sum(dim=-1)
    return int((pruned < n).sum())
