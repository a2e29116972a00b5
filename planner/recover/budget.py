"""The recovery budget: steps, tokens and wall-clock minutes; whichever runs out first stops training.

The minutes guard is checked before each step against the time the last steps took, so a run stops before it
would overrun (only the first step, whose cost is unknown, can cross the limit).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    max_steps: int
    max_tokens: int | None
    max_seconds: float | None

    @classmethod
    def from_spec(cls, spec) -> "Budget":
        return cls(spec.max_steps, spec.max_tokens, spec.max_minutes * 60 if spec.max_minutes else None)

    def fraction_used(self, steps: int, tokens: int, seconds: float) -> float:
        """How much of the binding budget is spent, in [0, 1]; drives the learning-rate schedule."""
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
        if self.max_seconds is not None and seconds_per_step is not None and seconds + seconds_per_step > self.max_seconds:
            return "max_minutes"
        return None
