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
            if key in ("p50_ms", "p95_ms") and predicted.get("isolated_p50_ms") is not None:
                key = "isolated_p50_ms"  # the latency stage times one request at a time: its projection has no queue
            rows.append(Comparison(variant=variant.name, figure=label, predicted=predicted.get(key),
                                   measured=getattr(latency, measured_attr), comparable=local and same_workload))
    return rows


@dataclass
class QualityComparison:
    """One recovered or one-shot candidate: the plan's quality prediction beside what `plan run` measured.

    Increases are held-out perplexity over dense, relative (0.12 = +12%). The probe's one-shot figure is measured on
    the probe's short slice at plan time, the run's on the run's held-out slice."""

    variant: str
    candidate: str
    recovery: str
    probe_one_shot: float | None  # measured by the plan's probe
    run_one_shot: float | None  # measured by the run right after pruning (None without recovery: the final figure is)
    predicted: float | None  # after recovery, predicted by the plan (probe x recovery factor)
    measured: float | None  # after recovery (or one-shot), measured by the run
    factor_source: str = ""
    budget: float | None = None  # the plan's quality budget

    @property
    def error(self) -> float | None:
        """predicted / measured - 1 on the increase (positive: the plan expected more loss than measured)."""
        if self.predicted is None or self.measured is None or self.measured <= 0:
            return None
        return self.predicted / self.measured - 1.0

    @property
    def over_twice_budget(self) -> bool:
        """A candidate the plan kept within budget that measured more than twice the budget."""
        return self.budget is not None and self.measured is not None and self.measured > 2 * self.budget


def quality_vs_prediction(results, plan=None) -> list[QualityComparison]:
    """Every pruned or quantized variant whose candidate carries the probe's quality estimate: from results.json,
    or from the full `plan` (a planner.decide.plan.Plan) for results written before the summary kept it."""
    from planner.recover.specs import RecoverySpec

    summary, dense = results.plan, results.dense
    if summary is None or dense is None or dense.quality is None:
        return []
    base = dense.quality.heldout_ppl
    candidates = {c.rank: c for c in summary.candidates}
    budget = summary.max_ppl_increase
    if plan is not None:
        full = {c.rank: c for c in plan.candidates}
        candidates = {rank: full[rank] if getattr(c, "quality", None) is None and rank in full
                      and full[rank].name == c.name else c for rank, c in candidates.items()}
        budget = budget if budget is not None else plan.budget.max_ppl_increase
    rows = []
    for v in results.variants:
        cand = candidates.get(v.candidate_rank)
        if v.role != "pruned" or cand is None or getattr(cand, "quality", None) is None or v.quality is None:
            continue
        rec = v.recovery
        run_one_shot = rec.ppl_before / base - 1.0 if rec is not None and rec.ppl_before else None
        rows.append(QualityComparison(
            variant=v.name, candidate=cand.name,
            recovery=(rec.spec if rec is not None else cand.recovery or RecoverySpec(method="none")).method,
            probe_one_shot=cand.quality.one_shot_ppl_increase, run_one_shot=run_one_shot,
            predicted=cand.quality.predicted_ppl_increase, measured=v.quality.heldout_ppl / base - 1.0,
            factor_source=cand.quality.factor_source, budget=budget))
    return rows
