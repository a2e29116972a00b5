"""The pre-launch gate policy: thresholds a pruned variant must meet before it ships.

A policy is a small YAML (or JSON) file; a mistyped key fails at load time, naming it:

```yaml
version: 1
variant: best                # the top-ranked pruned variant; or a variant name; or "all"
max_ppl_increase: 0.10       # held-out perplexity at most +10% over dense
max_kl:                      # mean KL(teacher || model) per slice, nats; "*" = every slice in the results
  "*": 0.30
min_top1_agreement:          # agreement with the dense teacher per slice; a number applies to every slice
  "*": 0.75
  code: 0.80
min_speedup: 1.10            # measured speedup of the plan's goal metric over dense
max_peak_memory_gb: 4.0      # measured peak memory of the variant
min_task_score:              # lm-eval task scores (plan run --lm-eval-tasks): the task's primary metric
  planner_next_line: 0.50
max_task_drop:               # at most this far below dense on the primary metric, per task ("*" = every task)
  "*": 0.05
```

Every threshold is optional, and one left out is not checked; but a threshold that is set and whose figure is
missing from the results fails: a gate never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

POLICY_VERSION = 1
ALL_SLICES = "*"

# a per-slice threshold: one number for every slice, or {slice name or "*": number}
SliceThreshold = float | dict[str, float]


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: int = POLICY_VERSION
    variant: str = Field("best", min_length=1, description='"best" (top-ranked pruned variant), "all", or a name')
    max_ppl_increase: float | None = Field(None, ge=0, description="relative held-out perplexity increase over "
                                                                   "dense, 0.10 = +10%")
    max_kl: SliceThreshold | None = None
    min_top1_agreement: SliceThreshold | None = None
    min_exact_match: SliceThreshold | None = None
    min_speedup: float | None = Field(None, gt=0, description="measured speedup of the goal metric, x over dense")
    max_peak_memory_gb: float | None = Field(None, gt=0, description="measured peak memory, GB (1e9 bytes)")
    max_checkpoint_gb: float | None = Field(None, gt=0, description="checkpoint size on disk, GB (1e9 bytes)")
    require_device: Literal["cpu", "cuda"] | None = Field(
        None, description="the kind of device the figures must have been measured on")
    min_task_score: SliceThreshold | None = Field(
        None, description="lm-eval task score (the task's primary metric) per task name or \"*\"")
    max_task_drop: SliceThreshold | None = Field(
        None, description="lm-eval task score lost against dense, in the metric's units, per task name or \"*\"")

    @field_validator("max_kl", "min_top1_agreement", "min_exact_match", "min_task_score", "max_task_drop")
    @classmethod
    def _slice_threshold(cls, value, info):
        if value is None:
            return value
        items = value.items() if isinstance(value, dict) else [(ALL_SLICES, value)]
        if isinstance(value, dict) and not value:
            raise ValueError("give at least one slice (or \"*\" for every slice)")
        upper = None if info.field_name in ("max_kl", "min_task_score", "max_task_drop") else 1.0
        for name, threshold in items:
            if threshold < 0 or (upper is not None and threshold > upper):
                accepted = "a number >= 0" if upper is None else "a fraction between 0 and 1"
                raise ValueError(f"threshold {threshold!r} for slice {name!r} is out of range (accepted: {accepted})")
        return value

    @model_validator(mode="after")
    def _check(self) -> "GatePolicy":
        if self.version != POLICY_VERSION:
            raise ValueError(f"policy version {self.version} is not supported (accepted: {POLICY_VERSION})")
        if not self.thresholds_set():
            raise ValueError("the policy sets no threshold, so it would gate nothing (set at least one of: "
                             + ", ".join(THRESHOLD_FIELDS) + ")")
        return self

    def thresholds_set(self) -> list[str]:
        return [name for name in THRESHOLD_FIELDS if getattr(self, name) is not None]


THRESHOLD_FIELDS = ("max_ppl_increase", "max_kl", "min_top1_agreement", "min_exact_match", "min_speedup",
                    "max_peak_memory_gb", "max_checkpoint_gb", "require_device", "min_task_score", "max_task_drop")


def per_slice(threshold: SliceThreshold) -> dict[str, float]:
    """A threshold as {slice name or "*": value}."""
    return dict(threshold) if isinstance(threshold, dict) else {ALL_SLICES: float(threshold)}


def load_policy(path: str | Path) -> GatePolicy:
    """Read a gate policy (YAML or JSON); a missing or malformed file, an unknown key or a bad value is an
    InputError naming it."""
    from planner.documents import load_validated

    return load_validated(path, GatePolicy, "gate policy", invalid=" is invalid",
                          accepted=f"version, variant, {', '.join(THRESHOLD_FIELDS)}")
