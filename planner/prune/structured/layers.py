"""Whole-layer removal: drop decoder blocks that change the residual stream least.

- `block_influence` (ShortGPT, Men et al. 2024, arXiv:2403.03853): BI_i = 1 - mean over calibration tokens of
  cos(input of block i, output of block i). A block whose output points where its input did does little.
- `angular` (Gromov et al. 2024, arXiv:2403.17887): for every run of n consecutive blocks, the angular distance
  arccos(cos(input of the first, output of the last)) / pi, averaged over calibration tokens; the run with the
  smallest distance goes (the paper's choice of one contiguous run, since removing a run is what it measures).
- `ablation`: perplexity on the calibration tokens with each block removed alone; the blocks whose removal hurts
  least go. Costs one calibration pass per layer. Both rank once, on the dense model (not greedily).

Kept blocks are renumbered (`layer_idx` of their attention modules, per-layer config lists such as
`layer_types`) so KV caches, masks and a reloaded checkpoint agree with the in-memory model.

    {"kind": "layers", "num_layers": 4, "criterion": "block_influence"}
"""

from __future__ import annotations

from contextlib import contextmanager

from planner.arch import get_adapter, get_submodule
from planner.errors import InputError
from planner.prune.base import PruneResult
from planner.prune.structured.common import count_parameters
from planner.prune.structured.importance import progress_bar, require_calibration

# config lists with one entry per decoder layer
PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")


def check_layer_request(model, adapter, spec) -> int:
    total = adapter.shape(model.config).num_layers
    if spec.num_layers >= total:
        raise InputError(f"layers num_layers={spec.num_layers} would remove all {total} decoder layers; "
                         f"accepted: 0 to {total - 1}")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False) and spec.num_layers:
        raise InputError("layer removal is not supported with scale_attn_by_inverse_layer_idx=True: attention "
                         "scaling depends on the layer's position, so renumbered layers would compute differently")
    return total


