"""The main job: `plan --goal GOAL --gpu GPU` profiles the model, decides with the rules, prints the ranked plan with
its reasons and writes plan.json. Heavy imports happen inside `run_main`, so `plan --help` stays fast."""

from __future__ import annotations

from pathlib import Path

from planner.api import DEFAULT_GPU
DEFAULT_TOP = 5


def add_main_arguments(parser) -> None:
    from planner.cli.common import add_model_arguments, add_workload_arguments

    g = parser.add_argument_group("the main job (plan --goal GOAL --gpu GPU)")
    g.add_argument("--goal", help="what the deployment must get better at: p50-latency, p95-latency, p99-latency, "
                                  "ttft, tpot, throughput, peak-memory, checkpoint-size, kv-capacity, cost-per-token; short "
                                  "names: latency and p95 = p95-latency, p50, p99, memory, size, cost")
    g.add_argument("--gpu", default=None,
                   help=f"target GPU id or alias (see `plan gpus`; default {DEFAULT_GPU}, i.e. a100-80gb-sxm); "
                        "`cpu` targets this machine with its measured peaks")
    add_model_arguments(g)
    add_workload_arguments(g)
    from planner.cli.common import add_gpu_catalog_argument

    add_gpu_catalog_argument(g)
    g.add_argument("--request-rate", type=float, default=None, metavar="REQ_PER_S",
                   help="traffic: Poisson arrivals at this many requests/s; p50/p95/p99, TTFT and TPOT are projected "
                        "by a seeded discrete-event simulation of the runtime's scheduler (planner/perf/traffic.py), "
                        "and the capacity (req/s at the p95 target) is reported. Also as a goal: --goal "
                        "'p95 under 800 ms at 2 req/s'")
    g.add_argument("--trace", default=None, metavar="FILE",
                   help="traffic from a file: one request per line, arrival_s[,prompt_len[,gen_len]] (CSV) or a "
                        "JSON list of {arrival_s, prompt_len, gen_len}")
    g.add_argument("--max-ppl-increase", type=float, default=None, metavar="FRACTION",
                   help="quality budget: relative held-out perplexity increase allowed (default 0.10 = +10%%)")
    g.add_argument("--rules", action="append", default=None, metavar="DIR",
                   help="a folder of your own rules (*.yaml), added to the built-in ones; repeatable "
                        "(check it first with `plan rules --check DIR`)")
    g.add_argument("--quantize", action="append", default=None, metavar="SCHEME",
                   help="also consider this quantization scheme: int8-weight-only, int4-weight-only[:gGROUP], fp8, "
                        "w8a8-int8 (repeatable; the rules already propose the ones that fit the GPU)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the local measurement (use the same as `plan run --threads` when "
                        "planning for --gpu cpu)")
    g.add_argument("--no-measure", action="store_true",
                   help="projection only: skip measuring the model on this machine (no weights needed)")
    g.add_argument("--no-probe", action="store_true",
                   help="skip the quality probe (every candidate the speed rules keep applied one-shot to a copy of "
                        "the model and measured): the risk tiers stay the rules' priors")
    g.add_argument("--recovery-minutes", type=float, default=None, metavar="MIN",
                   help="time allowance for one candidate's recovery on this machine (default 10): the budget is "
                        "scaled with the model, cut to what fits this allowance, and written in steps and tokens")
    g.add_argument("--recovery-tokens", type=int, default=None, metavar="N",
                   help="recovery budget in tokens outright (instead of --recovery-minutes)")
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
    """Check the output path, make the plan (planner.api.plan), write plan.json. Returns (plan, path, seconds)."""
    import time

    from planner.api import plan as make
    from planner.cli.common import workload_from_args
    from planner.decide.plan import is_plan_file, save_plan
    from planner.errors import InputError
    from planner.goals import parse_traffic_goal
    from planner.workload import parse_goal

    started = time.perf_counter()
    traffic_goal = parse_traffic_goal(args.goal)
    goal = traffic_goal[0] if traffic_goal else parse_goal(args.goal)
    out = Path(args.output)
    workload = _with_traffic(workload_from_args(args), args, traffic_goal)
    if out.is_dir() or (out.exists() and not is_plan_file(out)):  # fail before the slow part
        raise InputError(f"refusing to write the plan to {args.output!r}: it exists and is not a plan file; "
                         "choose another -o/--output")
    plan = make(goal, args.gpu, model=args.model, workload=workload, max_ppl_increase=args.max_ppl_increase,
                rules=args.rules or [], threads=getattr(args, "threads", None), measure=not args.no_measure,
                trust_remote_code=args.trust_remote_code, dtype_fallback=args.dtype is None,
                quantize=args.quantize or [], probe=not args.no_probe,
                recovery_minutes=args.recovery_minutes, recovery_tokens=args.recovery_tokens)
    path = save_plan(plan, out)
    return plan, path, time.perf_counter() - started


def _with_traffic(workload, args, traffic_goal):
    """The workload with --request-rate / --trace and a goal's "p95 under X ms at Y req/s" (bad values: exit 2)."""
    from planner.api import make_workload
    from planner.errors import InputError

    data = {}
    if getattr(args, "request_rate", None) is not None:
        data["request_rate"] = args.request_rate
    if getattr(args, "trace", None):
        data["trace"] = args.trace
    if traffic_goal:
        _, target, rate = traffic_goal
        if data.get("request_rate") not in (None, rate):
            raise InputError(f"--goal names {rate:g} req/s but --request-rate is {data['request_rate']:g}; give one")
        data.update(p95_target_ms=target, request_rate=rate)
    if not data:
        return workload
    return make_workload({**workload.model_dump(exclude_unset=True), **data})


