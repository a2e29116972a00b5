"""Unstructured sparsity: scattered zeros at a target sparsity inside dense tensors. A dense GEMM still reads and
multiplies every zero, so it is projected at the dense shape and dense kernels; only a compressed file shrinks."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import UnstructuredPruning


class UnstructuredKind(Kind):
    name = "unstructured"
    spec = UnstructuredPruning
    label = "unstructured"
    ratio_field = "sparsity"
    description = "scattered zeros inside dense tensors"

    def pruned_shape(self, shape, spec):
        return shape, spec.sparsity

    def projection_notes(self, spec, gpu, dtype, sparse):
        return ["unstructured zeros stay in dense tensors: projected at the dense shape and dense kernels"]

    def file_bytes(self, spec, *, weight_bytes, dense_weight_bytes, linear_bytes, dtype_bytes, sparse,
                   shape=None):
        # compressed sparse format: a bitmask (1 bit per weight) + the non-zero values
        size = weight_bytes - linear_bytes + linear_bytes * (1 - spec.sparsity) + linear_bytes / (8 * dtype_bytes)
        return size, ["file size in a compressed sparse format (bitmask + non-zeros); a dense safetensors file "
                      "keeps every zero and does not shrink"]

    def ratio_text(self, spec, shape) -> str:
        return f"{spec.sparsity:.0%}"

    def amount(self, spec) -> str:
        return f"{round(spec.sparsity * 100)}"

    def describe(self, spec) -> str:
        allocation = {"uniform": "", "fisher": ", Fisher sparsity per matrix"}.get(
            spec.allocation, f", {spec.allocation} layer sparsity")
        return f"unstructured {100 * spec.sparsity:.0f}% ({spec.criterion}{allocation})"


KIND = register_kind(UnstructuredKind())
