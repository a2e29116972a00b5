"""Charts of the report as inline SVG strings (matplotlib, Agg backend; no CDN, no external fonts).

Every function takes plain numbers and labels and returns one `<svg>` element ready to drop into the HTML page.
Text stays text (`svg.fonttype: none`) so the page's fonts apply, it can be searched and it prints sharply.
Labels are user data (model and variant names): matplotlib escapes them in the SVG, and `_label` stops a `$` in
a name from switching on mathtext.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from typing import Iterable, Sequence

# one palette for the whole page (colour-blind safe, prints in grey distinguishably)
DENSE_COLOR = "#4b5563"
PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#65a30d")
PHASE_COLORS = {"prefill": "#2563eb", "decode": "#d97706"}
CATEGORY_COLORS = {
    "mlp": "#2563eb",
    "attn_proj": "#059669",
    "attn_core": "#d97706",
    "lm_head": "#7c3aed",
    "other": "#9ca3af",
}

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "planner-report",  # deterministic ids: the same results give the same page
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
}

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a display, never a GUI toolkit
    import matplotlib.pyplot as plt

    return plt


MAX_LABEL = 32  # characters of a name shown inside a chart; the tables carry the full name


def _label(text: object, limit: int | None = None) -> str:
    """User text as a plain matplotlib label: `$` would start mathtext; long names are shortened."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _chart(fn):
    """Run a chart function under the report's matplotlib style (rc applies when artists are created and saved)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _plt().rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, *, left: float = 0.75, right: float = 0.2, bottom: float = 0.55,
            top: float = 0.15):
    """A figure with fixed margins in inches. (Constrained layout would fit them itself, at the cost of a second
    draw of every chart: twice the rendering time.)"""
    fig, ax = _plt().subplots(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    return fig, ax


def _name_margin(names) -> float:
    """Left margin (inches) for y tick labels holding names, at the chart font size."""
    longest = max((len(_label(n, MAX_LABEL)) for n in names), default=4)
    return min(0.25 + 0.068 * longest, 2.4)


def _to_svg(fig, title: str) -> str:
    """Serialize a figure to one `<svg>` element: no XML prolog, unique ids, scalable, with an accessible title."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    # several charts share one page: prefix every id so clip paths and markers of one chart never resolve to another
    prefix = "c" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"  # deterministic: same chart, same ids
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{prefix}{m.group(1)}"', svg)
    # drop the fixed pt size: the page's CSS sizes the chart from its viewBox
    svg = re.sub(r'<svg([^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r"<svg\1", svg, count=1)
    from markupsafe import escape

    svg = svg.replace("<svg", f'<svg class="chart" role="img" aria-label="{escape(title)}"', 1)
    return svg


@_chart
def kernel_breakdown_svg(shares: dict[str, dict[str, float]], *, source: str) -> str:
    """Horizontal stacked bars, one per phase: the share of time in each kernel category.

    shares: {"prefill": {"mlp": 0.6, "attn_proj": 0.2, ...}, "decode": {...}}; values are fractions of the phase.
    source: where the figures come from, e.g. "measured on cpu (AMD EPYC)".
    """
    phases = [p for p in shares if shares[p]]
    categories: list[str] = []
    for p in phases:
        for c in shares[p]:
            if c not in categories:
                categories.append(c)
    fig, ax = _figure(6.4, 1.15 + 0.5 * max(len(phases), 1), left=_name_margin(phases), top=0.45)
    labelled: set[str] = set()
    for i, phase in enumerate(phases):
        total = sum(shares[phase].values()) or 1.0
        left = 0.0
        for j, cat in enumerate(categories):
            value = 100.0 * shares[phase].get(cat, 0.0) / total
            if value <= 0:
                continue
            color = CATEGORY_COLORS.get(cat, PALETTE[j % len(PALETTE)])
            ax.barh(i, value, left=left, color=color, height=0.6, label=None if cat in labelled else _label(cat))
            labelled.add(cat)
            if value >= 7:
                ax.text(left + value / 2, i, f"{value:.0f}%", ha="center", va="center", color="white", fontsize=8)
            left += value
    ax.set_yticks(range(len(phases)), [_label(p, MAX_LABEL) for p in phases])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"share of phase time, % ({_label(source)})")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(len(categories), 1))
    return _to_svg(fig, f"Kernel-category breakdown per phase, {source}")


