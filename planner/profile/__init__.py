"""Profile a model: measure it on the local device, project it onto the target GPU, and name the facts.

    profile = run_profile(None, "a100", Workload())     # the embedded SmolLM2-135M, measured + projected
    profile.facts["decode_bound"]                       # "memory"
    load_or_run_profile(None, "a100", Workload())       # the same, from cache_dir()/profiles/ when present

Modules: roofline (analytic FLOPs/bytes/bounds), measure (torch.profiler breakdown), peaks (local micro-
benchmarks), nvml (NVIDIA device facts), facts (what the rule engine reads), schema (profile.json).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from planner.profile.facts import FACT_NAMES, profile_facts
from planner.profile.roofline import RooflineEstimate, estimate, gemm_cost
from planner.profile.schema import Measured, Profile

__all__ = ["run_profile", "load_or_run_profile", "profile_facts", "estimate", "gemm_cost", "Profile",
           "RooflineEstimate", "FACT_NAMES", "cache_key"]

WARMUP_STEPS = 2
MAX_DECODE_STEPS = 16
LOCAL_DTYPES = ("fp32", "bf16", "fp16")  # dtypes the model can run at locally through torch


def _default_decode_steps(workload) -> int:
    return max(1, min(MAX_DECODE_STEPS, workload.gen_len))


def _local_dtype(device: str, workload) -> str:
    """fp32 on CPU (bf16 matmuls are slow or emulated on most CPUs); the workload's dtype on CUDA when torch has it."""
    if not device.startswith("cuda"):
        return "fp32"
    return workload.dtype if workload.dtype in LOCAL_DTYPES else "bf16"


def _gpu_spec(gpu):
    from planner.gpus import get_gpu

    return get_gpu(gpu) if isinstance(gpu, str) else gpu


def _project(shape, workload, gpu, measured=None, device: str = "cpu") -> RooflineEstimate:
    """The target's projection under the workload's runtime. On the local host the serving figures come from the
    measurement when there is one (planner.perf.calibration), else from the runtime profile's CPU priors."""
    import torch

    from planner.errors import InputError
    from planner.perf.calibration import host_key, rates_from_measurement
    from planner.perf.runtimes import resolve_runtime
    from planner.profile.peaks import measure_local_peaks

    if not gpu.measured_local:
        from planner.perf.calibration import calibrated_gpu_rates

        return estimate(shape, workload, gpu, rates=calibrated_gpu_rates(gpu, workload))  # None: the profile's
    if workload.dtype not in LOCAL_DTYPES:
        raise InputError(f"target {gpu.id!r} runs the model through torch; dtype {workload.dtype!r} is not "
                         f"supported there (accepted: {', '.join(LOCAL_DTYPES)})")
    rates = None
    if measured is not None and measured.dtype == workload.dtype and workload.runtime:
        runtime = resolve_runtime(workload.runtime, gpu)
        key = host_key(device=device, threads=torch.get_num_threads(), runtime=runtime.id, dtype=workload.dtype)
        rates = rates_from_measurement(measured, shape.num_layers, runtime, key)
    return estimate(shape, workload, gpu, peaks=measure_local_peaks(workload.dtype), rates=rates)


