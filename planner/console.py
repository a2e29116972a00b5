"""Console output shared by the CLI and the stages that report progress: rich for people, `--json` for machines.

Low in the layers (it imports no other planner module), so the runner can print progress without importing the CLI;
`planner.cli._out` re-exports these for the subcommands.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str, enabled: bool = True) -> None:
    """A progress line (rich markup) on stderr, when `enabled`."""
    if enabled:
        err_console().print(message)


def print_json(obj: Any) -> None:
    """Print a pydantic model, dict or list as JSON on stdout."""
    if hasattr(obj, "model_dump_json"):
        sys.stdout.write(obj.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


__all__ = ["console", "err_console", "say", "print_json", "escape"]