@_chart
def roofline_svg(
    ops: Sequence[dict],
    *,
    peak_flops: float,
    bandwidth: float,
    target: str,
) -> str:
    """Roofline of the target GPU with the model's ops on it.

    ops: [{"name", "phase", "intensity" (FLOP/byte), "flops", "time_share" (optional, sizes the marker)}].
    Each op sits at its attainable throughput min(peak, intensity * bandwidth): the projection, not a measurement.
    The region left of the ridge point is memory-bound, right of it compute-bound.
    """
    import numpy as np

    ridge = peak_flops / bandwidth
    intensities = [o["intensity"] for o in ops if o.get("intensity") and o["intensity"] > 0]
    lo = min(intensities + [ridge]) / 4
    hi = max(intensities + [ridge]) * 4
    fig, ax = _figure(6.4, 3.8, left=0.7, top=0.1)
    x = np.geomspace(lo, hi, 200)
    roof = np.minimum(peak_flops, x * bandwidth) / 1e12
    ax.plot(x, roof, color="#111827", linewidth=1.6, label="roof (projected)")
    ax.axvspan(lo, ridge, color="#fde68a", alpha=0.35, linewidth=0)
    ax.axvspan(ridge, hi, color="#bfdbfe", alpha=0.35, linewidth=0)
    ax.axvline(ridge, color="#6b7280", linewidth=0.8, linestyle="--")
    ymax = peak_flops / 1e12
    # the lowest op sets the floor, so decode GEMVs far left of the ridge stay on the chart
    ymin = min([min(peak_flops, i * bandwidth) / 1e12 for i in intensities] + [ymax / 100]) / 4
    ax.text(lo * 1.15, ymax * 1.6, "memory-bound", fontsize=8, color="#92400e", va="bottom")
    ax.text(ridge * 1.15, ymax * 1.6, "compute-bound", fontsize=8, color="#1e40af", va="bottom")
    ax.text(ridge * 1.08, ymin * 1.3, f"ridge {ridge:.0f} FLOP/B", fontsize=7, color="#374151", va="bottom")
    by_phase: dict[str, list[dict]] = {}
    for op in ops:
        if op.get("intensity") and op["intensity"] > 0:
            by_phase.setdefault(op.get("phase", "op"), []).append(op)
    for k, (phase, items) in enumerate(by_phase.items()):
        xs = [o["intensity"] for o in items]
        ys = [min(peak_flops, o["intensity"] * bandwidth) / 1e12 for o in items]
        sizes = [24 + 220 * float(o.get("time_share") or 0.0) for o in items]
        color = PHASE_COLORS.get(phase, PALETTE[k % len(PALETTE)])
        marker = "o" if k % 2 == 0 else "s"
        ax.scatter(xs, ys, s=sizes, color=color, alpha=0.8, edgecolor="white", linewidth=0.6, marker=marker,
                   label=f"{_label(phase)} ops", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(ymin, ymax * 4)
    ax.set_xlabel("arithmetic intensity, FLOP/byte")
    ax.set_ylabel("attainable TFLOP/s")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.9))
    return _to_svg(fig, f"Roofline of the model's ops, projected to {target}")


