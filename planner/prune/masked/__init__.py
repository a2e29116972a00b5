"""Masked pruning: zeros inside the dense weights of every decoder linear (shapes unchanged).

    {"kind": "unstructured", "sparsity": 0.5, "criterion": "sparsegpt"}
    {"kind": "unstructured", "sparsity": 0.5, "criterion": "wanda", "allocation": "fisher"}
    {"kind": "nm", "n": 2, "m": 4, "criterion": "wanda"}
    {"kind": "nm", "n": 2, "m": 4, "criterion": "wanda", "dense_layers": 3}

Criteria: magnitude (magnitude.py), Wanda (wanda.py), SparseGPT (sparsegpt.py); patterns (patterns.py):
unstructured at an exact target sparsity, or exactly N zeros in every group of M inputs; non-uniform sparsity
(`allocation`) and N:M with the most influential layers left dense (`dense_layers`) in allocation.py. Wanda and
SparseGPT see calibration activations layer by layer (calibration.py). The LM head and the embeddings stay dense.

The zeros make the model no faster on dense kernels; runtime.py says so, and converts 2:4 weights for sparse
tensor cores where a CUDA device has them. See README.md beside this file for the papers.
"""

from __future__ import annotations

from typing import Any

from planner.prune.masked.patterns import out_in
from planner.prune.base import PruneResult, register
from planner.prune.masked.runtime import runtime_note  # noqa: F401  (public API)

__all__ = ["prune_masked", "prune_layer", "masked_result", "mask_counts", "masked_metadata", "runtime_note",
           "weight_sparsity"]


@register("unstructured")
def prune_unstructured(model, spec, calib_ids=None, **kwargs) -> PruneResult:
    return prune_masked(model, spec, calib_ids, **kwargs)


@register("nm")
def prune_nm(model, spec, calib_ids=None, **kwargs) -> PruneResult:
    return prune_masked(model, spec, calib_ids, **kwargs)


def _pattern(spec) -> tuple[str, float, int, int]:
    """(pattern name, sparsity, n, m); n = m = 0 for unstructured."""
    from planner.prune.specs import MaskedSpec

    if not isinstance(spec, MaskedSpec):
        raise ValueError(f"not a masked pruning spec: {spec.kind!r}")
    return spec.mask_pattern()


def _unique_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prune_masked(model, spec, calib_ids=None, *, progress: bool = True, tokenizer=None, calibration=None,
                 chunk_samples: int | None = None, **_other) -> PruneResult:
    """Prune `model` in place with an UnstructuredPruning or SemiStructuredPruning spec.

    `calib_ids`: (N, L) LongTensor, needed by wanda and sparsegpt; without it, `tokenizer` (+ `calibration`, a
    CalibrationSpec) builds it from the bundled calibration text. Masks are in each module's weight layout."""
    from planner.arch import get_adapter
    from planner.prune.masked.calibration import CHUNK_SAMPLES, calibration_ids, check_ids
    from planner.prune.masked.patterns import check_nm

    pattern, sparsity, n, m = _pattern(spec)
    adapter = get_adapter(model)
    linears = list(adapter.iter_linears(model))
    if m:  # refuse before touching any weight
        for _, _, name, module in linears:
            check_nm(n, m, out_in(module, adapter.conv1d).shape[1], name)
    params = _unique_params(model)
    calibration_info = layer_sparsity = None
    if spec.criterion == "magnitude":
        masks = magnitude_masks(linears, adapter.conv1d, spec, sparsity, n, m)
    else:
        if calib_ids is None and tokenizer is not None:
            calib_ids = calibration_ids(tokenizer, calibration)
        calib_ids = check_ids(calib_ids, spec.criterion)
        calibration_info = {"samples": int(calib_ids.shape[0]), "seq_len": int(calib_ids.shape[1]),
                            "tokens": int(calib_ids.numel())}
        chunk = chunk_samples or CHUNK_SAMPLES
        layer_sparsity, targets = _allocation(model, adapter, linears, spec, sparsity, m, calib_ids, chunk)
        if m:  # N:M with layers left dense: the overall target is lower than n/m
            sparsity = sum(layer_sparsity) / len(layer_sparsity)
        masks = _layerwise(model, adapter, spec.criterion, targets, n, m, calib_ids, chunk, progress)
    return _result(spec, pattern, sparsity, params, masks, linears, calibration_info, layer_sparsity)


