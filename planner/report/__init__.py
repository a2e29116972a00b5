"""The HTML report: `render_report(results, out_path, profile=None, plan=None) -> Path` (`plan report`)."""

from planner.report.render import render_html, render_report

__all__ = ["render_report", "render_html"]
