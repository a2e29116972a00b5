"""Predicted beside measured: each figure the plan projected for a variant, the one `plan run` measured, the error.

Only a plan made for the machine the run measured on (`--gpu cpu`, same runtime) predicts figures that a run can
check directly; a plan for a GPU is compared on speedups only, and the rows say so.
"""

from __future__ import annotations

from dataclasses import dataclass

FIGURES = (("ttft_ms", "ttft_p50_ms", "TTFT p50"), ("tpot_ms", "tpot_p50_ms", "TPOT p50"),
           ("p50_ms", "p50_ms", "p50 request"), ("p95_ms", "p95_ms", "p95 request"))


@dataclass
class Comparison:
    variant: str
    figure: str  # label
    predicted: float | None
    measured: float | None
    comparable: bool  # the prediction was made for the device and runtime that measured

    @property
    def error(self) -> float | None:
        """predicted / measured - 1 (positive: the projection was slower than reality)."""
        if not self.predicted or not self.measured:
            return None
        return self.predicted / self.measured - 1.0


def predicted_vs_measured(results) -> list[Comparison]:
    plan = results.plan
    if plan is None:
        return []
    local = plan.gpu == "cpu" and results.provenance.device.kind == "cpu"
    rows: list[Comparison] = []
    predicted_by_name = {"dense": plan.dense_predicted}
    for c in plan.candidates:
        predicted_by_name[c.name] = c.predicted
    for variant in results.variants:
        predicted = predicted_by_name.get(variant.name)
        latency = variant.latency
        if predicted is None or latency is None:
            continue
        same_workload = (latency.prompt_len == plan.workload.prompt_len and latency.gen_len == plan.workload.gen_len
                         and latency.batch_size == plan.workload.batch_size
                         and latency.runtime == (plan.workload.runtime or latency.runtime))
        for key, measured_attr, label in FIGURES:
            rows.append(Comparison(variant=variant.name, figure=label, predicted=predicted.get(key),
                                   measured=getattr(latency, measured_attr), comparable=local and same_workload))
    return rows
