"""The report's decision section: the candidates with why they were chosen, the rules that fired, the
alternatives ruled out. From plan.json when the run folder has it; from the plan summary inside results.json
otherwise (candidates and predictions only: the reasons live in plan.json, and the page says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.report.format import describe_levers, describe_recovery


def _rule_texts(plan) -> dict[str, tuple[str, str]]:
    """rule id -> (statement, sources) from the rule files the plan was decided with (built-in rules otherwise).
    A rule file that has moved or no longer loads leaves its ids without text; the report still renders."""
    from planner.decide.rules import load_rule_file, load_rules
    from planner.errors import InputError

    rules = []
    try:
        files = [Path(f) for f in plan.rule_files if Path(f).is_file()]
        if files:
            for path in files:
                rules += load_rule_file(path)
        else:
            rules = load_rules().rules
    except (InputError, OSError, FileNotFoundError):
        pass
    from planner.decide.rules import fill

    values = {**plan.facts, "gpu": plan.gpu, "goal": plan.goal.value}
    texts = {}
    for r in rules:
        try:
            statement = fill(r.statement, values)  # "decode is memory-bound on {gpu}" -> "... on a100-80gb-sxm"
        except (ValueError, IndexError, KeyError):
            statement = r.statement
        texts[r.id] = (statement, "; ".join(r.sources))
    return texts


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def plan_view(plan, results, problem: str | None = None) -> dict[str, Any]:
    if plan is None:
        candidates = [{
            "rank": c.rank, "name": c.name, "pruning": describe_levers(c.prune, c.quantize, c.shard),
            "recovery": describe_recovery(c.recovery), "predicted_speedup": c.predicted_speedup,
            "reasons": [], "rules": [],
        } for c in sorted(results.plan.candidates, key=lambda c: c.rank)]
        return {"available": False, "candidates": candidates, "summary": None, "rules_fired": [], "rejected": [],
                "reason": (problem or "plan.json was not found beside results.json (pass it with --plan)")
                          + "; the candidates above come from the plan summary recorded in results.json, without "
                            "the reasons."}
    texts = _rule_texts(plan)
    candidates = [{
        "rank": c.rank, "name": c.name, "pruning": describe_levers(c.prune, c.quantize, c.shard),
        "recovery": describe_recovery(c.recovery), "predicted_speedup": c.predicted_speedup,
        "reasons": list(c.reasons) + ([] if any(w.kind == "risk" for w in c.why)
                                      else [f"quality risk: {c.quality_risk}"]),
        "rules": list(c.chosen_by),
    } for c in plan.candidates]
    fired = [{"id": rule_id, "text": texts.get(rule_id, ("(statement not available)", ""))[0],
              "source": texts.get(rule_id, ("", ""))[1]} for rule_id in plan.rules_fired]
    rejected = [{"name": r.label or r.name, "reasons": list(r.reasons), "rules": list(r.rules)}
                for r in plan.rejected]
    levers = [f"{lever.lever}: {lever.description}" for lever in plan.verdict.levers]
    summary = f"The plan's verdict (projected to {plan.gpu}): {_sentence(plan.verdict.text)}"
    if plan.gpu != results.plan.gpu or plan.goal.value != results.plan.goal:
        summary += (f" Note: this plan is for {plan.goal.value} on {plan.gpu}, but the results are of a plan for "
                    f"{results.plan.goal} on {results.plan.gpu}.")
    if levers:
        summary += " Other levers: " + _sentence("; ".join(levers))
    return {"available": True, "candidates": candidates, "summary": summary, "rules_fired": fired,
            "rejected": rejected, "reason": None}
