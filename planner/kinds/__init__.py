"""Pruning kinds: everything the planner knows about one granularity, in one place.

    kind = get_kind(spec)                   # or get_kind("mlp_channels")
    kind.label, kind.masked, kind.structured
    new_shape, removed = kind.pruned_shape(shape, spec)   # the shape the GPU runs, the fraction removed
    kind.ratio_text(spec, shape)            # "-25% (1536->1152)"
    kind.facts(spec)                        # candidate facts the rules may name
    kind.file_bytes(spec, ...)              # checkpoint size formula
    kind.apply(model, spec, calib_ids)      # the engine

Each built-in kind is one module of this package (its spec class lives in `planner.prune.specs`, its engine in
`planner.prune`). To add a kind, write one module that defines a spec class (a `planner.prune.specs.SpecBase`
with `kind: Literal["name"]`) and a `Kind` subclass with that spec, call `register_kind(MyKind())`, and add a
rules YAML that proposes it (`then: {propose: {spec: {kind: name, ...}, ratios: [...]}}`); see README.md here.
Nothing else in the product names a kind.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from planner.errors import did_you_mean

_KINDS: dict[str, "Kind"] = {}


class Kind:
    """The behaviour of one pruning granularity. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    spec: ClassVar[type]  # the pydantic spec class (planner.prune.specs.SpecBase)
    label: ClassVar[str]  # for people: "MLP channels"
    structured: ClassVar[bool] = False  # removes whole channels / heads / layers: a smaller dense model
    ratio_field: ClassVar[str | None] = None  # the spec field a proposal's `ratios` fill; None: the spec fixes it
    description: ClassVar[str] = ""

    @property
    def masked(self) -> bool:
        """Zeros inside dense tensors: the shapes, and a dense kernel's work, stay."""
        from planner.prune.specs import MaskedSpec

        return issubclass(self.spec, MaskedSpec)

    # -- from a rule's proposal to a spec ---------------------------------------------------------------------

    def with_ratio(self, data: dict[str, Any], ratio: float | None, *, num_layers: int) -> dict[str, Any]:
        """The spec fields with a proposal's ratio put where this kind keeps it."""
        if self.ratio_field and ratio is not None:
            data = dict(data, **{self.ratio_field: ratio})
        return data

    def spec_defaults(self, gpu, workload) -> dict[str, Any]:
        """Spec fields a rule may leave to the target GPU (e.g. a width multiple its GEMM tiles like)."""
        return {}

    def canonical(self, spec, removed: float):
        """The spec as the model will get it (e.g. the fraction a whole number of heads really removes)."""
        return spec

    def identity(self, spec) -> str:
        """What tells two specs of the same kind and the same projected shape apart (criterion, mode; for masks
        the pattern itself): drafts equal in kind, shape, identity and recovery are one candidate."""
        parts = [getattr(spec, "criterion", None), getattr(spec, "mode", None),
                 spec.model_dump_json() if self.masked else ""]
        return json.dumps(parts)

    def unfit_is_news(self, shape) -> bool:
        """Whether a ratio this model cannot take is worth showing as a rejected alternative (a limit of the
        engine) rather than dropped silently (another ratio covers it)."""
        return False

    # -- the model the GPU runs ----------------------------------------------------------------------------------

    def pruned_shape(self, shape, spec):
        """(shape after the step, effective fraction removed of what the step prunes). Raises InputError where the
        model cannot take the step."""
        return shape, 0.0

    def params_after(self, shape, new_shape, removed: float) -> tuple[int, float]:
        """(parameters of the pruned model, parameters removed or zeroed)."""
        from planner.profile.roofline import linear_parameters, parameter_count

        before = parameter_count(shape)
        if self.masked:
            return before, linear_parameters(shape) * removed
        after = parameter_count(new_shape)
        return after, before - after

    def sparse_kernel(self, spec, gpu, dtype: str) -> bool:
        """Whether the target runs this step on sparse kernels (projected at the sparse rate)."""
        return False

    def sparse_share(self, spec, shape) -> float:
        """Of the decoder layers, the share the sparse kernels run where sparse_kernel() holds (1: all)."""
        return 1.0

    def projection_notes(self, spec, gpu, dtype: str, sparse: bool) -> list[str]:
        return []

    def file_bytes(self, spec, *, weight_bytes: float, dense_weight_bytes: float, linear_bytes: float,
                   dtype_bytes: float, sparse: bool | float, shape=None) -> tuple[float, list[str]]:
        """(checkpoint bytes, notes). `weight_bytes`: resident weights as projected; `linear_bytes`: the decoder
        blocks' linear weights (what masks prune); `dense_weight_bytes`: every parameter at the dtype; `shape`: the
        model's shape before the step."""
        return weight_bytes, []

    def calibration(self, spec):
        """The calibration text a candidate of this spec gets by default (planner.prune.specs.CalibrationSpec)."""
        from planner.prune.specs import CalibrationSpec

        return CalibrationSpec()

    # -- facts for the rules ---------------------------------------------------------------------------------

    def facts(self, spec) -> dict[str, Any]:
        """This kind's candidate facts (planner.decide.facts names them): granularity, criterion, head mode."""
        return {"kind": self.name, "structured": self.structured,
                "criterion": getattr(spec, "criterion", "none"), "head_mode": "none"}

    # -- words -----------------------------------------------------------------------------------------------

    def ratio_text(self, spec, shape) -> str:
        """How much the step removes, in words a reader checks against the model: '-25%', '-3 of 30'."""
        return ""

    def amount(self, spec) -> str:
        """The amount as it appears in a candidate's short name: '25', '2of4', '3L'."""
        return ""

    def describe(self, spec) -> str:
        """One phrase for the report: 'MLP channels −25% (activation)'."""
        text = f"{self.label} {self.ratio_text(spec, None)}".strip()
        criterion = getattr(spec, "criterion", None)
        return f"{text} ({criterion})" if criterion else text

    def size_pattern(self, spec) -> str:
        """The sparsity pattern results.json records for the exported model."""
        return self.name

    # -- the engine ------------------------------------------------------------------------------------------

    def apply(self, model, spec, calib_ids=None, **kwargs):
        """Prune `model` in place; returns a planner.prune.PruneResult."""
        from planner.prune import apply_pruning

        return apply_pruning(model, spec, calib_ids, **kwargs)


