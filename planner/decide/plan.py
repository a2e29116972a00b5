"""plan.json: the ranked, explained decision that `plan run` executes.

    plan = load_plan("plan.json")            # InputError on corrupt JSON, unknown keys, bad values
    top = plan.candidates[0]                  # rank 1: prune spec, recovery, calibration, predictions, why
    save_plan(plan, "plan.json")             # atomic; refuses to overwrite a file that is not a plan

Every predicted figure is *projected to* `plan.gpu` by the roofline model (`Candidate.basis` says so); none is a
measurement. `predicted_speedup` is the goal figure, x times better than dense.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.documents import show
from planner.errors import InputError
from planner.prune.specs import CalibrationSpec, PruneSpec
from planner.recover.specs import RecoverySpec
from planner.workload import Goal, QualityBudget, Workload

PLAN_VERSION = 1
PLAN_KIND = "planner.plan"
RiskTier = Literal["low", "medium", "high", "severe"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Candidate(_Doc):
    """One ranked pruning plan: what to prune, how to recover, what it is predicted to do, and why."""

    rank: int = Field(ge=1)
    name: str  # short id, e.g. "mlp_channels-25-activation-distill"
    label: str  # for people, e.g. "MLP channels -25% (activation) + distill"
    prune: PruneSpec
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    projected_to: str  # target GPU id
    basis: str  # "projected to a100-80gb-sxm (roofline model)"
    goal_metric: str  # name of the goal figure, e.g. p95_ms
    predicted_goal: float | None = None  # the goal figure for this candidate
    predicted_speedup: float | None = None  # of the goal figure, x times better than dense
    predicted: dict[str, float | None] = Field(default_factory=dict)  # every projected figure
    shape: dict[str, int] = Field(default_factory=dict)  # the shape the GPU runs after pruning
    params: int | None = None
    params_removed_frac: float = Field(0.0, ge=0, le=1)  # removed (structured) or zeroed (masks)
    quality_risk: RiskTier
    score: float = 0.0  # what ranked it: predicted gain x the risk tier's weight
    chosen_by: list[str] = Field(default_factory=list)  # ids of the rules that proposed, noted and rated it
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # how the figures were projected


class Rejected(_Doc):
    """An alternative that was considered and set aside, with the reasons."""

    name: str
    label: str
    prune: PruneSpec
    recovery: RecoverySpec | None = None
    predicted_speedup: float | None = None
    quality_risk: RiskTier | None = None
    rules: list[str] = Field(default_factory=list)  # ids of the rules (or "budget") that rejected it
    reasons: list[str] = Field(min_length=1)


class LeverAdvice(_Doc):
    lever: str
    description: str
    rules: list[str] = Field(default_factory=list)


class Verdict(_Doc):
    action: Literal["prune", "dont_prune"]
    text: str  # the one-line verdict
    levers: list[LeverAdvice] = Field(default_factory=list)  # other levers that fit (instead of, or with, pruning)
    rules: list[str] = Field(default_factory=list)  # rules that decided "don't prune", if any


class Plan(_Doc):
    version: int = PLAN_VERSION
    kind: Literal["planner.plan"] = PLAN_KIND
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    planner_version: str = ""
    model: str = ""  # what --model was ("" = the embedded default)
    model_name: str = ""
    model_path: str = ""  # the absolute folder or file --model resolved to, when it named a local path
    model_fingerprint: dict[str, Any] = Field(default_factory=dict)  # config hash and weight files: see models.py
    goal: Goal
    gpu: str  # target GPU id
    gpu_name: str = ""
    workload: Workload = Field(default_factory=Workload)
    budget: QualityBudget = Field(default_factory=QualityBudget)
    goal_metric: str
    dense_goal: float | None = None  # the dense model's goal figure, projected to `gpu`
    dense_predicted: dict[str, float | None] = Field(default_factory=dict)
    # the dense model's goal figure under each runtime the target can use, projected (the "runtime" lever's figure)
    dense_by_runtime: dict[str, float | None] = Field(default_factory=dict)
    # the serving model's rates behind dense_predicted (efficiencies, overheads, where they came from)
    dense_rates: dict[str, Any] | None = None
    profile: dict[str, Any] = Field(default_factory=dict)  # where the profile came from: measured on, cache path
    facts: dict[str, Any] = Field(default_factory=dict)  # every context fact the rules saw
    rules_version: str
    rule_files: list[str] = Field(default_factory=list)  # paths of the rule files, as loaded
    rules_fired: list[str] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    rejected: list[Rejected] = Field(default_factory=list)
    verdict: Verdict
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Plan":
        if self.version != PLAN_VERSION:
            raise ValueError(f"plan version {self.version} is not supported (accepted: {PLAN_VERSION})")
        ranks = [c.rank for c in self.candidates]
        if ranks != list(range(1, len(ranks) + 1)):
            raise ValueError(f"candidate ranks must be 1..{len(ranks)} in order, got {ranks}")
        return self

    @property
    def top(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {show(got)})"
        parts.append(f"{where[:120]}: {err['msg'].removeprefix('Value error, ')[:300]}{shown}")
    return "; ".join(parts[:8]) + (f"; ... {len(parts) - 8} more" if len(parts) > 8 else "")


def parse_plan(data: Any, where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise InputError(f"{where}: a plan is a JSON object, got {type(data).__name__}")
    if data.get("kind", PLAN_KIND) != PLAN_KIND:
        raise InputError(f"{where}: not a plan (kind {data.get('kind')!r}, expected {PLAN_KIND!r})")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{where}: invalid plan: {_format_errors(exc)}") from None
    except InputError as exc:  # a Workload with a bad dtype raises InputError from inside validation
        raise InputError(f"{where}: invalid plan: {exc}") from None
    from planner.gpus import get_gpu

    try:
        get_gpu(plan.gpu)
    except InputError as exc:
        raise InputError(f"{where}: invalid plan: gpu: {exc}") from None
    return plan


def load_plan(path: str | Path) -> Plan:
    """Read and validate plan.json; InputError names the file and the bad key or value."""
    from planner.documents import check_file, parse_json, read_text

    check_file(path, "plan file", " (write one with `plan --goal ... --gpu ...`)")
    shown = show(str(path))
    return parse_plan(parse_json(read_text(path, "plan file"), shown), shown)


def is_plan_file(path: str | Path) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == PLAN_KIND


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write plan.json atomically. An existing file is replaced only if it is a plan itself."""
    from planner.documents import check_output, write_atomic

    path = check_output(path, "plan", is_plan_file, "plan.json")
    return write_atomic(path, with_model_identity(plan).model_dump_json(indent=2) + "\n", what="plan")


def with_model_identity(plan: Plan) -> Plan:
    """The plan with the absolute path and fingerprint of a --model that names a local path, so that `plan run`
    from another folder, or after the model changed, cannot silently run a different model."""
    from planner.models import model_identity

    if not plan.model or plan.model_path:
        return plan
    identity = model_identity(plan.model)
    if identity is None:
        return plan
    return plan.model_copy(update={"model_path": identity[0], "model_fingerprint": identity[1]})


__all__ = ["Plan", "Candidate", "Rejected", "Verdict", "LeverAdvice", "load_plan", "save_plan", "parse_plan",
           "with_model_identity",
           "PLAN_VERSION"]
