"""Rules as data: YAML files under `rules/` (and any folder given with `--rules DIR`), validated when loaded.

A rules file:

```yaml
version: 1
rules:
  - id: unstructured-no-dense-speedup
    statement: Unstructured sparsity does not make a dense GPU kernel faster.
    when:
      all:
        - {fact: kind, eq: unstructured}
        - {fact: goal, in: [p50-latency, p95-latency, p99-latency, ttft, tpot, throughput, cost-per-token]}
    then:
      reject: "predicted {goal} speedup {speedup} on {gpu}: dense kernels multiply the zeros"
    rationale: A dense GEMM reads and multiplies every weight, zero or not ...
    sources:
      - "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks, arXiv:2104.08378"
```

`then` holds exactly one outcome:

| outcome      | scope     | effect                                                                                  |
| ------------ | --------- | --------------------------------------------------------------------------------------- |
| `propose`    | context   | adds candidates: a partial pruning spec, a list of ratios, a list of recoveries          |
| `dont_prune` | context   | "don't prune": every candidate is rejected, the verdict names the levers that fit       |
| `suggest`    | context   | other levers worth using with or instead of pruning                                      |
| `reject`     | candidate | rejects matching candidates; the text (with {placeholders}) is the reason shown         |
| `risk`       | candidate | sets the quality-risk tier (low, medium, high, severe); the highest firing tier counts  |
| `note`       | candidate | adds a reason to matching candidates ("why" in the table)                               |

Context-scope rules may name only context facts (see planner.decide.facts). A typo'd key, an unknown fact, a value a
fact cannot take, or an unknown placeholder fails at load time with the file and the rule id.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, model_validator

from planner.decide.conditions import Always, ConditionError, parse_condition
from planner.decide.facts import CANDIDATE_FACTS, RISK_TIERS
from planner.errors import InputError, did_you_mean
from planner.paths import rules_dir

RULES_FORMAT_VERSION = 1

# other levers than pruning; `dont_prune` and `suggest` name these
LEVERS: dict[str, str] = {
    "quantization": "weight quantization (int8/fp8 or 4-bit weight-only): fewer bytes per weight, same shapes",
    "distillation": "distil into a smaller dense model (a student with fewer layers or a narrower width)",
    "batching": "continuous batching / larger batches: more tokens per weight read",
    "kv-cache": "KV-cache quantization or paging: more sequences per GB of memory",
    "prefix-caching": "prefix caching: reuse the KV cache of shared prompt prefixes, skip their prefill",
    "speculative-decoding": "speculative decoding: a small draft model proposes tokens the model verifies in one pass",
    "serving-path": "fix the serving path (queueing, tokenization, network), where the time actually goes",
    "dynamic-sparsity": "dynamic (contextual) sparsity: skip the MLP neurons and heads a cheap predictor marks "
                        "inactive for each token; needs its own kernels, pays off in small-batch decode",
    "model-parallelism": "shard the model over several GPUs (tensor or pipeline parallelism) or choose a GPU with "
                         "more memory",
    "runtime": "serve with a runtime that removes per-step overhead: CUDA graphs and fused kernels (vLLM, "
               "TensorRT-LLM, torch.compile) instead of eager dispatch",
}
Lever = Literal[tuple(LEVERS)]  # type: ignore[valid-type]

# placeholders a reject/note/statement/rationale text may use; filled by the engine for each candidate
PLACEHOLDERS = ("gpu", "gpu_name", "goal", "dtype", "metric", "speedup", "gain_pct", "plan", "kind", "ratio_pct",
                "tier", "budget_pct", "non_model_share_pct", "batch_size", "traffic_batch", "group_size", "num_kv_heads",
                "memory_gb", "gpu_memory_gb", "predicted_memory_gb", "runtime", "decode_overhead_pct",
                "prefill_overhead_pct", "scheme", "tensor_parallel", "gpu_usable_memory_gb")


def _condition(value: Any):
    try:
        return parse_condition(value)
    except ConditionError as exc:
        raise ValueError(str(exc)) from None


Condition = Annotated[Any, BeforeValidator(_condition), PlainSerializer(lambda c: c.to_dict())]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Proposal(_Doc):
    """Candidates to consider. `spec`: a pruning spec without its ratio (one candidate per ratio); `quantize`:
    quantization schemes (each alone, or with every pruning ratio when `spec` is given too); `tensor_parallel`:
    GPU counts to shard over (likewise). Every combination is a candidate, once per recovery."""

    spec: dict[str, Any] | None = None
    ratios: list[float] = Field(default_factory=list, description="fraction removed; layers: of the layers")
    quantize: list[str | dict[str, Any]] = Field(default_factory=list,
                                                 description="schemes, e.g. int8-weight-only or {scheme: ..., "
                                                             "group_size: 128}")
    tensor_parallel: list[int] = Field(default_factory=list, description="GPUs to shard over, e.g. [2, 4]")
    recovery: list[str | dict[str, Any]] = Field(default_factory=lambda: ["distill"])

    @model_validator(mode="after")
    def _check(self) -> "Proposal":
        if self.spec is None and not self.quantize and not self.tensor_parallel:
            raise ValueError("a proposal needs a pruning `spec`, `quantize` schemes or `tensor_parallel` counts")
        if self.spec is not None:
            self._check_spec()
        elif self.ratios:
            raise ValueError(f"ratios: only a pruning `spec` takes ratios, got {self.ratios}")
        for choice in self.quantize:
            quant_spec(choice)
        bad = [n for n in self.tensor_parallel if not 2 <= n <= 16]
        if bad:
            raise ValueError(f"tensor_parallel: GPU counts from 2 to 16 (got {bad[0]!r})")
        for choice in self.recovery:
            recovery_spec(choice)
        return self

    def _check_spec(self) -> None:
        from planner.kinds import get_kind, kind_names

        kind = self.spec.get("kind")
        accepted = kind_names(prunes=True)
        if kind not in accepted:
            raise ValueError("spec.kind: " + did_you_mean(str(kind), accepted, "pruning kind"))
        ratio_field = get_kind(kind).ratio_field
        if ratio_field:
            if ratio_field in self.spec:
                raise ValueError(f"spec.{ratio_field}: give the amounts in `ratios`, not in the spec")
            if not self.ratios:
                raise ValueError(f"ratios: a {kind} proposal needs at least one ratio")
            bad = [r for r in self.ratios if not 0 < r < 1]
            if bad:
                raise ValueError(f"ratios: each ratio is a fraction removed, 0 < r < 1 (got {bad[0]!r})")
        elif self.ratios:
            raise ValueError(f"ratios: a {kind} proposal has no ratio (N:M fixes it), got {self.ratios}")
        for ratio in self.ratios or [None]:
            build_spec(self.spec, ratio, num_layers=100)  # raises on a bad field or value


class Outcome(_Doc):
    propose: Proposal | None = None
    dont_prune: list[Lever] | None = Field(None, description="levers that fit instead of pruning")
    suggest: list[Lever] | None = None
    reject: str | None = None
    risk: Literal[RISK_TIERS] | None = None  # type: ignore[valid-type]
    note: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "Outcome":
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"`then` needs exactly one outcome of {', '.join(type(self).model_fields)}; "
                             f"got {given or 'none'}")
        for text in (self.reject, self.note):
            if text is not None:
                check_placeholders(text)
        return self

    @property
    def action(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def scope(self) -> str:
        return "context" if self.action in ("propose", "dont_prune", "suggest") else "candidate"


class Rule(_Doc):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    statement: str = Field(min_length=1)
    when: Condition = Field(default_factory=Always)
    then: Outcome
    rationale: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "Rule":
        check_placeholders(self.statement)
        if self.then.scope == "context":
            used = sorted(self.when.facts_used() & set(CANDIDATE_FACTS))
            if used:
                raise ValueError(f"a `{self.then.action}` rule decides before candidates exist, so it cannot name "
                                 f"candidate facts: {', '.join(used)}")
        if any(not s.strip() for s in self.sources):
            raise ValueError("sources: an empty source")
        return self


class RuleFile(_Doc):
    version: int = RULES_FORMAT_VERSION
    rules: list[dict[str, Any]]  # validated one by one, so an error can name the rule id

    @model_validator(mode="after")
    def _version(self) -> "RuleFile":
        if self.version != RULES_FORMAT_VERSION:
            raise ValueError(f"version {self.version} is not supported (accepted: {RULES_FORMAT_VERSION})")
        return self


@dataclass
class RuleSet:
    rules: list[Rule]
    origin: dict[str, Path] = field(default_factory=dict)  # rule id -> file
    files: list[Path] = field(default_factory=list)
    version: str = ""  # "1+<sha256 of the files' bytes, 12 hex>": which rules a plan was decided with

    def by_id(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(did_you_mean(rule_id, [r.id for r in self.rules], "rule"))


# -- specs built from proposals ---------------------------------------------------------------------------------


def build_spec(partial: dict[str, Any], ratio: float | None, *, num_layers: int):
    """A concrete PruneSpec: `partial` plus the ratio in the field the kind uses (layers: a count of layers)."""
    from planner.kinds import get_kind
    from planner.prune.specs import parse_spec

    data = get_kind(partial["kind"]).with_ratio(dict(partial), ratio, num_layers=num_layers)
    try:
        return parse_spec(data)
    except ValidationError as exc:
        raise ValueError("spec: " + _describe_errors(exc, get_kind(partial["kind"]).spec)) from None


def quant_spec(choice: str | dict[str, Any]):
    from planner.quant.specs import SCHEMES, QuantSpec

    data = {"scheme": choice} if isinstance(choice, str) else dict(choice)
    if data.get("scheme") not in SCHEMES:
        raise ValueError("quantize: " + did_you_mean(str(data.get("scheme")), SCHEMES, "quantization scheme"))
    try:
        return QuantSpec(**data)
    except ValidationError as exc:
        raise ValueError("quantize: " + _describe_errors(exc, QuantSpec)) from None


def recovery_spec(choice: str | dict[str, Any], defaults: dict[str, Any] | None = None):
    """A RecoverySpec from a rule's choice ("distill" or a dict of fields); `defaults` (the plan's recovery budget)
    fill the fields the rule left out, for every method but "none"."""
    from planner.recover.specs import RecoverySpec

    data = {"method": choice} if isinstance(choice, str) else dict(choice)
    if defaults and data.get("method", "distill") != "none":
        data = {**defaults, **data}
    try:
        return RecoverySpec(**data)
    except ValidationError as exc:
        raise ValueError("recovery: " + _describe_errors(exc, RecoverySpec)) from None


MAX_TEXT = 2000  # characters of a rule text, before and after its placeholders are filled
MAX_FORMAT_WIDTH = 40  # a placeholder's format spec pads to at most this many characters
_SPEC = re.compile(r"^(?:.?[<>=^])?[+\- ]?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?$")


def check_placeholders(text: str) -> None:
    """Every {placeholder} is a known fact, with a plain format spec (e.g. {speedup:.2f}) of bounded width."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"text {text[:40]!r}... is {len(text)} characters (accepted: at most {MAX_TEXT})")
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone "{" or "}"
        raise ValueError(f"text {text[:60]!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ValueError("text " + repr(text[:60]) + ": " + did_you_mean(name[:40] or "{}", PLACEHOLDERS,
                                                                              "placeholder"))
        match = _SPEC.match(spec or "")
        if conversion not in (None, "s", "r") or match is None or not _formats(spec):
            raise ValueError(f"text {text[:60]!r}: placeholder {{{name}}} has an invalid format "
                             f"{(('!' + conversion) if conversion else '') + ':' + spec[:20]!r} (accepted: a "
                             "plain Python format spec such as :.2f or :>8, no nested fields)")
        if int(match["width"] or 0) > MAX_FORMAT_WIDTH or int(match["precision"] or 0) > MAX_FORMAT_WIDTH:
            raise ValueError(f"text {text[:60]!r}: placeholder {{{name}:{spec[:20]}}} pads too wide "
                             f"(accepted: width and precision at most {MAX_FORMAT_WIDTH})")


