"""The recovery budget: steps, tokens and wall-clock minutes; whichever runs out first stops training.

The minutes guard is checked before each step against the time the last steps took, so a run stops before it
would overrun (only the first step, whose cost is unknown, can cross the limit). `guard_minutes` stops the same way
but is not part of the budget the learning-rate schedule follows: a plan's recovery is fixed in steps and tokens,
and the guard only catches a run that takes far longer than estimated.

`plan_budget(...)` is what `plan` writes into every recovered candidate: recovery tokens scaled with the model,
capped by a time allowance on the device that will run the recovery, in whole steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from planner.docbase import Doc


@dataclass(frozen=True)
class Budget:
    max_steps: int
    max_tokens: int | None
    max_seconds: float | None
    guard_seconds: float | None = None

    @classmethod
    def from_spec(cls, spec) -> "Budget":
        guard = getattr(spec, "guard_minutes", None)
        return cls(spec.max_steps, spec.max_tokens, spec.max_minutes * 60 if spec.max_minutes else None,
                   guard * 60 if guard else None)

    def fraction_used(self, steps: int, tokens: int, seconds: float) -> float:
        """How much of the binding budget is spent, in [0, 1]; drives the learning-rate schedule. The guard is
        not part of it: a slower machine follows the same schedule."""
        used = [steps / self.max_steps if self.max_steps else 1.0]
        if self.max_tokens:
            used.append(tokens / self.max_tokens)
        if self.max_seconds:
            used.append(seconds / self.max_seconds)
        return min(1.0, max(used))

    def stop_reason(self, steps: int, tokens: int, seconds: float, tokens_per_step: int,
                    seconds_per_step: float | None) -> str | None:
        """Why the next step must not run, or None if it fits."""
        if steps >= self.max_steps:
            return "max_steps"
        if self.max_tokens is not None and tokens + tokens_per_step > self.max_tokens:
            return "max_tokens"
        if seconds_per_step is not None:
            if self.max_seconds is not None and seconds + seconds_per_step > self.max_seconds:
                return "max_minutes"
            if self.guard_seconds is not None and seconds + seconds_per_step > self.guard_seconds:
                return "guard_minutes"
        return None


# -- the plan's budget --------------------------------------------------------------------------------------------

# Recovery tokens per parameter of the dense model. LLM-Pruner recovers LLaMA-7B (6.7B parameters) with LoRA on
# 50k Alpaca samples for 2 epochs, about 3 hours on one GPU (Ma et al. 2023, arXiv:2305.11627, section 4): some
# 1.5e7 tokens at ~150 tokens per templated sample (our estimate of the sample length), ~2e-3 tokens/parameter.
TOKENS_PER_PARAM = 2e-3
# Training FLOPs per token per parameter: forward + backward of the student (6N, Kaplan et al. 2020,
# arXiv:2001.08361, section 2.1) plus the teacher's forward (2N) for distillation.
TRAIN_FLOPS_PER_TOKEN = 8
# Share of the device's measured GEMM peak a recovery step reaches: assumed, below what was measured (SmolLM2-135M's
# distillation on this project's 2-core CPU reached ~0.9 of the fp32 GEMM peak: 119 steps of 512 tokens in 8 min,
# closing notes of issue 8); `plan run` records the measured time beside the estimate.
TRAIN_EFFICIENCY = 0.7
DEFAULT_ALLOWANCE_MINUTES = 10.0
MIN_STEPS = 10
GUARD_FACTOR = 4.0  # the guard stops a run at this many times the estimated time (and at least GUARD_MIN_MINUTES)
GUARD_MIN_MINUTES = 5.0


class RecoveryBudget(Doc):
    """The recovery every recovered candidate of a plan gets, and how it was sized. Projected, not measured."""

    steps: int = Field(ge=1)
    tokens: int = Field(ge=1)
    tokens_per_step: int = Field(ge=1)
    guard_minutes: float = Field(gt=0)
    estimated_minutes: float | None = Field(None, description="projected time of one recovery on `device`")
    device: str = Field(description="where `plan run` recovers: the device this plan was profiled on")
    model_scaled_tokens: int = Field(ge=1, description=f"{TOKENS_PER_PARAM:g} tokens per dense parameter")
    allowance_minutes: float | None = None
    bound_by: str = Field(description="'model size', 'time allowance', 'asked tokens' or 'minimum steps'")
    basis: str = ""

    @property
    def described(self) -> str:
        est = f", est. {self.estimated_minutes:.1f} min each on {self.device}" if self.estimated_minutes else ""
        return (f"recovery budget: {self.steps:,} steps x {self.tokens_per_step:,} tokens = {self.tokens:,} tokens per "
                f"recovered candidate{est}; {self.basis}")

    def spec_fields(self) -> dict:
        """What a RecoverySpec takes from the budget: steps and tokens bind, wall-clock minutes only guard."""
        return {"max_steps": self.steps, "max_tokens": self.tokens, "max_minutes": None,
                "guard_minutes": self.guard_minutes}


def _round_down(steps: float) -> int:
    """Two significant figures, rounded down: a few percent of noise in the device's measured rate does not change
    the plan's step count."""
    if steps < 100:
        return int(steps)
    scale = 10 ** (int(math.log10(steps)) - 1)
    return int(steps // scale * scale)


def check_request(minutes: float | None, tokens: int | None) -> None:
    """What a caller may ask of the budget: a time allowance > 0 or a token count >= 1 (InputError naming the value)."""
    from planner.errors import InputError

    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0):
        raise InputError(f"--recovery-minutes {minutes!r}: accepted: minutes > 0, e.g. 10")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise InputError(f"--recovery-tokens {tokens!r}: accepted: a whole number of tokens >= 1, e.g. 100000")


