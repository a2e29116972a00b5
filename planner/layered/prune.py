"""Pruning a checkpoint on disk one decoder layer at a time, each pruned layer written out as soon as it is done.

    pruned = prune_layered(LayeredModel("ckpt/"), spec, calib_ids, "out/", tokenizer, metadata)
    pruned.result (a PruneResult), pruned.exported (planner.json as written); masked kinds' keep masks are in
    out/masks.safetensors (planner.run.masks.load_masks reads them), written layer by layer too

Every engine matches its in-memory twin (planner.prune) step for step, so the weights come out equal:

| kind                 | criteria                                  | layer i calibrates on the outputs of  |
| -------------------- | ----------------------------------------- | ------------------------------------- |
| `unstructured`, `nm` | magnitude (scope layer), wanda, sparsegpt | the pruned layer i-1 (as `_layerwise`) |
| `mlp_channels`       | magnitude, activation                     | the dense layer i-1 (as importance.py) |
| `none`               | -                                         | (a copy)                              |

Masks: allocation `uniform` only. The in-memory MLP-channel engine scores every layer on the dense model before it
cuts, hence the dense inputs there.

What needs the whole model at once is refused before any work: taylor importance (gradients through every layer),
global magnitude and OWL / block-influence allocation (a statistic over all layers first), MLP reconstruction,
heads and layers (not built layer by layer yet).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

from planner.errors import InputError
from planner.prune.base import PruneResult


@dataclass
class LayeredPrune:
    result: PruneResult
    exported: dict[str, Any]  # planner.json as written (parameters, file_bytes, compressed_file_bytes...)
    nonzero: int  # non-zero parameters of the written checkpoint


def layered_refusal(spec) -> str | None:
    """Why `spec` cannot be pruned layer by layer, or None when it can."""
    kind = spec.kind
    if kind in ("unstructured", "nm"):
        if spec.criterion not in ("magnitude", "wanda", "sparsegpt"):
            return f"criterion {spec.criterion!r} is not built layer by layer yet"
        if getattr(spec, "scope", "layer") == "global":
            return "global magnitude compares every layer's weights at once"
        if getattr(spec, "allocation", "uniform") != "uniform":
            return f"allocation {spec.allocation!r} needs a statistic of every layer before the first is pruned"
        if getattr(spec, "dense_layers", 0):
            return "dense_layers ranks every layer by block influence before the first is pruned"
        return None
    if kind == "mlp_channels":
        if spec.criterion == "taylor":
            return "taylor importance needs gradients through every layer at once"
        if spec.criterion not in ("magnitude", "activation"):
            return f"criterion {spec.criterion!r} is not built layer by layer yet"
        if getattr(spec, "reconstruct", False):
            return "reconstruction (reconstruct: true) is not built layer by layer yet"
        return None
    if kind == "none":
        return None
    return f"pruning kind {kind!r} is not built layer by layer yet"


def check_layered(spec) -> None:
    """InputError when `spec` needs the whole model in memory, naming what the layered path takes."""
    reason = layered_refusal(spec)
    if reason:
        raise InputError(f"{spec.kind} pruning ({spec.model_dump_json(exclude={'version'})}) cannot run layer by "
                         f"layer: {reason}. The layered path (a model larger than --max-memory) takes unstructured "
                         "and N:M masks (magnitude per layer, wanda, sparsegpt; allocation uniform, no "
                         "dense_layers) and MLP channels "
                         "(magnitude, activation); give more memory (--max-memory) or choose one of those")


def prune_layered(model, spec, calib_ids, folder, tokenizer, metadata: dict | Callable[[PruneResult], dict],
                  *, scratch=None, chunk: int | None = None, progress: bool = False,
                  compressed: bool = False) -> LayeredPrune:
    """Prune the LayeredModel `model` with `spec` into the checkpoint folder `folder`. `metadata`: planner.json's
    fields, or a function of the PruneResult that returns them. `compressed`: also write the bitmask copy."""
    from planner.layered.writer import CheckpointWriter
    from planner.prune.masked.calibration import CHUNK_SAMPLES

    check_layered(spec)
    writer = CheckpointWriter(model, folder, scratch=scratch, compressed=compressed)
    try:
        start = time.perf_counter()
        result, config = _ENGINES[spec.kind](model, spec, calib_ids, writer, chunk or CHUNK_SAMPLES, progress)
        result.seconds = time.perf_counter() - start
        meta = metadata(result) if callable(metadata) else dict(metadata)
        exported = writer.finish(config, tokenizer, meta)
    except BaseException:
        writer.abort()
        raise
    result.params_after = exported["parameters"]
    return LayeredPrune(result=result, exported=exported, nonzero=writer.nonzero)


def _bar(model, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=model.num_layers, desc=desc, unit="layer", disable=not progress, leave=False)


def _masked(model, spec, calib_ids, writer, chunk: int, progress: bool):
    from planner.arch import get_submodule
    from planner.prune.masked import magnitude_masks, mask_counts, masked_result, prune_layer
    from planner.prune.masked.calibration import check_ids, run_layer
    from planner.prune.masked.patterns import check_nm, out_in

    pattern, sparsity, n, m = spec.mask_pattern()
    adapter = model.adapter
    params = model.parameter_count()
    inputs = calibration_info = layer_sparsity = None
    if spec.criterion != "magnitude":
        calib_ids = check_ids(calib_ids, spec.criterion)
        calibration_info = {"samples": int(calib_ids.shape[0]), "seq_len": int(calib_ids.shape[1]),
                            "tokens": int(calib_ids.numel())}
        layer_sparsity = [sparsity] * model.num_layers
        inputs = model.first_inputs(calib_ids, chunk)
    counts: dict[str, tuple[int, int, int]] = {}
    bar = _bar(model, f"{spec.criterion} {pattern} (layered)", progress)
    for i in range(model.num_layers):
        layer = model.load_layer(i)
        linears = [(i, role, f"{adapter.layers}.{i}.{path}", get_submodule(layer, path))
                   for role, path in adapter.linear_roles()]
        if m:  # refuse before touching a weight
            for _, _, name, module in linears:
                check_nm(n, m, out_in(module, adapter.conv1d).shape[1], name)
        if spec.criterion == "magnitude":
            masks = magnitude_masks(linears, adapter.conv1d, spec, sparsity, n, m)
        else:
            masks = prune_layer(layer, i, adapter, spec.criterion, sparsity, n, m, inputs)
            if i + 1 < model.num_layers:
                run_layer(layer, inputs, replace=True)  # the next layer sees this layer's pruned outputs
        counts.update(mask_counts(masks, i))
        writer.add_masks(masks)
        del masks
        writer.add_layer(i, layer)
        del layer
        bar.update(1)
    bar.close()
    result = masked_result(spec, pattern, sparsity, params, counts, {}, calibration_info, layer_sparsity)
    return result, copy.deepcopy(model.config)


def _channels(model, spec, calib_ids, writer, chunk: int, progress: bool):
    import torch

    from planner.prune.masked.calibration import run_layer
    from planner.prune.structured.channels import mlp_group, set_mlp_width
    from planner.prune.structured.common import keep_top
    from planner.prune.structured.importance import activation_sq, magnitude, require_calibration
    from planner.prune.structured.rounding import kept_count
    from planner.prune.structured.slicing import slice_projection

    adapter, width = model.adapter, model.shape.intermediate_size
    kept = kept_count(width, spec.ratio, spec.round_to, "mlp_channels")
    widths = sorted(set(_mlp_widths(model)))
    if widths != [width]:
        raise InputError(f"mlp_channels needs the same MLP width in every layer ({width} in the config); "
                         f"this model has {widths}")
    if spec.criterion != "magnitude" and kept < width:
        require_calibration(calib_ids, spec.criterion)
    params_before = model.parameter_count()
    details: dict[str, Any] = {"criterion": spec.criterion, "ratio": spec.ratio, "round_to": spec.round_to,
                               "intermediate_size_before": width, "intermediate_size_after": kept,
                               "achieved_ratio": 1.0 - kept / width, "reconstruct": spec.reconstruct}
    if kept == width:  # ratio 0: nothing to score or slice, a copy
        _copy_layers(model, writer, progress)
        details["kept_channels"] = {}
        return PruneResult("mlp_channels", params_before, params_before, details=details), copy.deepcopy(model.config)
    # the in-memory engine scores every layer on the dense model, then cuts: the next layer's inputs are the dense
    # layer's outputs, computed before the cut
    inputs = model.first_inputs(calib_ids, chunk) if spec.criterion == "activation" else None
    kept_channels: dict[int, list[int]] = {}
    bar = _bar(model, f"mlp_channels {spec.criterion} (layered)", progress)
    for i in range(model.num_layers):
        layer = model.load_layer(i)
        group = mlp_group(layer, adapter)
        if spec.criterion == "activation":
            sums = torch.zeros(group.num_units, dtype=torch.float64)

            def hook(module, args, g=group, s=sums):  # returns None: the layer's input goes on unchanged
                s.add_(activation_sq(args[0], g))

            handle = group.consumer.module.register_forward_pre_hook(hook)
            try:
                run_layer(layer, inputs, replace=True)
            finally:
                handle.remove()
            scores = sums.sqrt().float()
        else:
            scores = magnitude({i: group})[i]
        keep = keep_top(scores, kept)
        for s in group.slices:
            slice_projection(s.module, keep, s.side)
        set_mlp_width(layer, adapter, kept)
        kept_channels[i] = keep.tolist()
        writer.add_layer(i, layer)
        del layer
        bar.update(1)
    bar.close()
    config = copy.deepcopy(model.config)
    adapter.set_shape(config, intermediate_size=kept)
    details["kept_channels"] = kept_channels
    return PruneResult("mlp_channels", params_before, params_before, details=details), config


def _mlp_widths(model) -> list[int]:
    """The MLP width of every decoder layer, from the down projection's shape in the file headers."""
    down = dict(model.adapter.linear_roles())["down"] + ".weight"
    widths = []
    for i in range(model.num_layers):
        names = {local: name for name, local in model.layer_names(i).items()}
        shape = model.index.entries[names[down]].shape
        widths.append(shape[0] if model.adapter.conv1d else shape[1])
    return widths


def _copy_layers(model, writer, progress: bool) -> None:
    bar = _bar(model, "copy (layered)", progress)
    for i in range(model.num_layers):
        layer = model.load_layer(i)
        writer.add_layer(i, layer)
        del layer
        bar.update(1)
    bar.close()


def _none(model, spec, calib_ids, writer, chunk: int, progress: bool):
    _copy_layers(model, writer, progress)
    n = model.parameter_count()
    return PruneResult("none", n, n), copy.deepcopy(model.config)


_ENGINES: dict[str, Callable] = {"unstructured": _masked, "nm": _masked, "mlp_channels": _channels, "none": _none}

__all__ = ["LayeredPrune", "prune_layered", "check_layered", "layered_refusal"]
