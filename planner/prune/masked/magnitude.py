"""Magnitude pruning: a weight's saliency is |W_ij| (Han et al. 2015, "Learning both Weights and Connections for
Efficient Neural Networks", https://arxiv.org/abs/1506.02626). Needs no calibration data.

    {"kind": "unstructured", "sparsity": 0.5, "criterion": "magnitude", "scope": "global"}

`scope: layer` compares weights within each matrix; `scope: global` compares all decoder linears together, so
layers with many small weights lose more (planner.prune.masked.patterns.global_mask).
"""

from __future__ import annotations


def magnitude_scores(weight):
    """|W| in float32, in the layout given ((out, in) for the pattern functions)."""
    return weight.detach().float().abs()
