"""What each section of the report shows, computed from the documents: plain dicts and numbers for the template,
and the charts as inline SVG. The template only lays them out.

Every figure carries its origin: latency and memory are *measured on* the run's device; predictions are
*projected to* the plan's target GPU; quality is measured on the bundled held-out text and prompt slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markupsafe import Markup

from planner.goals import goal_spec
from planner.goals import metric as metric_info
from planner.report import charts
from planner.report.format import describe_levers, describe_recovery, fmt_metric, fmt_pct, fmt_x

# Below this measured gain the one-line verdict does not call a variant a win (the tables show exact figures).
MIN_WIN = 1.05

BETTER_WORD = {"ms": "faster", "tokens/s": "higher", "bytes": "smaller"}


def _label_unit(metric: str | None, goal: str) -> tuple[str, str]:
    """(label, unit) of a measured figure; the goal's name where no run measures it."""
    if metric is None:
        return goal, ""
    info = metric_info(metric)
    return info.label, info.unit


def model_display_name(results) -> str:
    return results.plan.model or "embedded SmolLM2-135M-Instruct"


# -- documents ---------------------------------------------------------------------------------------------------


def load_profile(profile):
    """A Profile document, a path to profile.json, or None."""
    if profile is None or not isinstance(profile, (str, Path, dict)):
        return profile
    if isinstance(profile, dict):
        from planner.profile.schema import Profile

        return Profile.model_validate(profile)
    from planner.profile import read_profile

    return read_profile(Path(profile))


def load_plan(plan):
    """A Plan document, a path to plan.json, or None."""
    if plan is None or not isinstance(plan, (str, Path, dict)):
        return plan
    from planner.decide import plan as plan_module

    if isinstance(plan, dict):
        return plan_module.parse_plan(plan)
    return plan_module.load_plan(Path(plan))


