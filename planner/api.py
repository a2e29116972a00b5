"""The main job as a library call: the CLI's `plan --goal GOAL --gpu GPU` without the command line.

    import planner
    plan = planner.plan("p95-latency", "a100")                       # the embedded model, default workload
    plan = planner.plan("throughput", "h100", model="path/to/model", workload={"batch_size": 16},
                        runtime="vllm", max_ppl_increase=0.05)
    planner.save_plan(plan, "plan.json")                              # what `plan run` executes

Returns the plan document (planner.decide.plan.Plan); writes nothing but the profile cache. Bad input raises
planner.errors.InputError naming the value and what is accepted.
"""

from __future__ import annotations

from typing import Any

DEFAULT_GPU = "a100"


def serving_workload(workload, gpu, *, dtype_fallback: bool = True):
    """(the workload as the target serves it, a note or None): the target's runtime and dtype defaults
    (planner.perf.runtimes.for_target), then `target_dtype`."""
    from planner.perf.runtimes import for_target

    return target_dtype(for_target(workload, gpu), gpu, dtype_fallback=dtype_fallback)


def target_dtype(workload, gpu, *, dtype_fallback: bool = True):
    """(workload, note or None): a GPU without a peak for the dtype (T4, V100: no bf16) serves fp16 when
    `dtype_fallback` (the caller did not choose the dtype), else InputError naming the dtypes it has."""
    from planner.errors import InputError

    if gpu.measured_local or gpu.peak_flops(workload.dtype) is not None:
        return workload, None
    has = [d for d in ("bf16", "fp16", "fp8", "int8", "fp32") if gpu.peak_flops(d) is not None]
    if dtype_fallback and "fp16" in has:
        note = f"{gpu.id} has no {workload.dtype} tensor-core peak: planning for fp16 serving (pass --dtype to choose)"
        return workload.model_copy(update={"dtype": "fp16"}), note
    raise InputError(f"{gpu.id} has no {workload.dtype} figure in the catalog; pass --dtype with one it has: "
                     f"{', '.join(has)}")


def make_workload(workload: Any, runtime: str | None = None):
    """A Workload from a Workload or a dict of its fields (with `runtime` set when given); InputError naming the
    bad field."""
    from pydantic import ValidationError

    from planner.documents import describe_validation
    from planner.errors import InputError
    from planner.workload import Workload

    if workload is None or isinstance(workload, dict):
        data = dict(workload or {})
        if runtime is not None:
            data["runtime"] = runtime
        try:
            return Workload(**data)
        except ValidationError as exc:
            raise InputError(f"bad workload: {describe_validation(exc)}") from None
    if runtime is not None:
        return workload.model_copy(update={"runtime": runtime})
    return workload


def _budget(max_ppl_increase: float | None):
    from pydantic import ValidationError

    from planner.documents import describe_validation
    from planner.errors import InputError
    from planner.workload import QualityBudget

    if max_ppl_increase is None:
        return QualityBudget()
    try:
        return QualityBudget(max_ppl_increase=max_ppl_increase)
    except ValidationError as exc:
        raise InputError(f"--max-ppl-increase {max_ppl_increase!r} is invalid: {describe_validation(exc)} "
                         "(accepted: a fraction >= 0, e.g. 0.10 for +10%)") from None


