"""Measured breakdown of prefill and decode on the local device, with torch.profiler.

Every module's forward is wrapped in a `record_function` label (forward pre/post hooks), so each op the profiler
sees sits under the innermost module that ran it. An op inside a projection, the LM head, a norm, an activation
module or the embedding takes that module's category; an op in a module's own forward body (attention, MLP,
decoder layer, model) is classified by its name: scaled-dot-product and the matmuls and softmax of eager attention
are the attention core, cat/copy/views/allocation are data movement, and so on. The time inside the phase but in
no op (Python and dispatch between ops) is its own category, `framework`, so the categories add up to the phase.

On CPU an op's time is its self CPU time. On CUDA it is the device time of the kernels it launched, and the
framework category is what is left of the phase's wall time: the device idling on launches and Python.

Prefill runs the workload's prompt (last-position logits only, as serving does); decode runs single-token steps
against a real KV cache (DynamicCache) after that prompt. After a warm-up (a short prompt and a few decode steps)
both run `repeats` times (decode: `decode_steps` steps) without the profiler for wall-clock medians, and again
under the profiler for the breakdown, which is that of the median repeat.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from planner.profile.schema import MeasuredOp, MeasuredPhase

LABEL = "planner.module:"
PHASE = "planner.phase:"
ROOT = "<model>"
WARMUP_PROMPT = 64

# op names (namespace and in-place suffix stripped) by category, for ops not inside a categorised module
ATTENTION_OPS = {"scaled_dot_product_attention", "_flash_attention_forward", "_efficient_attention_forward"}
GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "addmv", "dot", "einsum"}
SOFTMAX_OPS = {"softmax", "_softmax", "_safe_softmax", "log_softmax", "dropout", "native_dropout"}
NORM_OPS = {"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm"}
ACTIVATION_OPS = {"silu", "gelu", "relu", "tanh", "sigmoid", "gelu_tanh", "hardswish", "mish", "softplus", "elu"}
EMBEDDING_OPS = {"embedding", "embedding_bag"}
MOVE_OPS = {
    "cat", "stack", "copy", "_to_copy", "to", "contiguous", "clone", "transpose", "t", "permute", "view",
    "_unsafe_view", "reshape", "_reshape_alias", "expand", "expand_as", "unsqueeze", "squeeze", "slice", "select",
    "narrow", "index", "index_select", "index_put", "as_strided", "flatten", "unflatten", "split",
    "split_with_sizes", "chunk", "unbind", "repeat", "repeat_interleave", "detach", "alias", "lift_fresh",
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "fill", "zero", "resize",
    "resolve_conj", "resolve_neg", "scatter", "gather", "roll", "flip", "pad", "constant_pad_nd", "_unsafe_index",
    "item", "_local_scalar_dense", "set", "result_type", "type_as", "lift_fresh_copy", "movedim", "view_as",
    "_index_put_impl", "masked_scatter", "slice_scatter", "select_scatter", "unfold", "tensor_split",
}
ELEMENTWISE_OPS = {
    "add", "sub", "mul", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "log", "sin", "cos", "mean", "sum", "where",
    "masked_fill", "eq", "ne", "gt", "lt", "ge", "le", "arange", "cumsum", "abs", "clamp", "clamp_min", "maximum",
    "minimum", "triu", "tril", "bitwise_and", "bitwise_or", "bitwise_not", "logical_and", "logical_or",
    "logical_not", "any", "all", "max", "min", "argmax", "scalar_tensor", "reciprocal", "addcmul", "addcdiv",
    "rsub", "floor_divide", "remainder", "fmod", "square", "var", "std", "sign", "isinf", "isnan", "nan_to_num",
    "lerp", "erf", "tanh_backward", "diff", "prod", "round", "floor", "ceil", "exp2", "log2", "topk", "sort",
    "amax", "amin", "norm", "linalg_vector_norm", "masked_select", "nonzero", "outer", "div_floor",
}
PROJECTION_PART = {"q_proj": "attn_proj", "k_proj": "attn_proj", "v_proj": "attn_proj", "qkv_proj": "attn_proj",
                   "o_proj": "attn_proj", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
                   "lm_head": "lm_head"}
OUTSIDE = "outside layers"
FRAMEWORK_OP = "framework (Python and dispatch between ops)"


@dataclass(frozen=True)
class ModuleInfo:
    category: str | None  # the category of every op inside this module, or None: classify ops by name
    group: str  # the by-module bucket: "layers.3.attention", "lm_head", ...
    region: str  # "attention", "mlp" or "other": where name-classified ops of this module count


def base_op_name(name: str) -> str:
    """'aten::add_' -> 'add'; 'aten::_softmax' -> '_softmax'."""
    base = name.rsplit("::", 1)[-1]
    return base[:-1] if base.endswith("_") and not base.endswith("__") and len(base) > 1 else base


def classify_op(name: str, region: str) -> str:
    """Category of an op that runs in a module's own forward body, by its name."""
    base = base_op_name(name)
    in_attention = region == "attention"
    if base in ATTENTION_OPS or base.startswith("_scaled_dot_product") or "flash_attention" in base:
        return "attention_core"
    if base in GEMM_OPS:
        return "attention_core" if in_attention else "other"
    if base in SOFTMAX_OPS:
        return "attention_core" if in_attention else "elementwise"
    for names, category in ((NORM_OPS, "norm"), (ACTIVATION_OPS, "activation"), (EMBEDDING_OPS, "embedding"),
                            (MOVE_OPS, "data_movement"), (ELEMENTWISE_OPS, "elementwise")):
        if base in names:
            return category
    return "other"


