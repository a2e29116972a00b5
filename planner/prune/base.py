"""What every pruning engine shares: the result of a step and the registry of engines by spec kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class PruneResult:
    kind: str
    params_before: int
    params_after: int
    # masked kinds: full module name -> bool mask (True = weight kept); recovery keeps these zeros fixed
    masks: dict[str, Any] = field(default_factory=dict)
    achieved_sparsity: float | None = None  # masked kinds: zeros / weights over the pruned linears
    details: dict[str, Any] = field(default_factory=dict)  # per-layer choices, kept channels/heads/layers
    seconds: float = 0.0


_REGISTRY: dict[str, Callable] = {}


def register(kind: str):
    def wrap(fn):
        if kind in _REGISTRY:
            raise ValueError(f"pruning kind {kind!r} registered twice")
        _REGISTRY[kind] = fn
        return fn

    return wrap


def registered_engine(kind: str) -> Callable | None:
    return _REGISTRY.get(kind)


def unregister(kind: str) -> None:
    _REGISTRY.pop(kind, None)