def plan_budget(params: int, *, device: str, flops_per_second: float | None, batch_size: int = 4,
                seq_len: int = 128, allowance_minutes: float | None = DEFAULT_ALLOWANCE_MINUTES,
                tokens: int | None = None) -> RecoveryBudget:
    """The plan's recovery for a model of `params` parameters, recovered on `device` whose measured GEMM rate is
    `flops_per_second` (None: unknown, no time estimate and no allowance). `tokens` asks for a budget outright."""
    from planner.errors import InputError

    if params < 1:
        raise InputError(f"the model has {params} parameters; a recovery budget needs a model with weights")
    check_request(allowance_minutes, tokens)
    per_step = batch_size * seq_len
    scaled = max(1, round(TOKENS_PER_PARAM * params))
    step_seconds = None
    if flops_per_second:
        step_seconds = TRAIN_FLOPS_PER_TOKEN * params * per_step / (flops_per_second * TRAIN_EFFICIENCY)

    def minutes(n_steps):
        return None if step_seconds is None else n_steps * step_seconds / 60

    if tokens is not None:
        steps, bound = max(1, math.ceil(tokens / per_step)), "asked tokens"
        basis = f"asked for {tokens:,} tokens (--recovery-tokens)"
    else:
        steps, bound = math.ceil(scaled / per_step), "model size"
        basis = (f"scaled with the model: {TOKENS_PER_PARAM:g} recovery tokens per parameter x {params:,} = "
                 f"{scaled:,} tokens (the order of LLM-Pruner's recovery of LLaMA-7B, arXiv:2305.11627)")
        if allowance_minutes is not None and step_seconds is not None and minutes(steps) > allowance_minutes:
            fitting = _round_down(allowance_minutes * 60 / step_seconds)
            basis = (f"the model-scaled {scaled:,} tokens would take {minutes(steps):.0f} min on {device}, over the "
                     f"{allowance_minutes:g}-minute allowance (--recovery-minutes): cut to what fits")
            steps, bound = fitting, "time allowance"
        if steps < MIN_STEPS:
            basis += f"; raised to the minimum of {MIN_STEPS} steps"
            steps, bound = MIN_STEPS, "minimum steps"
    estimated = minutes(steps)
    guard = max(GUARD_MIN_MINUTES, GUARD_FACTOR * estimated) if estimated is not None else \
        max(GUARD_MIN_MINUTES, GUARD_FACTOR * (allowance_minutes or DEFAULT_ALLOWANCE_MINUTES))
    if estimated is not None:
        basis += (f"; time projected from the measured GEMM rate x {TRAIN_EFFICIENCY:g} "
                  f"({TRAIN_FLOPS_PER_TOKEN}N FLOPs per token), a guard stops a run at {guard:.0f} min")
    return RecoveryBudget(steps=steps, tokens=steps * per_step, tokens_per_step=per_step,
                          guard_minutes=round(guard, 2), estimated_minutes=estimated,
                          device=device, model_scaled_tokens=scaled, allowance_minutes=allowance_minutes,
                          bound_by=bound, basis=basis)