def parse_schemes(texts, gpu=None, shape=None) -> list:
    """QuantSpecs from "int8-weight-only", "int4-weight-only:g64" (or "...:64"); InputError naming the bad value
    and what is accepted: an unknown scheme, a group size that is not offered or does not divide the model's
    layers, a scheme the target GPU has no tensor cores for."""
    from planner.decide.rules import quant_spec
    from planner.errors import InputError
    from planner.quant.specs import GROUP_SIZES, SCHEMES

    needs = {"fp8": ("fp8", "FP8"), "w8a8-int8": ("int8", "INT8")}  # scheme -> (peak the GPU needs, its name)
    specs = []
    for text in texts:
        scheme, _, group = str(text).strip().partition(":")
        data = {"scheme": scheme}
        if group:
            digits = group.lower().removeprefix("g")
            if not digits.isdigit():
                raise InputError(f"--quantize {text!r}: the group size is a number, e.g. {scheme}:g128 "
                                 f"(accepted: {', '.join(map(str, GROUP_SIZES))})")
            data["group_size"] = int(digits)
        try:
            spec = quant_spec(data)
        except ValueError as exc:
            raise InputError(f"--quantize {text!r}: {str(exc).removeprefix('quantize: ')}") from None
        if gpu is not None and not gpu.measured_local and spec.scheme in needs:
            peaks = gpu.peak_tflops
            if getattr(peaks, needs[spec.scheme][0], None) is None:
                fits = [s for s in SCHEMES if s not in needs or getattr(peaks, needs[s][0], None) is not None]
                raise InputError(f"--quantize {spec.scheme}: {gpu.id} has no {needs[spec.scheme][1]} tensor cores "
                                 f"(accepted on {gpu.id}: {', '.join(fits)})")
        if shape is not None and spec.group_size:
            dims = {"hidden size": shape.hidden_size, "MLP width": shape.intermediate_size,
                    "attention width": shape.q_dim}
            bad = {k: v for k, v in dims.items() if v % spec.group_size}
            if bad:
                ok = [g for g in GROUP_SIZES if all(v % g == 0 for v in dims.values())]
                name, value = next(iter(bad.items()))
                raise InputError(f"--quantize {text!r}: group size {spec.group_size} does not divide the model's "
                                 f"{name} {value} (accepted for this model: "
                                 f"{', '.join(map(str, ok)) or 'none; use int8-weight-only'})")
        specs.append(spec)
    return specs


def _user_quantize_rule(specs):
    """A rule that proposes the schemes the caller asked for, so they are decided like every other candidate."""
    from planner.decide.rules import Rule

    return Rule.model_validate({
        "id": "asked-to-quantize", "statement": "asked for with --quantize",
        "then": {"propose": {"quantize": [s.model_dump(exclude={"version"}, exclude_none=True) for s in specs],
                             "recovery": ["none"]}},
        "rationale": "the caller asked to consider these schemes", "sources": ["--quantize"]})


def plan(goal, gpu: str | None = None, *, model: str | None = None, workload=None, runtime: str | None = None,
         max_ppl_increase: float | None = None, rules=(), threads: int | None = None, measure: bool = True,
         trust_remote_code: bool = False, dtype_fallback: bool = True, quantize=(), probe: bool = True,
         recovery_minutes: float | None = None, recovery_tokens: int | None = None):
    """Profile the model (cached), decide with the rules, return the ranked plan.

    `goal`: a Goal or its name (aliases accepted); `gpu`: a catalog id or alias, or "cpu" (default a100);
    `workload`: a Workload or a dict of its fields; `rules`: folders of extra rules; `measure`: False for a
    projection only (no weights needed); `quantize`: schemes to consider besides the rules' (e.g.
    "int4-weight-only:g64"); `probe`: measure the quality loss of every candidate the speed rules keep, one-shot on
    the model (needs weights; False keeps the rules' risk priors); `recovery_minutes` / `recovery_tokens`: the time
    allowance for one candidate's recovery on this machine (default 10) or a token budget outright (see
    planner.recover.budget.plan_budget)."""
    from planner._version import __version__
    from planner.decide.engine import decide
    from planner.decide.plan import with_model_identity
    from planner.decide.rules import load_rules
    from planner.gpus import get_gpu, resolution_note
    from planner.profile import load_or_run_profile
    from planner.profile.facts import profile_facts
    from planner.profile.roofline import estimator_like
    from planner.workload import Goal, parse_goal

    goal = goal if isinstance(goal, Goal) else parse_goal(str(goal))
    gpu_name = gpu or DEFAULT_GPU
    target = get_gpu(gpu_name)
    gpu_note = resolution_note(gpu_name)
    served, dtype_note = serving_workload(make_workload(workload, runtime), target, dtype_fallback=dtype_fallback)
    budget = _budget(max_ppl_increase)
    _check_recovery_args(recovery_minutes, recovery_tokens)
    ruleset = load_rules(list(rules))
    parse_schemes(quantize, target)  # the scheme and the GPU, before the slow part
    profile = load_or_run_profile(model, target, served, measure=measure, trust_remote_code=trust_remote_code,
                                  threads=threads)
    asked = parse_schemes(quantize, target, profile.model.shape)
    if asked:
        ruleset.rules.append(_user_quantize_rule(asked))
    quality_probe, probe_note = _quality_probe(model, profile, probe=probe and measure,
                                               trust_remote_code=trust_remote_code, threads=threads)
    result = decide(goal=goal, gpu=target, workload=served, budget=budget, shape=profile.model.shape,
                    ruleset=ruleset, profile_facts=profile_facts(profile), params=profile.model.parameters,
                    model=model or "", model_name=profile.model.name, profile_info=_profile_info(profile),
                    estimator=estimator_like(profile.projected), planner_version=__version__,
                    quality_probe=quality_probe, probe_note=probe_note,
                    recovery_budget=_recovery_budget(profile, measure=measure, minutes=recovery_minutes,
                                                     tokens=recovery_tokens))
    result = result.model_copy(update={"execution": _execution(profile, result, target, measure=measure)})
    notes = [n for n in (gpu_note, dtype_note) if n]
    if notes:
        result = result.model_copy(update={"notes": notes + result.notes})
    return with_model_identity(result)


