"""Candidates from the rules that fired: granularity x criterion x a grid of ratios x recovery.

Ratios round to what the model can actually remove (whole KV groups, whole layers, MLP widths in multiples of
`round_to`), so two proposals that land on the same shape become one candidate that remembers both rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.decide.rules import Rule, build_spec, recovery_spec
from planner.kinds import get_kind


@dataclass
class Draft:
    """A candidate before prediction and ranking: a pruning step, a quantization scheme, tensor parallelism (any
    of them None) and a recovery."""

    prune: object  # a PruneSpec, or None
    recovery: object  # a RecoverySpec
    proposed_by: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    quantize: object = None  # a QuantSpec, or None
    shard: object = None  # a ShardSpec, or None


def ratio_text(spec, shape) -> str:
    """How much the step removes, in words a reader checks against the model: '-25%', '-3 of 30 layers'."""
    return get_kind(spec).ratio_text(spec, shape)


def _prunes(spec) -> bool:
    return spec is not None and spec.kind != "none"


def candidate_name(spec, recovery, shape, *, quantize=None, shard=None) -> str:
    parts = []
    if _prunes(spec) or (quantize is None and shard is None):
        parts += [spec.kind, get_kind(spec).amount(spec), getattr(spec, "criterion", "")] if spec is not None else []
    if quantize is not None:
        parts.append(quantize.scheme + (f"-g{quantize.group_size}" if quantize.group_size else ""))
    if shard is not None:
        parts.append(f"tp{shard.tensor_parallel}")
    return "-".join(x for x in (*parts, recovery.method) if x)


def candidate_label(spec, recovery, shape, *, quantize=None, shard=None) -> str:
    parts = []
    if _prunes(spec) or (spec is not None and quantize is None and shard is None):
        criterion = getattr(spec, "criterion", None)
        text = f"{get_kind(spec).label} {ratio_text(spec, shape)}".strip()
        parts.append(f"{text} ({criterion})" if criterion else text)
    if quantize is not None:
        parts.append(quantize.label)
    if shard is not None:
        parts.append(shard.label)
    text = " + ".join(parts)
    if recovery.method != "none":
        text += f" + {recovery.method}"
    return text


def drafts_from(proposals: list[tuple[Rule, str]], shape, *, defaults: dict[str, dict] | None = None,
                recovery_defaults: dict | None = None) -> tuple[list[Draft], list[tuple[Draft, str]]]:
    """Every concrete (spec, quantization, sharding, recovery) the fired `propose` rules ask for, merged when they
    land on the same model; and the ones the model cannot take, with the reason.

    `proposals` holds (rule, statement with placeholders filled); `defaults` fills spec fields a rule left out,
    by kind (e.g. {"mlp_channels": {"round_to": 64}} for the target GPU's tile); `recovery_defaults` fill the
    recovery fields a rule left out (the plan's budget in steps and tokens)."""
    from planner.decide.plan import ShardSpec
    from planner.decide.rules import quant_spec
    from planner.errors import InputError

    drafts: dict[tuple, Draft] = {}
    unfit: dict[str, tuple[Draft, str]] = {}
    for rule, statement in proposals:
        prop = rule.then.propose
        quants = [q for q in (_fit_groups(quant_spec(q), shape) for q in prop.quantize) if q is not None] \
            if prop.quantize else [None]
        if not quants:
            continue  # no offered group size divides this model's layers
        shards = [ShardSpec(tensor_parallel=n) for n in prop.tensor_parallel] or [None]
        steps: list[tuple[object, str]] = []  # (spec or None, what makes it one pruned model)
        if prop.spec is None:
            steps.append((None, ""))
        else:
            partial = {**(defaults or {}).get(prop.spec["kind"], {}), **prop.spec}
            for ratio in prop.ratios or [None]:
                spec = build_spec(partial, ratio, num_layers=shape.num_layers)
                kind = get_kind(spec)
                try:
                    new_shape, removed = kind.pruned_shape(shape, spec)
                except InputError as exc:
                    if kind.unfit_is_news(shape):  # a limit of the engine, worth showing
                        unfit.setdefault(spec.kind, (Draft(spec, recovery_spec(prop.recovery[0], recovery_defaults), [rule.id]),
                                                     str(exc)))
                    continue  # the ratio rounds to nothing whole on this model: another ratio covers it
                spec = kind.canonical(spec, removed)
                # the same pruned model (shape, or mask pattern) with the same criterion is one step
                steps.append((spec, f"{spec.kind}|{kind.identity(spec)}|{new_shape.model_dump_json()}"))
        for spec, step_key in steps:
            for quant in quants:
                for shard in shards:
                    for choice in prop.recovery:
                        recovery = recovery_spec(choice, recovery_defaults)
                        key = (step_key, quant.model_dump_json() if quant else "",
                               shard.model_dump_json() if shard else "", recovery.model_dump_json())
                        draft = drafts.setdefault(key, Draft(spec, recovery, quantize=quant, shard=shard))
                        if rule.id not in draft.proposed_by:
                            draft.proposed_by.append(rule.id)
                            draft.statements.append(statement)
    return list(drafts.values()), list(unfit.values())


def _fit_groups(spec, shape):
    """The scheme with the largest offered group size, at most the asked one, that divides every projection's
    input width (SmolLM2's hidden size 576 takes groups of 64, not 128); None where none does."""
    if spec.group_size is None:
        return spec
    from planner.quant.specs import GROUP_SIZES

    widths = (shape.hidden_size, shape.intermediate_size, shape.q_dim)
    fitting = [g for g in GROUP_SIZES if g <= spec.group_size and all(w % g == 0 for w in widths)]
    return spec.model_copy(update={"group_size": max(fitting)}) if fitting else None