def _allocation(model, adapter, linears, spec, sparsity: float, m: int, calib_ids,
                chunk: int) -> tuple[list[float], list]:
    """(sparsity of each decoder layer, the target each layer is pruned to: a float or {module name: float}): the
    target everywhere (uniform), spread by a statistic (allocation.py), or, N:M with dense_layers, 0 in the layers
    left dense."""
    from planner.prune.masked import allocation as alloc
    from planner.prune.masked.patterns import out_in

    layers = len(adapter.get_layers(model))
    if m:
        dense = alloc.dense_layers(model, adapter, calib_ids, chunk, getattr(spec, "dense_layers", 0))
        per_layer = [0.0 if i in dense else sparsity for i in range(layers)]
        return per_layer, per_layer
    allocation = getattr(spec, "allocation", "uniform")
    if allocation == "uniform":
        return [sparsity] * layers, [sparsity] * layers
    # per matrix, the counts rounded over the whole model so they add up to exactly the overall target
    targets = alloc.matrix_sparsities(linears, adapter.conv1d,
                                      alloc.allocate(model, adapter, calib_ids, chunk, allocation, sparsity))
    pruned, weights = [0.0] * layers, [0] * layers
    for i, _, name, module in linears:
        numel = out_in(module, adapter.conv1d).numel()
        pruned[i] += targets[i][name] * numel
        weights[i] += numel
    return [p / w for p, w in zip(pruned, weights)], targets


def magnitude_masks(linears, conv1d: bool, spec, sparsity: float, n: int, m: int) -> dict[str, Any]:
    """Magnitude masks of `linears` ((layer, role, name, module) tuples), applied in place; by name."""
    from planner.prune.masked.magnitude import magnitude_scores
    from planner.prune.masked.patterns import global_mask, nm_mask, unstructured_mask

    weights = [(name, module, out_in(module, conv1d)) for _, _, name, module in linears]
    if m:
        keeps = [nm_mask(magnitude_scores(w), n, m) for _, _, w in weights]
    elif spec.scope == "global":
        keeps = global_mask([magnitude_scores(w) for _, _, w in weights], sparsity)
    else:
        keeps = [unstructured_mask(magnitude_scores(w), sparsity, compare="matrix") for _, _, w in weights]
    masks = {}
    for (name, module, w), keep in zip(weights, keeps):
        w.mul_(keep)
        masks[name] = keep.t().contiguous() if conv1d else keep
    return masks


def _layerwise(model, adapter, criterion: str, layer_sparsity: list, n: int, m: int, calib_ids, chunk: int,
               progress: bool) -> dict[str, Any]:
    """Wanda / SparseGPT, one decoder layer at a time, each seeing the outputs of the pruned layers before it.
    `layer_sparsity[i]`: the unstructured target of layer i, a float or {module name: float} (ignored for N:M)."""
    from tqdm import tqdm

    from planner.prune.masked.calibration import capture_first_inputs, run_layer

    layers = adapter.get_layers(model)
    inputs = capture_first_inputs(model, layers, calib_ids, chunk)
    masks: dict[str, Any] = {}
    bar = tqdm(total=len(layers), desc=f"{criterion} {'unstructured' if not m else f'{n}:{m}'}", unit="layer",
               disable=not progress, leave=False)
    for i, layer in enumerate(layers):
        masks.update(prune_layer(layer, i, adapter, criterion, layer_sparsity[i], n, m, inputs))
        if i + 1 < len(layers):
            run_layer(layer, inputs, replace=True)  # the next layer sees this layer's pruned outputs
        bar.update(1)
    bar.close()
    return masks


def prune_layer(layer, index: int, adapter, criterion: str, sparsity: float | dict[str, float], n: int, m: int,
                inputs) -> dict[str, Any]:
    """Wanda or SparseGPT on decoder layer `index` (not yet pruned), calibrated on `inputs` (the hidden states
    entering it, planner.prune.masked.calibration.LayerInputs): its linears pruned in place; returns their masks
    by full module name. `sparsity`: one target for every linear, or one per full module name. The in-memory
    engine and the layered one (planner.layered) both prune through this."""
    from planner.arch import get_submodule
    from planner.prune.masked.calibration import collect_stats
    from planner.prune.masked.patterns import nm_mask, unstructured_mask
    from planner.prune.masked.sparsegpt import sparsegpt_prune
    from planner.prune.masked.wanda import wanda_scores

    linears = {f"{adapter.layers}.{index}.{path}": get_submodule(layer, path) for _, path in adapter.linear_roles()}
    if sparsity == 0.0:  # a layer left dense (N:M with dense_layers): nothing to calibrate
        import torch

        return {name: torch.ones_like(module.weight, dtype=torch.bool) for name, module in linears.items()}
    stats = collect_stats(layer, linears, inputs, hessian=criterion == "sparsegpt")
    masks: dict[str, Any] = {}
    for name, module in linears.items():
        w = out_in(module, adapter.conv1d)
        target = sparsity[name] if isinstance(sparsity, dict) else sparsity
        if criterion == "wanda":
            scores = wanda_scores(w, stats.input_sq_sum(name))
            keep = nm_mask(scores, n, m) if m else unstructured_mask(scores, target, compare="row")
            w.mul_(keep)
        else:
            new, keep = sparsegpt_prune(w, stats.hessian(name), sparsity=target, n=n, m=m)
            w.copy_(new)
        masks[name] = keep.t().contiguous() if adapter.conv1d else keep
    return masks