def _measure(source, shape, workload, *, device: str, local, decode_steps: int, repeats: int,
             trust_remote_code: bool, on_step) -> Measured:
    from planner.gpus import GpuSpec
    from planner.models import load_model
    from planner.profile.measure import measure_model
    from planner.profile.peaks import measure_local_peaks
    from planner.profile.schema import LocalPeaks
    from planner.workload import Workload

    start = time.perf_counter()
    say = on_step or (lambda message: None)
    notes: list[str] = []
    dtype = _local_dtype(device, workload)
    prompt_len = workload.prompt_len
    limit = shape.max_positions
    if limit and prompt_len + WARMUP_STEPS + decode_steps > limit:
        prompt_len = max(1, limit - WARMUP_STEPS - decode_steps)
        notes.append(f"prompt measured at {prompt_len} tokens: the model's {limit} positions cannot hold "
                     f"{workload.prompt_len} + {WARMUP_STEPS + decode_steps} decode steps")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if not device.startswith("cuda") and load > (os.cpu_count() or 1):
        notes.append(f"host busy: load average {load:.1f} on {os.cpu_count()} CPUs; other processes share the "
                     "cores, so measured times are inflated and noisy")
    if dtype != workload.dtype:
        notes.append(f"measured at {dtype} on {local.kind}; the projection is at the workload's {workload.dtype}")

    say(f"loading the model ({dtype}, {device})")
    loaded = load_model(source.spec or None, dtype=dtype, trust_remote_code=trust_remote_code, device=device,
                        with_tokenizer=False)
    say("measuring local peaks (GEMM FLOP/s, copy bandwidth; cached per host)")
    peaks = measure_local_peaks(dtype, device=device)
    label = f"measured on {local.label}"
    prefill, decode, extras = measure_model(loaded.model, workload.batch_size, prompt_len, device=device,
                                            repeats=repeats, decode_steps=decode_steps, warmup_steps=WARMUP_STEPS,
                                            label=label, on_step=on_step)
    del loaded

    local_spec = GpuSpec(id="local", name=local.name, vendor="host", measured_local=True)
    # gen_len such that the modelled decode context (prompt + gen/2) is the measured one (prompt + warm-up + N/2)
    local_workload = Workload(prompt_len=prompt_len, gen_len=2 * WARMUP_STEPS + decode_steps,
                              batch_size=workload.batch_size, dtype=dtype)
    local_roofline = estimate(shape, local_workload, local_spec, peaks=peaks)
    local_roofline = local_roofline.model_copy(update={
        "label": f"projected to the local {local.label} from its measured peaks ({dtype}); roofline lower bound"})
    return Measured(
        label=label,
        dtype=dtype,
        peaks=LocalPeaks(label=label, flops=peaks["flops"], bandwidth=peaks["bandwidth"], dtype=dtype,
                         method=peaks["method"], cached=peaks.get("cached", False),
                         measured_at=peaks.get("measured_at")),
        prefill=prefill.model_copy(update={"local_lower_bound_ms": local_roofline.prefill_ms}),
        decode=decode.model_copy(update={"local_lower_bound_ms": local_roofline.decode_ms_per_token}),
        local_roofline=local_roofline,
        activation_peak_bytes=extras["activation_peak_bytes"],
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def run_profile(model_spec: str | None, gpu, workload=None, *, measure: bool = True, decode_steps: int | None = None,
                repeats: int = 3, trust_remote_code: bool = False, device: str | None = None,
                threads: int | None = None, on_step: Callable[[str], None] | None = None) -> Profile:
    """Measure `model_spec` on the local device (unless `measure=False` or config-only) and project it to `gpu`.

    `gpu` is a catalog name or a GpuSpec; `workload` defaults to Workload(). `decode_steps` defaults to
    min(16, gen_len). `device` defaults to cuda when present, else cpu. `threads` sets torch's CPU threads for
    the run (default: torch's own choice, one per core).
    """
    import torch

    from planner.errors import InputError

    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1 (got {threads})")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_profile(model_spec, gpu, workload, measure=measure, decode_steps=decode_steps, repeats=repeats,
                            trust_remote_code=trust_remote_code, device=device, on_step=on_step)
    finally:
        torch.set_num_threads(previous)


def _run_profile(model_spec, gpu, workload, *, measure, decode_steps, repeats, trust_remote_code, device,
                 on_step) -> Profile:
    from planner._version import __version__
    from planner.arch import get_adapter
    from planner.errors import InputError
    from planner.models import build_meta_model, load_config, parameters_by_role
    from planner.profile.device import describe_local_device, pick_device
    from planner.profile.schema import MemoryFacts, ModelInfo
    from planner.workload import Workload, require_positions

    from planner.perf.runtimes import for_target

    workload = for_target(workload or Workload(), _gpu_spec(gpu))
    if repeats < 1:
        raise InputError(f"repeats must be at least 1 (got {repeats})")
    if decode_steps is not None and decode_steps < 1:
        raise InputError(f"decode_steps must be at least 1 (got {decode_steps})")
    gpu = _gpu_spec(gpu)
    config, source = load_config(model_spec, trust_remote_code)
    shape = get_adapter(config).shape(config)
    require_positions(workload.prompt_len, workload.gen_len, shape.max_positions,
                      f"choose a workload of at most {shape.max_positions} tokens (--prompt-len + --gen-len)")
    roles = parameters_by_role(build_meta_model(config))
    device = pick_device(device)
    local = describe_local_device(device)

    measured, note = None, None
    if measure and source.has_weights:
        measured = _measure(source, shape, workload, device=device, local=local,
                            decode_steps=decode_steps or _default_decode_steps(workload), repeats=repeats,
                            trust_remote_code=trust_remote_code, on_step=on_step)
    projected = _project(shape, workload, gpu, measured, device)
    if measured is None:
        note = ("config-only model: no weights, so nothing was measured; the projection needs only the config"
                if not source.has_weights else "measurement skipped (--no-measure); projection only")

    target = f"projected to {gpu.id}"
    memory_bytes = gpu.memory_bytes or local.memory_bytes  # the local host's RAM when the target is the CPU
    memory = MemoryFacts(
        label=f"{target} at {workload.dtype} (KV cache for {projected.kv_sequences} sequence(s) of "
              f"{workload.prompt_len + workload.gen_len} tokens)",
        dtype=workload.dtype,
        weight_bytes=projected.weight_bytes,
        kv_cache_bytes_per_token=projected.kv_cache_bytes_per_token,
        kv_sequences=projected.kv_sequences,
        kv_tokens_per_sequence=workload.prompt_len + workload.gen_len,
        kv_cache_bytes=projected.kv_cache_bytes,
        activation_peak_bytes=projected.activation_bytes,
        gpu_memory_bytes=memory_bytes,
    )
    labels = {
        "projected": projected.label,
        "memory": memory.label,
        "facts": f"{target} ({workload.dtype}); `measured` says whether a local measurement exists",
        "measured": measured.label if measured else f"not measured: {note}",
        "local_device": f"{local.label}; NVML: {local.nvml.status}",
    }
    return Profile(
        planner_version=__version__,
        created_at=datetime.datetime.now().isoformat(timespec="seconds"),
        model=ModelInfo(name=source.name, spec=source.spec, source_kind=source.kind, path=str(source.path),
                        weights_present=source.has_weights, shape=shape, parameters=sum(roles.values()),
                        parameters_by_role=roles),
        workload=workload,
        target_gpu=gpu.id,
        target_gpu_name=gpu.name,
        local=local,
        measured=measured,
        measured_note=note,
        projected=projected,
        memory=memory,
        labels=labels,
    )


