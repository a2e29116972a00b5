"""plan.json: the ranked, explained decision that `plan run` executes.

    plan = load_plan("plan.json")            # InputError on corrupt JSON, unknown keys, bad values
    top = plan.candidates[0]                  # rank 1: prune spec, recovery, calibration, predictions, why
    save_plan(plan, "plan.json")             # atomic; refuses to overwrite a file that is not a plan

Every predicted figure is *projected to* `plan.gpu` by the roofline model (`Candidate.basis` says so); none is a
measurement. `predicted_speedup` is the goal figure, x times better than dense.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.errors import InputError
from planner.prune.specs import CalibrationSpec, PruneSpec
from planner.recover.specs import RecoverySpec
from planner.workload import Goal, QualityBudget, Workload

PLAN_VERSION = 1
PLAN_KIND = "planner.plan"
RiskTier = Literal["low", "medium", "high", "severe"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    goal: Goal
    gpu: str  # target GPU id
    gpu_name: str = ""
    workload: Workload = Field(default_factory=Workload)
    budget: QualityBudget = Field(default_factory=QualityBudget)
    goal_metric: str
    dense_goal: float | None = None  # the dense model's goal figure, projected to `gpu`
    dense_predicted: dict[str, float | None] = Field(default_factory=dict)
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
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(parts[:8]) + (f"; ... {len(parts) - 8} more" if len(parts) > 8 else "")


def parse_plan(data: Any, where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise InputError(f"{where}: a plan is a JSON object, got {type(data).__name__}")
    if data.get("kind", PLAN_KIND) != PLAN_KIND:
        raise InputError(f"{where}: not a plan (kind {data.get('kind')!r}, expected {PLAN_KIND!r})")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{where}: invalid plan: {_format_errors(exc)}") from None
    except InputError as exc:  # a Workload with a bad dtype raises InputError from inside validation
        raise InputError(f"{where}: invalid plan: {exc}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate plan.json; InputError names the file and the bad key or value."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"plan file {str(path)!r} does not exist (write one with `plan --goal ... --gpu ...`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; expected plan JSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_plan(data, str(path))


def is_plan_file(path: str | Path) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == PLAN_KIND


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write plan.json atomically. An existing file is replaced only if it is a plan itself."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {str(path)!r} is a folder; give a file name such as {str(path / 'plan.json')!r}")
    if path.exists() and not is_plan_file(path):
        raise InputError(f"refusing to overwrite {str(path)!r}: it exists and is not a plan file; "
                         "choose another -o/--output or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(plan.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["Plan", "Candidate", "Rejected", "Verdict", "LeverAdvice", "load_plan", "save_plan", "parse_plan",
           "PLAN_VERSION"]
