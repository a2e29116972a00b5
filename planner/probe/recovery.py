"""The recovery factor: how much of a one-shot loss a recovery leaves.

    after-recovery perplexity increase = one-shot increase x factor

    factor = (ppl_after / ppl_dense - 1) / (ppl_one_shot / ppl_dense - 1)

A factor belongs to a bucket: (recovery method, budget in recovery tokens, model size). It starts from the sourced
priors below and is learned from every `plan run`: `update_factor(results, results.json)` reads the one-shot perplexity
(`recovery.ppl_before`, measured right after pruning) and the recovered one (`quality.heldout_ppl`) of every pruned
variant and stores the measured factor with its provenance in <cache dir>/probe/recovery_factors.json;
`factor_for(...)` then prefers the measured factors of the bucket (their mean, same pruning kind first) to the prior.

    factor, source = factor_for("distill", steps=200, tokens=102_400, params=134_515_008, kind="layers")
    predicted_increase = probe_report.step(LayerPruning(num_layers=3)).ppl_increase * factor

The run's one-shot perplexity is measured on its own held-out slice (16k tokens by default), the probe's on a
shorter one: both are relative increases over dense on the same tokens, so the factor carries over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from pydantic import Field, computed_field

from planner.docbase import Doc
from planner.errors import InputError
from planner.paths import cache_dir

STORE_VERSION = 1
MIN_ONE_SHOT_INCREASE = 0.01  # below +1% the factor is a ratio of two rounding errors: not recorded

# (upper bound or None, label); a bucket holds the values below its bound and at or above the previous one
BUDGET_BUCKETS: tuple[tuple[int | None, str], ...] = (
    (32_768, "under 32k tokens"),
    (262_144, "32k-256k tokens"),
    (2_097_152, "256k-2M tokens"),
    (None, "2M tokens or more"),
)
SIZE_BUCKETS: tuple[tuple[int | None, str], ...] = (
    (500_000_000, "under 0.5B parameters"),
    (3_000_000_000, "0.5-3B parameters"),
    (15_000_000_000, "3-15B parameters"),
    (None, "15B parameters or more"),
)
UNKNOWN_BUDGET = "budget unknown"


def _bucket(value: int | None, table, unknown: str) -> str:
    if value is None:
        return unknown
    for bound, label in table:
        if bound is None or value < bound:
            return label
    raise AssertionError("the last bucket has no bound")


def budget_bucket(tokens: int | None) -> str:
    return _bucket(tokens, BUDGET_BUCKETS, UNKNOWN_BUDGET)


def size_bucket(params: int | None) -> str:
    return _bucket(params, SIZE_BUCKETS, "size unknown")


def recovery_tokens(steps: int | None, tokens: int | None) -> int | None:
    """The budget in tokens: `tokens` when known, else steps x the default batch (planner.recover.specs)."""
    if tokens is not None:
        return tokens
    if steps is None:
        return None
    from planner.recover.specs import RecoverySpec

    default = RecoverySpec()
    return steps * default.batch_size * default.seq_len


def factor_of(ppl_dense: float, ppl_one_shot: float, ppl_after: float) -> float:
    return (ppl_after / ppl_dense - 1.0) / (ppl_one_shot / ppl_dense - 1.0)


# -- priors -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prior:
    """One measured recovery, with where it was measured."""

    method: str
    kind: str  # pruning kind (planner.kinds)
    steps: int
    tokens: int
    params: int
    ppl_dense: float
    ppl_one_shot: float
    ppl_after: float
    source: str

    @property
    def factor(self) -> float:
        return factor_of(self.ppl_dense, self.ppl_one_shot, self.ppl_after)


SMOLLM2_135M = 134_515_008
PRIORS: tuple[Prior, ...] = (
    Prior("distill", "mlp_channels", 140, 71_680, SMOLLM2_135M, 15.339, 62.229, 26.352,
          "SmolLM2-135M, 50% MLP channels (activation) + 8-minute distillation (140 steps, 71,680 tokens): held-out "
          "ppl 15.339 -> 62.229 one-shot -> 26.352 (bench/recovery.py; closing notes of issue 7)"),
    Prior("distill", "layers", 119, 60_928, SMOLLM2_135M, 14.131, 21.09, 17.25,
          "SmolLM2-135M, 3 of 30 layers (block influence) + 8-minute distillation (119 steps): held-out ppl 14.131 "
          "dense, 21.09 one-shot, 17.25 after (`plan run` of the main job; closing notes of issue 8)"),
    Prior("distill", "layers", 27, 13_824, SMOLLM2_135M, 14.131, 21.09, 14.131 * 1.34,
          "SmolLM2-135M, the same 3-layer plan on a busy machine: 27 distillation steps in the 8 minutes, +34% after "
          "(one-shot taken as the quiet run's 21.09: same plan, deterministic pruning; closing notes of issue 8)"),
)
# no before/after perplexity pair for LoRA or full fine-tuning was found in the references searched (LLM-Pruner,
# arXiv:2305.11627, reports LoRA recovery but its tables were not available as text): those methods borrow the
# distillation priors: method -> (the method it borrows from, what that means)
BORROWED = {"lora": ("distill", "likely optimistic: LoRA trains far fewer weights"),
            "finetune": ("distill", "close: distill trains the decoder blocks, finetune every weight, same KD loss")}


class RecoveryFactor(NamedTuple):
    factor: float
    source: str


NO_RECOVERY = RecoveryFactor(1.0, "no recovery: the one-shot loss stands (factor 1 by definition)")


def prior_factor(method: str, steps: int | None, tokens: int | None, params: int | None,
                 kind: str | None = None) -> RecoveryFactor:
    """The prior factor for a recovery of `method` with a budget of `steps` / `tokens` on a model of `params`
    parameters (`kind`: the pruning kind, preferred when a prior of that kind exists), and where it comes from."""
    if method == "none":
        return NO_RECOVERY
    notes = []
    basis, caveat = BORROWED.get(method, (method, ""))
    if basis != method:
        notes.append(f"no published {method} figure found: the {basis} prior is used ({caveat})")
    pool = [p for p in PRIORS if p.method == basis]
    if not pool:
        known = sorted({p.method for p in PRIORS} | set(BORROWED))
        raise InputError(f"no recovery prior for method {method!r} (known: none, {', '.join(known)})")
    sized = [p for p in pool if size_bucket(p.params) == size_bucket(params)]
    if params is None:
        notes.append("model size unknown: priors of every size")
        sized = pool
    elif not sized:
        notes.append(f"the priors were measured on a {size_bucket(SMOLLM2_135M)} model, not {size_bucket(params)}; "
                     "larger models are more redundant and usually recover more, so this is likely pessimistic")
        sized = pool
    chosen = _nearest_budget(sized, recovery_tokens(steps, tokens))
    if kind is not None and any(p.kind == kind for p in chosen):
        chosen = [p for p in chosen if p.kind == kind]
    factor = sum(p.factor for p in chosen) / len(chosen)
    source = "prior: " + "; ".join(f"factor {p.factor:.3f} from {p.source}" for p in chosen)
    if len(chosen) > 1:
        source = f"prior, mean of {len(chosen)}: " + source.removeprefix("prior: ")
    return RecoveryFactor(factor, "; ".join([source, *notes]))


def _nearest_budget(priors: list[Prior], tokens: int | None) -> list[Prior]:
    """The priors in the budget bucket of `tokens`, else those nearest to it (log scale); all when unknown."""
    if tokens is None:
        return priors
    same = [p for p in priors if budget_bucket(p.tokens) == budget_bucket(tokens)]
    if same:
        return same
    distance = {id(p): abs(math.log(max(p.tokens, 1)) - math.log(max(tokens, 1))) for p in priors}
    best = min(distance.values())
    return [p for p in priors if distance[id(p)] == best]


# -- measured factors -----------------------------------------------------------------------------------------------


class RecoveryMeasurement(Doc):
    """One recovered candidate of a `plan run`: its one-shot and recovered perplexity, and where they come from."""

    method: str
    kind: str
    steps: int = Field(ge=0)
    tokens: int = Field(ge=0)
    params: int = Field(ge=1)  # the dense model's
    ppl_dense: float = Field(gt=0)
    ppl_one_shot: float = Field(gt=0)
    ppl_after: float = Field(gt=0)
    model: str  # what --model named ("" = the embedded default)
    candidate: str
    variant: str
    results: str  # absolute path of the results.json
    run_started_at: str
    recorded_at: str

    @computed_field
    @property
    def factor(self) -> float:
        return factor_of(self.ppl_dense, self.ppl_one_shot, self.ppl_after)

    @computed_field
    @property
    def budget_bucket(self) -> str:
        return budget_bucket(self.tokens)

    @computed_field
    @property
    def size_bucket(self) -> str:
        return size_bucket(self.params)

    @property
    def described(self) -> str:
        return (f"factor {self.factor:.3f} from {self.candidate} ({self.kind}, {self.method}, {self.steps} steps, "
                f"{self.tokens:,} tokens) in {self.results} ({self.run_started_at}): ppl {self.ppl_dense:.3f} dense, "
                f"{self.ppl_one_shot:.3f} one-shot, {self.ppl_after:.3f} after")


class FactorStore(Doc):
    version: int = STORE_VERSION
    measurements: list[RecoveryMeasurement] = Field(default_factory=list)


def store_path() -> Path:
    return cache_dir() / "probe" / "recovery_factors.json"


def load_store(path: str | Path | None = None) -> FactorStore:
    """The stored measurements (empty when there is no store yet); an unreadable store is an InputError."""
    from planner.documents import load_validated

    path = Path(path) if path is not None else store_path()
    if not path.exists():
        return FactorStore()
    return load_validated(path, FactorStore, "recovery factor store", syntax="json")


def update_factor(results, results_json_path: str | Path, store: str | Path | None = None
                  ) -> list[RecoveryMeasurement]:
    """Record the measured recovery factor of every recovered pruned variant of `results` (a loaded
    planner.run.results.Results, read from `results_json_path`); returns what was recorded. Recording the same run
    again replaces its entries. Skipped: variants without recovery (factor 1 by definition), without a one-shot
    perplexity, quantized ones (their perplexity includes the quantization loss), and one-shot increases under
    MIN_ONE_SHOT_INCREASE."""
    from planner.documents import write_atomic

    results_path = Path(results_json_path).expanduser().resolve()
    dense = results.dense
    if dense is None or dense.quality is None:
        return []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    candidates = {c.rank: c for c in results.plan.candidates}
    found = []
    for v in results.variants:
        rec = v.recovery
        if (v.role != "pruned" or rec is None or rec.spec.method == "none" or rec.ppl_before is None
                or v.quality is None or v.pruning is None or v.quantization is not None):
            continue
        if rec.ppl_before / dense.quality.heldout_ppl - 1.0 < MIN_ONE_SHOT_INCREASE:
            continue
        cand = candidates.get(v.candidate_rank)
        found.append(RecoveryMeasurement(
            method=rec.spec.method, kind=v.pruning.spec.kind, steps=rec.steps, tokens=rec.tokens,
            params=dense.size.parameters, ppl_dense=dense.quality.heldout_ppl, ppl_one_shot=rec.ppl_before,
            ppl_after=v.quality.heldout_ppl, model=results.plan.model, candidate=cand.name if cand else v.name,
            variant=v.name, results=str(results_path), run_started_at=results.provenance.started_at,
            recorded_at=now))
    if not found:
        return []
    path = Path(store) if store is not None else store_path()
    current = load_store(path)
    replaced = {(m.results, m.run_started_at, m.variant) for m in found}
    kept = [m for m in current.measurements if (m.results, m.run_started_at, m.variant) not in replaced]
    updated = FactorStore(measurements=[*kept, *found])
    write_atomic(path, updated.model_dump_json(indent=2), what="recovery factor store")
    return found


NEAREST_BUDGET_RATIO = 8.0  # a measurement at up to 8x more or fewer recovery tokens stands in for a missing bucket


def factor_for(method: str, steps: int | None, tokens: int | None, params: int | None, kind: str | None = None,
               store: str | Path | None = None) -> RecoveryFactor:
    """The factor to predict with: the mean of the stored measurements of the same (method, budget bucket, size
    bucket), those of the same pruning `kind` when there are any; else the prior. `source` says which."""
    if method == "none":
        return NO_RECOVERY
    try:
        measurements = load_store(store).measurements
    except InputError as exc:  # a damaged store must not stop a plan: fall back to the priors, and say so
        prior = prior_factor(method, steps, tokens, params, kind)
        return RecoveryFactor(prior.factor, f"{prior.source} (stored factors unreadable: {exc})")
    wanted = recovery_tokens(steps, tokens)
    budget, size = budget_bucket(wanted), size_bucket(params)
    similar = [m for m in measurements if m.method == method and m.size_bucket == size]
    if kind is not None and any(m.kind == kind for m in similar):
        similar = [m for m in similar if m.kind == kind]
    matching = [m for m in similar if m.budget_bucket == budget]
    note = ""
    if not matching and similar and wanted:
        # the runs here recovered with another budget (e.g. a wall-clock guard cut the steps): this model's own
        # measurement at the nearest budget beats a prior from elsewhere, and the source says so
        def gap(m):
            return abs(math.log(max(m.tokens, 1)) - math.log(max(wanted, 1)))

        nearest = min(gap(m) for m in similar)
        if nearest <= math.log(NEAREST_BUDGET_RATIO):
            matching = [m for m in similar if gap(m) == nearest]
            note = f"; nearest budget: measured with {matching[0].tokens:,} recovery tokens, the plan asks {wanted:,}"
    if not matching:
        return prior_factor(method, steps, tokens, params, kind)
    factor = max(0.0, sum(m.factor for m in matching) / len(matching))
    what = "measured" if len(matching) == 1 else f"measured, mean of {len(matching)} runs"
    return RecoveryFactor(factor, f"{what} ({method}, {budget}, {size}): "
                          + "; ".join(m.described for m in matching) + note)
