"""Shared console helpers of the subcommands: rich for people, `--json` for machines (defined in planner.console)."""

from __future__ import annotations

import json
import sys

from planner.console import console, err_console, escape, print_json


def print_error(message: str, exit_code: int, *, as_json: bool = False, prefix: str = "error") -> None:
    """An error on stderr: `error: ...` for people, or with `--json` one JSON object {"error", "exit"} so a
    script reading the command's JSON output can read its failure the same way."""
    if as_json:
        sys.stderr.write(json.dumps({"error": message, "exit": exit_code}) + "\n")
    else:
        err_console().print(f"[bold red]{prefix}:[/] {escape(message)}")


__all__ = ["console", "err_console", "print_json", "print_error", "escape"]
