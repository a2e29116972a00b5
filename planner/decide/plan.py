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
from planner.decide.execution import RunExecution
from planner.prune.specs import CalibrationSpec, PruneSpec
from planner.quant.specs import QuantSpec
from planner.recover.budget import RecoveryBudget
from planner.recover.specs import RecoverySpec
from planner.workload import Goal, QualityBudget, Workload

PLAN_VERSION = 1
PLAN_KIND = "planner.plan"
RiskTier = Literal["low", "medium", "high", "severe"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ShardSpec(_Doc):
    """Tensor parallelism over N GPUs of the target type: each decoder layer's weights and work split N ways, two
    all-reduces per layer (planner.perf.serving)."""

    version: int = 1
    tensor_parallel: int = Field(ge=2, le=16)

    @property
    def label(self) -> str:
        return f"tensor parallel x{self.tensor_parallel}"


LEVER_ORDER = ("prune", "quantize", "shard")


def levers_of(item) -> list[str]:
    """The levers a candidate applies, in a fixed order: prune, quantize, shard."""
    return [name for name in LEVER_ORDER if getattr(item, name, None) is not None
            and not (name == "prune" and getattr(item.prune, "kind", None) == "none")]


class QualityEstimate(_Doc):
    """Quality measured on the model itself: the step applied one-shot to a copy and held-out perplexity measured
    (planner.probe), and the increase predicted after the planned recovery (one-shot x a recovery factor)."""

    one_shot_ppl_increase: float  # measured, relative (0.12 = +12%)
    predicted_ppl_increase: float  # after the planned recovery, predicted
    recovery_factor: float
    factor_source: str  # "prior: ..." or "measured (...)": where the factor came from
    top1_agreement: float | None = None  # with the dense model, one-shot, on the probe's tokens
    probe_tokens: int = 0

    @property
    def text(self) -> str:
        return (f"one-shot +{self.one_shot_ppl_increase:.1%} held-out perplexity measured on this model, "
                f"+{self.predicted_ppl_increase:.1%} predicted after recovery (factor {self.recovery_factor:.2f})")


ReasonKind = Literal["proposed", "note", "recovery", "risk", "reject", "budget", "dont_prune", "no_prediction",
                     "unfit"]


class Reason(_Doc):
    """One reason, as the decision made it: which rules, what kind of reason, the text (and its detail, e.g. the risk
    rules behind a budget rejection). `str(reason)` is the line `reasons` shows."""

    kind: ReasonKind
    rules: list[str] = Field(default_factory=list)
    text: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.text}: {self.detail}" if self.detail else self.text


def _legacy_why(data: Any) -> Any:
    """Plans written before structured reasons: each reason line becomes a note (the risk line a risk)."""
    if isinstance(data, dict) and "why" not in data and isinstance(data.get("reasons"), list):
        data = dict(data, why=[{"kind": "risk" if str(r).startswith("quality risk") else "note", "text": str(r)}
                               for r in data["reasons"]])
    return data


class _Levers(_Doc):
    """What a candidate and a rejected alternative share: their levers (prune / quantize / shard fields)."""

    _legacy = model_validator(mode="before")(_legacy_why)

    @property
    def prune_kind(self) -> str:
        """The pruning kind, "none" for a candidate that does not prune."""
        return self.prune.kind if self.prune is not None else "none"

    @property
    def levers(self) -> list[str]:
        return levers_of(self)


class Candidate(_Levers):
    """One ranked pruning plan: what to prune, how to recover, what it is predicted to do, and why."""

    rank: int = Field(ge=1)
    name: str  # short id, e.g. "mlp_channels-25-activation-distill"
    label: str  # for people, e.g. "MLP channels -25% (activation) + distill"
    prune: PruneSpec | None  # the pruning step, or None (a quantization or sharding candidate)
    quantize: QuantSpec | None = None  # the quantization scheme, or None
    shard: ShardSpec | None = None  # tensor parallelism, or None
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
    reasons: list[str] = Field(default_factory=list)  # the `why` lines as text
    notes: list[str] = Field(default_factory=list)  # how the figures were projected
    why: list[Reason] = Field(default_factory=list)
    quality: QualityEstimate | None = None  # measured by the probe (None: config-only or --no-probe: the priors)



class Rejected(_Levers):
    """An alternative that was considered and set aside, with the reasons."""

    name: str
    label: str
    prune: PruneSpec | None
    quantize: QuantSpec | None = None
    shard: ShardSpec | None = None
    recovery: RecoverySpec | None = None
    predicted_speedup: float | None = None
    quality_risk: RiskTier | None = None
    rules: list[str] = Field(default_factory=list)  # ids of the rules (or "budget") that rejected it
    reasons: list[str] = Field(min_length=1)  # the `why` lines as text
    why: list[Reason] = Field(default_factory=list)
    quality: QualityEstimate | None = None



class LeverAdvice(_Doc):
    lever: str
    description: str
    rules: list[str] = Field(default_factory=list)


VERDICT_ACTIONS = ("prune", "quantize", "shard", "prune+quantize", "prune+shard", "quantize+shard",
                   "prune+quantize+shard", "dont_prune")


class Verdict(_Doc):
    # the winning candidate's levers ("prune", "quantize", "prune+quantize", ...), or "dont_prune" (no candidate:
    # the levers below instead)
    action: Literal[VERDICT_ACTIONS]  # type: ignore[valid-type]
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
    # the quality probe: tokens, seconds, dense perplexity; or why there was none (then the risk tiers are priors)
    probe: dict[str, Any] = Field(default_factory=dict)
    # the recovery every recovered candidate gets, in steps and tokens, and how it was sized (None: older plans,
    # or plans made without a model size: the RecoverySpec defaults)
    recovery_budget: RecoveryBudget | None = None
    # how `plan run` would execute it on the machine that made the plan: in memory or layer by layer, what it holds,
    # recovery's needs, the target GPUs needed to serve it (projected from the config; None: older plans)
    execution: RunExecution | None = None
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
    from planner.documents import describe_validation

    return describe_validation(exc, noun="key")


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


__all__ = ["Plan", "Candidate", "Rejected", "Reason", "ShardSpec", "levers_of", "Verdict", "LeverAdvice", "load_plan", "save_plan", "parse_plan",
           "with_model_identity",
           "PLAN_VERSION"]
