"""Errors the CLI turns into exit codes.

`InputError` is bad input from the user (a path, a name, a value, a file): the CLI prints its message and exits 2.
Its message must name the bad value and what would be accepted.
"""

from __future__ import annotations

import difflib
import errno
from typing import Iterable


class InputError(Exception):
    """Bad user input; exit code 2."""

    exit_code = 2


class GateFailed(Exception):
    """A pre-launch gate that did not pass; exit code 1."""

    exit_code = 1


class RunIncomplete(Exception):
    """The run's results are written but a promised output (report.html) is not; exit code 3."""

    exit_code = 3


# OS errors that mean "this path cannot be used" (the user's to fix, exit 2), not a bug in the tool
OS_INPUT_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOSPC: "disk full",
                   errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded",
                   errno.ENOTDIR: "a parent is not a folder", errno.EISDIR: "it is a folder",
                   errno.ENAMETOOLONG: "name too long", errno.ENOENT: "no such file or folder",
                   errno.EEXIST: "a file is in the way of a folder"}


def did_you_mean(value: str, choices: Iterable[str], what: str) -> str:
    """'unknown GPU 'a10'; did you mean a10g?' plus the accepted list."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(value[:200], choices, n=3, cutoff=0.5)
    # after the closest spellings, a name the value starts (e.g. "h100" -> "h100-sxm")
    prefixed = [c for c in choices if c.startswith(value) and c not in close]
    hints = (close + prefixed)[:3]
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:68] + "..."
    msg = f"unknown {what} {shown}"
    if hints:
        msg += f"; did you mean {' or '.join(dict.fromkeys(hints))}?"
    msg += f" (accepted: {', '.join(choices)})"
    return msg