def block_influence(model, adapter, calib_ids, batch_size: int = 4, progress: bool | None = None) -> list[float]:
    """BI per layer (higher = the block changes its input more = keep)."""
    import torch

    layers = adapter.get_layers(model)
    cos_sum = [0.0] * len(layers)
    count = [0] * len(layers)

    def hook_for(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            cos_sum[i] += float(cos.sum())
            count[i] += cos.numel()

        return hook

    handles = [layer.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for batch in progress_bar(calib_ids, batch_size, device, "block influence", progress):
                model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [1.0 - s / n for s, n in zip(cos_sum, count)]


def angular_distances(model, adapter, calib_ids, run: int, batch_size: int = 4,
                      progress: bool | None = None) -> list[float]:
    """Mean angular distance (in units of pi) between the input of block l and the output of block l+run-1, for
    every start l (higher = the run changes the residual stream more = keep)."""
    import math

    import torch

    layers = adapter.get_layers(model)
    boundary: list = []  # hidden states entering each block, then the last block's output, for one batch

    def grab_input(module, args, kwargs):
        boundary.append((args[0] if args else kwargs["hidden_states"]).float())

    def grab_output(module, args, kwargs, output):
        boundary.append((output[0] if isinstance(output, (tuple, list)) else output).float())

    handles = [layer.register_forward_pre_hook(grab_input, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(grab_output, with_kwargs=True))
    starts = len(layers) - run + 1
    total, count = [0.0] * starts, 0
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for batch in progress_bar(calib_ids, batch_size, device, "angular distance", progress):
                boundary.clear()
                model(input_ids=batch, use_cache=False)
                for start in range(starts):
                    cos = torch.nn.functional.cosine_similarity(boundary[start], boundary[start + run], dim=-1)
                    total[start] += float(torch.arccos(cos.clamp(-1.0, 1.0)).sum()) / math.pi
                count += boundary[0].shape[0] * boundary[0].shape[1]
    finally:
        for h in handles:
            h.remove()
        boundary.clear()
    return [t / count for t in total]


def ablation(model, adapter, calib_ids, batch_size: int = 4, progress: bool | None = None) -> list[float]:
    """Calibration perplexity with each layer removed alone (higher = removing it hurts more = keep)."""
    from tqdm.auto import tqdm

    from planner.evaluate.perplexity import perplexity_of_ids

    total = len(adapter.get_layers(model))
    scores = []
    for i in tqdm(range(total), desc="layer ablation", leave=False, disable=None if progress is None else not progress):
        with without_layers(model, adapter, {i}):
            scores.append(perplexity_of_ids(model, calib_ids, batch_size)["ppl"])
    return scores


def _set_layers(model, adapter, layers, config_values: dict) -> None:
    parent_path, _, attr = adapter.layers.rpartition(".")
    setattr(get_submodule(model, parent_path) if parent_path else model, attr, layers)
    for name, value in config_values.items():
        setattr(model.config, name, value)


def _layer_config(model, adapter, keep: list[int]) -> dict:
    values = {adapter.cfg_layers: len(keep)}
    for name in PER_LAYER_CONFIG_LISTS:
        current = getattr(model.config, name, None)
        if current is not None:
            values[name] = [current[i] for i in keep]
    return values


@contextmanager
def without_layers(model, adapter, drop: set[int]):
    """Temporarily run `model` without the layers in `drop` (no renumbering: for cache-free evaluation)."""
    import torch

    old_layers = adapter.get_layers(model)
    keep = [i for i in range(len(old_layers)) if i not in drop]
    old_config = {name: getattr(model.config, name) for name in _layer_config(model, adapter, keep)}
    _set_layers(model, adapter, torch.nn.ModuleList([old_layers[i] for i in keep]), _layer_config(model, adapter, keep))
    try:
        yield
    finally:
        _set_layers(model, adapter, old_layers, old_config)


def remove_layers(model, adapter, drop: set[int]) -> list[int]:
    """Remove the layers in `drop` for good; renumber the rest. Returns the kept original indices."""
    import torch

    old_layers = adapter.get_layers(model)
    keep = [i for i in range(len(old_layers)) if i not in drop]
    config_values = _layer_config(model, adapter, keep)
    _set_layers(model, adapter, torch.nn.ModuleList([old_layers[i] for i in keep]), {})
    adapter.set_shape(model.config, num_layers=len(keep))
    for name, value in config_values.items():  # set_shape truncates lists; we keep the right entries
        setattr(model.config, name, value)
    for new_index, layer in enumerate(adapter.get_layers(model)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    return keep


def prune_layers(model, spec, calib_ids=None, batch_size: int = 4, progress: bool | None = None,
                 **_) -> PruneResult:
    adapter = get_adapter(model)
    total = check_layer_request(model, adapter, spec)
    if spec.num_layers:
        require_calibration(calib_ids, spec.criterion)
    params_before = count_parameters(model)
    details = {"criterion": spec.criterion, "num_layers_before": total,
               "num_layers_after": total - spec.num_layers, "removed_layers": [], "kept_layers": list(range(total))}
    if spec.num_layers == 0:
        return PruneResult("layers", params_before, params_before, details=details)

    if spec.criterion == "angular":
        runs = angular_distances(model, adapter, calib_ids, spec.num_layers, batch_size, progress)
        first = min(range(len(runs)), key=lambda i: (runs[i], i))
        drop = set(range(first, first + spec.num_layers))
        scores = runs  # per start of a run of num_layers blocks
    else:
        scorer = block_influence if spec.criterion == "block_influence" else ablation
        scores = scorer(model, adapter, calib_ids, batch_size, progress)
        order = sorted(range(total), key=lambda i: (scores[i], i))  # least important first
        drop = set(order[: spec.num_layers])
    keep = remove_layers(model, adapter, drop)
    details.update(removed_layers=sorted(drop), kept_layers=keep, scores=dict(enumerate(scores)))
    return PruneResult("layers", params_before, count_parameters(model), details=details)
