"""No pruning: the dense model (the baseline every candidate is compared with)."""

from __future__ import annotations

from planner.kinds import Kind, register_kind
from planner.prune.specs import NoPruning


class NoneKind(Kind):
    name = "none"
    spec = NoPruning
    label = "no pruning"
    description = "the dense model"

    def describe(self, spec) -> str:
        return "none"

    def size_pattern(self, spec) -> str:
        return "dense"


KIND = register_kind(NoneKind())