# -- cache ----------------------------------------------------------------------------------------------------


def _fingerprint(folder: Path) -> list:
    """Names, sizes and modification times of the files that define a checkpoint."""
    files = []
    for pattern in ("config.json", "*.safetensors", "*.bin", "*.gguf"):
        for path in sorted(folder.glob(pattern)):
            st = path.stat()
            files.append([path.name, st.st_size, st.st_mtime_ns])
    return files


def cache_key(model_spec: str | None, gpu, workload, *, measure: bool = True, decode_steps: int | None = None,
              repeats: int = 3, device: str | None = None, threads: int | None = None) -> str:
    """Hash of everything a profile depends on: model files, workload, target GPU, settings, host, versions."""
    import torch

    from planner._version import __version__
    from planner.models import resolve_source
    from planner.profile.device import pick_device
    from planner.profile.schema import PROFILE_VERSION

    source = resolve_source(model_spec)
    parts = {
        "planner": __version__, "profile": PROFILE_VERSION, "torch": torch.__version__, "host": platform.node(),
        "source": [source.kind, str(source.path.resolve()), _fingerprint(source.path)],
        "workload": workload.model_dump(mode="json"), "gpu": _gpu_spec(gpu).id, "measure": measure,
        "decode_steps": decode_steps, "repeats": repeats, "device": pick_device(device),
        "threads": threads or torch.get_num_threads(),
    }
    from planner.perf.calibration import calibrated_gpu_rates

    calibrated = calibrated_gpu_rates(_gpu_spec(gpu), workload)  # figures measured on that GPU: a new projection
    if calibrated is not None:
        parts["gpu_calibration"] = [calibrated.step_ms, calibrated.request_ms, calibrated.source]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def profiles_cache_dir() -> Path:
    from planner.paths import cache_dir

    return cache_dir() / "profiles"


def load_or_run_profile(model_spec: str | None, gpu, workload=None, *, measure: bool = True,
                        decode_steps: int | None = None, repeats: int = 3, trust_remote_code: bool = False,
                        device: str | None = None, threads: int | None = None, refresh: bool = False,
                        on_step: Callable[[str], None] | None = None) -> Profile:
    """A profile from cache_dir()/profiles/ when one was made for the same inputs, else run and cache it.

    `refresh=True` always runs and replaces the cached copy.
    """
    from planner.errors import InputError
    from planner.workload import Workload

    from planner.perf.runtimes import for_target

    workload = for_target(workload or Workload(), _gpu_spec(gpu))
    key = cache_key(model_spec, gpu, workload, measure=measure, decode_steps=decode_steps, repeats=repeats,
                    device=device, threads=threads)
    path = profiles_cache_dir() / f"{key}.json"
    if not refresh and path.is_file():
        try:
            profile = read_profile(path)
            profile._cache_path = str(path)
            return profile
        except InputError:
            pass  # unreadable or from an incompatible build: profile again
    profile = run_profile(model_spec, gpu, workload, measure=measure, decode_steps=decode_steps, repeats=repeats,
                          trust_remote_code=trust_remote_code, device=device, threads=threads, on_step=on_step)
    save_profile(profile, path)
    profile._cache_path = str(path)
    return profile


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write profile.json atomically (a temporary file renamed into place)."""
    from planner.documents import write_atomic

    return write_atomic(path, profile.model_dump_json(indent=2), what="profile")


def read_profile(path: str | Path) -> Profile:
    """Load a profile.json; a file that is not one raises InputError naming it."""
    from planner.documents import load_validated

    return load_validated(path, Profile, "profile", invalid=" is not a valid planner profile", syntax="json")
