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


def _workload(workload: Any, runtime: str | None):
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


def plan(goal, gpu: str | None = None, *, model: str | None = None, workload=None, runtime: str | None = None,
         max_ppl_increase: float | None = None, rules=(), threads: int | None = None, measure: bool = True,
         trust_remote_code: bool = False, dtype_fallback: bool = True):
    """Profile the model (cached), decide with the rules, return the ranked plan.

    `goal`: a Goal or its name (aliases accepted); `gpu`: a catalog id or alias, or "cpu" (default a100);
    `workload`: a Workload or a dict of its fields; `rules`: folders of extra rules; `measure`: False for a
    projection only (no weights needed)."""
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
    served, dtype_note = serving_workload(_workload(workload, runtime), target, dtype_fallback=dtype_fallback)
    budget = _budget(max_ppl_increase)
    ruleset = load_rules(list(rules))
    profile = load_or_run_profile(model, target, served, measure=measure, trust_remote_code=trust_remote_code,
                                  threads=threads)
    result = decide(goal=goal, gpu=target, workload=served, budget=budget, shape=profile.model.shape,
                    ruleset=ruleset, profile_facts=profile_facts(profile), params=profile.model.parameters,
                    model=model or "", model_name=profile.model.name, profile_info=_profile_info(profile),
                    estimator=estimator_like(profile.projected), planner_version=__version__)
    notes = [n for n in (gpu_note, dtype_note) if n]
    if notes:
        result = result.model_copy(update={"notes": notes + result.notes})
    return with_model_identity(result)


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