def register_kind(kind: Kind) -> Kind:
    """Make a kind known to plans, rules, the decision, the runner and the report (its spec class too)."""
    from planner.prune import register as register_engine
    from planner.prune import registered_engine
    from planner.prune.specs import register_spec, spec_kind

    _load_builtin()  # built-ins first, so the order of choices stays the same
    if spec_kind(kind.spec) != kind.name:
        raise ValueError(f"kind {kind.name!r} has a spec whose kind is {spec_kind(kind.spec)!r}")
    if _KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"pruning kind {kind.name!r} registered twice")
    register_spec(kind.spec)
    _KINDS[kind.name] = kind
    if type(kind).apply is not Kind.apply and registered_engine(kind.name) is None:
        register_engine(kind.name)(kind.apply)
    return kind


def unregister_kind(name: str) -> None:
    """Forget a kind (tests that register a throwaway one)."""
    from planner.prune import unregister as unregister_engine
    from planner.prune.specs import unregister_spec

    _KINDS.pop(name, None)
    unregister_spec(name)
    unregister_engine(name)


def get_kind(spec_or_name) -> Kind:
    _load_builtin()
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.kind
    if name not in _KINDS:
        raise KeyError(did_you_mean(str(name), list(_KINDS), "pruning kind"))
    return _KINDS[name]


def kinds() -> dict[str, Kind]:
    """Every registered kind by name, built-ins first."""
    _load_builtin()
    return dict(_KINDS)


def kind_names(*, prunes: bool = False) -> list[str]:
    """The registered kind names; `prunes`: without "none" (what a rule may propose)."""
    return [n for n in kinds() if not (prunes and n == "none")]


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        import importlib

        for module in ("none", "unstructured", "nm", "mlp_channels", "heads", "layers"):  # the order of choices
            importlib.import_module(f"planner.kinds.{module}")


__all__ = ["Kind", "get_kind", "kind_names", "kinds", "register_kind", "unregister_kind"]
