"""`plan gate RESULTS --policy POLICY`: the pre-launch check over results.json; exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

EPILOG = """\
examples:
  plan gate runs/plan-1a2b/results.json --policy examples/gate.yaml
  plan gate results.json --policy gate.yaml --json                 the GateReport as JSON on stdout
  plan gate results.json --policy gate.yaml --markdown gate.md     a summary for a pull-request comment
  plan gate results.json --policy gate.yaml --variant candidate-2  gate one variant (default: the policy's)

exit codes: 0 every check passed, 1 a check failed (a threshold whose figure is missing from the results fails),
2 bad input (missing or corrupt results, a policy with an unknown key or a bad value).
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "gate",
        help="check results.json against a gate policy (exit 0 pass, 1 fail, 2 bad input)",
        description="Evaluate a pre-launch policy (max perplexity increase, max KL and min teacher agreement per "
                    "slice, min measured speedup of the goal metric, max memory) against results.json and print "
                    "a pass/fail table with measured values and thresholds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", help="results.json written by `plan run`")
    p.add_argument("--policy", required=True, help="gate policy YAML or JSON (see examples/gate.yaml)")
    p.add_argument("--variant", default=None,
                   help='which pruned variant to gate: "best", "all" or a name (default: the policy\'s, '
                        'normally "best")')
    p.add_argument("--json", action="store_true", help="print the gate report as JSON on stdout")
    p.add_argument("--markdown", metavar="OUT.md", default=None,
                   help="also write a Markdown summary (for a pull-request comment); '-' prints it on stdout")
    p.set_defaults(func=run)


MARKDOWN_MARK = "<!-- written by planner gate -->\n"  # how a later --markdown knows the file is one of its own


def is_gate_markdown(path) -> bool:
    from planner.documents import starts_with

    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 200))
        tail = f.read()
    return MARKDOWN_MARK.encode() in tail or starts_with(path, MARKDOWN_MARK.encode(), 200)


def run(args) -> int:
    from planner.cli._out import console, print_json
    from planner.documents import check_output, write_atomic
    from planner.errors import GateFailed, InputError
    from planner.gate import check_gate, load_policy, to_markdown, verdict_line
    from planner.gate.summary import print_table
    from planner.run.results import load_results

    if args.markdown == "-" and args.json:
        raise InputError("--markdown - and --json both want stdout; write the Markdown to a file instead")
    if args.markdown and args.markdown != "-":  # before any work: never a user's file, nor results.json itself
        check_output(args.markdown, "gate summary", is_gate_markdown, "gate.md")
    policy = load_policy(args.policy)
    results = load_results(args.results)
    report = check_gate(results, policy, variant=args.variant, results_path=str(args.results),
                        policy_path=str(args.policy))
    if args.json:
        print_json(report)
    elif args.markdown == "-":
        import sys

        sys.stdout.write(to_markdown(report))
    else:
        print_table(report, console())
    if args.markdown and args.markdown != "-":
        write_atomic(args.markdown, to_markdown(report) + MARKDOWN_MARK, what="gate summary")
    if not report.passed:
        raise GateFailed(verdict_line(report).removeprefix("FAIL: "))
    return 0
