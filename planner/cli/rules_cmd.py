"""`plan rules`: the decision rules (built-in, plus yours), one rule in full, the facts they may name, or a check of
your own rules folder."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  plan rules                          every built-in rule: id, outcome, condition, statement (a table fitted to
                                      the terminal; piped: one rule per line, id<TAB>outcome<TAB>statement)
  plan rules unstructured-no-dense-speedup
                                      one rule in full: condition, outcome, rationale, sources
  plan rules --facts                  the facts a condition may name, their types and where they come from
  plan rules --check my-rules/        validate your own rules folder (exit 0 ok, 2 with the file, rule id, problem)
  plan rules --rules my-rules/        list the built-in rules plus yours
  plan --goal ttft --gpu l4 --rules my-rules/
                                      plan with your rules added to the built-in ones
  plan rules --json                   the rules as JSON

A rules file is YAML: `version: 1` and a list `rules:` of {id, statement, when, then, rationale, sources}.
`when` compares facts: {fact: decode_bound, eq: memory}, with eq ne lt le gt ge in not_in, combined with
all / any / not. `then` is one of propose, dont_prune, suggest, reject, risk, note (see rules/README.md).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rules",
        help="the decision rules: list them, show one, check your own rules folder",
        description="List the decision rules the planner uses (built-in rules/ plus --rules folders), show one rule "
                    "with its rationale and sources, list the facts rules can name, or validate a rules folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("rule_id", nargs="?", help="show this rule in full")
    p.add_argument("--check", metavar="DIR", help="validate the rules in DIR (with the built-in ones, for id clashes)")
    p.add_argument("--rules", action="append", default=None, metavar="DIR", help="add your rules folder; repeatable")
    p.add_argument("--facts", action="store_true", help="list the facts conditions may name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.cli._out import console, escape, print_json
    from planner.decide.rules import load_rules

    if args.facts:
        return _show_facts(args)
    if args.check:
        ruleset = load_rules([args.check])  # raises InputError naming the file, the rule and the problem
        own = [r for r in ruleset.rules if _is_under(ruleset.origin[r.id], args.check)]
        if args.json:
            print_json({"ok": True, "folder": args.check, "rules": [r.id for r in own]})
        else:
            console().print(f"[green]ok[/]: {len(own)} rule(s) in {escape(args.check)} are valid "
                            f"({', '.join(escape(r.id) for r in own)}); use them with "
                            f"`plan --goal ... --rules {escape(args.check)}`")
        return 0
    ruleset = load_rules(args.rules or [])
    if args.rule_id:
        from planner.errors import InputError

        try:
            rule = ruleset.by_id(args.rule_id)
        except KeyError as exc:
            raise InputError(exc.args[0]) from None
        return _show_one(rule, ruleset, args)
    if args.json:
        print_json({"version": ruleset.version, "rules": [_rule_json(r, ruleset) for r in ruleset.rules]})
        return 0
    import sys

    if not sys.stdout.isatty():
        # piped: one rule per line, tab-separated (id, outcome, statement), for grep and cut; no table to reflow
        for rule in ruleset.rules:
            fields = (rule.id, _outcome(rule), rule.statement)
            sys.stdout.write("\t".join(" ".join(str(f).split()) for f in fields) + "\n")
        return 0
    from rich.table import Table

    out = console()
    out.soft_wrap = False  # cells wrap inside their column at the terminal's width
    table = Table(title=f"decision rules (version {ruleset.version}; `plan rules ID` shows one in full)",
                  title_justify="left", expand=False)
    table.add_column("id", overflow="fold", ratio=2)
    table.add_column("outcome", ratio=2)
    table.add_column("when", ratio=3)
    table.add_column("statement", ratio=4)
    for rule in ruleset.rules:
        table.add_row(escape(rule.id), escape(_outcome(rule)),
                      escape(rule.when.describe()), escape(rule.statement))
    out.print(table)
    return 0


def _is_under(path, folder) -> bool:
    from pathlib import Path

    return Path(folder).resolve() in Path(path).resolve().parents


def _outcome(rule) -> str:
    then = rule.then
    action = then.action
    if action == "propose":
        prop = then.propose
        parts = []
        if prop.spec is not None:
            parts.append(prop.spec["kind"] + (f" {prop.ratios}" if prop.ratios else ""))
        if prop.quantize:
            parts.append(", ".join(q if isinstance(q, str) else q.get("scheme", "?") for q in prop.quantize))
        if prop.tensor_parallel:
            parts.append("tensor parallel " + "/".join(map(str, prop.tensor_parallel)))
        return "propose " + " + ".join(parts)
    if action in ("dont_prune", "suggest"):
        return f"{action}: {', '.join(getattr(then, action))}"
    if action == "risk":
        return f"risk {then.risk}"
    return action


def _rule_json(rule, ruleset) -> dict:
    data = rule.model_dump(mode="json", exclude_none=True)
    data["then"] = {k: v for k, v in data["then"].items() if v is not None}
    data["file"] = ruleset.origin[rule.id].name
    return data


def _show_one(rule, ruleset, args) -> int:
    from planner.cli._out import console, escape, print_json

    if args.json:
        print_json(_rule_json(rule, ruleset))
        return 0
    con = console()
    con.print(f"[bold]{escape(rule.id)}[/] [dim]({escape(str(ruleset.origin[rule.id]))})[/]")
    con.print(f"  statement: {escape(rule.statement)}")
    con.print(f"  when:      {escape(rule.when.describe())}")
    con.print(f"  then:      {escape(_outcome(rule))}")
    for text in (rule.then.reject, rule.then.note):
        if text:
            con.print(f"             {escape(text)}")
    con.print(f"  rationale: {escape(rule.rationale)}")
    for source in rule.sources:
        con.print(f"  source:    {escape(source)}")
    return 0


def _show_facts(args) -> int:
    from rich.table import Table

    from planner.cli._out import console, escape, print_json
    from planner.decide.facts import FACTS

    if args.json:
        print_json([{"name": f.name, "type": f.type, "scope": f.scope, "source": f.source,
                     "description": f.description, "choices": list(f.choices)} for f in FACTS.values()])
        return 0
    table = Table(title="facts a rule condition may name", title_justify="left")
    for col in ("fact", "type", "scope", "from", "meaning"):
        table.add_column(col, max_width=70 if col == "meaning" else None)
    for f in FACTS.values():
        kind = f.type + (f" ({', '.join(f.choices)})" if f.choices else "")
        table.add_row(f.name, escape(kind), f.scope, escape(f.source), escape(f.description))
    console().print(table)
    return 0
