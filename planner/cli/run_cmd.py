"""`plan run PLAN`: prune, recover, export, evaluate and benchmark the plan's candidate against the dense model."""

from __future__ import annotations

EPILOG = """\
examples:
  plan run plan.json                              the top candidate; writes runs/plan-<hash>/results.json
  plan run plan.json --candidate 2 --out runs/c2  the second-ranked candidate into a chosen folder
  plan run plan.json --all 3                      the top three candidates, side by side
  plan run plan.json --all 3 --executor ray       the same, one Ray task per candidate on a local Ray instance
  plan run plan.json --all 8 --executor ray --ray-address ray://head:10001 --out /shared/runs/sweep
                                                  on a Ray cluster; --out on storage every node reaches
  plan run plan.json --resume                     continue an interrupted run; finished stages are skipped
  plan run plan.json --eval-text notes.txt --eval-prompts product.jsonl
                                                  add your own text (perplexity) and prompts (agreement)
  plan run plan.json --requests 30 --gen-len 64   more timed requests, shorter generations
  plan run plan.json --lm-eval-tasks planner_next_line,planner_last_word --lm-eval-limit 50
                                                  lm-evaluation-harness task scores, dense and candidate
  plan run plan.json --gate examples/gate-tasks.yaml --track mlflow:./mlruns
                                                  gate the results, log everything to MLflow
  plan run plan.json --max-memory 2GB             a model larger than 2 GB: pruned and evaluated layer by layer

Prompt files hold one JSON object per line: {"id": "...", "prompt": "...", "gold": "optional answer",
"match": "exact|number|word|prefix", "chat": true, "max_new_tokens": 32}.
Latency is measured on this machine (dense and pruned interleaved); the plan's predictions are projected to its
target GPU. Both are shown side by side, never one as the other. Under --executor ray too, latency is measured here,
after every candidate task has finished. A candidate that fails is recorded with its error while the others
finish: results.json and report.html are written, the failures printed, and the exit code is 3.
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("run", help="run a plan: prune, recover, evaluate, benchmark -> results.json",
                       description="Execute a candidate of plan.json against the dense model: prune -> recover -> "
                                   "export -> held-out perplexity and teacher agreement -> latency benchmark "
                                   "(dense and pruned interleaved) -> results.json and report.html.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", help="plan.json written by `plan --goal ... --gpu ...`")
    p.add_argument("--out", default=None, help="run folder (default runs/<plan-stem>-<hash>)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--candidate", type=int, default=None, metavar="N", help="run the candidate of rank N "
                      "(default 1, the top one)")
    pick.add_argument("--all", type=int, default=None, metavar="K", dest="all_top", help="run the top K candidates")
    p.add_argument("--resume", action="store_true", help="continue the run in the folder, skipping finished stages")
    p.add_argument("--executor", default="sequential", metavar="NAME",
                   help="where the candidates run: sequential (default, one after another in this process) or ray "
                        "(one Ray task per candidate; pip install 'planner[ray]'). The dense baseline runs once "
                        "first and latency runs last, in this process, with no task running")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: join this Ray cluster instead of starting a local Ray instance: auto "
                        "(RAY_ADDRESS, or a cluster started on this machine), host:port of its head node, or "
                        "ray://host:port of its Ray Client server; --out must then be on storage every node reaches")
    p.add_argument("--eval-text", action="append", default=[], metavar="FILE",
                   help="your own text file for perplexity (repeatable)")
    p.add_argument("--eval-prompts", action="append", default=[], metavar="FILE",
                   help="your own JSONL prompts, a regression slice of teacher agreement (repeatable)")
    p.add_argument("--slices", default=None,
                   help="comma-separated bundled capability slices (default: instruction,code,math,multilingual,"
                        "long_context; 'none' for no bundled slice)")
    p.add_argument("--ppl-tokens", type=int, default=16_384, help="held-out tokens for perplexity (default 16384)")
    p.add_argument("--ppl-seq-len", type=int, default=512, help="perplexity window (default 512)")
    p.add_argument("--requests", type=int, default=10, help="timed requests per variant (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up requests per variant (default 2)")
    p.add_argument("--runtime", default="hf-eager", help="hf-eager (default), hf-compile, or vllm (CUDA + vLLM)")
    p.add_argument("--bench-dtype", default=None, help="dtype for the benchmark: fp32, bf16, fp16 (default fp32 on "
                                                       "CPU, the plan's dtype on CUDA)")
    p.add_argument("--prompt-len", type=int, default=None, help="override the plan's prompt length for timing")
    p.add_argument("--gen-len", type=int, default=None, help="override the plan's generation length for timing")
    p.add_argument("--batch-size", type=int, default=None, help="override the plan's batch size for timing")
    p.add_argument("--request-rate", type=float, default=None, help="--runtime vllm: requests per second sent to "
                                                                      "the server (default: all at once)")
    p.add_argument("--concurrency", type=int, default=None, help="--runtime vllm: most requests in flight (default: "
                                                                  "the plan's workload)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; the "
                                                                 "results record it with the device)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory this run's process may take, e.g. 2GB, 1500MB, 1.5GiB (default: the RAM "
                        "available). A model whose fp32 weights held twice (teacher and student) beside the "
                        "interpreter exceed it is pruned and evaluated one decoder layer at a time from disk; "
                        "agreement then generates with disk offload, and a variant too large to time is left out of "
                        "the latency table, with the reason")
    p.add_argument("--load", default=None, metavar="RATES",
                   help="then serve every variant in-process under Poisson traffic at these request rates (req/s, "
                        "comma-separated) or 'auto' (low, 70%% and 95%% of the dense model's measured capacity): "
                        "p50/p95/p99, TTFT, TPOT and achieved throughput per variant, in alternating windows")
    p.add_argument("--load-requests", type=int, default=24, metavar="N",
                   help="requests per variant and rate under --load (default 24, in 2 windows)")
    p.add_argument("--load-time-limit", type=float, default=900.0, metavar="S",
                   help="seconds per rate under --load (default 900); a window still running then is stopped")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print results.json on stdout")
    from planner.cli.common import add_gpu_catalog_argument

    add_gpu_catalog_argument(p)
    lm = p.add_argument_group("lm-evaluation-harness (optional: pip install 'planner[lmeval]')")
    lm.add_argument("--lm-eval-tasks", default=None, metavar="TASKS",
                    help="comma-separated lm-eval tasks scored on dense and every candidate, e.g. "
                         "planner_next_line,planner_last_word (bundled, on the held-out text), or lm-eval's own "
                         "tasks whose data is in the local cache; hubs are never contacted")
    lm.add_argument("--lm-eval-limit", type=int, default=None, metavar="N",
                    help="documents per task (default: all); small values give wide standard errors")
    lm.add_argument("--lm-eval-include", action="append", default=[], metavar="DIR",
                    help="a folder of your own lm-eval task YAMLs (local or cached data); repeatable")
    p.add_argument("--track", default=None, metavar="mlflow[:URI]",
                   help="log the run to an experiment tracker: mlflow (a local store ./mlruns) or mlflow:URI "
                        "(a folder, file:// or http(s):// tracking URI); needs pip install 'planner[track]'")
    p.add_argument("--gate", default=None, metavar="POLICY",
                   help="check the results against this gate policy after the run (like `plan gate`): prints the "
                        "verdict, logs it with --track, exits 1 when it fails")
    p.set_defaults(func=run)


def _slices(value: str | None):
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [s.strip() for s in value.split(",") if s.strip()]


def run(args) -> int:
    from planner.errors import RunIncomplete
    from planner.run import run_plan
    from planner.run.runner import RunOptions

    options = RunOptions(eval_text=args.eval_text, eval_prompts=args.eval_prompts, slices=_slices(args.slices),
                         ppl_seq_len=args.ppl_seq_len, ppl_max_tokens=args.ppl_tokens, requests=args.requests,
                         warmup=args.warmup, runtime=args.runtime, bench_dtype=args.bench_dtype,
                         prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size,
                         device=args.device, threads=args.threads, measure_memory=not args.no_memory, report=not args.no_report,
                         load=args.load, load_requests=args.load_requests, load_time_limit=args.load_time_limit,
                         progress=not args.quiet, request_rate=args.request_rate, concurrency=args.concurrency)
    if args.lm_eval_tasks is not None:
        options.lm_eval_tasks = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
    options.lm_eval_limit, options.lm_eval_include = args.lm_eval_limit, list(args.lm_eval_include)
    if args.max_memory is not None:
        from planner.layered.memory import parse_size

        options.max_memory = parse_size(args.max_memory)  # a bad size exits 2, naming the accepted forms
    tracker = None
    if args.track:
        from planner.track import parse_tracker

        tracker = parse_tracker(args.track)  # InputError (unknown tracker, mlflow missing) before any work
    policy = None
    if args.gate:
        from planner.gate import load_policy

        policy = load_policy(args.gate)  # a bad policy fails before any work
    try:
        results = run_plan(args.plan, out_dir=args.out, candidate=args.candidate, all_top=args.all_top,
                           resume=args.resume, options=options, executor=args.executor, ray_address=args.ray_address)
    except RunIncomplete as exc:  # results.json written, but a candidate failed or report.html is missing
        if tracker is not None and getattr(exc, "results", None) is not None:
            from planner.track import track_run

            track_run(tracker, exc.results)
        if getattr(exc, "results", None) is not None:
            _print_incomplete(exc.results, args)
        raise
    gate_report = None
    if policy is not None:
        from planner.gate import check_gate

        results_file = f"{results.provenance.run_dir}/results.json"
        gate_report = check_gate(results, policy, results_path=results_file, policy_path=str(args.gate))
    if tracker is not None:
        from planner.track import track_run

        tracked = track_run(tracker, results, gate=gate_report)
        if not args.quiet:
            from planner.cli._out import err_console, escape

            err_console().print(escape(f"tracked: {tracked}"))
    calibrated = _calibrate(results)
    learned = _learn_recovery(results)
    if args.json:
        from planner.cli._out import print_json

        print_json(results)
    elif not args.quiet:
        print_summary(results)
        print_predicted_vs_measured(results)
        print_load(results)
        _print_quality_vs_prediction(results)
        _print_lm_eval(results)
        if calibrated:
            from planner.cli._out import console, escape

            console().print(escape(f"calibrated this host's {calibrated['key']['runtime']} figures: per-step host time "
                                   f"{calibrated['step_ms']:.2f} ms, per-request {calibrated['request_ms']:.1f} ms "
                                   f"(stored in {calibrated['path']}; later --gpu cpu plans use them)"))
        for m in learned:
            from planner.cli._out import console as _console
            from planner.cli._out import escape as _escape

            _console().print(_escape(f"recovery factor of {m.variant} ({m.method}, {m.steps} steps): "
                                   f"{m.factor:.2f} measured (one-shot ppl {m.ppl_one_shot:.2f} -> {m.ppl_after:.2f} "
                                   f"after, dense {m.ppl_dense:.2f}); later plans predict with it"))
    if gate_report is not None:
        from planner.errors import GateFailed
        from planner.gate import verdict_line

        if not args.quiet and not args.json:
            from planner.cli._out import console
            from planner.gate.summary import print_table

            print_table(gate_report, console())
        if not gate_report.passed:
            raise GateFailed(verdict_line(gate_report).removeprefix("FAIL: "))
    return 0


def _print_incomplete(results, args) -> None:
    """What a run that ended incomplete did measure, and the candidates that failed (the error message follows)."""
    if args.json:
        from planner.cli._out import print_json

        print_json(results)
        return
    if args.quiet:
        return
    print_summary(results)
    print_failures(results)


def print_failures(results) -> None:
    if not results.failures:
        return
    from rich.table import Table

    from planner.cli._out import console, escape

    table = Table(title="failed candidates (the others finished; --resume retries these)", title_justify="left")
    for col in ("rank", "candidate", "stage", "error"):
        table.add_column(col, justify="right" if col == "rank" else "left")
    for f in results.failures:
        table.add_row(str(f.rank), escape(f.label or f.name), escape(f.stage), escape(f.error[:300]))
    console().print(table)


def _print_quality_vs_prediction(results) -> None:
    """The plan's predicted perplexity increase beside the measured one, and recoveries a time limit cut short."""
    from planner.cli._out import console, escape
    from planner.report.format import fmt_pct
    from planner.run.compare import quality_vs_prediction

    con = console()

    def pct(x):
        return fmt_pct(x, signed=True)

    for q in quality_vs_prediction(results):
        warn = f"; over twice the {q.budget:.0%} budget" if q.over_twice_budget else ""
        con.print(escape(f"quality of {q.variant}: predicted {pct(q.predicted)} after {q.recovery} (probe one-shot "
                         f"{pct(q.probe_one_shot)}), measured {pct(q.measured)}"
                         + (f" (one-shot {pct(q.run_one_shot)})" if q.run_one_shot is not None else "")
                         + (f", error {q.error:+.0%}" if q.error is not None else "") + warn))
    for v in results.variants:
        r = v.recovery
        if r is not None and r.cut_short:
            con.print(escape(f"warning: recovery of {v.name} stopped by the time limit after {r.steps} of "
                             f"{r.spec.max_steps} planned steps ({r.stopped_by}): not the plan's recovered model"))


