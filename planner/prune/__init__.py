"""Pruning engines: masks inside dense tensors (unstructured, N:M) and structured removal (channels, heads, layers).

`apply_pruning(model, spec, calib_ids)` runs one step in place on `model` (never on the source checkpoint: the
runner loads a fresh copy) and returns a `PruneResult`. Engines register a function per spec kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from planner.prune.specs import PruneSpec  # noqa: F401  (re-export)


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


def _load_engines() -> None:
    # imported lazily so `import planner.prune` stays light
    from planner.prune import masked, structured  # noqa: F401


def apply_pruning(model, spec, calib_ids=None, **kwargs) -> PruneResult:
    """Apply one pruning step in place. `calib_ids`: (N, L) LongTensor of calibration tokens, where the
    criterion needs activations (wanda, sparsegpt, activation, taylor, block_influence, ablation)."""
    import time

    if spec.kind not in _REGISTRY:
        _load_engines()
    if spec.kind == "none":
        n = sum(p.numel() for p in model.parameters())
        return PruneResult("none", n, n)
    fn = _REGISTRY[spec.kind]
    start = time.perf_counter()
    result = fn(model, spec, calib_ids, **kwargs)
    result.seconds = time.perf_counter() - start
    return result
