"""The decision: rules fire on facts, candidates are predicted, rated, filtered by the quality budget and ranked.

    plan = decide(goal=Goal.P95_LATENCY, gpu=get_gpu("a100"), workload=Workload(), budget=QualityBudget(),
                  shape=shape, profile_facts=profile_facts(profile), ruleset=load_rules())

1. context rules fire on the deployment's facts: `propose` adds candidates, `dont_prune` and `suggest` name levers;
2. each candidate's goal figure is projected to the GPU (planner.decide.predict);
3. candidate rules fire on the context facts plus the candidate's own: `reject` sets it aside with a reason,
   `risk` rates its quality risk (the highest tier wins), `note` adds to its reasons;
4. a candidate whose risk tier typically costs more perplexity than the budget allows is set aside;
5. the rest are ranked by predicted gain x the tier's weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from planner.decide import predict as predict_mod
from planner.decide.candidates import Draft, candidate_label, candidate_name, drafts_from
from planner.decide.facts import RISK_TIERS, context_facts
from planner.decide.plan import Candidate, LeverAdvice, Plan, Reason, Rejected, Verdict, levers_of
from planner.decide.rules import LEVERS, Rule, RuleSet, fill
from planner.goals import lower_is_better
from planner.kinds import get_kind
from planner.workload import Goal

# Typical held-out perplexity increase of each tier after the planned recovery, as (low edge, high edge). A tier is
# within the budget when its low edge is below the budget. Heuristic bands: the rules that assign tiers cite the
# measurements behind them (rules/README.md).
TIER_PPL = {"low": (0.0, 0.05), "medium": (0.05, 0.15), "high": (0.15, 0.40), "severe": (0.40, float("inf"))}
# ranking discount per tier: a riskier plan must promise more to outrank a safer one
TIER_WEIGHT = {"low": 1.0, "medium": 0.85, "high": 0.6, "severe": 0.3}
DEFAULT_TIER = "medium"
DEFAULT_LEVERS = ("quantization", "distillation")


@dataclass
class ContextOutcome:
    proposals: list[tuple[Rule, str]] = field(default_factory=list)
    dont_prune: list[tuple[Rule, str]] = field(default_factory=list)
    suggestions: list[tuple[Rule, str]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)


@dataclass
class CandidateOutcome:
    rejections: list[tuple[Rule, str]] = field(default_factory=list)
    risks: list[tuple[Rule, str]] = field(default_factory=list)
    notes: list[tuple[Rule, str]] = field(default_factory=list)

    @property
    def tier(self) -> str:
        if not self.risks:
            return DEFAULT_TIER
        return max((r.then.risk for r, _ in self.risks), key=RISK_TIERS.index)


def fire_context(ruleset: RuleSet, facts: dict[str, Any], values: dict[str, Any]) -> ContextOutcome:
    out = ContextOutcome()
    for rule in ruleset.rules:
        if rule.then.scope != "context" or not rule.when.evaluate(facts):
            continue
        out.fired.append(rule.id)
        entry = (rule, fill(rule.statement, values))
        by_action = {"propose": out.proposals, "dont_prune": out.dont_prune, "suggest": out.suggestions}
        by_action[rule.then.action].append(entry)
    return out


def fire_candidate(ruleset: RuleSet, facts: dict[str, Any], values: dict[str, Any]) -> CandidateOutcome:
    """Candidate rules on context + candidate facts. The tier is settled first, so texts may name {tier}."""
    firing = [r for r in ruleset.rules if r.then.scope == "candidate" and r.when.evaluate(facts)]
    out = CandidateOutcome()
    out.risks = [(r, "") for r in firing if r.then.action == "risk"]
    values = dict(values, tier=out.tier)
    out.risks = [(r, fill(r.statement, values)) for r, _ in out.risks]
    out.rejections = [(r, fill(r.then.reject, values)) for r in firing if r.then.action == "reject"]
    out.notes = [(r, fill(r.then.note, values)) for r in firing if r.then.action == "note"]
    return out


def within_budget(tier: str, max_ppl_increase: float) -> bool:
    return tier == "low" or TIER_PPL[tier][0] < max_ppl_increase


def _values(facts: dict[str, Any], gpu, goal: Goal, metric: str, budget) -> dict[str, Any]:
    share = facts.get("non_model_share")
    return {
        "gpu": gpu.id, "gpu_name": gpu.name, "goal": goal.value, "dtype": facts.get("dtype"), "metric": metric,
        "budget_pct": f"{budget.max_ppl_increase:.0%}", "batch_size": facts.get("batch_size"),
        "non_model_share_pct": None if share is None else f"{share:.0%}",
        "num_kv_heads": facts.get("num_kv_heads"),
        "memory_gb": _gb(facts.get("weights_gb"), facts.get("kv_cache_gb")),
        "gpu_memory_gb": None if facts.get("gpu_memory_gb") is None else f"{facts['gpu_memory_gb']:g}",
        "group_size": (facts["num_heads"] // facts["num_kv_heads"]) if facts.get("num_kv_heads") else None,
        "runtime": facts.get("runtime"),
        "traffic_batch": None if facts.get("traffic_batch") is None else f"{facts['traffic_batch']:.3g}",
        "decode_overhead_pct": _pct(facts.get("decode_overhead_share")),
        "prefill_overhead_pct": _pct(facts.get("prefill_overhead_share")),
    }


def _traffic_facts(dense: dict, workload) -> dict[str, Any]:
    """The batch the traffic produces and the dense model's capacity (planner.perf.traffic); without traffic (one
    request at a time) the workload's batch."""
    if dense.get("traffic_batch") is None:
        return {"traffic_batch": float(workload.batch_size)}
    target, p95 = dense.get("capacity_target_ms"), dense.get("p95_ms")
    given = getattr(workload, "p95_target_ms", None)
    return {"traffic_batch": dense["traffic_batch"], "capacity_rps": dense.get("capacity_rps"),
            "meets_p95_target": (p95 <= target) if given and p95 is not None and target else None}