def part_of(category: str, region: str) -> str:
    """The roofline category (mlp, attn_proj, attn_core, lm_head, other) a measured op counts toward."""
    if category in PROJECTION_PART:
        return PROJECTION_PART[category]
    return {"attention": "attn_core", "mlp": "mlp"}.get(region, "other")


def _is_activation(module) -> bool:
    return type(module).__module__ in ("transformers.activations", "torch.nn.modules.activation")


def module_map(model) -> dict[str, ModuleInfo]:
    """Category, by-module group and region of every module, from the family's adapter."""
    from planner.arch import get_adapter

    adapter = get_adapter(model)
    roles = {name: f"{role}_proj" for _, role, name, _ in adapter.iter_linears(model)}
    embeds = {adapter.embed, adapter.position_embed}
    mlp_paths = [p for r, p in adapter.linear_roles() if r in ("gate", "up", "down")]
    prefix = adapter.layers + "."
    info: dict[str, ModuleInfo] = {}
    for name, module in model.named_modules():
        category = roles.get(name)
        if category is None:
            if name == adapter.lm_head:
                category = "lm_head"
            elif name in embeds:
                category = "embedding"
            elif "Norm" in type(module).__name__:
                category = "norm"
            elif _is_activation(module):
                category = "activation"
        if name.startswith(prefix):
            index, _, local = name[len(prefix):].partition(".")
            if local == adapter.attn or local.startswith(adapter.attn + "."):
                region = "attention"
            elif (adapter.mlp and (local == adapter.mlp or local.startswith(adapter.mlp + "."))) \
                    or any(local == p or local.startswith(p + ".") for p in mlp_paths) or category == "activation":
                region = "mlp"
            else:
                region = "other"
            info[name] = ModuleInfo(category, f"layers.{index}.{region}", region)
        elif name == adapter.lm_head:
            info[name] = ModuleInfo(category, "lm_head", "other")
        elif name in embeds:
            info[name] = ModuleInfo(category, "embedding", "other")
        elif name == adapter.final_norm:
            info[name] = ModuleInfo(category, "final_norm", "other")
        else:
            info[name or ROOT] = ModuleInfo(category, OUTSIDE, "other")
    return info


class ModuleLabels:
    """While entered, every module's forward runs inside `record_function("planner.module:<name>")`."""

    def __init__(self, model):
        self.model = model
        self.handles: list = []
        self.open: list = []

    def __enter__(self) -> "ModuleLabels":
        for name, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(LABEL + (name or ROOT))))
            self.handles.append(module.register_forward_hook(self._exit, always_call=True))
        return self

    def _enter(self, label: str):
        from torch.profiler import record_function

        def hook(module, args):
            scope = record_function(label)
            scope.__enter__()
            self.open.append(scope)

        return hook

    def _exit(self, module, args, output):
        if self.open:
            self.open.pop().__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        while self.open:
            self.open.pop().__exit__(None, None, None)


