"""`plan run`: prune -> recover -> export -> evaluate -> benchmark, dense and pruned side by side -> results.json.

`run_plan(plan_path, ...)` is the entry point (also used by `plan --goal ... --execute`); the Results document is in
`planner.run.results`.
"""

from __future__ import annotations


def run_plan(*args, **kwargs):
    """See planner.run.runner.run_plan."""
    from planner.run.runner import run_plan as _run_plan

    return _run_plan(*args, **kwargs)


__all__ = ["run_plan"]