def _pct(value) -> str | None:
    return None if value is None else f"{value:.0%}"


def _gb(*parts) -> str | None:
    return None if any(p is None for p in parts) else f"{sum(parts):,.1f}"


def _step(draft: Draft) -> tuple:
    """(prune spec or None, quant spec or None): what the probe applies for a draft."""
    prune = draft.prune if draft.prune is not None and draft.prune.kind != "none" else None
    return prune, draft.quantize


def _probe(drafts: list[Draft], quality_probe: Callable | None):
    """Every distinct (prune, quantize) step of the drafts, measured once by `quality_probe` (None without one)."""
    if quality_probe is None:
        return None
    steps: list[tuple] = []
    for d in drafts:
        step = _step(d)
        if step != (None, None) and step not in steps:
            steps.append(step)
    return quality_probe(steps) if steps else None


def _quality(draft: Draft, report, params: int, recovery_factor: Callable):
    """The measured one-shot loss of the draft's step, and the loss predicted after its recovery."""
    from planner.decide.plan import QualityEstimate

    if report is None:
        return None
    prune, quantize = _step(draft)
    step = next((sp for sp in report.steps if sp.matches(prune, quantize)), None)
    if step is None or step.ppl_increase is None:
        return None
    r = draft.recovery
    factor = recovery_factor(r.method, r.max_steps, r.max_tokens, params, prune.kind if prune else None)
    one_shot = step.ppl_increase
    return QualityEstimate(one_shot_ppl_increase=one_shot, predicted_ppl_increase=max(0.0, one_shot) * factor.factor,
                           recovery_factor=factor.factor, factor_source=factor.source,
                           top1_agreement=step.top1_agreement, probe_tokens=report.tokens)


def _probe_info(report, note: str) -> dict[str, Any]:
    if report is None:
        return {"measured": False, "note": note or "no quality probe: the risk tiers are the rules' priors"}
    return {"measured": True, "model": report.model, "tokens": report.tokens, "seq_len": report.seq_len,
            "ppl_dense": report.ppl_dense, "steps": len(report.steps), "cached": sum(s.cached for s in report.steps),
            "seconds": round(report.seconds, 2),
            "errors": {s.label: s.error for s in report.steps if s.error}}


def tier_of(ppl_increase: float) -> str:
    """The risk tier whose band holds a (measured or predicted) perplexity increase."""
    return next(t for t, (low, high) in TIER_PPL.items() if ppl_increase < high)