# -- one phase span of a profile -> a breakdown ---------------------------------------------------------------


@dataclass
class Breakdown:
    total_ms: float
    unattributed_ms: float
    by_category: dict[str, float]
    by_part: dict[str, float]
    by_module: dict[str, float]
    ops: list[MeasuredOp]


def _self_time_us(event, cuda: bool) -> float:
    if cuda:
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def breakdown(span, modules: dict[str, ModuleInfo], cuda: bool = False) -> Breakdown:
    """Attribute every event under a phase span to a category, a roofline part and a module group."""
    by_category: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    by_module: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str, str], list] = {}
    outside = ModuleInfo(None, OUTSIDE, "other")
    total_us = float(span.cpu_time_total)

    def add(name: str, category: str, info: ModuleInfo, us: float, calls: int = 1) -> None:
        part = part_of(category, info.region)
        by_category[category] += us
        by_part[part] += us
        by_module[info.group] += us
        row = ops.setdefault((name, category, part), [0, 0.0])
        row[0] += calls
        row[1] += us

    # on CPU the span's own self time is Python in the phase outside any module; on CUDA it is no device time
    accounted = 0.0 if cuda else float(span.self_cpu_time_total)
    add(FRAMEWORK_OP, "framework", outside, accounted, calls=0)
    stack = [(child, outside) for child in span.cpu_children]
    while stack:
        event, info = stack.pop()
        if event.name.startswith(LABEL):
            info = modules.get(event.name[len(LABEL):], outside)
            us = 0.0 if cuda else float(event.self_cpu_time_total)
            add(FRAMEWORK_OP, "framework", info, us)
        else:
            category = info.category or classify_op(event.name, info.region)
            us = _self_time_us(event, cuda)
            add(event.name, category, info, us)
        accounted += us
        stack.extend((child, info) for child in event.cpu_children)
    # CPU: self times partition the span, so this is float rounding; CUDA: the device idled between kernels
    residual = total_us - accounted
    add(FRAMEWORK_OP, "framework", outside, residual, calls=0)

    to_ms = 1e-3
    rows = [MeasuredOp(name=n, category=c, part=p, calls=calls, self_ms=us * to_ms)
            for (n, c, p), (calls, us) in ops.items()]
    rows.sort(key=lambda r: -r.self_ms)
    return Breakdown(
        total_ms=total_us * to_ms,
        unattributed_ms=residual * to_ms,
        by_category={k: v * to_ms for k, v in by_category.items()},
        by_part={k: v * to_ms for k, v in by_part.items()},
        by_module={k: v * to_ms for k, v in by_module.items()},
        ops=rows,
    )


# -- running the model ------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _forward_kwargs(model) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether the model takes logits_to_keep)."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, "logits_to_keep" in params


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class Runner:
    """Prefill and decode steps of one model on one device, for a fixed random prompt."""

    def __init__(self, model, batch_size: int, prompt_len: int, device: str, seed: int = 0):
        import torch

        self.model, self.device = model, device
        self.cache_arg, logits_to_keep = _forward_kwargs(model)
        self.prefill_kwargs = {"use_cache": True, **({"logits_to_keep": 1} if logits_to_keep else {})}
        generator = torch.Generator().manual_seed(seed)
        vocab = int(model.config.vocab_size)
        self.ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=generator).to(device)

    def prefill(self, tokens: int | None = None):
        ids = self.ids if tokens is None else self.ids[:, :tokens]
        output = self.model(input_ids=ids, **self.prefill_kwargs)
        return output.logits[:, -1:].argmax(-1), _cache_of(output)

    def decode_step(self, token, cache):
        output = self.model(input_ids=token, use_cache=True, **{self.cache_arg: cache})
        return output.logits[:, -1:].argmax(-1), _cache_of(output)


