"""Quantization as a small versioned config, as it appears in plan.json (a candidate's `quantize`).

    {"scheme": "int8-weight-only"}
    {"scheme": "int4-weight-only", "group_size": 128}

Schemes (what each stores and computes):
- `int8-weight-only`: int8 weights with a scale per output channel; activations and math in the serving dtype
  (weights are dequantized in or before the GEMM).
- `int4-weight-only`: int4 weights in groups of `group_size` input features, a scale and zero point per group.
- `fp8`: fp8 (e4m3) weights and activations, per-channel / per-token scales (W8A8-FP8); needs fp8 tensor cores.
- `w8a8-int8`: int8 weights (per channel) and int8 activations (per token, dynamic); int8 tensor cores.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMES = ("int8-weight-only", "int4-weight-only", "fp8", "w8a8-int8")
GROUP_SIZES = (32, 64, 128, 256)
# bits stored per weight (the scales add a little: int4 with groups of 128 stores one fp16 scale and zero per group)
WEIGHT_BITS = {"int8-weight-only": 8, "int4-weight-only": 4, "fp8": 8, "w8a8-int8": 8}


class QuantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    scheme: Literal["int8-weight-only", "int4-weight-only", "fp8", "w8a8-int8"]
    group_size: int | None = Field(None, description="int4-weight-only: input features per scale (32, 64, 128, 256)")

    @model_validator(mode="after")
    def _group(self) -> "QuantSpec":
        if self.scheme == "int4-weight-only":
            if self.group_size is None:
                self.group_size = 128
            if self.group_size not in GROUP_SIZES:
                raise ValueError(f"group_size {self.group_size} is not supported for int4-weight-only "
                                 f"(accepted: {', '.join(map(str, GROUP_SIZES))})")
        elif self.group_size is not None:
            raise ValueError(f"group_size applies to int4-weight-only only, not {self.scheme}")
        return self

    @property
    def bits(self) -> int:
        return WEIGHT_BITS[self.scheme]

    @property
    def weight_only(self) -> bool:
        return self.scheme.endswith("weight-only")

    @property
    def label(self) -> str:
        if self.scheme == "int4-weight-only":
            return f"int4 weight-only (g{self.group_size})"
        return {"int8-weight-only": "int8 weight-only", "fp8": "fp8 (W8A8)", "w8a8-int8": "int8 W8A8"}[self.scheme]

    def bytes_per_weight(self, dense_bytes: float) -> float:
        """Stored bytes per quantized weight, scales included (fp16 scale per channel is negligible; int4 adds a
        16-bit scale and a 16-bit zero point per group)."""
        if self.scheme == "int4-weight-only":
            return 0.5 + 4.0 / self.group_size
        return 1.0
