"""Pruning engines: masks inside dense tensors (unstructured, N:M) and structured removal (channels, heads, layers).

`apply_pruning(model, spec, calib_ids)` runs one step in place on `model` (never on the source checkpoint: the
runner loads a fresh copy) and returns a `PruneResult`. Engines register a function per spec kind.
"""

from __future__ import annotations

from planner.prune.base import _REGISTRY, PruneResult, register, registered_engine, unregister  # noqa: F401
from planner.prune.specs import PruneSpec  # noqa: F401  (re-export)


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