def _traffic_line(plan) -> str | None:
    """The dense model under the workload's traffic: p95, batch, capacity (projected, from planner.perf.traffic)."""
    from planner.goals import format_value

    d = plan.dense_predicted or {}
    if d.get("traffic_batch") is None:
        return None
    wl = plan.workload
    traffic = (f"Poisson {wl.request_rate:g} req/s" if wl.request_rate else f"trace {wl.trace}" if wl.trace
               else f"{wl.concurrency} users in a closed loop")
    line = (f"traffic ({traffic}): dense p50 {format_value('p50_ms', d.get('p50_ms'))}, p95 "
            f"{format_value('p95_ms', d.get('p95_ms'))} (isolated request {format_value('p50_ms', d.get('isolated_p50_ms'))}), "
            f"{d['traffic_batch']:.3g} sequences per decode step, {format_value('tokens_per_s', d.get('tokens_per_s'))}; "
            f"capacity {format_value('capacity_rps', d.get('capacity_rps'))} at p95 <= "
            f"{format_value('p95_ms', d.get('capacity_target_ms'))}, saturation "
            f"{format_value('saturation_rps', d.get('saturation_rps'))} (projected to {plan.gpu}, {wl.runtime})")
    if wl.p95_target_ms and d.get("p95_ms") is not None:
        line += "; the goal's target is " + ("met" if d["p95_ms"] <= wl.p95_target_ms else "MISSED")
    return line


# -- output -------------------------------------------------------------------------------------------------------


def format_metric(metric: str, value) -> str:
    from planner.goals import format_value

    return format_value(metric, value)


def _group_rejected(rejected) -> list[tuple[list[str], str, list[str]]]:
    """Rejected alternatives grouped by granularity and the rule that decided (for the budget: the risk tier):
    (labels, the first one's reason, rule ids)."""
    groups: dict[tuple, tuple[list[str], str, list[str]]] = {}
    for r in rejected:
        first = r.why[0] if r.why else None
        budget = first is not None and first.kind == "budget"
        decided = ("budget", r.quality_risk) if budget else tuple(r.rules[:1])
        key = (r.prune_kind, decided)
        reason = first.text if budget else (str(first) if first is not None else r.reasons[0])
        labels, _, rules = groups.setdefault(key, ([], reason, []))
        labels.append(r.label)
        rules.extend(x for x in r.rules if x not in rules)
    return list(groups.values())


def _why(candidate) -> str:
    """The goal-specific reason first (a note rule about this GPU and goal), else what the proposing rule said."""
    notes = [w for w in candidate.why if w.kind == "note"]
    return str((notes or candidate.why)[0]) if candidate.why else ""


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
    probe = plan.probe or {}
    if probe.get("measured"):
        con.print(f"  quality probe: {probe['steps']} steps applied one-shot, held-out perplexity on "
                  f"{probe['tokens']:,} tokens (dense {probe['ppl_dense']:.2f}; measured on this machine, "
                  f"{probe['cached']} from the cache, {probe['seconds']:.1f} s)")
    elif probe.get("note"):
        con.print(f"  [dim]{escape(probe['note'])}[/]")
    if plan.recovery_budget is not None and any(c.recovery.method != "none" for c in plan.candidates):
        con.print(f"  {escape(plan.recovery_budget.described)}")
    memory = _memory_line(plan)
    if memory:
        con.print(f"  {escape(memory)}")
    if plan.execution is not None and (plan.execution.mode != "in-memory" or not plan.profile.get("measured")):
        for line in plan.execution.lines():  # a model that does not fit here, or a config-only one: how it would run
            con.print(f"  {escape(line)}")
    traffic = _traffic_line(plan)
    if traffic:
        con.print(f"  {escape(traffic)}")

    if plan.candidates:
        table = Table(title=f"ranked candidates — {metric} and speedup projected to {plan.gpu} by the roofline "
                            "model, not measured", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("plan", min_width=18)
        table.add_column(metric, justify="right", no_wrap=True)
        table.add_column("speedup", justify="right", no_wrap=True)
        probed = any(c.quality is not None for c in plan.candidates[:top])
        if probed:
            table.add_column("ppl one-shot\n(measured)", justify="right", no_wrap=True)
            table.add_column("after recovery\n(predicted)", justify="right", no_wrap=True)
        table.add_column("risk", no_wrap=True)
        table.add_column("recovery", no_wrap=True)
        table.add_column("why", min_width=24, max_width=80)
        for c in plan.candidates[:top]:
            quality = [] if not probed else (
                [f"{c.quality.one_shot_ppl_increase:+.1%}", f"{c.quality.predicted_ppl_increase:+.1%}"]
                if c.quality is not None else ["—", "—"])
            table.add_row(str(c.rank), escape(c.label), format_metric(c.goal_metric, c.predicted_goal),
                          f"{c.predicted_speedup:.2f}x" if c.predicted_speedup else "—", *quality, c.quality_risk,
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
