"""The facts the rule engine reads from a profile, under fixed names.

All timing facts are projected to the target GPU at the workload's dtype (roofline lower bounds); `measured` says
whether a measured local profile stands beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.profile.schema import Profile

FACT_NAMES = (
    "prefill_bound", "decode_bound", "prefill_intensity", "decode_intensity", "ridge_point", "dominant_phase",
    "mlp_time_share", "attn_proj_time_share", "attn_core_time_share", "lm_head_time_share", "mlp_flop_share",
    "weights_gb", "kv_cache_gb", "memory_headroom_frac", "fits_on_gpu", "prefill_ms_projected",
    "decode_ms_per_token_projected", "request_ms_projected", "non_model_share", "measured", "gqa", "num_layers",
    "runtime", "runtime_cuda_graphs", "prefill_overhead_share", "decode_overhead_share", "overhead_bound",
)


def profile_facts(profile: "Profile") -> dict[str, float | str | bool]:
    memory = profile.memory
    return _facts(profile.projected, profile.model.shape, profile.workload, weight_bytes=memory.weight_bytes,
                  kv_bytes=memory.kv_cache_bytes, headroom=memory.headroom_frac, fits=memory.fits,
                  measured=profile.measured is not None)


def projection_facts(shape, workload, gpu, projected=None) -> dict[str, float | str | bool]:
    """The same facts for a projection alone (a model known by its shape, nothing measured), with the memory
    headroom against the target GPU's memory where the catalog has it."""
    from planner.profile.roofline import estimate

    proj = projected if projected is not None else estimate(shape, workload, gpu)
    total = proj.weight_bytes + proj.kv_cache_bytes + proj.activation_bytes
    headroom = 1.0 - total / gpu.memory_bytes if gpu.memory_bytes else None
    return _facts(proj, shape, workload, weight_bytes=proj.weight_bytes, kv_bytes=proj.kv_cache_bytes,
                  headroom=headroom, fits=None if headroom is None else headroom >= 0.0, measured=False)


def _facts(proj, shape, workload, *, weight_bytes, kv_bytes, headroom, fits, measured) -> dict:
    non_model = workload.non_model_ms
    share = proj.time_share
    return {
        "prefill_bound": proj.prefill_bound,
        "decode_bound": proj.decode_bound,
        "prefill_intensity": proj.prefill_intensity,
        "decode_intensity": proj.decode_intensity,
        "ridge_point": proj.ridge_point,
        "dominant_phase": proj.dominant_phase,
        "mlp_time_share": share["mlp"],
        "attn_proj_time_share": share["attn_proj"],
        "attn_core_time_share": share["attn_core"],
        "lm_head_time_share": share["lm_head"],
        "mlp_flop_share": proj.flop_share["mlp"],
        "weights_gb": weight_bytes / 1e9,
        "kv_cache_gb": kv_bytes / 1e9,
        "memory_headroom_frac": headroom,
        "fits_on_gpu": fits,
        "prefill_ms_projected": proj.prefill_ms,
        "decode_ms_per_token_projected": proj.decode_ms_per_token,
        "request_ms_projected": proj.request_ms,
        "non_model_share": non_model / (non_model + proj.request_ms),
        "measured": measured,
        "gqa": shape.num_kv_heads < shape.num_heads,
        "num_layers": float(shape.num_layers),
        **_runtime_facts(proj),
    }


def _runtime_facts(proj) -> dict:
    if proj.serving is None:
        return {"runtime": None, "runtime_cuda_graphs": None, "prefill_overhead_share": None,
                "decode_overhead_share": None, "overhead_bound": None}
    from planner.perf.runtimes import get_runtime

    dominant = proj.decode_bound if proj.dominant_phase == "decode" else proj.prefill_bound
    return {
        "runtime": proj.runtime,
        "runtime_cuda_graphs": get_runtime(proj.runtime).cuda_graphs,
        "prefill_overhead_share": proj.prefill_overhead_share,
        "decode_overhead_share": proj.decode_overhead_share,
        "overhead_bound": dominant == "overhead",
    }
