"""The main job: `plan --goal GOAL --gpu GPU` (being built)."""

from __future__ import annotations


def add_main_arguments(parser) -> None:
    parser.add_argument("--goal", help="deployment goal, e.g. p95-latency")
    parser.add_argument("--gpu", help="target GPU, e.g. a100")


def run_main(args) -> int:
    from planner.errors import InputError

    if not args.goal:
        raise InputError("--goal is required (e.g. plan --goal p95-latency --gpu a100); see plan --help")
    raise InputError("the main `plan --goal ... --gpu ...` job is not available in this build yet")