def _formats(spec: str) -> bool:
    """Whether the spec formats a number or a text (the values a placeholder may take)."""
    for sample in (1.5, 2, "text"):
        try:
            format(sample, spec)
            return True
        except (ValueError, TypeError):
            continue
    return False


def fill(text: str, values: dict[str, Any]) -> str:
    """A rule text with its placeholders filled; unknown values read '?'."""

    class _Safe(string.Formatter):
        def get_value(self, key, args, kwargs):
            value = kwargs.get(key) if isinstance(key, str) else None
            return "?" if value is None else value

        def format_field(self, value, format_spec):
            try:
                return format(value, format_spec)
            except (ValueError, TypeError):  # "{speedup:.2f}" of a value that is missing ("?") or a text
                return str(value)

    try:
        filled = _Safe().vformat(text, (), values)
    except (ValueError, IndexError, KeyError, AttributeError):  # a text that skipped the load-time check
        filled = text
    return filled if len(filled) <= MAX_TEXT else filled[:MAX_TEXT - 3] + "..."


# -- loading ------------------------------------------------------------------------------------------------------


def _describe_errors(exc: ValidationError, model: type[BaseModel] | None) -> str:
    from planner.documents import describe_validation

    return describe_validation(exc, model, noun="key")


def _display(path: Path) -> str:
    """A path relative to the working directory when it is below it, else as given."""
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def load_rule_file(path: str | Path) -> list[Rule]:
    """The rules of one file; InputError names the file, the rule id and the problem."""
    path = Path(path)
    shown = _display(path)
    from planner.documents import load_document

    # libyaml's parser when present; duplicate keys, non-finite numbers, binary files and alias bombs are refused
    data = load_document(path, "rules file", where=shown)
    if not isinstance(data, dict):
        raise InputError(f"{shown}: a rules file is a mapping with `version` and `rules` "
                         f"(got {type(data).__name__})")
    try:
        doc = RuleFile.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{shown}: {_describe_errors(exc, RuleFile)}") from None
    rules = []
    for index, raw in enumerate(doc.rules):
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"rule {rule_id!r}" if rule_id else f"rule #{index + 1} (no id)"
        if not isinstance(raw, dict):
            raise InputError(f"{shown}: {label}: a rule is a mapping (id, statement, when, then, rationale, sources)")
        try:
            rules.append(Rule.model_validate(raw))
        except ValidationError as exc:
            raise InputError(f"{shown}: {label}: {_describe_errors(exc, Rule)}") from None
    return rules


def rule_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"rules folder {str(folder)!r} does not exist or is not a folder")
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_rules(extra_dirs: list[str | Path] | None = None, *, builtin: bool = True) -> RuleSet:
    """The built-in rules (rules/) plus every folder in `extra_dirs`. Duplicate rule ids are errors."""
    folders = [(rules_dir(), True)] if builtin else []
    folders += [(Path(d), False) for d in (extra_dirs or [])]
    ruleset = RuleSet(rules=[])
    digest = hashlib.sha256()
    for folder, is_builtin in folders:
        files = rule_files(folder)
        if not files and not is_builtin:
            raise InputError(f"rules folder {str(folder)!r} has no *.yaml files")
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
            for rule in load_rule_file(path):
                if rule.id in ruleset.origin:
                    raise InputError(f"{_display(path)}: rule {rule.id!r} is already defined in "
                                     f"{_display(ruleset.origin[rule.id])}; rule ids must be unique")
                ruleset.origin[rule.id] = path
                ruleset.rules.append(rule)
            ruleset.files.append(path)
    ruleset.version = f"{RULES_FORMAT_VERSION}+{digest.hexdigest()[:12]}"
    return ruleset