def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency and lower quality loss),
    sorted by latency."""
    pts = list(points)
    front = []
    for i, (xi, yi) in enumerate(pts):
        dominated = any(
            (xj <= xi and yj <= yi) and (xj < xi or yj < yi) for j, (xj, yj) in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1]))


@_chart
def quality_latency_svg(
    points: Sequence[dict],
    *,
    latency_label: str,
    quality_label: str,
) -> str:
    """Quality loss against measured latency, one point per variant, with the Pareto front drawn.

    points: [{"label", "latency", "quality", "dense": bool}]; lower is better on both axes.
    """
    fig, ax = _figure(6.4, 3.8, left=0.7, top=0.1)
    usable = [p for p in points if p.get("latency") is not None and p.get("quality") is not None]
    front = pareto_front([(p["latency"], p["quality"]) for p in usable])
    if len(front) > 1:
        ax.plot([usable[i]["latency"] for i in front], [usable[i]["quality"] for i in front], color="#9ca3af",
                linewidth=1.2, linestyle="--", label="Pareto front", zorder=1)
    colors = iter(PALETTE)
    xs = [p["latency"] for p in usable]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for i, p in enumerate(usable):
        color = DENSE_COLOR if p.get("dense") else next(colors, PALETTE[-1])
        on_front = i in front
        ax.scatter([p["latency"]], [p["quality"]], s=70 if on_front else 45, color=color, zorder=3,
                   marker="D" if p.get("dense") else "o", edgecolor="black" if on_front else "white", linewidth=0.8)
        right_half = p["latency"] > middle  # label towards the centre so it stays inside the axes
        ax.annotate(_label(p["label"], MAX_LABEL), (p["latency"], p["quality"]), textcoords="offset points",
                    xytext=(-7, 6) if right_half else (7, 6), ha="right" if right_half else "left", fontsize=8)
    ax.set_xlabel(_label(latency_label))
    ax.set_ylabel(_label(quality_label))
    ax.margins(x=0.18, y=0.22)
    if len(front) > 1:
        ax.legend(loc="best")
    return _to_svg(fig, "Quality against measured latency with the Pareto front")


@_chart
def speedup_svg(rows: Sequence[dict], *, predicted_label: str, measured_label: str, metric: str) -> str:
    """Predicted against measured speedup, side by side per variant; 1.0 (no change) marked.

    rows: [{"label", "predicted" (or None), "measured" (or None)}]; a missing bar is left out, never drawn as 0.
    """
    import numpy as np

    fig, ax = _figure(6.4, 1.5 + 0.55 * max(len(rows), 1), left=_name_margin(r["label"] for r in rows),
                      top=0.6)
    y = np.arange(len(rows))
    height = 0.36
    for offset, key, color, label in (
        (-height / 2, "predicted", "#93c5fd", predicted_label),
        (height / 2, "measured", "#1d4ed8", measured_label),
    ):
        idx = [i for i, r in enumerate(rows) if r.get(key) is not None]
        values = [rows[i][key] for i in idx]
        bars = ax.barh(y[idx] + offset, values, height=height, color=color, label=_label(label, 60))
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="#111827", linewidth=0.9)
    ax.set_yticks(y, [_label(r["label"], MAX_LABEL) for r in rows])
    ax.invert_yaxis()
    values = [r[k] for r in rows for k in ("predicted", "measured") if r.get(k) is not None]
    ax.set_xlim(0, max(values + [1.0]) * 1.22)
    ax.set_xlabel(f"speedup of {_label(metric)} over dense (x; 1.0 = no change)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=1)
    return _to_svg(fig, f"Predicted against measured speedup of {metric}")


@_chart
def loss_curve_svg(curves: dict[str, Sequence[tuple[float, float]]], *, ylabel: str = "training loss") -> str:
    """Recovery loss against step, one line per variant."""
    fig, ax = _figure(6.4, 3.0, left=0.7, top=0.1)
    for k, (label, points) in enumerate(curves.items()):
        if not points:
            continue
        steps, losses = zip(*points)
        ax.plot(steps, losses, color=PALETTE[k % len(PALETTE)], linewidth=1.4, label=_label(label, MAX_LABEL),
                marker="." if len(points) < 30 else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel(_label(ylabel))
    ax.legend(loc="upper right")
    return _to_svg(fig, "Recovery loss curve")


@_chart
def latency_vs_rate_svg(series: dict[str, Sequence[tuple[float, float | None, float | None]]], *,
                        measured_label: str, projected: dict[str, Sequence[tuple[float, float]]] | None = None) -> str:
    """p95 (solid, filled markers) and p50 (dotted) latency against the offered request rate, one colour per variant;
    `projected` adds each variant's projected p95 as hollow markers. series: name -> [(rate, p50 ms, p95 ms)]."""
    fig, ax = _figure(6.4, 3.2, left=0.8, top=0.55)
    for k, (name, points) in enumerate(series.items()):
        color = DENSE_COLOR if k == 0 else PALETTE[(k - 1) % len(PALETTE)]
        pts = sorted(p for p in points if p[2] is not None)
        if not pts:
            continue
        rates = [p[0] for p in pts]
        ax.plot(rates, [p[2] for p in pts], color=color, marker="o", linewidth=1.5,
                label=_label(f"{name}: p95 ({measured_label})", 70))
        ax.plot(rates, [p[1] for p in pts], color=color, linestyle=":", linewidth=1.1, label=_label(f"{name}: p50", 70))
        for rate, value in (projected or {}).get(name, ()):
            ax.plot([rate], [value], linestyle="none", marker="D", markerfacecolor="none", markeredgecolor=color)
    if projected:
        ax.plot([], [], linestyle="none", marker="D", markerfacecolor="none", markeredgecolor="#111827",
                label="p95 projected by the plan")
    ax.set_xlabel("offered request rate, requests/s (Poisson)")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2)
    return _to_svg(fig, "Latency against request rate, per variant")
