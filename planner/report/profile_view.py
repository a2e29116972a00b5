"""The report's dense-profile section: the kernel-category breakdown per phase (measured on the local device, or
projected when the model was profiled from its config alone), the roofline of the model's ops on the target GPU
with memory- and compute-bound regions, the phases side by side and the largest ops."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from planner.report import charts
from planner.report.format import fmt_bytes, fmt_ms, fmt_pct

PART_ORDER = ("mlp", "attn_proj", "attn_core", "lm_head", "other")
TOP_OPS_PER_PHASE = 5


def _shares(shares: dict[str, float]) -> dict[str, float]:
    ordered = {k: shares[k] for k in PART_ORDER if shares.get(k)}
    ordered.update({k: v for k, v in shares.items() if k not in ordered and v})
    return ordered


def _roofline_ops(projected) -> list[dict]:
    ops = []
    for phase in (projected.prefill, projected.decode):
        total = phase.time_ms or 1.0
        for op in phase.ops:
            if op.flops <= 0:  # bytes-only ops (norms, adds) have no place on a FLOP/s axis
                continue
            ops.append({"name": op.name, "phase": phase.phase, "intensity": op.intensity, "flops": op.total_flops,
                        "time_share": op.time_ms / total})
    return ops


def _top_ops(projected) -> list[dict]:
    rows = []
    for phase in (projected.prefill, projected.decode):
        total = phase.time_ms or 1.0
        for op in sorted(phase.ops, key=lambda o: o.time_ms, reverse=True)[:TOP_OPS_PER_PHASE]:
            rows.append({"phase": phase.phase, "name": f"{op.name} ×{op.count}" if op.count > 1 else op.name,
                         "category": op.category, "gflop": op.total_flops / 1e9, "mbytes": op.total_bytes / 1e6,
                         "intensity": op.intensity, "bound": op.bound, "time_share": op.time_ms / total})
    return rows


def _category_rows(measured) -> list[dict]:
    """Fine-grained measured categories, both phases side by side, largest first."""
    from planner.profile.schema import MEASURED_CATEGORIES

    pre, dec = measured.prefill.category_share, measured.decode.category_share
    names = sorted(set(pre) | set(dec), key=lambda c: -(pre.get(c, 0.0) + dec.get(c, 0.0)))
    return [{"category": c, "description": MEASURED_CATEGORIES.get(c, c), "prefill": pre.get(c),
             "decode": dec.get(c), "prefill_ms": measured.prefill.by_category.get(c),
             "decode_ms": measured.decode.by_category.get(c)} for c in names if pre.get(c) or dec.get(c)]


def profile_view(profile, results, problem: str | None = None) -> dict[str, Any]:
    if profile is None:
        return {"available": False,
                "reason": problem or "profile.json was not found beside results.json (pass it with --profile)."}
    notes = []
    if profile.target_gpu != results.plan.gpu:
        notes.append(f"This profile projects to {profile.target_gpu}, but the plan that was run targets "
                     f"{results.plan.gpu}.")
    projected, measured = profile.projected, profile.measured
    target = profile.target_gpu
    if measured is not None:
        breakdown = {"prefill": _shares(measured.prefill.part_share), "decode": _shares(measured.decode.part_share)}
        breakdown_label = measured.label
        breakdown_missing = None
    else:
        breakdown = {"prefill": _shares(projected.prefill.time_share), "decode": _shares(projected.decode.time_share)}
        breakdown_label = projected.label
        breakdown_missing = None
    breakdown_chart = Markup(charts.kernel_breakdown_svg(breakdown, source=breakdown_label.split(";")[0]))
    roofline_chart = Markup(charts.roofline_svg(_roofline_ops(projected), peak_flops=projected.peak_flops,
                                                bandwidth=projected.bandwidth, target=target))
    phases = []
    for name in ("prefill", "decode"):
        proj = getattr(projected, name)
        meas = getattr(measured, name) if measured is not None else None
        phases.append({"name": name if name == "prefill" else "decode (one step)",
                       "measured_ms": meas.median_ms if meas else None, "projected_ms": proj.time_ms,
                       "bound": proj.bound, "intensity": proj.intensity})
    memory = profile.memory
    summary = (f"On {target} ({projected.dtype}), prefill is {projected.prefill.bound}-bound "
               f"({projected.prefill.intensity:.0f} FLOP/B) and decode is {projected.decode.bound}-bound "
               f"({projected.decode.intensity:.1f} FLOP/B) against a ridge point of {projected.ridge_point:.0f} "
               f"FLOP/B; a request of {projected.workload.prompt_len} + {projected.workload.gen_len} tokens is "
               f"projected at {fmt_ms(projected.request_ms)} ms, {fmt_pct(projected.time_share.get('mlp'))} of it in "
               f"the MLP. Memory at the workload: weights {fmt_bytes(memory.weight_bytes)}, KV cache "
               f"{fmt_bytes(memory.kv_cache_bytes)}, headroom {fmt_pct(memory.headroom_frac)} of the GPU.")
    if measured is None:
        notes.append("No local measurement: " + (profile.measured_note or "the model was profiled from its "
                                                                          "config alone")
                     + "; the breakdown above is the projection.")
    else:
        notes += list(measured.notes)
        notes.append(f"Measured breakdown: the median of the profiled repeats with torch.profiler "
                     f"({measured.label}); profiler overhead on prefill "
                     f"{fmt_pct(measured.prefill.profiler_overhead, signed=True)}.")
    return {
        "available": True,
        "target": target,
        "summary": summary,
        "breakdown_chart": breakdown_chart,
        "breakdown_label": breakdown_label.split(";")[0],
        "breakdown_missing": breakdown_missing,
        "categories": _category_rows(measured) if measured is not None else [],
        "categories_label": measured.label if measured is not None else None,
        "roofline_chart": roofline_chart,
        "roofline_label": f"projected to {target}",
        "roofline_missing": None,
        "phases": phases,
        "phases_measured_label": measured.label if measured is not None else "not measured",
        "top_ops": _top_ops(projected),
        "notes": notes,
    }
