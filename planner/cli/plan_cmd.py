"""The main job: `plan --goal GOAL --gpu GPU` profiles the model, decides with the rules, prints the ranked plan with
its reasons and writes plan.json. Heavy imports happen inside `run_main`, so `plan --help` stays fast."""

from __future__ import annotations

from pathlib import Path

DEFAULT_GPU = "a100"
DEFAULT_TOP = 5


def add_main_arguments(parser) -> None:
    from planner.cli.common import add_model_arguments, add_workload_arguments

    g = parser.add_argument_group("the main job (plan --goal GOAL --gpu GPU)")
    g.add_argument("--goal", help="what the deployment must get better at: p50-latency, p95-latency, p99-latency, "
                                  "ttft, tpot, throughput, peak-memory, checkpoint-size, kv-capacity, cost-per-token")
    g.add_argument("--gpu", default=None,
                   help=f"target GPU id or alias (see `plan gpus`; default {DEFAULT_GPU}, i.e. a100-80gb-sxm); "
                        "`cpu` targets this machine with its measured peaks")
    add_model_arguments(g)
    add_workload_arguments(g)
    g.add_argument("--max-ppl-increase", type=float, default=None, metavar="FRACTION",
                   help="quality budget: relative held-out perplexity increase allowed (default 0.10 = +10%%)")
    g.add_argument("--rules", action="append", default=None, metavar="DIR",
                   help="a folder of your own rules (*.yaml), added to the built-in ones; repeatable "
                        "(check it first with `plan rules --check DIR`)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the local measurement (use the same as `plan run --threads` when "
                        "planning for --gpu cpu)")
    g.add_argument("--no-measure", action="store_true",
                   help="projection only: skip measuring the model on this machine (no weights needed)")
    g.add_argument("-o", "--output", default="plan.json", metavar="FILE",
                   help="where to write the plan (default ./plan.json; an existing file is replaced only if it "
                        "is a plan)")
    g.add_argument("--json", action="store_true", help="print plan.json on stdout instead of the table")
    g.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                   help=f"candidates to show in the table (default {DEFAULT_TOP}; plan.json keeps all)")
    g.add_argument("--execute", action="store_true",
                   help="then run the top candidate: prune, recover, evaluate, benchmark (`plan run plan.json`)")


def run_main(args) -> int:
    from planner.errors import InputError

    if not args.goal:
        raise InputError("--goal is required (e.g. plan --goal p95-latency --gpu a100); accepted goals: "
                         "p50-latency, p95-latency, p99-latency, ttft, tpot, throughput, peak-memory, "
                         "checkpoint-size, kv-capacity, cost-per-token; see plan --help")
    if args.top is not None and args.top < 1:
        raise InputError(f"--top {args.top} is invalid; accepted: an integer >= 1")
    plan, path, seconds = make_plan(args)
    if args.json:
        from planner.cli._out import print_json

        print_json(plan)
    else:
        show_plan(plan, path, args.top, seconds)
    if args.execute:
        return _execute(plan, path, quiet=args.json)
    return 0


def make_plan(args):
    """Resolve the inputs, profile (cached), decide, write plan.json. Returns (plan, path, seconds taken)."""
    import time

    from planner import __version__
    from planner.cli.common import workload_from_args
    from planner.decide.engine import decide
    from planner.decide.plan import is_plan_file
    from planner.decide.rules import load_rules
    from planner.errors import InputError
    from planner.gpus import get_gpu, resolution_note
    from planner.workload import parse_goal

    started = time.perf_counter()
    goal = parse_goal(args.goal)
    gpu_name = args.gpu or DEFAULT_GPU
    gpu = get_gpu(gpu_name)
    gpu_note = resolution_note(gpu_name)
    workload, dtype_note = _workload_for(args, gpu, workload_from_args)
    budget = _budget(args)
    ruleset = load_rules(args.rules or [])
    out = Path(args.output)
    if out.is_dir() or (out.exists() and not is_plan_file(out)):  # fail before the slow part
        raise InputError(f"refusing to write the plan to {args.output!r}: it exists and is not a plan file; "
                         "choose another -o/--output")

    profile = _profile(args, gpu, workload)
    from planner.profile.facts import profile_facts

    shape = profile.model.shape
    plan = decide(goal=goal, gpu=gpu, workload=workload, budget=budget, shape=shape, ruleset=ruleset,
                  profile_facts=profile_facts(profile), params=profile.model.parameters, model=args.model or "",
                  model_name=profile.model.name, profile_info=_profile_info(profile),
                  estimator=_estimator(profile), planner_version=__version__)
    notes = [n for n in (gpu_note, dtype_note) if n]
    if notes:
        plan = plan.model_copy(update={"notes": notes + plan.notes})
    from planner.decide.plan import save_plan, with_model_identity

    plan = with_model_identity(plan)  # what is printed is what is saved
    path = save_plan(plan, out)
    return plan, path, time.perf_counter() - started


