"""N:M semi-structured sparsity: N zeros in every M consecutive weights. 2:4 runs on sparse tensor cores where the
GPU has them for the serving dtype; any other pattern, or 2:4 elsewhere, runs at the dense rate. With dense_layers
(N:M by layer skipping) the layers of highest block influence stay dense: only the others are projected on sparse
kernels and stored compressed."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import SemiStructuredPruning


class NmKind(Kind):
    name = "nm"
    spec = SemiStructuredPruning
    label = "N:M"
    description = "N zeros in every M weights (2:4 for sparse tensor cores)"

    def pruned_shape(self, shape, spec):
        return shape, spec.n / spec.m * self.sparse_share(spec, shape)

    def sparse_kernel(self, spec, gpu, dtype) -> bool:
        return (spec.n, spec.m) == (2, 4) and dtype in gpu.sparse_2to4.dtypes

    def sparse_share(self, spec, shape) -> float:
        """Share of the decoder layers (all of equal size) that take the pattern."""
        layers = shape.num_layers
        return (layers - min(spec.dense_layers, layers)) / layers if layers else 1.0

    def projection_notes(self, spec, gpu, dtype, sparse):
        skipped = (f"; {spec.dense_layers} decoder layers (highest block influence) stay dense and run at the dense "
                   "rate" if spec.dense_layers else "")
        if sparse:
            return [f"2:4 on {gpu.id}'s sparse tensor cores for {dtype}, assuming a sparse kernel exists for every "
                    f"projection shape{skipped}; measured 2:4 gains are often smaller, and can be zero in decode"]
        return [f"{spec.n}:{spec.m} runs at the dense rate on {gpu.id} for {dtype}: projected at the dense shape"]

    def file_bytes(self, spec, *, weight_bytes, dense_weight_bytes, linear_bytes, dtype_bytes, sparse, shape=None):
        # kept values + an index of log2(m) bits per kept value (2:4: 2 bits), in the layers that take the pattern;
        # the projected weights are stored compressed only where the sparse kernel applies, so start from the dense
        # bytes then
        dense = weight_bytes if not sparse else dense_weight_bytes
        kept = (spec.m - spec.n) / spec.m
        index_bits = max(1, (spec.m - 1).bit_length())
        pattern_bytes = linear_bytes * (self.sparse_share(spec, shape) if shape is not None else 1.0)
        size = dense - pattern_bytes + pattern_bytes * kept * (1 + index_bits / (8 * dtype_bytes))
        return size, [f"file size in a compressed {spec.n}:{spec.m} format (kept values + indices); a dense "
                      "safetensors file does not shrink"]

    def ratio_text(self, spec, shape) -> str:
        return f"{spec.n}:{spec.m}" + (f", {spec.dense_layers} layers dense" if spec.dense_layers else "")

    def amount(self, spec) -> str:
        return f"{spec.n}of{spec.m}" + (f"-d{spec.dense_layers}" if spec.dense_layers else "")

    def describe(self, spec) -> str:
        dense = f", {spec.dense_layers} layers dense" if spec.dense_layers else ""
        return f"{spec.n}:{spec.m} semi-structured ({spec.criterion}{dense})"

    def size_pattern(self, spec) -> str:
        return f"{spec.n}:{spec.m}"


KIND = register_kind(NmKind())