def _timed(fn, device: str) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, (time.perf_counter() - start) * 1e3


def _median_index(values: list[float]) -> int:
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[len(order) // 2]


def measure_model(model, batch_size: int, prompt_len: int, *, device: str = "cpu", repeats: int = 3,
                  decode_steps: int = 16, warmup_steps: int = 2, label: str = "",
                  on_step: Callable[[str], None] | None = None) -> tuple[MeasuredPhase, MeasuredPhase, dict]:
    """Measure prefill and decode; returns (prefill, decode, extras: activation peak bytes on CUDA)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    say = on_step or (lambda message: None)
    runner = Runner(model, batch_size, prompt_len, device)
    modules = module_map(model)
    cuda = device.startswith("cuda")
    extras: dict = {"activation_peak_bytes": None}

    def decode_series(token, cache, steps: int, span: bool) -> tuple[list[float], object]:
        for _ in range(warmup_steps):
            token, cache = runner.decode_step(token, cache)
        times = []
        for step in range(steps):
            if span:
                start = time.perf_counter()
                with record_function(f"{PHASE}decode:{step}"):
                    token, cache = runner.decode_step(token, cache)
                    _sync(device)
                times.append((time.perf_counter() - start) * 1e3)
            else:
                (token, cache), ms = _timed(lambda: runner.decode_step(token, cache), device)
                times.append(ms)
        return times, cache

    with torch.no_grad():
        say("warm-up")  # a short prompt: first-call costs without paying for a full prefill
        token, cache = runner.prefill(min(prompt_len, WARMUP_PROMPT))
        decode_series(token, cache, 0, span=False)

        say(f"prefill x{repeats} (no profiler)")
        prefill_plain = []
        for r in range(repeats):
            if cuda and r == 0:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            (token, cache), ms = _timed(runner.prefill, device)
            if cuda and r == 0:
                extras["activation_peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
            prefill_plain.append(ms)
        say(f"decode x{decode_steps} (no profiler)")
        decode_plain, _ = decode_series(token, cache, decode_steps, span=False)
        context = prompt_len + warmup_steps + decode_steps / 2  # mean KV length over the timed steps

        say("profiling prefill and decode")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        prefill_wall = []
        with ModuleLabels(model), profile(activities=activities) as prof:
            for r in range(repeats):
                start = time.perf_counter()
                with record_function(f"{PHASE}prefill:{r}"):
                    token, cache = runner.prefill()
                    _sync(device)
                prefill_wall.append((time.perf_counter() - start) * 1e3)
            decode_wall, _ = decode_series(token, cache, decode_steps, span=True)

    spans: dict[str, list] = {"prefill": [], "decode": []}
    for event in prof.events():
        # CUDA runs also mirror each label as a GPU-side annotation; the CPU span is the one with children
        if event.name.startswith(PHASE) and event.device_type == torch.autograd.DeviceType.CPU:
            phase, index = event.name[len(PHASE):].split(":")
            spans[phase].append((int(index), event))
    phases = []
    for phase, plain, wall, new_tokens, ctx in (("prefill", prefill_plain, prefill_wall, prompt_len, prompt_len),
                                                ("decode", decode_plain, decode_wall, 1, context)):
        ordered = [event for _, event in sorted(spans[phase], key=lambda pair: pair[0])]
        parts = [breakdown(span, modules, cuda) for span in ordered]
        profiled = [b.total_ms for b in parts]
        chosen = parts[_median_index(profiled)]
        phases.append(MeasuredPhase(
            phase=phase, label=label, batch_size=batch_size, new_tokens=new_tokens, context_len=ctx,
            profiled_ms=profiled, wall_ms=wall, unprofiled_ms=plain, total_ms=chosen.total_ms,
            unattributed_ms=chosen.unattributed_ms,
            by_category=chosen.by_category, by_part=chosen.by_part, by_module=chosen.by_module, ops=chosen.ops,
        ))
    say(f"prefill {statistics.median(prefill_plain):.1f} ms, decode {statistics.median(decode_plain):.1f} ms/token")
    return phases[0], phases[1], extras