def _candidate_facts(facts: dict[str, Any], draft: Draft, pred, quality=None) -> dict[str, Any]:
    from planner.prune.specs import NoPruning

    spec = draft.prune if draft.prune is not None else NoPruning()
    quant, shard = draft.quantize, draft.shard
    out = dict(facts)
    out.update(get_kind(spec).facts(spec))
    out.update(
        prunes=spec.kind != "none",
        quantize=quant.scheme if quant is not None else "none",
        quant_bits=quant.bits if quant is not None else None,
        weight_only=quant.weight_only if quant is not None else None,
        tensor_parallel=shard.tensor_parallel if shard is not None else 1,
        ratio=pred.ratio,
        params_removed_frac=pred.params_removed_frac,
        recovery=draft.recovery.method,
        predicted_speedup=pred.speedup,
        predicted_gain=pred.gain,
    )
    peak, capacity = pred.figures.get("peak_memory_bytes"), facts.get("gpu_memory_gb")
    memory_gb = None if peak is None else peak / 1e9
    out["predicted_memory_gb"] = memory_gb
    usable = facts.get("gpu_usable_memory_gb") or capacity
    out["predicted_fits"] = None if memory_gb is None or not usable else memory_gb <= usable
    out["probe_ppl_increase"] = quality.one_shot_ppl_increase if quality is not None else None
    out["predicted_ppl_increase"] = quality.predicted_ppl_increase if quality is not None else None
    return out


def decide(*, goal: Goal, gpu, workload, budget, shape, ruleset: RuleSet, profile_facts: dict[str, Any] | None = None,
           params: int | None = None, model: str = "", model_name: str = "", profile_info: dict | None = None,
           estimator: Callable | None = None, planner_version: str = "", quality_probe: Callable | None = None,
           recovery_factor: Callable | None = None, probe_note: str = "", recovery_budget=None) -> Plan:
    """Decide and rank. `estimator(shape, workload, gpu, sparse_2to4=...)` projects one shape to the GPU (default:
    planner.profile.roofline.estimate on the catalog's peaks; the CLI passes the profile's measured peaks for the
    local host). `quality_probe([(prune spec or None, quant spec or None), ...])` measures each step one-shot on
    the model (a planner.probe.ProbeReport); with it, the quality risk and the budget use the measured loss x
    `recovery_factor(method, steps, tokens, params, kind)` instead of the rules' priors. `recovery_budget` (a
    planner.recover.budget.RecoveryBudget) sets every recovery's steps and tokens (else the RecoverySpec defaults)."""
    from planner.prune.specs import NoPruning

    params = params if params is not None else predict_mod.total_params(shape)
    facts = context_facts(goal=goal, gpu=gpu, workload=workload, budget=budget, shape=shape, params=params,
                          profile_facts=profile_facts)
    dense = predict_mod.figures(shape, NoPruning(), workload, gpu, estimator=estimator)[0]
    facts.update(_traffic_facts(dense, workload))
    metric = predict_mod.goal_metric(goal, dense)
    by_runtime = _dense_by_runtime(shape, workload, gpu, metric, dense, estimator)
    values = _values(facts, gpu, goal, metric, budget)
    ctx = fire_context(ruleset, facts, values)
    fired = list(ctx.fired)

    kept: list[Candidate] = []
    drafts, unfit = drafts_from(ctx.proposals, shape, defaults=_spec_defaults(gpu, workload),
                                recovery_defaults=recovery_budget.spec_fields() if recovery_budget else None)
    if recovery_factor is None:
        from planner.probe.recovery import factor_for as recovery_factor
    rejected = [Rejected(name=candidate_name(d.prune, d.recovery, shape),
                         label=candidate_label(d.prune, d.recovery, shape), prune=d.prune, recovery=d.recovery,
                         quantize=d.quantize, shard=d.shard,
                         rules=d.proposed_by, reasons=[why],
                         why=[Reason(kind="unfit", rules=list(d.proposed_by), text=why)]) for d, why in unfit]

    def predict(draft):
        levers = {"quantize": draft.quantize, "shard": draft.shard}
        return predict_mod.predict(shape, draft.prune, workload, gpu, goal, dense, estimator=estimator, **levers)

    def assess(draft, pred, report):
        levers = {"quantize": draft.quantize, "shard": draft.shard}
        label = candidate_label(draft.prune, draft.recovery, shape, **levers)
        quality = _quality(draft, report, params, recovery_factor)
        cfacts = _candidate_facts(facts, draft, pred, quality)
        memory_gb = cfacts["predicted_memory_gb"]
        cvalues = dict(values, plan=label, kind=cfacts["kind"], ratio_pct=f"{pred.ratio:.0%}",
                       scheme=cfacts["quantize"], tensor_parallel=cfacts["tensor_parallel"],
                       predicted_memory_gb="?" if memory_gb is None else f"{memory_gb:,.1f}",
                       speedup="?" if pred.speedup is None else f"{pred.speedup:.2f}x",
                       gain_pct="?" if pred.gain is None else f"{pred.gain:.0%}")
        outcome = fire_candidate(ruleset, cfacts, cvalues)
        judged = _judge(draft, pred, outcome, ctx, budget, gpu, metric,
                        name=candidate_name(draft.prune, draft.recovery, shape, **levers), label=label,
                        workload_runtime=workload.runtime, quality=quality)
        return judged, outcome

    # the quality probe measures only what the speed and fit rules keep: a step set aside for speed needs no
    # measurement of its quality (and the probe costs seconds per step)
    first = [(d, pred, *assess(d, pred, None)) for d in drafts for pred in [predict(d)]]
    report = None
    if quality_probe is not None:
        alive = [d for d, pred, judged, outcome in first if not outcome.rejections and not ctx.dont_prune
                 and pred.speedup is not None]
        report = _probe(alive, quality_probe)
    for draft, pred, judged, outcome in first:
        if report is not None and any(sp.matches(*_step(draft)) for sp in report.steps):
            judged, outcome = assess(draft, pred, report)
        fired += [r.id for r, _ in outcome.rejections + outcome.risks + outcome.notes]
        (rejected if isinstance(judged, Rejected) else kept).append(judged)

    kept.sort(key=lambda c: (-c.score, c.params_removed_frac, c.name))
    candidates = [c.model_copy(update={"rank": i + 1}) for i, c in enumerate(kept)]
    return Plan(
        planner_version=planner_version, model=model, model_name=model_name, goal=goal, gpu=gpu.id,
        gpu_name=gpu.name, workload=workload, budget=budget, goal_metric=metric, dense_goal=dense.get(metric),
        dense_predicted=dense, profile=profile_info or {}, facts=facts, rules_version=ruleset.version,
        rule_files=[str(p) for p in ruleset.files], rules_fired=list(dict.fromkeys(fired)),
        candidates=candidates, rejected=rejected, probe=_probe_info(report, probe_note),
        recovery_budget=recovery_budget,
        verdict=_verdict(ctx, candidates, goal, gpu, _runtime_advice(by_runtime, workload, metric)),
        notes=_plan_notes(goal, gpu, workload), dense_by_runtime=by_runtime,
        dense_rates=_dense_rates(shape, workload, gpu, estimator),
    )