def _workload_for(args, gpu, workload_from_args):
    """The workload; a GPU without a peak for the default dtype (T4, V100: no bf16) serves in fp16 instead."""
    from planner.perf.runtimes import for_target

    workload = for_target(workload_from_args(args), gpu)
    if gpu.measured_local or gpu.peak_flops(workload.dtype) is not None:
        return workload, None
    has = [d for d in ("bf16", "fp16", "fp8", "int8", "fp32") if gpu.peak_flops(d) is not None]
    if args.dtype is None and "fp16" in has:
        note = f"{gpu.id} has no {workload.dtype} tensor-core peak: planning for fp16 serving (pass --dtype to choose)"
        return workload.model_copy(update={"dtype": "fp16"}), note
    from planner.errors import InputError

    raise InputError(f"{gpu.id} has no {workload.dtype} figure in the catalog; pass --dtype with one it has: "
                     f"{', '.join(has)}")


def _budget(args):
    from pydantic import ValidationError

    from planner.cli.common import format_validation_error
    from planner.errors import InputError
    from planner.workload import QualityBudget

    if args.max_ppl_increase is None:
        return QualityBudget()
    try:
        return QualityBudget(max_ppl_increase=args.max_ppl_increase)
    except ValidationError as exc:
        raise InputError(f"--max-ppl-increase {args.max_ppl_increase!r} is invalid: {format_validation_error(exc)} "
                         "(accepted: a fraction >= 0, e.g. 0.10 for +10%)") from None


def _profile(args, gpu, workload):
    try:
        from planner.profile import load_or_run_profile
    except ImportError as exc:  # the profiler package is part of the product; say what is missing
        from planner.errors import InputError

        raise InputError(f"the profiler is not available in this build ({exc}); `plan` needs planner.profile") from None
    return load_or_run_profile(args.model, gpu, workload, measure=not args.no_measure,
                               trust_remote_code=args.trust_remote_code, threads=getattr(args, "threads", None))


def _estimator(profile):
    """The serving model for pruned shapes, on the same peaks and rates the profile projected with (those measured
    on this host for `cpu`)."""
    from planner.profile.roofline import estimator_like

    return estimator_like(profile.projected)


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


# -- output -------------------------------------------------------------------------------------------------------


def format_metric(metric: str, value) -> str:
    if value is None:
        return "—"
    if metric.endswith("_ms"):
        if value >= 3.6e6:
            return f"{value / 3.6e6:,.3g} h"
        if value >= 1e4:
            return f"{value / 1e3:,.3g} s"
        return f"{value:,.3g} ms" if value < 100 else f"{value:,.0f} ms"
    if metric.endswith("bytes"):
        for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= size:
                return f"{value / size:,.3g} {unit}"
        return f"{value:,.0f} B"
    if metric == "tokens_per_s":
        return f"{value:,.0f} tok/s"
    if metric == "usd_per_million_tokens":
        return f"${value:,.3g}/1M tok"
    if metric == "gpu_hours_per_million_tokens":
        return f"{value:,.3g} GPU-h/1M tok"
    if metric == "kv_tokens":
        return f"{value / 1e6:,.3g}M tokens" if value >= 1e6 else f"{value:,.0f} tokens"
    if metric == "kv_bytes_per_token":
        return f"{value / 1e3:,.3g} kB/token"
    return f"{value:,.4g}"


def _group_rejected(rejected) -> list[tuple[list[str], str, list[str]]]:
    """Rejected alternatives grouped by granularity and the rule that decided (for the budget: the risk tier):
    (labels, the first one's reason, rule ids)."""
    groups: dict[tuple, tuple[list[str], str, list[str]]] = {}
    for r in rejected:
        decided = ("budget", r.quality_risk) if r.rules and r.rules[0] == "budget" else tuple(r.rules[:1])
        key = (r.prune.kind, decided)
        reason = r.reasons[0].split(": ", 1)[0] if decided[0] == "budget" else r.reasons[0]
        labels, _, rules = groups.setdefault(key, ([], reason, []))
        labels.append(r.label)
        rules.extend(x for x in r.rules if x not in rules)
    return list(groups.values())


def _why(candidate) -> str:
    """The goal-specific reason first (a note rule about this GPU and goal), else what the proposing rule said."""
    proposed = len([r for r in candidate.chosen_by if r.startswith("consider-")]) or 1
    notes = [r for r in candidate.reasons[proposed:] if not r.startswith(("quality risk", "recovery:"))]
    return (notes or candidate.reasons)[0]