def _learn_recovery(results) -> list:
    """Every recovered variant's measured recovery factor goes to the store later plans predict with."""
    from planner.errors import InputError
    from planner.probe.recovery import update_factor

    try:
        return update_factor(results, f"{results.provenance.run_dir}/results.json")
    except (InputError, OSError):
        return []


def _calibrate(results) -> dict | None:
    """A --gpu cpu plan measured on this CPU at the plan's workload feeds this host's calibration."""
    from planner.errors import InputError
    from planner.perf.calibration import calibrate_from_results

    if results.plan is None or results.plan.gpu != "cpu" or results.provenance.device.kind != "cpu":
        return None
    try:
        return calibrate_from_results(results, f"{results.provenance.run_dir}/results.json")
    except (InputError, OSError):
        return None


def print_predicted_vs_measured(results) -> None:
    from rich.table import Table

    from planner.cli._out import console, escape
    from planner.run.compare import predicted_vs_measured

    rows = predicted_vs_measured(results)
    if not rows:
        return
    comparable = all(r.comparable for r in rows)
    where = (f"projected to {results.plan.gpu} ({results.plan.workload.runtime}) vs measured on "
             f"{results.provenance.device.label}")
    table = Table(title=escape(where + ("" if comparable else
                                        " — different device or workload: errors are not a check of the model")),
                  title_justify="left")
    for col in ("variant", "figure", "predicted ms", "measured ms", "error"):
        table.add_column(col, justify="left" if col in ("variant", "figure") else "right")
    for r in rows:
        table.add_row(escape(r.variant), r.figure, _fmt(r.predicted, digits=1), _fmt(r.measured, digits=1),
                      "-" if r.error is None else f"{r.error:+.0%}")
    console().print(table)


