"""Shared console helpers of the subcommands: rich for people, `--json` for machines (defined in planner.console)."""

from __future__ import annotations

from planner.console import console, err_console, escape, print_json

__all__ = ["console", "err_console", "print_json", "escape"]
