"""`plan calibrate RESULTS`: feed a run's measured dense latency back into the projection for this host, and its
measured recovery factors into the store later plans predict quality with."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  plan --goal p95-latency --gpu cpu --threads 1      plan for this host (measures it once)
  plan run plan.json --threads 1                     measures dense and the candidate through hf-eager
  plan calibrate runs/plan-1a2b/results.json         per-step and per-request host time from that run
  plan --goal p95-latency --gpu cpu --threads 1      later plans for this host use the calibrated figures

`plan run` calibrates automatically after a run of a --gpu cpu plan; this command does it for an older run.
The recovery factors of the run's recovered candidates (one-shot -> recovered perplexity) are recorded from any
plan's run, whatever its GPU.
The calibration is stored under the planner cache (calibration/), keyed by host, device, threads, runtime and
dtype, with the results file it came from; every later projection for that key names it as its source.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="feed measured dense latency of `plan run` back into this host's projection",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by `plan run` of a --gpu cpu plan")
    p.add_argument("--json", action="store_true", help="print the stored calibration as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.cli._out import console, escape, print_json
    from planner.perf.calibration import calibrate_from_results
    from planner.run.results import load_results

    from planner.probe.recovery import update_factor

    results = load_results(args.results)
    learned = update_factor(results, args.results)
    if results.plan is not None and results.plan.gpu != "cpu" and learned:
        stored = None  # a GPU plan's run cannot calibrate this host's latency; its recovery factors still count
    else:
        stored = calibrate_from_results(results, args.results)
    if args.json:
        print_json({"latency": stored, "recovery_factors": [m.model_dump(mode="json") for m in learned]})
        return 0
    for m in learned:
        console().print(escape(f"recovery factor of {m.variant} ({m.method}, {m.steps} steps, {m.tokens:,} tokens): "
                               f"{m.factor:.3f} measured; later plans predict with it"))
    if stored is None:
        console().print(escape(f"latency: the plan was made for {results.plan.gpu}, not this host: nothing to "
                               "calibrate"))
        return 0
    console().print(escape(f"calibrated {stored['key']['runtime']} on this host ({stored['key']['device']}, "
                           f"{stored['key']['threads']} threads, {stored['key']['dtype']}): per-step host time "
                           f"{stored['step_ms']:.2f} ms, per-request {stored['request_ms']:.1f} ms; "
                           f"from {stored['source']}; stored in {stored['path']}"))
    return 0