def print_load(results) -> None:
    """`--load`: each variant's latency under traffic, measured on this machine, beside the plan's projection."""
    from rich.table import Table

    from planner.cli._out import console, escape

    load = getattr(results, "load", None)
    if load is None:
        return
    table = Table(title=escape(f"under Poisson traffic, measured on {load.measured_on} ({load.runtime}, static "
                               f"batches of up to {load.max_batch}, {load.prompt_len}+{load.gen_len} tokens)"),
                  title_justify="left")
    for col in ("rate req/s", "variant", "requests", "p50 ms", "p95 ms", "p99 ms", "TTFT p95", "TPOT p50",
                "achieved req/s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for p in load.points:
        table.add_row(f"{p.rate:.3g}", escape(p.variant), f"{len(p.e2e_samples_ms)}" + ("" if p.complete else " *"),
                      _fmt(p.p50_ms, digits=0), _fmt(p.p95_ms, digits=0), _fmt(p.p99_ms, digits=0),
                      _fmt(p.ttft_p95_ms, digits=0), _fmt(p.tpot_p50_ms, digits=1), _fmt(p.achieved_rps, digits=3))
    out = console()
    out.print(table)
    caps = ", ".join(f"{k} {v:.3g} req/s" for k, v in load.capacity_rps.items())
    out.print(escape(f"measured capacity (saturated server): {caps}"))
    for p in load.points:
        if p.note:
            out.print(escape(f"* {p.variant} at {p.rate:g} req/s: {p.note}"))
            break


def _fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def print_summary(results) -> None:
    from rich.table import Table

    from planner.cli._out import console, escape

    device = results.provenance.device.label
    table = Table(title=f"measured on {escape(device)}", title_justify="left")
    for col in ("variant", "params", "held-out ppl", "KL (mean)", "top-1 agree", "exact match", "p50 ms", "p95 ms",
                "p99 ms", "TTFT p50", "TPOT p50", "tok/s", "peak mem"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in results.variants:
        q, lat = v.quality, v.latency
        slices = list(q.slices.values()) if q else []
        kls = [s.kl for s in slices if s.kl is not None]
        tops = [s.top1_agreement for s in slices if s.top1_agreement is not None]
        gold = sum(s.teacher_correct for s in slices)
        exact = sum(s.exact_match_hits for s in slices) / gold if gold else None
        table.add_row(escape(v.name), f"{v.size.parameters / 1e6:.1f}M", _fmt(q.heldout_ppl if q else None, digits=2),
                      _fmt(sum(kls) / len(kls) if kls else None, digits=3),
                      _fmt(100 * sum(tops) / len(tops) if tops else None, "%"),
                      _fmt(100 * exact if exact is not None else None, "%"),
                      _fmt(lat.p50_ms if lat else None), _fmt(lat.p95_ms if lat else None),
                      _fmt(lat.p99_ms if lat else None), _fmt(lat.ttft_p50_ms if lat else None),
                      _fmt(lat.tpot_p50_ms if lat else None, digits=2), _fmt(lat.tokens_per_s if lat else None),
                      _fmt(lat.peak_memory_bytes / 2**20 if lat and lat.peak_memory_bytes else None, " MiB", 0))
    out = console()
    out.print(table)
    for row in results.speedups:
        predicted = f"{row.predicted:.2f}x projected to {escape(results.plan.gpu)}" if row.predicted else "-"
        measured = f"{row.measured:.2f}x measured on {escape(device)}" if row.measured else "-"
        out.print(f"{escape(row.variant)}: {row.goal} ({row.metric}) predicted {predicted}; {measured}")
    out.print(f"results: {escape(results.provenance.run_dir)}/results.json")


def _print_lm_eval(results) -> None:
    """--lm-eval-tasks: each task's primary score, dense beside every candidate, with its standard error."""
    scored = [v for v in results.variants if v.lm_eval is not None]
    if not scored:
        return
    from rich.table import Table

    from planner.cli._out import console, escape

    dense = results.dense.lm_eval if results.dense is not None else None
    first = scored[0].lm_eval
    table = Table(title=f"lm-evaluation-harness {first.lm_eval_version} ({first.backend} backend, "
                        f"{'all' if first.limit is None else first.limit} documents per task; ± standard error)",
                  title_justify="left")
    table.add_column("task")
    table.add_column("metric")
    for v in scored:
        table.add_column(escape(v.name), justify="right")
    for task in sorted(first.tasks):
        score = first.tasks[task]
        row = [escape(task), escape(score.primary)]
        for v in scored:
            s = v.lm_eval.tasks.get(task)
            text = "—" if s is None else f"{s.value:.3f}" + (f" ± {s.stderr:.3f}" if s.stderr is not None else "")
            if s is not None and dense is not None and v.role != "dense" and task in dense.tasks:
                text += f" ({s.value - dense.tasks[task].value:+.3f})"
            row.append(text)
        table.add_row(*row)
    console().print(table)