def _check_recovery_args(minutes, tokens) -> None:
    """Before the slow part: the values (planner.recover.budget.check_request), and not both at once."""
    from planner.errors import InputError
    from planner.recover.budget import check_request

    check_request(minutes, tokens)
    if minutes is not None and tokens is not None:
        raise InputError("--recovery-minutes and --recovery-tokens both given: pass one (tokens fix the budget "
                         "outright; minutes cap the model-scaled budget)")


def _recovery_budget(profile, *, measure: bool, minutes: float | None, tokens: int | None):
    """The plan's recovery budget: scaled with the model, capped by `minutes` (default 10) of this machine's
    measured GEMM rate (fp32, the dtype `plan run` trains in); no time estimate for a projection-only plan."""
    from planner.recover.budget import DEFAULT_ALLOWANCE_MINUTES, plan_budget

    params = profile.model.parameters
    if not params:
        return None
    flops = None
    local = profile.local
    if measure and profile.model.weights_present:
        from planner.profile.peaks import measure_local_peaks

        flops = measure_local_peaks("fp32", device="cuda" if local.kind == "cuda" else "cpu")["flops"]
    return plan_budget(params, device=local.label, flops_per_second=flops,
                       allowance_minutes=minutes if minutes is not None else DEFAULT_ALLOWANCE_MINUTES,
                       tokens=tokens)


def _execution(profile, result, target, *, measure: bool):
    """How `plan run` would execute the plan here (planner.decide.execution), projected from the config and this
    machine's memory and measured GEMM rate (the recovery budget measured it already: cached)."""
    from planner.decide.execution import run_execution

    local = profile.local
    flops = None
    if measure:  # no weights needed: the GEMM rate is this machine's
        from planner.profile.peaks import measure_local_peaks

        flops = measure_local_peaks("fp32", device="cuda" if local.kind == "cuda" else "cpu")["flops"]
    return run_execution(profile.model.shape, device=local.label, device_kind=local.kind,
                         available_bytes=local.memory_bytes, serving_dtype=result.workload.dtype, flops=flops,
                         candidates=result.candidates, facts=result.facts,
                         target=target)


def _quality_probe(model, profile, *, probe: bool, trust_remote_code: bool, threads: int | None):
    """(a function that measures steps one-shot on the loaded model, or None; why there is none)."""
    if not probe:
        return None, "quality probe skipped (--no-probe or --no-measure): the risk tiers are the rules' priors"
    if not profile.model.weights_present:
        return None, "config-only model: no weights to probe, so the risk tiers are the rules' priors"
    loaded = []

    def run(steps):
        import torch

        from planner.models import load_model
        from planner.probe import probe as measure

        if threads:
            torch.set_num_threads(threads)
        if not loaded:
            loaded.append(load_model(model, dtype="fp32", trust_remote_code=trust_remote_code))
        return measure(loaded[0], steps)

    return run, ""


def _profile_info(profile) -> dict:
    info = {"projected": profile.projected.label, "created_at": profile.created_at,
            "local_device": profile.local.label, "model_parameters": profile.model.parameters}
    if profile._cache_path:
        info["path"] = profile._cache_path  # `plan run` copies it into the run folder for the report
    if profile.measured is not None:
        info["measured"] = profile.measured.label
    elif profile.measured_note:
        info["not_measured"] = profile.measured_note
    return info
