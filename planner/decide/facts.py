"""The facts rules may name: one registry, so a rule that names an unknown fact fails when it is loaded.

Two kinds of fact:

- *context* facts describe the deployment: the goal, the target GPU, the workload, the quality budget, the model's
  shape and the profile (measured locally, projected to the target GPU by the roofline model);
- *candidate* facts describe one pruning candidate: its granularity, criterion, ratio, recovery, and its predicted
  effect on the goal metric. Rules that reject a candidate or rate its quality risk may name both kinds; rules that
  propose candidates or say "don't prune" name context facts only.

A fact that is absent (a profile that does not report it, a GPU without a price) is None: every comparison with
None is false, so `{fact: x, lt: 3}` and `{fact: x, ge: 3}` are both false when x is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from planner.workload import DTYPES, Goal

FactType = Literal["number", "bool", "enum", "text"]
Scope = Literal["context", "candidate"]

RISK_TIERS = ("low", "medium", "high", "severe")


# The candidate facts' choices come from the registered kinds and the spec types, so a new kind (and its
# criteria and modes) is a valid value in a rule as soon as it is registered.
def prune_kinds() -> tuple[str, ...]:
    from planner.kinds import kind_names

    return tuple(kind_names())


def _spec_choices(field: str) -> Callable[[], tuple[str, ...]]:
    def choices() -> tuple[str, ...]:
        from planner.kinds import kinds
        from planner.prune.specs import field_choices

        kinds()  # the built-in kinds registered first
        return ("none", *field_choices(field))

    return choices


def recovery_methods() -> tuple[str, ...]:
    from typing import get_args

    from planner.recover.specs import RecoverySpec

    return get_args(RecoverySpec.model_fields["method"].annotation)


def quant_schemes() -> tuple[str, ...]:
    from planner.quant.specs import SCHEMES

    return ("none", *SCHEMES)


criteria = _spec_choices("criterion")
head_modes = _spec_choices("mode")


@dataclass(frozen=True)
class Fact:
    name: str
    type: FactType
    source: str  # where the value comes from, for `plan rules --facts` and for error messages
    description: str
    fixed_choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    scope: Scope = "context"

    @property
    def choices(self) -> tuple[str, ...]:
        """The accepted values of an enum fact (empty for other types)."""
        given = self.fixed_choices
        return tuple(given()) if callable(given) else given


def _f(name, type_, source, description, choices=(), scope: Scope = "context") -> Fact:
    return Fact(name, type_, source, description, choices if callable(choices) else tuple(choices), scope)


_GOALS = tuple(g.value for g in Goal)
_FACT_LIST = [
    # -- the goal and the quality budget
    _f("goal", "enum", "--goal", "the deployment goal", _GOALS),
    _f("goal_is_latency", "bool", "--goal", "p50/p95/p99 latency, ttft or tpot"),
    _f("max_ppl_increase", "number", "--max-ppl-increase",
       "relative held-out perplexity increase allowed (0.10 = +10%)"),
    # -- the target GPU (profiles/gpus/*.yaml)
    _f("gpu", "text", "--gpu", "target GPU id, e.g. a100-80gb-sxm"),
    _f("gpu_family", "text", "GPU catalog", "GPU family, e.g. a100, t4"),
    _f("gpu_vendor", "enum", "GPU catalog", "vendor", ("nvidia", "amd", "intel", "apple", "host")),
    _f("gpu_architecture", "text", "GPU catalog", "architecture, e.g. ampere, hopper, turing, volta"),
    _f("gpu_sparse_2to4", "bool", "GPU catalog", "sparse tensor cores run 2:4 matmuls faster for the serving dtype"),
    _f("gpu_has_dtype", "bool", "GPU catalog", "the GPU has a dense peak for the serving dtype"),
    _f("gpu_fp8", "bool", "GPU catalog", "the GPU has FP8 tensor cores"),
    _f("gpu_int8", "bool", "GPU catalog", "the GPU has INT8 tensor cores / matrix units"),
    _f("gpu_memory_gb", "number", "GPU catalog", "GPU memory, GB"),
    _f("gpu_usable_memory_gb", "number", "GPU catalog + runtime profile",
       "GPU memory the runtime lets the model use: memory x the runtime's utilisation setting - its reserve, GB"),
    _f("gpu_has_price", "bool", "GPU catalog", "the catalog has an example price per GPU-hour"),
    _f("gpu_is_local", "bool", "GPU catalog", "the target is the local host, measured at run time"),
    # -- the workload (--workload / flags)
    _f("dtype", "enum", "--dtype", "serving dtype on the target GPU", DTYPES),
    _f("prompt_len", "number", "--prompt-len", "prompt tokens per request"),
    _f("gen_len", "number", "--gen-len", "generated tokens per request"),
    _f("batch_size", "number", "--batch-size", "sequences per forward pass"),
    _f("concurrency", "number", "--concurrency", "requests in flight"),
    _f("request_rate", "number", "--request-rate", "requests per second, Poisson arrivals (absent: no rate given)"),
    _f("traffic_batch", "number", "traffic",
       "sequences per decode step the traffic produces under the runtime's scheduler (planner.perf.traffic; "
       "without traffic: the workload's decode batch)"),
    _f("capacity_rps", "number", "traffic",
       "request rate at which the dense model's projected p95 reaches the target (absent: no traffic)"),
    _f("meets_p95_target", "bool", "traffic",
       "the dense model's projected p95 under the traffic is within the target of the goal (absent: no target)"),
    _f("queueing_ms", "number", "workload", "queueing time per request, ms"),
    _f("tokenization_ms", "number", "workload", "tokenization time per request, ms"),
    _f("network_ms", "number", "workload", "network time per request, ms"),
    _f("non_model_ms", "number", "workload", "queueing + tokenization + network per request, ms"),
    # -- the model's shape (config.json)
    _f("params_m", "number", "model", "parameters, millions"),
    _f("num_layers", "number", "model", "decoder layers"),
    _f("num_heads", "number", "model", "attention (query) heads"),
    _f("num_kv_heads", "number", "model", "key/value heads"),
    _f("gqa", "bool", "model", "grouped-query attention: fewer KV heads than query heads"),
    _f("gated_mlp", "bool", "model", "gated MLP (gate/up/down), e.g. Llama"),
    # -- the profile (planner.profile.facts.profile_facts), projected to the target GPU
    _f("measured", "bool", "profile", "the profile includes local measurements (not only projection)"),
    _f("prefill_bound", "enum", "profile", "what limits prefill on the target GPU and runtime",
       ("memory", "compute", "overhead")),
    _f("decode_bound", "enum", "profile", "what limits decode on the target GPU and runtime",
       ("memory", "compute", "overhead")),
    _f("runtime", "text", "--runtime", "serving runtime of the projection, e.g. vllm, hf-eager"),
    _f("runtime_cuda_graphs", "bool", "runtime profile", "the runtime replays CUDA graphs (no per-op host dispatch)"),
    _f("prefill_overhead_share", "number", "profile",
       "share of a prefill that is per-step overhead (host dispatch, kernel floors, scheduler), projected"),
    _f("decode_overhead_share", "number", "profile",
       "share of a decode step that is per-step overhead (host dispatch, kernel floors, scheduler), projected"),
    _f("overhead_bound", "bool", "profile",
       "the dominant phase is overhead-bound: per-step overhead is at least half of it, so removing bytes or "
       "FLOPs buys little"),
    _f("prefill_intensity", "number", "profile", "prefill arithmetic intensity, FLOP/byte"),
    _f("decode_intensity", "number", "profile", "decode arithmetic intensity, FLOP/byte"),
    _f("ridge_point", "number", "profile", "GPU peak FLOP/s / bandwidth for the dtype, FLOP/byte"),
    _f("dominant_phase", "enum", "profile", "the phase that takes most of a request", ("prefill", "decode")),
    _f("mlp_time_share", "number", "profile", "share of model time in MLP projections"),
    _f("attn_proj_time_share", "number", "profile", "share of model time in q/k/v/o projections"),
    _f("attn_core_time_share", "number", "profile", "share of model time in attention itself (scores, softmax)"),
    _f("lm_head_time_share", "number", "profile", "share of model time in the LM head"),
    _f("mlp_flop_share", "number", "profile", "share of FLOPs in MLP projections"),
    _f("weights_gb", "number", "profile", "weights at the serving dtype, GB"),
    _f("kv_cache_gb", "number", "profile", "KV cache of the workload, GB"),
    _f("kv_cache_share", "number", "profile", "KV cache / (weights + KV cache)"),
    _f("memory_headroom_frac", "number", "profile", "free GPU memory after weights and KV cache, fraction"),
    _f("fits_on_gpu", "bool", "profile", "weights + KV cache fit in GPU memory"),
    _f("prefill_ms_projected", "number", "profile", "prefill time projected to the target GPU, ms"),
    _f("decode_ms_per_token_projected", "number", "profile", "decode time per token projected to the GPU, ms"),
    _f("request_ms_projected", "number", "profile", "model time per request projected to the GPU, ms"),
    _f("non_model_share", "number", "profile", "non-model time / (non-model + model time) per request"),
    # -- one candidate (candidate-scope: reject and risk rules only)
    _f("kind", "enum", "candidate", "pruning granularity of the candidate (none: it does not prune)", prune_kinds,
       "candidate"),
    _f("prunes", "bool", "candidate", "the candidate prunes (removes or zeroes weights)", (), "candidate"),
    _f("quantize", "enum", "candidate", "quantization scheme of the candidate (none: it does not quantize)",
       quant_schemes, "candidate"),
    _f("quant_bits", "number", "candidate", "bits per stored weight of the quantized layers (absent: not quantized)",
       (), "candidate"),
    _f("weight_only", "bool", "candidate", "weight-only quantization: activations and math stay in the serving dtype",
       (), "candidate"),
    _f("tensor_parallel", "number", "candidate", "GPUs the candidate shards the model over (1: one GPU)", (),
       "candidate"),
    _f("structured", "bool", "candidate", "removes whole channels/heads/layers (smaller dense tensors)", (),
       "candidate"),
    _f("criterion", "enum", "candidate", "saliency criterion", criteria, "candidate"),
    _f("ratio", "number", "candidate",
       "fraction removed of what the step prunes: sparsity, MLP channels, heads, layers; n/m for N:M", (), "candidate"),
    _f("head_mode", "enum", "candidate", "head pruning mode (none for other kinds)", head_modes, "candidate"),
    _f("params_removed_frac", "number", "candidate",
       "fraction of all parameters removed (structured) or zeroed (masks)", (), "candidate"),
    _f("recovery", "enum", "candidate", "recovery method", recovery_methods, "candidate"),
    _f("predicted_speedup", "number", "candidate",
       "goal metric, dense / pruned (x times better), projected to the target GPU", (), "candidate"),
    _f("predicted_gain", "number", "candidate", "1 - 1/predicted_speedup: the share of the goal metric saved",
       (), "candidate"),
    _f("probe_ppl_increase", "number", "candidate",
       "held-out perplexity increase of the step applied one-shot, measured on this model by the probe (absent: "
       "config-only or --no-probe)", (), "candidate"),
    _f("predicted_ppl_increase", "number", "candidate",
       "perplexity increase predicted after the planned recovery: the probe's one-shot figure x the recovery factor",
       (), "candidate"),
    _f("predicted_memory_gb", "number", "candidate",
       "weights + KV cache + activations of the pruned model on the target GPU, GB (projected)", (), "candidate"),
    _f("predicted_fits", "bool", "candidate", "the pruned model's predicted memory fits in the target GPU's memory",
       (), "candidate"),
]

FACTS: dict[str, Fact] = {f.name: f for f in _FACT_LIST}
assert len(FACTS) == len(_FACT_LIST), "duplicate fact name"

CONTEXT_FACTS = tuple(n for n, f in FACTS.items() if f.scope == "context")
CANDIDATE_FACTS = tuple(n for n, f in FACTS.items() if f.scope == "candidate")

# profile facts copied as they come from planner.profile.facts.profile_facts
PROFILE_FACT_NAMES = tuple(n for n, f in FACTS.items() if f.source == "profile" and n != "kv_cache_share")


def context_facts(*, goal: Goal, gpu, workload, budget, shape=None, params: int | None = None,
                  profile_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every context fact for one deployment question, None where unknown."""
    dtype = workload.dtype
    peaks = gpu.peak_tflops
    facts: dict[str, Any] = {
        "goal": goal.value,
        "goal_is_latency": goal.is_latency,
        "max_ppl_increase": budget.max_ppl_increase,
        "gpu": gpu.id,
        "gpu_family": gpu.family,
        "gpu_vendor": gpu.vendor,
        "gpu_architecture": gpu.architecture,
        "gpu_sparse_2to4": dtype in gpu.sparse_2to4.dtypes,
        "gpu_has_dtype": getattr(peaks, dtype, None) is not None or bool(gpu.measured_local),
        "gpu_fp8": peaks.fp8 is not None,
        "gpu_int8": peaks.int8 is not None,
        "gpu_memory_gb": gpu.memory_gb,
        "gpu_usable_memory_gb": _usable_memory_gb(gpu, workload),
        "gpu_has_price": gpu.price is not None,
        "gpu_is_local": bool(gpu.measured_local),
        "dtype": dtype,
        "prompt_len": workload.prompt_len,
        "gen_len": workload.gen_len,
        "batch_size": workload.batch_size,
        "concurrency": workload.concurrency,
        "queueing_ms": workload.queueing_ms,
        "tokenization_ms": workload.tokenization_ms,
        "network_ms": workload.network_ms,
        "non_model_ms": workload.non_model_ms,
        "request_rate": getattr(workload, "request_rate", None),
        "traffic_batch": float(workload.batch_size),  # the traffic's figure replaces it (decide.engine)
        "params_m": None if params is None else params / 1e6,
    }
    if shape is not None:
        facts.update(num_layers=shape.num_layers, num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads,
                     gqa=shape.num_kv_heads < shape.num_heads, gated_mlp=shape.gated_mlp)
    profile_facts = dict(profile_facts or {})
    for name in PROFILE_FACT_NAMES:
        if name in profile_facts and profile_facts[name] is not None:
            facts[name] = profile_facts[name]
        else:
            facts.setdefault(name, None)
    facts["runtime"] = profile_facts.get("runtime") or getattr(workload, "runtime", None)
    facts["runtime_cuda_graphs"] = profile_facts.get("runtime_cuda_graphs")
    for name in ("num_layers", "gqa"):  # the profile reports these too; the shape is the source when both exist
        if facts.get(name) is None and profile_facts.get(name) is not None:
            facts[name] = profile_facts[name]
    usable, headroom, capacity = facts["gpu_usable_memory_gb"], facts.get("memory_headroom_frac"), gpu.memory_gb
    if usable is not None and headroom is not None and capacity:  # the runtime's reserve counts against the fit
        facts["fits_on_gpu"] = capacity * (1.0 - headroom) <= usable
    weights, kv = facts.get("weights_gb"), facts.get("kv_cache_gb")
    known = weights is not None and kv is not None and weights + kv > 0
    facts["kv_cache_share"] = kv / (weights + kv) if known else None
    for name in CONTEXT_FACTS:
        facts.setdefault(name, None)
    return facts


def _usable_memory_gb(gpu, workload) -> float | None:
    from planner.perf.runtimes import usable_memory_gb

    return usable_memory_gb(gpu, getattr(workload, "runtime", None))


def check_value(fact: Fact, value: Any) -> str | None:
    """Why `value` cannot be compared with `fact`, or None when it can."""
    if fact.type == "bool":
        return None if isinstance(value, bool) else f"expects true or false, got {value!r}"
    if fact.type == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expects a number, got {value!r}"
    if not isinstance(value, str):
        return f"expects text, got {value!r}"
    if fact.type == "enum" and value not in fact.choices:
        from planner.errors import did_you_mean

        return did_you_mean(value, fact.choices, f"value for {fact.name!r}")
    return None