def _judge(draft: Draft, pred, outcome: CandidateOutcome, ctx: ContextOutcome, budget, gpu, metric: str, *,
           name: str, label: str, workload_runtime: str | None = None, quality=None) -> Candidate | Rejected:
    """Set the candidate aside (don't-prune verdict, a reject rule, no projection, over the budget) or keep it.
    With a measured `quality` the tier and the budget follow the predicted loss; the rules' tier is the prior."""
    prior = outcome.tier
    tier = tier_of(quality.predicted_ppl_increase) if quality is not None else prior
    why = [Reason(kind="dont_prune", rules=[r.id], text="don't prune", detail=text) for r, text in ctx.dont_prune]
    why += [Reason(kind="reject", rules=[r.id], text=text) for r, text in outcome.rejections]
    if pred.speedup is None:
        why.append(Reason(kind="no_prediction", rules=["no-prediction"], text=f"no {metric} projection for {gpu.id}"))
    rated = [(r, text) for r, text in outcome.risks if r.then.risk == prior]  # the rules behind the prior tier
    if not why and quality is not None and quality.predicted_ppl_increase > budget.max_ppl_increase:
        why.append(Reason(kind="budget", rules=["budget", "probe"],
                          text=f"predicted +{quality.predicted_ppl_increase:.1%} perplexity after recovery exceeds the "
                               f"+{budget.max_ppl_increase:.0%} budget", detail=quality.text))
    if not why and quality is None and not within_budget(tier, budget.max_ppl_increase):
        why.append(Reason(kind="budget", rules=["budget"] + [r.id for r, _ in rated],
                          text=f"quality risk {tier} (typically > +{TIER_PPL[tier][0]:.0%} perplexity) exceeds the "
                               f"+{budget.max_ppl_increase:.0%} budget",
                          detail="; ".join(text for _, text in rated)))
    if why:
        return Rejected(name=name, label=label, prune=draft.prune, recovery=draft.recovery,
                        quantize=draft.quantize, shard=draft.shard, predicted_speedup=pred.speedup, quality_risk=tier,
                        rules=[rule for w in why for rule in w.rules], reasons=[str(w) for w in why], why=why,
                        quality=quality)
    risk_text = "; ".join(text for _, text in rated) or "no risk rule matched: rated medium by default"
    chosen_by = draft.proposed_by + [r.id for r, _ in outcome.notes] + [r.id for r, _ in rated]
    why = [Reason(kind="proposed", rules=[rule], text=text) for rule, text in zip(draft.proposed_by, draft.statements)]
    why += [Reason(kind="recovery" if r.when.facts_used() == {"recovery"} else "note", rules=[r.id], text=text)
            for r, text in outcome.notes]
    if quality is not None:
        why.append(Reason(kind="risk", rules=["probe"], text=f"quality risk {tier}",
                          detail=f"{quality.text}; the rules' prior was {prior}"))
    else:
        why.append(Reason(kind="risk", rules=[r.id for r, _ in rated], text=f"quality risk {tier}", detail=risk_text))
    score = (pred.gain or 0.0) * TIER_WEIGHT[tier]
    model = f"serving-stack model, {workload_runtime}" if workload_runtime else "roofline model"
    return Candidate(
        rank=1, name=name, label=label, prune=draft.prune, recovery=draft.recovery, quantize=draft.quantize,
        shard=draft.shard, projected_to=gpu.id,
        **({"calibration": get_kind(draft.prune).calibration(draft.prune)} if draft.prune is not None else {}),
        basis=f"projected to {gpu.id} ({model})", goal_metric=pred.metric, predicted_goal=pred.value,
        predicted_speedup=pred.speedup, predicted=pred.figures, shape=pred.shape, params=pred.params,
        params_removed_frac=min(1.0, max(0.0, pred.params_removed_frac)), quality_risk=tier, score=round(score, 6),
        chosen_by=list(dict.fromkeys(chosen_by)), reasons=[str(w) for w in why], why=why, notes=pred.notes,
        quality=quality)


