"""One registry of the goals and the figures they are judged by: decide, run, report, gate and the CLI read it.

    spec = goal_spec(Goal.P95_LATENCY)
    spec.predicted        # "p95_ms": the figure the plan projects (plan.json candidates' `predicted`)
    spec.measured         # "p95_ms": the figure `plan run` measures (results.json latency), None if it cannot
    metric("p95_ms").lower_is_better, metric("p95_ms").label, format_value("p95_ms", 18.4)

A figure is known by one name everywhere; its label, unit and direction live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.workload import Goal


@dataclass(frozen=True)
class Metric:
    name: str  # the figure's key in plan.json / results.json
    label: str  # for people: "p95 latency"
    unit: str  # "ms", "tokens/s", "bytes", ...
    lower_is_better: bool


_METRICS = [
    Metric("p50_ms", "p50 latency", "ms", True),
    Metric("p95_ms", "p95 latency", "ms", True),
    Metric("p99_ms", "p99 latency", "ms", True),
    Metric("ttft_ms", "time to first token", "ms", True),
    Metric("tpot_ms", "time per output token", "ms", True),
    Metric("ttft_p50_ms", "time to first token, p50", "ms", True),
    Metric("tpot_p50_ms", "time per output token, p50", "ms", True),
    Metric("tokens_per_s", "throughput", "tokens/s", False),
    Metric("usd_per_million_tokens", "cost per 1M tokens", "$/1M tokens", True),
    Metric("gpu_hours_per_million_tokens", "GPU-hours per 1M tokens", "GPU-h/1M tokens", True),
    Metric("peak_memory_bytes", "peak memory", "bytes", True),
    Metric("file_bytes", "checkpoint size", "bytes", True),
    Metric("kv_tokens", "KV-cache capacity", "tokens", False),
    Metric("kv_bytes_per_token", "KV-cache bytes per token", "bytes", True),
    # under traffic (planner.perf.traffic): projected by the queueing simulation, measured by `plan run --load`
    Metric("capacity_rps", "capacity (p95 at target)", "req/s", False),
    Metric("saturation_rps", "saturation throughput", "req/s", False),
    Metric("traffic_batch", "sequences per decode step under traffic", "sequences", False),
    Metric("traffic_ttft_p95_ms", "time to first token under traffic, p95", "ms", True),
    Metric("traffic_tpot_p95_ms", "time per output token under traffic, p95", "ms", True),
]
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


@dataclass(frozen=True)
class GoalSpec:
    goal: Goal
    predicted: str  # the projected figure the plan ranks by
    measured: str | None  # the figure `plan run` measures for it; None where no run can measure it here
    # the projected figure used instead where the target lacks the data for `predicted`, and the note that says so
    fallback: str | None = None
    fallback_note: str = ""
    measured_note: str = ""  # how the measured figure stands for the goal, when it is not the same figure

    @property
    def lower_is_better(self) -> bool:
        return METRICS[self.predicted].lower_is_better

    @property
    def label(self) -> str:
        return METRICS[self.predicted].label


_GOALS = [
    GoalSpec(Goal.P50_LATENCY, "p50_ms", "p50_ms"),
    GoalSpec(Goal.P95_LATENCY, "p95_ms", "p95_ms"),
    GoalSpec(Goal.P99_LATENCY, "p99_ms", "p99_ms"),
    GoalSpec(Goal.TTFT, "ttft_ms", "ttft_p50_ms"),
    GoalSpec(Goal.TPOT, "tpot_ms", "tpot_p50_ms"),
    GoalSpec(Goal.THROUGHPUT, "tokens_per_s", "tokens_per_s"),
    GoalSpec(Goal.COST_PER_TOKEN, "usd_per_million_tokens", "tokens_per_s",
             fallback="gpu_hours_per_million_tokens",
             fallback_note="{gpu} has no example price: cost per token in GPU-hours per 1M tokens",
             measured_note="same GPU, same price: cost per token is 1 / throughput"),
    GoalSpec(Goal.PEAK_MEMORY, "peak_memory_bytes", "peak_memory_bytes"),
    GoalSpec(Goal.CHECKPOINT_SIZE, "file_bytes", "file_bytes"),
    GoalSpec(Goal.KV_CAPACITY, "kv_tokens", None, fallback="kv_bytes_per_token",
             fallback_note="{gpu} has no memory figure: KV capacity compared as KV bytes per token",
             measured_note="`plan run` does not measure KV-cache capacity: it needs the serving GPU's memory"),
]
GOALS: dict[Goal, GoalSpec] = {g.goal: g for g in _GOALS}
assert set(GOALS) == set(Goal), "every goal needs a GoalSpec"


def goal_spec(goal: Goal | str) -> GoalSpec:
    return GOALS[Goal(goal)]


def metric(name: str) -> Metric:
    """The metric of a figure name; an unknown name is a plain figure, lower-is-better unknown (treated as True)."""
    return METRICS.get(name) or Metric(name, name.replace("_", " "), "", True)


def lower_is_better(name: str) -> bool:
    return metric(name).lower_is_better


def speedup(dense: float | None, other: float | None, name: str) -> float | None:
    """x times better than dense on figure `name` (dense / other where lower is better), None when unknown."""
    if not dense or not other:
        return None
    return dense / other if lower_is_better(name) else other / dense


def format_value(name: str, value) -> str:
    """A figure with its unit, scaled for reading: '18.4 ms', '1.2 s', '269 MB', '4,310 tok/s'."""
    if value is None:
        return "—"
    if name.endswith("_ms"):
        if value >= 3.6e6:
            return f"{value / 3.6e6:,.3g} h"
        if value >= 1e4:
            return f"{value / 1e3:,.3g} s"
        return f"{value:,.3g} ms" if value < 100 else f"{value:,.0f} ms"
    if name.endswith("bytes"):
        for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= size:
                return f"{value / size:,.3g} {unit}"
        return f"{value:,.0f} B"
    if name == "tokens_per_s":
        return f"{value:,.0f} tok/s"
    if name == "usd_per_million_tokens":
        return f"${value:,.3g}/1M tok"
    if name == "gpu_hours_per_million_tokens":
        return f"{value:,.3g} GPU-h/1M tok"
    if name in ("capacity_rps", "saturation_rps"):
        return f"{value:,.3g} req/s"
    if name == "kv_tokens":
        return f"{value / 1e6:,.3g}M tokens" if value >= 1e6 else f"{value:,.0f} tokens"
    if name == "kv_bytes_per_token":
        return f"{value / 1e3:,.3g} kB/token"
    return f"{value:,.4g}"


# -- a latency goal under traffic: "p95 under 800 ms at 2 req/s" ----------------------------------------------------

_TRAFFIC_GOAL = None


def parse_traffic_goal(text: str) -> tuple[Goal, float, float] | None:
    """(Goal.P95_LATENCY, target ms, request rate) for "p95 under X ms at Y req/s" (also "p95<Xms@Y"; X in ms or s,
    Y in req/s or rps); None when `text` is not of that form (a plain goal name)."""
    import re

    global _TRAFFIC_GOAL
    if _TRAFFIC_GOAL is None:
        _TRAFFIC_GOAL = re.compile(
            r"^\s*p95(?:[-_ ]latency)?\s*(?:under|below|<=?)\s*(?P<x>[0-9.eE+-]+)\s*(?P<unit>ms|s)?\s*"
            r"(?:at|@)\s*(?P<y>[0-9.eE+-]+)\s*(?:req/s|requests/s|rps|/s)?\s*$", re.IGNORECASE)
    match = _TRAFFIC_GOAL.match(text)
    if match is None:
        return None
    from planner.errors import InputError

    try:
        target, rate = float(match["x"]), float(match["y"])
    except ValueError:
        target = rate = float("nan")
    if not (target > 0 and rate > 0) or target == float("inf") or rate == float("inf"):
        raise InputError(f"goal {text!r}: the target and the rate must be numbers > 0; accepted: "
                         "'p95 under X ms at Y req/s', e.g. 'p95 under 800 ms at 2 req/s'")
    if (match["unit"] or "ms").lower() == "s":
        target *= 1000.0
    return Goal.P95_LATENCY, target, rate
