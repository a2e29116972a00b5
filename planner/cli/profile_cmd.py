"""`plan profile` (being built)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("profile", help="(not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.errors import InputError

    raise InputError("`plan profile` is not available in this build yet")
