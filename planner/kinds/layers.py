"""Layer pruning: remove whole decoder blocks. A proposal's ratio is a share of the layers, rounded to a count."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import LayerPruning


class LayersKind(Kind):
    name = "layers"
    spec = LayerPruning
    label = "layers"
    structured = True
    ratio_field = "num_layers"
    description = "whole decoder blocks removed"

    def with_ratio(self, data, ratio, *, num_layers):
        if ratio is None:
            return data
        return dict(data, num_layers=max(1, round(ratio * num_layers)))

    def pruned_shape(self, shape, spec):
        if spec.num_layers >= shape.num_layers:
            from planner.errors import InputError

            raise InputError(f"layers num_layers={spec.num_layers} would remove all {shape.num_layers} layers")
        return shape.model_copy(update={"num_layers": shape.num_layers - spec.num_layers}), \
            spec.num_layers / shape.num_layers

    def ratio_text(self, spec, shape) -> str:
        return f"-{spec.num_layers} of {shape.num_layers}"

    def amount(self, spec) -> str:
        return f"{spec.num_layers}L"

    def describe(self, spec) -> str:
        return f"{spec.num_layers} layers removed ({spec.criterion})"


KIND = register_kind(LayersKind())
