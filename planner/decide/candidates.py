"""Candidates from the rules that fired: granularity x criterion x a grid of ratios x recovery.

Ratios round to what the model can actually remove (whole KV groups, whole layers, MLP widths in multiples of
`round_to`), so two proposals that land on the same shape become one candidate that remembers both rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.decide.rules import Rule, build_spec, recovery_spec

KIND_LABEL = {"unstructured": "unstructured", "nm": "N:M", "mlp_channels": "MLP channels", "heads": "heads",
              "layers": "layers", "none": "no pruning"}


@dataclass
class Draft:
    """A candidate before prediction and ranking."""

    prune: object  # a PruneSpec
    recovery: object  # a RecoverySpec
    proposed_by: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.prune.model_dump_json() + "|" + self.recovery.model_dump_json()


def ratio_text(spec, shape) -> str:
    """How much the step removes, in words a reader checks against the model: '-25%', '-3 of 30 layers'."""
    kind = spec.kind
    if kind == "unstructured":
        return f"{spec.sparsity:.0%}"
    if kind == "nm":
        return f"{spec.n}:{spec.m}"
    if kind == "layers":
        return f"-{spec.num_layers} of {shape.num_layers}"
    if kind == "heads":
        from planner.decide.predict import pruned_shape
        from planner.errors import InputError

        try:
            new, _ = pruned_shape(shape, spec)
        except InputError:
            return f"-{spec.ratio:.0%}"
        if shape.num_kv_heads == shape.num_heads:  # multi-head attention: every head is its own group
            return f"-{shape.num_heads - new.num_heads} of {shape.num_heads}"
        if spec.mode == "kv_group":
            return f"-{shape.num_kv_heads - new.num_kv_heads} of {shape.num_kv_heads} KV groups"
        return f"-{(shape.num_heads - new.num_heads) // shape.num_kv_heads} q-heads per group"
    if kind == "mlp_channels":
        from planner.decide.predict import pruned_shape

        new, frac = pruned_shape(shape, spec)
        return f"-{frac:.0%} ({shape.intermediate_size}->{new.intermediate_size})"
    return ""


def candidate_name(spec, recovery, shape) -> str:
    kind = spec.kind
    if kind == "unstructured":
        amount = f"{round(spec.sparsity * 100)}"
    elif kind == "nm":
        amount = f"{spec.n}of{spec.m}"
    elif kind == "layers":
        amount = f"{spec.num_layers}L"
    elif kind == "heads":
        amount = f"{round(spec.ratio * 100)}-{spec.mode.replace('_', '')}"
    elif kind == "mlp_channels":
        amount = f"{round(spec.ratio * 100)}"
    else:
        amount = ""
    criterion = getattr(spec, "criterion", "")
    return "-".join(x for x in (kind, amount, criterion, recovery.method) if x)


def candidate_label(spec, recovery, shape) -> str:
    criterion = getattr(spec, "criterion", None)
    text = f"{KIND_LABEL[spec.kind]} {ratio_text(spec, shape)}".strip()
    if criterion:
        text += f" ({criterion})"
    if recovery.method != "none":
        text += f" + {recovery.method}"
    return text


def drafts_from(proposals: list[tuple[Rule, str]], shape, *, defaults: dict[str, dict] | None = None,
                ) -> tuple[list[Draft], list[tuple[Draft, str]]]:
    """Every concrete (spec, recovery) the fired `propose` rules ask for, merged when they land on the same pruned
    model; and the ones the model cannot take, with the reason.

    `proposals` holds (rule, statement with placeholders filled); `defaults` fills spec fields a rule left out,
    by kind (e.g. {"mlp_channels": {"round_to": 64}} for the target GPU's tile)."""
    from planner.decide.predict import pruned_shape
    from planner.errors import InputError

    drafts: dict[tuple, Draft] = {}
    unfit: dict[str, tuple[Draft, str]] = {}
    for rule, statement in proposals:
        prop = rule.then.propose
        partial = {**(defaults or {}).get(prop.spec["kind"], {}), **prop.spec}
        for ratio in prop.ratios or [None]:
            spec = build_spec(partial, ratio, num_layers=shape.num_layers)
            try:
                new_shape, removed = pruned_shape(shape, spec)
            except InputError as exc:
                if spec.kind == "heads" and shape.family != "llama":  # a limit of the engine, worth showing
                    unfit.setdefault(spec.kind, (Draft(spec, recovery_spec(prop.recovery[0]), [rule.id]), str(exc)))
                continue  # the ratio rounds to nothing whole on this model: another ratio covers it
            spec = _canonical(spec, removed)
            for choice in prop.recovery:
                recovery = recovery_spec(choice)
                # the same pruned model (shape, or mask pattern) with the same criterion and recovery is one candidate
                key = (spec.kind, getattr(spec, "criterion", None), getattr(spec, "mode", None),
                       new_shape.model_dump_json(), spec.model_dump_json() if spec.kind in ("unstructured", "nm")
                       else "", recovery.model_dump_json())
                draft = drafts.setdefault(key, Draft(spec, recovery))
                if rule.id not in draft.proposed_by:
                    draft.proposed_by.append(rule.id)
                    draft.statements.append(statement)
    return list(drafts.values()), list(unfit.values())


def _canonical(spec, removed: float):
    """Store the ratio the model will actually get (1 of 3 KV groups is 0.3333, not the asked 0.25)."""
    if spec.kind == "heads":
        return spec.model_copy(update={"ratio": round(removed, 4)})
    return spec
