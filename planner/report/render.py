"""Render results.json (and, when present, profile.json and plan.json) into one self-contained HTML page.

    render_report("runs/plan-1a2b/results.json", "report.html")            # profile/plan found beside it
    render_report(results, "report.html", profile=profile, plan=plan)     # documents or their paths

The page works offline: CSS inline, charts inline SVG, no script, no web font. Jinja2 autoescaping is on: model
names, prompts and paths are user data and appear as text.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from planner.errors import InputError
from planner.report import sections
from planner.report.format import FILTERS

TEMPLATE = "report.html.j2"


def _environment():
    import jinja2

    from planner.paths import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,  # every template, whatever its extension: user data is never markup
        undefined=jinja2.StrictUndefined,  # a misspelled field is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def _load_results(results):
    from planner.run.results import Results, load_results

    if isinstance(results, Results):
        return results, None
    if isinstance(results, (str, Path)):
        return load_results(results), Path(results)
    if isinstance(results, dict):
        return Results.model_validate(results), None
    raise InputError(f"results must be a Results document or a path to results.json, got {type(results).__name__}")


def find_beside(results_path: Path | None, name: str) -> Path | None:
    """profile.json / plan.json in the run folder of results.json, if there."""
    if results_path is None:
        return None
    candidate = results_path.parent / name
    return candidate if candidate.is_file() else None


def _try_beside(results_path: Path | None, name: str, loader, problems: dict[str, str]):
    path = find_beside(results_path, name)
    if path is None:
        return None
    try:
        return loader(path)
    except InputError as exc:
        problems[name] = f"{name} beside results.json could not be read: {exc}"
        return None


def _try_plan_profile(plan, problems: dict[str, str]):
    """The cached profile.json the plan was decided on, when the plan records its path and the file is still there."""
    recorded = (getattr(plan, "profile", None) or {}).get("path")
    if not recorded or not Path(recorded).is_file():
        return None
    try:
        return sections.load_profile(Path(recorded))
    except InputError as exc:
        problems["profile.json"] = f"the profile recorded in the plan could not be read: {exc}"
        return None


def render_html(results, profile=None, plan=None) -> str:
    """The report as an HTML string. `profile` and `plan` may be documents, paths, or None ("not available")."""
    results, results_path = _load_results(results)
    problems: dict[str, str] = {}
    # documents given by the caller must load; ones found beside results.json only add sections when they do
    if plan is None:
        plan = _try_beside(results_path, "plan.json", sections.load_plan, problems)
    else:
        plan = sections.load_plan(plan)
    if profile is None:
        profile = _try_beside(results_path, "profile.json", sections.load_profile, problems)
    else:
        profile = sections.load_profile(profile)
    if profile is None and plan is not None:
        profile = _try_plan_profile(plan, problems)
    context = sections.build_context(results, profile, plan, problems=problems)
    context["generated_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(TEMPLATE).render(**context)


def render_report(results, out_path: str | Path, profile=None, plan=None) -> Path:
    """Write the report to `out_path` (atomically) and return the path."""
    from planner.run.results import write_atomic

    from planner.documents import check_output

    out = check_output(out_path, "report", is_report_file, "report.html")  # never a user's file, nor results.json
    html = render_html(results, profile=profile, plan=plan)
    return write_atomic(out, html, what="report")


def is_report_file(path: Path) -> bool:
    """Whether `path` is an HTML report this tool wrote (its generator tag says so)."""
    from planner.documents import starts_with

    return starts_with(path, b'<meta name="generator" content="planner ')


__all__ = ["render_report", "render_html", "find_beside"]

