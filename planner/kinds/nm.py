"""N:M semi-structured sparsity: N zeros in every M consecutive weights. 2:4 runs on sparse tensor cores where the
GPU has them for the serving dtype; any other pattern, or 2:4 elsewhere, runs at the dense rate."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import SemiStructuredPruning


class NmKind(Kind):
    name = "nm"
    spec = SemiStructuredPruning
    label = "N:M"
    description = "N zeros in every M weights (2:4 for sparse tensor cores)"

    def pruned_shape(self, shape, spec):
        return shape, spec.n / spec.m

    def sparse_kernel(self, spec, gpu, dtype) -> bool:
        return (spec.n, spec.m) == (2, 4) and dtype in gpu.sparse_2to4.dtypes

    def projection_notes(self, spec, gpu, dtype, sparse):
        if sparse:
            return [f"2:4 on {gpu.id}'s sparse tensor cores for {dtype}, assuming a sparse kernel exists for every "
                    "projection shape; measured 2:4 gains are often smaller, and can be zero in decode"]
        return [f"{spec.n}:{spec.m} runs at the dense rate on {gpu.id} for {dtype}: projected at the dense shape"]

    def file_bytes(self, spec, *, weight_bytes, dense_weight_bytes, linear_bytes, dtype_bytes, sparse):
        # kept values + an index of log2(m) bits per kept value (2:4: 2 bits); the projected weights are stored
        # compressed only where the sparse kernel applies, so start from the dense bytes then
        dense = weight_bytes if not sparse else dense_weight_bytes
        kept = (spec.m - spec.n) / spec.m
        index_bits = max(1, (spec.m - 1).bit_length())
        size = dense - linear_bytes + linear_bytes * kept * (1 + index_bits / (8 * dtype_bytes))
        return size, [f"file size in a compressed {spec.n}:{spec.m} format (kept values + indices); a dense "
                      "safetensors file does not shrink"]

    def ratio_text(self, spec, shape) -> str:
        return f"{spec.n}:{spec.m}"

    def amount(self, spec) -> str:
        return f"{spec.n}of{spec.m}"

    def describe(self, spec) -> str:
        return f"{spec.n}:{spec.m} semi-structured ({spec.criterion})"

    def size_pattern(self, spec) -> str:
        return f"{spec.n}:{spec.m}"


KIND = register_kind(NmKind())
