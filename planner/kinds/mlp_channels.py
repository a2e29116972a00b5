"""MLP channel pruning: remove intermediate channels (gate/up rows and down columns together), in multiples of
`round_to`: a smaller dense model any kernel runs faster."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import MlpChannelPruning


class MlpChannelsKind(Kind):
    name = "mlp_channels"
    spec = MlpChannelPruning
    label = "MLP channels"
    structured = True
    ratio_field = "ratio"
    description = "intermediate MLP channels removed: narrower dense MLPs"

    def spec_defaults(self, gpu, workload):
        """MLP widths in the multiple the target's GEMM tiles like (the local host: its own rule)."""
        from planner.prune.structured.rounding import default_round_to

        dtype = workload.dtype if workload.dtype in ("fp32", "bf16", "fp16", "fp8", "int8") else "fp32"
        return {"round_to": default_round_to(None if gpu.measured_local else gpu, dtype)}

    def calibration(self, spec):
        """More calibration text where the cut is followed by the least-squares re-fit (reconstruct.py)."""
        from planner.prune.structured.reconstruct import calibration_for

        return calibration_for(spec)

    def pruned_shape(self, shape, spec):
        from planner.prune.structured.rounding import kept_count

        inter = shape.intermediate_size
        kept = kept_count(inter, spec.ratio, spec.round_to, "mlp_channels")
        return shape.model_copy(update={"intermediate_size": kept}), 1 - kept / inter

    def ratio_text(self, spec, shape) -> str:
        if shape is None:
            return f"−{100 * spec.ratio:.0f}%"
        new, frac = self.pruned_shape(shape, spec)
        return f"-{frac:.0%} ({shape.intermediate_size}->{new.intermediate_size})"

    def describe(self, spec) -> str:
        return super().describe(spec) + (" + least-squares down_proj" if spec.reconstruct else "")

    def amount(self, spec) -> str:
        return f"{round(spec.ratio * 100)}"


KIND = register_kind(MlpChannelsKind())