def _spec_defaults(gpu, workload) -> dict[str, dict]:
    """Spec fields a rule may leave to the target, by kind (e.g. MLP widths in the multiple the GPU's GEMM tiles
    like)."""
    from planner.kinds import kinds

    return {name: defaults for name, kind in kinds().items() if (defaults := kind.spec_defaults(gpu, workload))}


def _levers(entries: list[tuple[Rule, str]], field_name: str) -> list[LeverAdvice]:
    by_lever: dict[str, LeverAdvice] = {}
    for rule, _ in entries:
        for lever in getattr(rule.then, field_name):
            advice = by_lever.setdefault(lever, LeverAdvice(lever=lever, description=LEVERS[lever]))
            if rule.id not in advice.rules:
                advice.rules.append(rule.id)
    return list(by_lever.values())


def _dense_by_runtime(shape, workload, gpu, metric: str, dense: dict, estimator) -> dict[str, float | None]:
    """The dense model's goal figure under every runtime the target can use (GPU targets: from the runtime
    profiles; the local host: only the runtime it was measured under)."""
    from planner.perf.runtimes import runtime_catalog
    from planner.prune.specs import NoPruning

    out = {workload.runtime: dense.get(metric)} if workload.runtime else {}
    if gpu.measured_local or not workload.runtime:
        return out
    for name, spec in runtime_catalog().items():
        if name == workload.runtime or "gpu" not in spec.targets:
            continue
        other = workload.model_copy(update={"runtime": name})
        out[name] = predict_mod.figures(shape, NoPruning(), other, gpu)[0].get(metric)
    return out


