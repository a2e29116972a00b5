"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning
Approach for Large Language Models", https://arxiv.org/abs/2306.11695).

    {"kind": "nm", "n": 2, "m": 4, "criterion": "wanda"}

Saliency S_ij = |W_ij| * ||X_j||_2, with X_j the j-th input feature over all calibration tokens; weights are
compared within each output row (unstructured) or within each group of M inputs (N:M). No weight update.
"""

from __future__ import annotations


def wanda_scores(weight, input_sq_sum):
    """|W_ij| * ||X_j||_2 for a weight in (out, in) layout; `input_sq_sum[j]` = sum over tokens of X_j^2. In the
    sum's precision (float64 from calibration.InputStats), at least float32: a float32 score would round away
    differences of 1e-7, and which of two near-equal weights goes would then depend on the summation order."""
    import torch

    dtype = torch.promote_types(input_sq_sum.dtype, torch.float32)
    return weight.detach().to(dtype).abs() * input_sq_sum.to(dtype).sqrt().view(1, -1)
