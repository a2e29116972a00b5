"""Attention head pruning: 'kv_group' removes whole KV groups with their query heads; 'per_group' removes the same
number of query heads from every group (KV heads kept). Counts are whole heads, so the ratio rounds."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import HeadPruning


class HeadsKind(Kind):
    name = "heads"
    spec = HeadPruning
    label = "heads"
    structured = True
    ratio_field = "ratio"
    description = "attention heads (or whole KV groups) removed"

    def calibration(self, spec):
        """More calibration text where the cut is followed by the least-squares re-fit (reconstruct.py)."""
        from planner.prune.structured.reconstruct import calibration_for

        return calibration_for(spec)

    def pruned_shape(self, shape, spec):
        from planner.prune.structured.heads import plan_head_counts

        heads, kv = plan_head_counts(shape, spec)
        return shape.model_copy(update={"num_heads": heads, "num_kv_heads": kv}), 1 - heads / shape.num_heads

    def canonical(self, spec, removed: float):
        return spec.model_copy(update={"ratio": round(removed, 4)})  # 1 of 3 KV groups is 0.3333, not 0.25

    def unfit_is_news(self, shape) -> bool:
        return shape.family != "llama"  # a limit of the engine, worth showing

    def facts(self, spec):
        return dict(super().facts(spec), head_mode=spec.mode)

    def ratio_text(self, spec, shape) -> str:
        from planner.errors import InputError

        try:
            new, _ = self.pruned_shape(shape, spec)
        except InputError:
            return f"-{spec.ratio:.0%}"
        if shape.num_kv_heads == shape.num_heads:  # multi-head attention: every head is its own group
            return f"-{shape.num_heads - new.num_heads} of {shape.num_heads}"
        if spec.mode == "kv_group":
            return f"-{shape.num_kv_heads - new.num_kv_heads} of {shape.num_kv_heads} KV groups"
        return f"-{(shape.num_heads - new.num_heads) // shape.num_kv_heads} q-heads per group"

    def amount(self, spec) -> str:
        return f"{round(spec.ratio * 100)}-{spec.mode.replace('_', '')}"

    def describe(self, spec) -> str:
        rebuilt = " + least-squares o_proj" if spec.reconstruct else ""
        return f"attention heads −{100 * spec.ratio:.0f}% ({spec.criterion}, {spec.mode}){rebuilt}"


KIND = register_kind(HeadsKind())
