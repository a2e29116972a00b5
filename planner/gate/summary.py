"""The gate report for people: a terminal table, and Markdown for a pull-request comment. (`--json` is the
GateReport itself.)"""

from __future__ import annotations

from planner.gate.check import GateReport, GateRow

STATUS_TEXT = {"pass": "pass", "fail": "FAIL", "missing": "FAIL (missing)"}
STATUS_MARK = {"pass": "✅ pass", "fail": "❌ fail", "missing": "❌ missing"}


def format_value(value: float | str | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if unit == "frac":
        return f"{100 * value:.2f}%"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "GB":
        return f"{value:.3f} GB"
    if unit == "nats":
        return f"{value:.4f} nats"
    return f"{value:.4g}"


def format_threshold(row: GateRow) -> str:
    op = {"<=": "≤", ">=": "≥", "==": "="}[row.op]
    return f"{op} {format_value(row.threshold, row.unit)}"


def verdict_line(report: GateReport) -> str:
    failed = report.failed
    n = len(report.rows)
    if not failed:
        return f"PASS: {n} of {n} checks passed"
    by_variant: dict[str, list[str]] = {}
    for r in failed:
        name = r.check + (f"[{r.slice}]" if r.slice and r.slice != "*" else "")
        by_variant.setdefault(r.variant, [])
        if name not in by_variant[r.variant]:
            by_variant[r.variant].append(name)
    if len(report.variants) > 1:
        names = "; ".join(f"{variant}: {', '.join(checks)}" for variant, checks in by_variant.items())
    else:
        names = ", ".join(c for checks in by_variant.values() for c in checks)
    return f"FAIL: {len(failed)} of {n} checks failed ({names})"


def _md(text: str) -> str:
    """User text inside a Markdown table cell: pipes and markup characters escaped, no raw HTML."""
    out = str(text)
    for ch in "\\|`*_[]<>#":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


def to_markdown(report: GateReport) -> str:
    icon = "✅" if report.passed else "❌"
    lines = [
        f"### {icon} Pre-launch gate: {_md(verdict_line(report))}",
        "",
        f"Variant{'s' if len(report.variants) != 1 else ''}: {', '.join(_md(v) for v in report.variants) or 'none'}"
        f" · goal {_md(report.goal)} · target GPU {_md(report.target_gpu)}"
        f" · figures measured on {_md(report.measured_on)}",
        "",
        "| Check | Variant | Measured | Threshold | Result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in report.rows:
        subject = _md(r.subject) + (f" <br>*{_md(r.note)}*" if r.note else "")
        lines.append(f"| `{r.check}`: {subject} | {_md(r.variant)} | {format_value(r.measured, r.unit)} "
                     f"| {format_threshold(r)} | {STATUS_MARK[r.status]} |")
    lines += [f"> **Warning:** {_md(w)}" for w in report.warnings]
    lines += ["", "A check whose figure is missing from the results fails. Speedups are measured, not projected."]
    if report.results_path:
        lines.append(f"Results: `{report.results_path.replace('`', '')}`")
    return "\n".join(lines) + "\n"


def print_table(report: GateReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    several = len(report.variants) > 1
    table = Table(title=f"pre-launch gate: {escape(', '.join(report.variants) or 'no pruned variant')}",
                  title_justify="left")
    columns = [("check", "left")] + ([("variant", "left")] if several else []) + [
        ("measured", "right"), ("threshold", "right"), ("result", "left")]
    for col, justify in columns:
        table.add_column(col, justify=justify)
    for r in report.rows:
        style = "green" if r.passed else "bold red"
        name = r.check + (f"[{r.slice}]" if r.slice and r.slice != "*" else "")
        what = f"{escape(name)}\n[dim]{escape(r.subject)}[/]" + (f"\n[italic]{escape(r.note)}[/]" if r.note else "")
        cells = [what] + ([escape(r.variant)] if several else []) + [
            format_value(r.measured, r.unit), format_threshold(r), f"[{style}]{STATUS_TEXT[r.status]}[/]"]
        table.add_row(*cells)
    console.print(table)
    console.print(f"figures measured on {escape(report.measured_on)}; goal {escape(report.goal)}, "
                  f"target GPU {escape(report.target_gpu)}")
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    style = "bold green" if report.passed else "bold red"
    console.print(f"[{style}]{escape(verdict_line(report))}[/]")
