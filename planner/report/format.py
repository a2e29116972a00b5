"""Formatting for the report: number filters the template uses, and how a pruning or recovery step is described.
The lowest module of the report package: the section builders (sections, decision, profile_view) import it."""

from __future__ import annotations

# -- formatting filters (also used by the template) --------------------------------------------------------------

NBSP = "\u00a0"  # a number and its unit never wrap apart


def fmt_num(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def fmt_ms(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def fmt_pct(value, signed: bool = False, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{100 * value:+.{digits}f}%" if signed else f"{100 * value:.{digits}f}%"


def fmt_x(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def fmt_bytes(value) -> str:
    if value is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:,.2f}{NBSP}{unit}"
    return f"{value:,.0f}{NBSP}B"


def fmt_params(value) -> str:
    if value is None:
        return "—"
    return f"{value / 1e9:.2f}{NBSP}B" if value >= 1e9 else f"{value / 1e6:.1f}{NBSP}M"


def fmt_metric(value, unit: str) -> str:
    if unit == "ms":
        return f"{fmt_ms(value)}{NBSP}ms"
    if unit == "bytes":
        return fmt_bytes(value)
    return f"{fmt_num(value, 1)}{NBSP}{unit}"


FILTERS = {"num": fmt_num, "ms": fmt_ms, "pct": fmt_pct, "x": fmt_x, "bytes": fmt_bytes, "params": fmt_params}


# -- describing specs ------------------------------------------------------------------------------------------


def describe_prune(spec) -> str:
    if spec is None:
        return "none (dense)"
    from planner.kinds import get_kind

    return get_kind(spec).describe(spec)


def describe_levers(prune, quantize=None, shard=None) -> str:
    """Every lever a variant applies: 'MLP channels −25% (activation) + int8 weight-only'."""
    parts = []
    if prune is not None and (prune.kind != "none" or (quantize is None and shard is None)):
        parts.append(describe_prune(prune))
    if quantize is not None:
        parts.append(quantize.label)
    if shard is not None:
        parts.append(shard.label)
    return " + ".join(parts) or describe_prune(None)


def describe_recovery(spec, info=None) -> str:
    if spec is None or spec.method == "none":
        return "none"
    if info is not None and info.steps:
        return f"{spec.method} ({spec.loss}), {info.steps} steps"
    return f"{spec.method} ({spec.loss})"