def _dense_rates(shape, workload, gpu, estimator) -> dict | None:
    estimate = (estimator or predict_mod._default_estimator())(shape, workload, gpu, sparse_2to4=False)
    return estimate.serving.rates.model_dump() if estimate.serving is not None else None


def _runtime_advice(by_runtime: dict[str, float | None], workload, metric: str) -> str | None:
    """'vllm: dense predicted 8.1x better' when another runtime beats the workload's by more than 3%."""
    current = by_runtime.get(workload.runtime or "")
    if not current:
        return None
    lower = lower_is_better(metric)
    gains = {name: (current / v if lower else v / current) for name, v in by_runtime.items()
             if v and name != workload.runtime}
    if not gains:
        return None
    best = max(gains, key=gains.get)
    if gains[best] < 1.03:
        return None
    return f"serving the dense model with {best} instead of {workload.runtime} is predicted {gains[best]:.2f}x better"


def _verdict(ctx: ContextOutcome, candidates: list[Candidate], goal: Goal, gpu,
             runtime_advice: str | None = None) -> Verdict:
    verdict = _verdict_core(ctx, candidates, goal, gpu)
    runtime_first = any("runtime" in r.then.suggest for r, _ in ctx.suggestions)
    if runtime_advice and runtime_first:
        levers = sorted(verdict.levers, key=lambda a: a.lever != "runtime")
        verdict = verdict.model_copy(update={"levers": levers,
                                             "text": f"first change the runtime: {runtime_advice}; then "
                                                     + verdict.text})
    return verdict


def _verdict_core(ctx: ContextOutcome, candidates: list[Candidate], goal: Goal, gpu) -> Verdict:
    if ctx.dont_prune:
        levers = _levers(ctx.dont_prune, "dont_prune") + [
            a for a in _levers(ctx.suggestions, "suggest")
            if a.lever not in {x for r, _ in ctx.dont_prune for x in r.then.dont_prune}]
        why = ctx.dont_prune[0][1]
        return Verdict(action="dont_prune", rules=[r.id for r, _ in ctx.dont_prune], levers=levers,
                       text=f"don't prune; use {', '.join(a.lever for a in levers)}: {why}")
    suggested = _levers(ctx.suggestions, "suggest")
    if not candidates:
        levers = suggested or [LeverAdvice(lever=x, description=LEVERS[x]) for x in DEFAULT_LEVERS]
        return Verdict(action="dont_prune", levers=levers,
                       text=f"don't prune; use {', '.join(a.lever for a in levers)}: no candidate is predicted to "
                            f"improve {goal.value} on {gpu.id} within the quality budget")
    top = candidates[0]
    levers = levers_of(top) or ["prune"]
    action = "+".join(levers)
    lead = {"prune": "prune", "quantize": "don't prune; quantize", "shard": "don't prune; shard",
            "prune+quantize": "prune and quantize", "prune+shard": "prune and shard",
            "quantize+shard": "don't prune; quantize and shard"}.get(action, action.replace("+", " and "))
    text = (f"{lead}: {top.label} — predicted {goal.value} {top.predicted_speedup:.2f}x better, "
            f"projected to {gpu.id}; quality risk {top.quality_risk}; measure it with `plan run`")
    if suggested:
        text += f"; also consider {', '.join(a.lever for a in suggested)}"
    return Verdict(action=action, levers=suggested, text=text)


def _plan_notes(goal: Goal, gpu, workload=None) -> list[str]:
    runtime = getattr(workload, "runtime", None)
    model = f"the serving-stack model for {runtime}" if runtime else "the roofline model"
    notes = [f"every predicted figure is projected to {gpu.id} by {model}, not measured; "
             "`plan run` measures the candidates on this machine"]
    if gpu.measured_local:
        notes.append("the target is the local host: its peaks were measured at run time by the profiler")
    from planner.perf.traffic import has_traffic

    if workload is not None and has_traffic(workload):
        notes.append("percentiles under traffic: a seeded discrete-event simulation of the runtime's scheduler over "
                     "the serving model's per-step times (planner.perf.traffic; each candidate's notes say how)")
    elif goal in (Goal.P95_LATENCY, Goal.P99_LATENCY):
        notes.append(f"no queueing model: {goal.value} is projected as model time per request plus the workload's "
                     "time outside the model (the same as p50); `plan run` measures the real percentile")
    return notes