# -- results -----------------------------------------------------------------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    """The mean of the measured values; None (not measured) when there are none. A slice that compared no
    position (every prompt too long for the model) has no KL and is left out, not counted as zero."""
    measured = [v for v in values if v is not None]
    return sum(measured) / len(measured) if measured else None


def variant_rows(results) -> list[dict[str, Any]]:
    dense = results.dense
    speedups = {s.variant: s for s in results.speedups}
    candidates = {c.rank: c for c in results.plan.candidates}
    metric = goal_spec(results.plan.goal).measured
    rows = []
    for v in results.variants:
        q, lat = v.quality, v.latency
        slices = list(q.slices.values()) if q is not None else []
        ems = [s.exact_match for s in slices if s.exact_match is not None]
        cand = candidates.get(v.candidate_rank)
        spec = v.pruning.spec if v.pruning is not None else (cand.prune if cand else None)
        quant = v.quantization.spec if v.quantization is not None else (cand.quantize if cand else None)
        recovery_spec = v.recovery.spec if v.recovery is not None else (cand.recovery if cand else None)
        ppl_delta = None
        if q is not None and dense is not None and dense.quality is not None:
            ppl_delta = q.heldout_ppl / dense.quality.heldout_ppl - 1.0
        sp = speedups.get(v.name)
        goal_value = v.goal_value(metric) if metric else None
        rows.append({
            "name": v.name,
            "dense": v.role == "dense",
            "rank": v.candidate_rank,
            "pruning": describe_levers(spec, quant, cand.shard if cand else None) if v.role == "pruned"
            else "none (baseline)",
            "recovery": describe_recovery(recovery_spec, v.recovery) if v.role == "pruned" else "—",
            "parameters": v.size.parameters,
            "nonzero_parameters": v.size.nonzero_parameters,
            "file_bytes": v.size.file_bytes,
            "compressed_file_bytes": v.size.compressed_file_bytes,
            "sparsity": v.size.achieved_sparsity,
            "pattern": v.size.pattern,
            "shape": v.size.shape,
            "heldout_ppl": q.heldout_ppl if q else None,
            "heldout_tokens": q.heldout_tokens if q else None,
            "user_text_ppl": q.user_text_ppl if q else None,
            "ppl_delta": ppl_delta,
            "mean_kl": _mean([s.kl for s in slices]),
            "min_top1": min((s.top1_agreement for s in slices if s.top1_agreement is not None), default=None),
            "mean_exact_match": _mean(ems),
            "latency": lat,
            "goal_value": goal_value,
            "measured_speedup": 1.0 if v.role == "dense" and goal_value else (sp.measured if sp else None),
            "predicted_speedup": sp.predicted if sp else None,
            "checkpoint": v.checkpoint,
        })
    return rows


def slice_rows(results) -> list[dict[str, Any]]:
    rows = []
    for v in results.variants:
        if v.quality is None:
            continue
        for s in v.quality.slices.values():
            rows.append({"variant": v.name, "dense": v.role == "dense", "slice": s.name, "source": s.source,
                         "prompts": s.prompts, "positions": s.positions, "kl": s.kl, "top1": s.top1_agreement,
                         "exact_match": s.exact_match, "hits": s.exact_match_hits,
                         "teacher_correct": s.teacher_correct})
    return rows


def verdict(results, rows, budget: float, budget_source: str) -> dict[str, Any]:
    """One line: the best measured trade-off within the perplexity budget, or keep dense."""
    goal = results.plan.goal
    measured_on = f"measured on {results.provenance.device.label}"
    projected_to = f"projected to {results.plan.gpu}"
    metric = goal_spec(goal).measured
    label, unit = _label_unit(metric, goal)
    pruned = [r for r in rows if not r["dense"]]
    dense = next((r for r in rows if r["dense"]), None)
    if not pruned:
        return {"status": "neutral", "text": f"Only the dense baseline was measured: no pruned variant was run "
                                               f"for goal {goal}."}
    if metric is None:
        return {"status": "neutral", "text": f"Goal {goal} has no measured metric in the results; compare the "
                                               f"sizes and quality below."}
    eligible = [r for r in pruned if r["measured_speedup"] and r["measured_speedup"] >= MIN_WIN
                and r["ppl_delta"] is not None and r["ppl_delta"] <= budget]
    if eligible:
        best = max(eligible, key=lambda r: r["measured_speedup"])
        predicted = (f", {fmt_x(best['predicted_speedup'])} {projected_to}"
                     if best["predicted_speedup"] is not None else "")
        text = (f"{best['name']} ({best['pruning']}; recovery {best['recovery']}) is the best measured trade-off: "
                f"{label} {fmt_metric(dense['goal_value'], unit)} → {fmt_metric(best['goal_value'], unit)}, "
                f"{fmt_x(best['measured_speedup'])} {BETTER_WORD.get(unit, 'better')} {measured_on}{predicted}; "
                f"held-out perplexity {fmt_pct(best['ppl_delta'], signed=True)} "
                f"(budget {fmt_pct(budget, signed=True, digits=0)}, {budget_source}).")
        return {"status": "win", "text": text, "variant": best["name"]}
    fastest = max(pruned, key=lambda r: r["measured_speedup"] or 0.0)
    reason = (f"no pruned variant is at least {fmt_x(MIN_WIN)} {BETTER_WORD.get(unit, 'better')} on {label} "
              f"{measured_on} within the {fmt_pct(budget, signed=True, digits=0)} perplexity budget")
    text = (f"Keep the dense model: {reason} (best measured: {fastest['name']}, "
            f"{fmt_x(fastest['measured_speedup'])}, perplexity {fmt_pct(fastest['ppl_delta'], signed=True)}).")
    return {"status": "no-win", "text": text}


def _chart_latency_metric(results) -> tuple[str, str]:
    metric = goal_spec(results.plan.goal).measured
    if metric in ("p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "tpot_p50_ms"):
        return metric, metric_info(metric).label
    return "p95_ms", "p95 latency"


def result_charts(results, rows) -> dict[str, Markup | None]:
    measured_on = f"measured on {results.provenance.device.label}"
    projected_to = f"projected to {results.plan.gpu}"
    metric, label = _chart_latency_metric(results)
    points = []
    for r in rows:
        lat = r["latency"]
        value = getattr(lat, metric) if lat is not None else None
        quality = 0.0 if r["dense"] and r["heldout_ppl"] is not None else r["ppl_delta"]
        points.append({"label": r["name"], "latency": value, "quality": None if quality is None else 100 * quality,
                       "dense": r["dense"]})
    scatter = None
    if sum(1 for p in points if p["latency"] is not None and p["quality"] is not None) >= 2:
        scatter = Markup(charts.quality_latency_svg(
            points, latency_label=f"{label}, ms ({measured_on})",
            quality_label="held-out perplexity increase over dense, %"))
    speed_rows = [{"label": r["name"], "predicted": r["predicted_speedup"], "measured": r["measured_speedup"]}
                  for r in rows if not r["dense"]]
    speed = None
    goal_metric = goal_spec(results.plan.goal).measured
    if any(r["predicted"] is not None or r["measured"] is not None for r in speed_rows):
        speed = Markup(charts.speedup_svg(
            speed_rows, predicted_label=f"predicted ({projected_to})", measured_label=f"measured ({measured_on})",
            metric=_label_unit(goal_metric, results.plan.goal)[0]))
    curves = {v.name: [(p.step, p.loss) for p in v.recovery.loss_curve]
              for v in results.variants if v.recovery is not None and v.recovery.loss_curve}
    loss = Markup(charts.loss_curve_svg(curves)) if curves else None
    return {"quality_latency": scatter, "speedup": speed, "loss": loss, "load": _load_chart(results, measured_on)}


def _load_chart(results, measured_on: str) -> Markup | None:
    """`plan run --load`: p50 and p95 against the offered rate per variant, measured; the plan's projection at its
    own request rate where it made one for this host."""
    load = getattr(results, "load", None)
    if load is None or not load.points:
        return None
    series: dict[str, list] = {}
    for p in load.points:
        series.setdefault(p.variant, []).append((p.rate, p.p50_ms, p.p95_ms))
    projected: dict[str, list] = {}
    plan = results.plan
    if plan.gpu == "cpu" and plan.workload.request_rate:
        named = {"dense": plan.dense_predicted, **{c.name: c.predicted for c in plan.candidates}}
        for name, figures in named.items():
            if figures and figures.get("p95_ms") is not None and figures.get("traffic_batch") is not None:
                projected[name] = [(plan.workload.request_rate, figures["p95_ms"])]
    return Markup(charts.latency_vs_rate_svg(series, measured_label=measured_on, projected=projected or None))


def recovery_rows(results) -> list[dict[str, Any]]:
    rows = []
    for v in results.variants:
        r = v.recovery
        if r is None:
            continue
        rows.append({"variant": v.name, "method": describe_recovery(r.spec), "steps": r.steps, "tokens": r.tokens,
                     "seconds": r.seconds, "ppl_before": r.ppl_before, "ppl_after": r.ppl_after,
                     "final_loss": r.loss_curve[-1].loss if r.loss_curve else None, "stopped_by": r.stopped_by,
                     "lr": r.spec.lr, "max_minutes": r.spec.max_minutes, "planned_steps": r.spec.max_steps,
                     "cut_short": r.cut_short})
    return rows


def _budget(plan) -> tuple[float, str]:
    from planner.workload import QualityBudget

    budget = getattr(plan, "budget", None) if plan is not None else None
    value = getattr(budget, "max_ppl_increase", None)
    if value is not None:
        return float(value), "the plan's quality budget"
    return QualityBudget().max_ppl_increase, "default quality budget"


def lm_eval_rows(results) -> list[dict[str, Any]]:
    """--lm-eval-tasks: one row per variant and task, with the primary metric, its standard error and the change
    against dense."""
    dense = results.dense.lm_eval if results.dense is not None else None
    rows = []
    for v in results.variants:
        if v.lm_eval is None:
            continue
        for task, score in sorted(v.lm_eval.tasks.items()):
            base = dense.tasks.get(task) if dense is not None and v.role != "dense" else None
            rows.append({"variant": v.name, "dense": v.role == "dense", "task": task, "metric": score.primary,
                         "value": score.value, "stderr": score.stderr, "samples": score.samples,
                         "delta": score.value - base.value if base is not None else None,
                         "higher_is_better": score.higher_is_better, "version": v.lm_eval.lm_eval_version,
                         "backend": v.lm_eval.backend, "limit": v.lm_eval.limit})
    return rows


def build_context(results, profile=None, plan=None, problems: dict[str, str] | None = None) -> dict[str, Any]:
    from planner.report.decision import plan_view
    from planner.report.profile_view import profile_view

    device = results.provenance.device
    rows = variant_rows(results)
    budget, budget_source = _budget(plan)
    goal_metric = goal_spec(results.plan.goal).measured
    metric_label, metric_unit = _label_unit(goal_metric, results.plan.goal)
    return {
        "results": results,
        "model_name": model_display_name(results),
        "measured_on": f"measured on {device.label}",
        "projected_to": f"projected to {results.plan.gpu}",
        "device": device,
        "workload": results.plan.workload,
        "goal": results.plan.goal,
        "goal_metric_label": metric_label,
        "goal_metric_unit": metric_unit,
        "gpu": results.plan.gpu,
        "verdict": verdict(results, rows, budget, budget_source),
        "budget": budget,
        "rows": rows,
        "failures": list(getattr(results, "failures", [])),  # candidates whose stages stopped with an error
        "slices": slice_rows(results),
        "lm_eval": lm_eval_rows(results),
        "recovery": recovery_rows(results),
        "charts": result_charts(results, rows),
        "profile": profile_view(profile, results, problem=(problems or {}).get("profile.json")),
        "decision": plan_view(plan, results, problem=(problems or {}).get("plan.json")),
        "runtimes": sorted({r["latency"].runtime for r in rows if r["latency"] is not None}),
        "memory_kinds": sorted({r["latency"].peak_memory_kind for r in rows
                                if r["latency"] is not None and r["latency"].peak_memory_kind}),
        "fmt_metric": fmt_metric,
        "predicted_vs_measured": _predicted_vs_measured(results),
        "quality_vs_prediction": _quality_vs_prediction(results, plan),
    }


def _quality_vs_prediction(results, plan) -> list:
    from planner.run.compare import quality_vs_prediction

    return quality_vs_prediction(results, plan if hasattr(plan, "candidates") else None)


def _predicted_vs_measured(results) -> dict[str, Any]:
    from planner.run.compare import predicted_vs_measured

    rows = predicted_vs_measured(results)
    plan = results.plan
    return {"rows": rows, "comparable": bool(rows) and all(r.comparable for r in rows),
            "runtime": plan.workload.runtime if plan is not None else None}
