"""The condition language of rules: comparisons of named facts, combined with all / any / not. Parsed, never eval'd.

    when:
      all:
        - {fact: goal, in: [p95-latency, p99-latency]}
        - {fact: decode_bound, eq: memory}
        - not: {fact: gpu_sparse_2to4, eq: true}

Operators: eq, ne, lt, le, gt, ge (numbers only), in, not_in (a list). `eq: null` / `ne: null` test whether a fact
is unknown; any other comparison with an unknown fact is false. Facts and values are checked against the registry
in planner.decide.facts when the rule is loaded.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from planner.decide.facts import FACTS, check_value
from planner.errors import did_you_mean

COMPARE_OPS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
               "gt": operator.gt, "ge": operator.ge}
LIST_OPS = ("in", "not_in")
OPS = (*COMPARE_OPS, *LIST_OPS)
_SYMBOL = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "in": "in", "not_in": "not in"}


class ConditionError(ValueError):
    """A condition that does not parse; the message names the bad part."""


@dataclass(frozen=True)
class Compare:
    fact: str
    op: str
    value: Any

    def evaluate(self, facts: dict[str, Any]) -> bool:
        actual = facts.get(self.fact)
        if self.value is None:  # eq/ne null: is the fact unknown?
            return (actual is None) == (self.op == "eq")
        if actual is None:
            return False
        if self.op == "in":
            return actual in self.value
        if self.op == "not_in":
            return actual not in self.value
        return bool(COMPARE_OPS[self.op](actual, self.value))

    def facts_used(self) -> set[str]:
        return {self.fact}

    def describe(self) -> str:
        value = self.value
        if isinstance(value, (list, tuple)):
            shown = "{" + ", ".join(_show(v) for v in value) + "}"
        else:
            shown = _show(value)
        return f"{self.fact} {_SYMBOL[self.op]} {shown}"

    def to_dict(self) -> dict:
        return {"fact": self.fact, self.op: list(self.value) if isinstance(self.value, tuple) else self.value}


@dataclass(frozen=True)
class AllOf:
    items: tuple
    word = "all"

    def evaluate(self, facts: dict[str, Any]) -> bool:
        return all(c.evaluate(facts) for c in self.items)

    def facts_used(self) -> set[str]:
        return set().union(*(c.facts_used() for c in self.items))

    def describe(self) -> str:
        return " and ".join(_group(c) for c in self.items)

    def to_dict(self) -> dict:
        return {self.word: [c.to_dict() for c in self.items]}


@dataclass(frozen=True)
class AnyOf(AllOf):
    word = "any"

    def evaluate(self, facts: dict[str, Any]) -> bool:
        return any(c.evaluate(facts) for c in self.items)

    def describe(self) -> str:
        return " or ".join(_group(c) for c in self.items)


@dataclass(frozen=True)
class Not:
    item: Any

    def evaluate(self, facts: dict[str, Any]) -> bool:
        return not self.item.evaluate(facts)

    def facts_used(self) -> set[str]:
        return self.item.facts_used()

    def describe(self) -> str:
        return f"not {_group(self.item)}"

    def to_dict(self) -> dict:
        return {"not": self.item.to_dict()}


@dataclass(frozen=True)
class Always:
    """A rule with no `when`: it always applies."""

    def evaluate(self, facts: dict[str, Any]) -> bool:
        return True

    def facts_used(self) -> set[str]:
        return set()

    def describe(self) -> str:
        return "always"

    def to_dict(self) -> dict:
        return {}


Condition = Compare | AllOf | AnyOf | Not | Always


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unknown"
    return str(value)


def _group(c) -> str:
    text = c.describe()
    return f"({text})" if isinstance(c, AllOf) and len(c.items) > 1 else text


def _at(where: str, part: str) -> str:
    return f"{where}.{part}" if where else part


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def parse_condition(data: Any, where: str = "") -> Condition:
    """Turn the YAML form into a Condition; ConditionError names the bad key, fact or value and its place
    (`where`: the path inside `when`, e.g. all[1].not)."""
    if data is None or data == {}:
        return Always()
    if not isinstance(data, dict):
        raise ConditionError(f"{_prefix(where)}a condition is a mapping (fact/all/any/not), got {data!r}")
    if "fact" in data:
        return _parse_compare(data, where)
    keys = set(data)
    if len(keys) != 1 or not keys <= {"all", "any", "not"}:
        extra = sorted(keys - {"all", "any", "not"})
        if extra:
            keys_ok = ["fact", "all", "any", "not"]
            raise ConditionError(_prefix(where) + did_you_mean(extra[0], keys_ok, "condition key"))
        raise ConditionError(f"{_prefix(where)}use exactly one of all/any/not per mapping, got {sorted(keys)}")
    (word, body), = data.items()
    if word == "not":
        return Not(parse_condition(body, _at(where, "not")))
    if not isinstance(body, list) or not body:
        raise ConditionError(f"{_at(where, word)}: expects a non-empty list of conditions, got {body!r}")
    items = tuple(parse_condition(c, _at(where, f"{word}[{i}]")) for i, c in enumerate(body))
    return AllOf(items) if word == "all" else AnyOf(items)


def _parse_compare(data: dict, where: str) -> Compare:
    name = data["fact"]
    if not isinstance(name, str) or name not in FACTS:
        raise ConditionError(_prefix(where) + did_you_mean(str(name), FACTS, "fact"))
    fact = FACTS[name]
    ops = [k for k in data if k != "fact"]
    unknown = [k for k in ops if k not in OPS]
    if unknown:
        raise ConditionError(f"{_prefix(where)}fact {name!r}: " + did_you_mean(unknown[0], OPS, "operator"))
    if len(ops) != 1:
        raise ConditionError(f"{_prefix(where)}fact {name!r}: give exactly one operator of {', '.join(OPS)}, got {ops}")
    op = ops[0]
    value = data[op]
    if op in LIST_OPS:
        if not isinstance(value, list) or not value:
            raise ConditionError(f"{_prefix(where)}fact {name!r}: {op} expects a non-empty list, got {value!r}")
        for v in value:
            _check(fact, v, where)
        return Compare(name, op, tuple(value))
    if value is None:
        if op not in ("eq", "ne"):
            raise ConditionError(f"{_prefix(where)}fact {name!r}: only eq/ne can compare with null")
        return Compare(name, op, None)
    if op in ("lt", "le", "gt", "ge") and fact.type != "number":
        raise ConditionError(f"{_prefix(where)}fact {name!r}: {op} needs a number fact; {name!r} is {fact.type}")
    _check(fact, value, where)
    return Compare(name, op, value)


def _check(fact, value, where: str) -> None:
    problem = check_value(fact, value)
    if problem:
        raise ConditionError(f"{_prefix(where)}fact {fact.name!r}: {problem}")