def _memory_line(plan) -> str | None:
    """Whether the dense model fits on one target GPU, from the plan's projected facts."""
    f = plan.facts
    weights, kv, capacity, fits = (f.get(k) for k in ("weights_gb", "kv_cache_gb", "gpu_memory_gb", "fits_on_gpu"))
    if weights is None or kv is None or not capacity or fits is None:
        return None
    headroom = f.get("memory_headroom_frac")
    verdict = ("does NOT fit on one GPU: shard, quantize or choose a larger GPU" if not fits
               else f"fits with {headroom:.0%} headroom" if headroom is not None else "fits")
    return (f"memory: weights {weights:,.2f} GB + KV cache {kv:,.2f} GB at {plan.workload.dtype} on {capacity:g} GB "
            f"(projected to {plan.gpu}): {verdict}")


def show_plan(plan, path, top: int = DEFAULT_TOP, seconds: float | None = None) -> None:
    from rich.table import Table

    from planner.cli._out import console, escape

    con = console()
    goal, metric = plan.goal.value, plan.goal_metric
    wl = plan.workload
    con.print(f"[bold]plan[/] for [bold]{goal}[/] on [bold]{escape(plan.gpu)}[/] ({escape(plan.gpu_name)})")
    for note in plan.notes:
        if not note.startswith("every predicted figure"):  # the table title says it
            con.print(f"  {escape(note)}")
    params = plan.profile.get("model_parameters")
    con.print(f"  model: {escape(plan.model_name or plan.model)}"
              + (f", {params / 1e6:,.1f}M parameters" if params else "")
              + f"; workload: prompt {wl.prompt_len}, generate {wl.gen_len}, batch {wl.batch_size}, {wl.dtype}"
              + (f", {wl.non_model_ms:g} ms outside the model" if wl.non_model_ms else ""))
    if "measured" in plan.profile:
        con.print(f"  profile: {escape(plan.profile['measured'])}")
    con.print(f"  dense {metric}: {format_metric(metric, plan.dense_goal)} [dim](projected to {escape(plan.gpu)}, "
              "roofline lower bound)[/]")
    memory = _memory_line(plan)
    if memory:
        con.print(f"  {escape(memory)}")

    if plan.candidates:
        table = Table(title=f"ranked candidates — {metric} and speedup projected to {plan.gpu} by the roofline "
                            "model, not measured", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("plan", min_width=18)
        table.add_column(metric, justify="right", no_wrap=True)
        table.add_column("speedup", justify="right", no_wrap=True)
        table.add_column("risk", no_wrap=True)
        table.add_column("recovery", no_wrap=True)
        table.add_column("why", min_width=24, max_width=80)
        for c in plan.candidates[:top]:
            table.add_row(str(c.rank), escape(c.label), format_metric(c.goal_metric, c.predicted_goal),
                          f"{c.predicted_speedup:.2f}x" if c.predicted_speedup else "—", c.quality_risk,
                          c.recovery.method, escape(_why(c)))
        con.print(table)
        if len(plan.candidates) > top:
            con.print(f"  [dim]... {len(plan.candidates) - top} more candidates in {escape(str(path))} "
                      "(--top K shows more)[/]")
    if plan.rejected:
        table = Table(title="rejected alternatives", title_justify="left")
        table.add_column("plan", max_width=48)
        table.add_column("why not", max_width=90)
        for labels, reason, rules in _group_rejected(plan.rejected):
            cited = escape("[" + ", ".join(rules) + "]")
            table.add_row(escape(", ".join(labels)), escape(reason) + f" [dim]{cited}[/]")
        con.print(table)
    for lever in plan.verdict.levers:
        con.print(f"  lever: [bold]{escape(lever.lever)}[/] — {escape(lever.description)} "
                  f"[dim]{escape('[' + ', '.join(lever.rules) + ']')}[/]")
    style = "green" if plan.verdict.action == "prune" else "yellow"
    con.print(f"[bold {style}]verdict:[/] {escape(plan.verdict.text)}")
    took = f" · {seconds:.1f} s" if seconds is not None else ""
    con.print(f"[dim]wrote {escape(str(path))} · rules {plan.rules_version}, {len(plan.rules_fired)} fired{took}[/]")


def _execute(plan, path, quiet: bool = False) -> int:
    from planner.cli._out import err_console

    con = err_console()
    if not plan.candidates:
        con.print("nothing to execute: the verdict is not to prune (see the levers above)")
        return 0
    try:
        from planner.run import run_plan

        con.print(f"executing the top candidate of {path}: {plan.candidates[0].label}")
        result = run_plan(str(path))
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("planner.run"):
            raise
        con.print(f"--execute needs the runner (planner.run), which is not in this build; "
                  f"run `plan run {path}` once it is available")
        return 2
    return int(result) if isinstance(result, int) else 0
