"""Pruning steps as small, versioned configs (one per granularity), as they appear in plan.json.

    {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation", "round_to": 64}

`planner.prune.apply_pruning(model, spec, calib_ids)` dispatches each config to the function registered for it.
A document field typed `PruneSpec` accepts every registered spec class, chosen by its `kind`: the built-in ones
below, and any a kind module registers (`register_spec`, done by `planner.kinds.register_kind`). What a kind
means for the decision (its label, projected shape, file size, facts) lives in `planner.kinds`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny

from planner.errors import did_you_mean


class _Versioned(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1


class SpecBase(_Versioned):
    """Every pruning spec: a `kind` (a Literal with one value) and the fields its engine needs."""

    kind: str


_Spec = SpecBase  # the name the built-in specs were written against


class MaskedSpec(SpecBase):
    """Zeros inside dense tensors; the shapes stay. `mask_pattern()` tells the mask engine what to write."""

    def mask_pattern(self) -> tuple[str, float, int, int]:
        """(pattern name, sparsity, n, m); n = m = 0 for scattered zeros."""
        raise NotImplementedError


class NoPruning(_Spec):
    kind: Literal["none"] = "none"


class UnstructuredPruning(MaskedSpec):
    """Scattered zeros at a target sparsity. No dense-GPU speedup: the zeros are still multiplied."""

    kind: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    scope: Literal["layer", "global"] = "layer"  # magnitude only: compare within each layer or across all
    # wanda/sparsegpt: the same sparsity in every layer, layer ratios from a layer statistic (owl, block_influence)
    # or one ratio per decoder linear from the loss its pruned weights cost (fisher) (masked/allocation.py)
    allocation: Literal["uniform", "owl", "block_influence", "fisher"] = "uniform"

    def mask_pattern(self) -> tuple[str, float, int, int]:
        if self.allocation != "uniform" and self.criterion == "magnitude":
            from planner.errors import InputError

            raise InputError(f"allocation {self.allocation!r} applies to criteria 'wanda' and 'sparsegpt' (which "
                             "calibrate layer by layer); criterion 'magnitude' takes allocation 'uniform'")
        if self.scope == "global" and self.criterion != "magnitude":
            from planner.errors import InputError

            raise InputError(
                f"scope 'global' applies to criterion 'magnitude' only; {self.criterion!r} compares weights "
                "within each output row (use scope 'layer')"
            )
        return "unstructured", self.sparsity, 0, 0


class SemiStructuredPruning(MaskedSpec):
    """N zeros in every group of M consecutive weights along the input dimension (2:4 for sparse tensor cores)."""

    kind: Literal["nm"] = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    # N:M by layer skipping: this many decoder layers stay dense, those with the highest block influence
    # (masked/allocation.py); the others take the pattern. The overall sparsity falls to n/m x (L - dense_layers) / L
    dense_layers: int = Field(0, ge=0)

    def mask_pattern(self) -> tuple[str, float, int, int]:
        from planner.prune.masked.patterns import check_nm

        check_nm(self.n, self.m)
        if self.dense_layers and self.criterion == "magnitude":
            from planner.errors import InputError

            raise InputError(f"dense_layers {self.dense_layers} chooses the layers by block influence on calibration "
                             "text: it applies to criteria 'wanda' and 'sparsegpt'; criterion 'magnitude' takes "
                             "dense_layers 0")
        return f"{self.n}:{self.m}", self.n / self.m, self.n, self.m


class MlpChannelPruning(_Spec):
    """Remove intermediate MLP channels (gate/up rows and down columns together): a smaller dense model."""

    kind: Literal["mlp_channels"] = "mlp_channels"
    ratio: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "activation", "taylor", "obs"] = "activation"
    round_to: int = Field(1, ge=1)
    # re-fit down_proj on calibration activations after the cut (planner/prune/structured/reconstruct.py);
    # criterion 'obs' chooses the channels by that re-fit's error and always re-fits
    reconstruct: bool = False


class HeadPruning(_Spec):
    """Remove attention heads. mode 'kv_group' removes whole KV groups with their query heads; 'per_group' removes
    the same number of query heads from every group (KV heads kept)."""

    kind: Literal["heads"] = "heads"
    ratio: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "activation", "taylor", "obs"] = "activation"
    mode: Literal["kv_group", "per_group"] = "kv_group"
    # re-fit o_proj on calibration activations after the cut (planner/prune/structured/reconstruct.py);
    # criterion 'obs' chooses the heads by that re-fit's error and always re-fits
    reconstruct: bool = False


class LayerPruning(_Spec):
    """Remove whole decoder blocks."""

    kind: Literal["layers"] = "layers"
    num_layers: int = Field(..., ge=0)
    criterion: Literal["block_influence", "angular", "ablation"] = "block_influence"


_SPECS: dict[str, type[SpecBase]] = {}


def spec_kind(cls: type[SpecBase]) -> str:
    """The one value of a spec class's `kind` Literal."""
    values = get_args(cls.model_fields["kind"].annotation)
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{cls.__name__}.kind must be a Literal of one string, got {values!r}")
    return values[0]


def register_spec(cls: type[SpecBase]) -> type[SpecBase]:
    kind = spec_kind(cls)
    if _SPECS.get(kind, cls) is not cls:
        raise ValueError(f"pruning spec kind {kind!r} registered twice")
    _SPECS[kind] = cls
    return cls


def unregister_spec(kind: str) -> None:
    _SPECS.pop(kind, None)


def spec_classes() -> dict[str, type[SpecBase]]:
    return dict(_SPECS)


def field_choices(name: str) -> list[str]:
    """Every value a Literal field `name` takes across the registered specs, in registration order."""
    out: list[str] = []
    for cls in _SPECS.values():
        field = cls.model_fields.get(name)
        for value in get_args(field.annotation) if field is not None else ():
            if isinstance(value, str) and value not in out:
                out.append(value)
    return out


def parse_spec(value: Any) -> SpecBase:
    """A spec object from a dict (or a spec), by its `kind`."""
    if isinstance(value, SpecBase):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"a pruning spec is an object with a `kind` (one of {', '.join(_SPECS)}), "
                         f"got {type(value).__name__}")
    kind = value.get("kind")
    if kind not in _SPECS:
        raise ValueError(did_you_mean(str(kind), list(_SPECS), "pruning kind"))
    return _SPECS[kind].model_validate(value)


# a document field that holds any registered spec (serialized with its own fields)
PruneSpec = Annotated[SerializeAsAny[SpecBase], BeforeValidator(parse_spec)]

for _cls in (NoPruning, UnstructuredPruning, SemiStructuredPruning, MlpChannelPruning, HeadPruning, LayerPruning):
    register_spec(_cls)


class CalibrationSpec(_Versioned):
    """Calibration text for saliency: N samples x L tokens (default: the bundled calibration text)."""

    num_samples: int = Field(32, ge=1)
    seq_len: int = Field(512, ge=2)
    text_files: list[str] = Field(default_factory=list)
