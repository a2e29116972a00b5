"""Base class of the profiler's documents: pydantic, versionless parts, extra keys forbidden.

Derived figures are `computed_field`s: written into profile.json for readers, recomputed on load (never stored
twice). Pydantic would reject them on load under `extra="forbid"`, so they are dropped before validation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            computed = cls.model_computed_fields
            if any(k in computed for k in data):
                data = {k: v for k, v in data.items() if k not in computed}
        return data