def mask_counts(masks: dict[str, Any], index: int) -> dict[str, tuple[int, int, int]]:
    """Full module name -> (layer index, pruned weights, weights) of the masks of one decoder layer."""
    return {name: (index, int(keep.numel() - keep.sum()), keep.numel()) for name, keep in masks.items()}


def _result(spec, pattern, sparsity, params, masks, linears, calibration_info, layer_sparsity=None) -> PruneResult:
    counts: dict[str, tuple[int, int, int]] = {}
    for i, _, name, _ in linears:
        counts.update(mask_counts({name: masks[name]}, i))
    return masked_result(spec, pattern, sparsity, params, counts, masks, calibration_info, layer_sparsity)


def masked_result(spec, pattern, sparsity, params, counts, masks, calibration_info,
                  layer_sparsity=None) -> PruneResult:
    """The PruneResult of a masked step from its `counts` (mask_counts of every layer, in order); `masks` may be
    empty (the layered engine writes them to disk as it goes)."""
    module_sparsity, layer_pruned, layer_total = {}, {}, {}
    for name, (i, pruned, numel) in counts.items():
        module_sparsity[name] = pruned / numel
        layer_pruned[i] = layer_pruned.get(i, 0) + pruned
        layer_total[i] = layer_total.get(i, 0) + numel
    pruned, total = sum(layer_pruned.values()), sum(layer_total.values())
    details = {
        "pattern": pattern,
        "criterion": spec.criterion,
        "scope": getattr(spec, "scope", "layer"),
        "target_sparsity": sparsity,
        "allocation": getattr(spec, "allocation", "uniform"),
        "layer_sparsity": layer_sparsity,
        "pruned_weights": pruned,
        "prunable_weights": total,
        "modules": module_sparsity,
        "layers": [layer_pruned[i] / layer_total[i] for i in sorted(layer_total)],
        "calibration": calibration_info,
        "dense": "LM head and embeddings (not pruned)",
    }
    return PruneResult(spec.kind, params, params, masks=masks, achieved_sparsity=pruned / total if total else 0.0,
                       details=details)


def masked_metadata(result: PruneResult) -> dict[str, Any]:
    """What planner.json records about a masked pruning step: pattern, criterion, achieved sparsity."""
    d = result.details
    return {
        "kind": result.kind,
        "pattern": d["pattern"],
        "criterion": d["criterion"],
        "target_sparsity": d["target_sparsity"],
        "achieved_sparsity": result.achieved_sparsity,
        "pruned_weights": d["pruned_weights"],
        "prunable_weights": d["prunable_weights"],
        "pruned_modules": len(result.masks),
        "calibration": d["calibration"],
        "dense": d["dense"],
        "storage": "dense checkpoint: pruned weights stored as zeros (same file size as the dense model)",
    }


def weight_sparsity(model, n: int = 0, m: int = 0) -> dict[str, Any]:
    """Zeros counted in the weights of the decoder linears (e.g. of a reloaded checkpoint); with n, m also the
    number of M-groups holding fewer than N zeros."""
    from planner.arch import get_adapter
    from planner.prune.masked.patterns import nm_violations

    adapter = get_adapter(model)
    zeros = total = violations = 0
    for _, _, _, module in adapter.iter_linears(model):
        w = out_in(module, adapter.conv1d)
        zeros += int((w == 0).sum())
        total += w.numel()
        if m:
            violations += nm_violations(w != 0, n, m)
    out: dict[str, Any] = {"sparsity": zeros / total, "zeros": zeros, "weights": total}
    if m:
        out["nm_violations"] = violations
    return out
