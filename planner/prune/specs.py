"""Pruning steps as small, versioned configs (one per granularity), as they appear in plan.json.

    {"kind": "mlp_channels", "ratio": 0.25, "criterion": "activation", "round_to": 64}

`planner.prune.apply_pruning(model, spec, calib_ids)` dispatches each config to the function registered for it.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1


class NoPruning(_Spec):
    kind: Literal["none"] = "none"


class UnstructuredPruning(_Spec):
    """Scattered zeros at a target sparsity. No dense-GPU speedup: the zeros are still multiplied."""

    kind: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    scope: Literal["layer", "global"] = "layer"  # magnitude only: compare within each layer or across all


class SemiStructuredPruning(_Spec):
    """N zeros in every group of M consecutive weights along the input dimension (2:4 for sparse tensor cores)."""

    kind: Literal["nm"] = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"


class MlpChannelPruning(_Spec):
    """Remove intermediate MLP channels (gate/up rows and down columns together): a smaller dense model."""

    kind: Literal["mlp_channels"] = "mlp_channels"
    ratio: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "activation", "taylor"] = "activation"
    round_to: int = Field(1, ge=1)


class HeadPruning(_Spec):
    """Remove attention heads. mode 'kv_group' removes whole KV groups with their query heads; 'per_group' removes
    the same number of query heads from every group (KV heads kept)."""

    kind: Literal["heads"] = "heads"
    ratio: float = Field(..., ge=0.0, lt=1.0)
    criterion: Literal["magnitude", "activation", "taylor"] = "activation"
    mode: Literal["kv_group", "per_group"] = "kv_group"


class LayerPruning(_Spec):
    """Remove whole decoder blocks."""

    kind: Literal["layers"] = "layers"
    num_layers: int = Field(..., ge=0)
    criterion: Literal["block_influence", "ablation"] = "block_influence"


PruneSpec = Annotated[
    Union[NoPruning, UnstructuredPruning, SemiStructuredPruning, MlpChannelPruning, HeadPruning, LayerPruning],
    Field(discriminator="kind"),
]

MASKED_KINDS = ("unstructured", "nm")  # zeros inside dense tensors; shapes unchanged
STRUCTURED_KINDS = ("mlp_channels", "heads", "layers")  # smaller dense tensors


class CalibrationSpec(_Spec):
    """Calibration text for saliency: N samples x L tokens (default: the bundled calibration text)."""

    num_samples: int = Field(32, ge=1)
    seq_len: int = Field(512, ge=2)
    text_files: list[str] = Field(default_factory=list)
