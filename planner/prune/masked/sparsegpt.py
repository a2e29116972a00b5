"""SparseGPT: one-shot pruning with approximate second-order weight reconstruction (Frantar & Alistarh 2023,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", https://arxiv.org/abs/2301.00774).

    {"kind": "unstructured", "sparsity": 0.5, "criterion": "sparsegpt"}

For one linear layer with calibration inputs X, minimise ||W X - W' X||^2 over W' with the chosen zeros. With
H = 2 X X^T / n (dampened by 1% of its mean diagonal), the columns are processed left to right: pruning column j
leaves an error that the optimal-brain-surgeon update spreads over the columns not yet processed, using the
rows of the upper Cholesky factor of H^-1 (sec. 3.3 of the paper: no re-inversion per column). Columns go in
blocks of 128 ("lazy batch updates"): inside a block each column's update touches only the block, and the
block's accumulated error updates the rest of the matrix in one matrix product. The mask of a block is chosen
when the block starts (adaptive mask selection), from the already-updated weights, by the saliency
w^2 / [H^-1]_jj^2; N:M groups are chosen when the loop reaches their first column.
"""

from __future__ import annotations

from planner.prune.masked.patterns import prune_lowest, split_count

BLOCK_SIZE = 128
DAMPENING = 0.01


def inverse_hessian_factor(hessian, dampening: float = DAMPENING):
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1. More dampening is tried if H is not
    positive definite (rank-deficient calibration: fewer tokens than inputs)."""
    import torch

    H = hessian.detach().float().clone()
    dead = H.diagonal() == 0  # inputs that are always zero: any weight there is free to change
    H[dead, dead] = 1.0
    mean_diag = float(H.diagonal().mean())
    for attempt in range(5):
        damped = H.clone()
        damped.diagonal().add_(dampening * 10**attempt * mean_diag)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise RuntimeError("the calibration Hessian is not positive definite even with 1000x dampening")


def sparsegpt_prune(weight, hessian, *, sparsity: float = 0.0, n: int = 0, m: int = 0,
                    block_size: int = BLOCK_SIZE, dampening: float = DAMPENING):
    """Prune `weight` ((out, in), not modified) given `hessian` ((in, in), 2 X X^T / tokens).

    Unstructured when m == 0 (exactly round(sparsity * numel) weights pruned, spread over the blocks in
    proportion to their size), else exactly n of every m consecutive inputs. Returns (new weight (out, in)
    float32 with the pruned entries exactly zero, keep mask (out, in) bool)."""
    import torch

    rows, cols = weight.shape
    hinv = inverse_hessian_factor(hessian.to(weight.device), dampening)
    if m:
        block_size = max(m, block_size // m * m)  # an N:M group never straddles two blocks
    # work on W^T (in, out): a column of W is then a contiguous row, and the per-column update a contiguous slab
    wt = weight.detach().float().t().contiguous()
    keep_t = torch.ones((cols, rows), dtype=torch.bool, device=wt.device)
    starts = list(range(0, cols, block_size))
    counts = split_count(sparsity, [rows * (min(s + block_size, cols) - s) for s in starts]) if not m else []
    for b, i1 in enumerate(starts):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2]  # a view: updated in place
        hinv1 = hinv[i1:i2, i1:i2]
        d = hinv1.diagonal().clone().view(-1, 1)
        d2 = d.square()
        keep1 = keep_t[i1:i2]
        if not m:
            keep1.copy_(prune_lowest((w1.square() / d2).view(1, -1), [counts[b]]).view_as(w1))
        # err_j = (w_j - q_j) / [H^-1]_jj = w_j * pruned_j / d_j, so one multiply per column
        err_scale = (~keep1).float() / d
        err1 = torch.zeros_like(w1)
        # row views made once per block: slicing inside the loop costs more Python time than the arithmetic
        w_rows, err_rows, scale_rows = w1.unbind(0), err1.unbind(0), err_scale.unbind(0)
        for j in range(i2 - i1):
            if m and j % m == 0:  # choose this N:M group now, from the weights updated so far
                lowest = (w1[j : j + m].square() / d2[j : j + m]).topk(n, dim=0, largest=False).indices
                pruned = torch.zeros((m, rows), dtype=torch.bool, device=wt.device).scatter_(0, lowest, True)
                torch.bitwise_not(pruned, out=keep1[j : j + m])
                torch.div(pruned, d[j : j + m], out=err_scale[j : j + m])
            torch.mul(w_rows[j], scale_rows[j], out=err_rows[j])
            w1[j:].addr_(hinv1[j, j:], err_rows[j], alpha=-1.0)
        if i2 < cols:
            wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1.0)
    wt.mul_(keep_t)  # the update leaves pruned entries at ~1e-8, not exactly 0
    return wt.t(), keep_t.t()
