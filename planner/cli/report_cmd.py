"""`plan report RESULTS -o report.html`: one self-contained HTML page from results.json (+ profile.json, plan.json)."""

from __future__ import annotations

EPILOG = """\
examples:
  plan report runs/plan-1a2b/results.json                     writes runs/plan-1a2b/report.html
  plan report results.json -o report.html
  plan report results.json --profile profile.json --plan plan.json -o report.html

profile.json and plan.json are picked up from the folder of results.json when not given (the profile also from
the path plan.json records); a section whose document is missing says "not available". The page works offline
(inline CSS and SVG charts, no script) and prints on A4.
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "report",
        help="render results.json as one self-contained HTML report",
        description="Render the verdict, goal and workload, the dense profile (kernel breakdown, roofline), the "
                    "decision (rules fired, alternatives ruled out), quality against measured latency with the "
                    "Pareto front, predicted against measured speedup, the recovery loss curve and the "
                    "provenance into one HTML file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", help="results.json written by `plan run`")
    p.add_argument("-o", "--output", default=None, help="HTML file to write (default: report.html beside results)")
    p.add_argument("--profile", default=None,
                   help="profile.json (default: the one beside results.json, else the one plan.json records)")
    p.add_argument("--plan", default=None, help="plan.json (default: the one beside results.json, if any)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from planner.cli._out import console, escape
    from planner.report.render import render_report

    results = Path(args.results)
    out = Path(args.output) if args.output else results.parent / "report.html"
    path = render_report(results, out, profile=args.profile, plan=args.plan)
    console().print(f"wrote {escape(str(path))}")
    return 0
