"""The runner: plan.json -> prune -> recover -> export -> evaluate -> benchmark -> results.json (+ report.html).

Stages, in order: teacher (the dense model's greedy continuations of every prompt set), quality:dense, then per
candidate prune:<rank>, recover:<rank>, quality:<rank> (`planner.run.pipeline`, run by an executor: one after another
here, or as Ray tasks, `planner.run.executors`), and finally latency (all variants interleaved, in this process, after
every candidate finished). Each stage body is a function of `planner.run.stages`; this module orders them, records
each finished one in the run folder (`planner.run.folder`), and assembles results.json from their outputs. A
candidate whose stage fails is recorded in results.json with its error while the others run on; the run then ends
with RunIncomplete (exit 3) after writing results and report. `resume=True` skips every stage whose record exists
(a failed candidate is retried from its first unfinished stage); the pruned and recovered models come back from
their exported checkpoints. Every write is atomic (temporary name + rename), so Ctrl-C or a kill leaves only
finished stages behind.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from planner.console import say
from planner.errors import InputError, RunIncomplete, did_you_mean
from planner.run.executors import open_executor
from planner.run.folder import SCRATCH, Manifest, RunFolder, default_run_dir, input_hashes, utc_now
from planner.run.pipeline import CandidateOutcome, StageLog, stage_order
from planner.run.results import (CandidateSummary, LmEvalScores, PlanSummary, Provenance, Quality, Results,
                                 StageTiming, Variant, save_results)
from planner.run.stages import (LatencyOutput, RunInputs, RunOptions, TeacherOutput, run_latency, run_lm_eval,
                                run_quality, run_teacher)

Output = TypeVar("Output", bound=BaseModel)


# -- selecting candidates ---------------------------------------------------------------------------------------


def select_candidates(plan, candidate: int | None, all_top: int | None) -> list:
    chosen = _select(plan, candidate, all_top)
    sharded = [c for c in chosen if getattr(c, "shard", None) is not None]
    if sharded:
        c = sharded[0]
        runnable = [str(x.rank) for x in plan.candidates if x.shard is None]
        raise InputError(f"candidate {c.rank} ({c.label}) shards over {c.shard.tensor_parallel} GPUs: `plan run` runs "
                         "one model on one device and cannot measure tensor parallelism; run it under a "
                         "tensor-parallel runtime (vLLM --tensor-parallel-size) yourself"
                         + (f" (runnable candidates: {', '.join(runnable)})" if runnable else ""))
    return chosen


def _select(plan, candidate: int | None, all_top: int | None) -> list:
    if not plan.candidates:
        raise InputError(f"the plan has no candidates to run (verdict: {plan.verdict.text}); nothing to prune")
    ranks = [c.rank for c in plan.candidates]
    if candidate is not None and all_top is not None:
        raise InputError("pass either --candidate N or --all K, not both")
    if all_top is not None:
        if all_top < 1:
            raise InputError(f"--all takes the number of top candidates to run (>= 1), got {all_top}")
        return list(plan.candidates[:all_top])
    rank = 1 if candidate is None else candidate
    for c in plan.candidates:
        if c.rank == rank:
            return [c]
    raise InputError(f"the plan has no candidate of rank {rank} (accepted: {', '.join(map(str, ranks))})")


def plan_model_spec(plan) -> str | None:
    """What to load for the plan's model: the absolute path it recorded (checked against its fingerprint, so a
    relative path run from another folder, or a changed model, is refused), else --model as given."""
    if plan.model_path:
        from planner.models import check_identity

        check_identity(plan.model_path, plan.model_fingerprint)
        return plan.model_path
    return plan.model or None


# -- the runner -------------------------------------------------------------------------------------------------


class Runner:
    """One run: its plan and candidates, its folder, the stages' shared inputs, and the timing of every stage."""

    def __init__(self, plan, plan_path: Path, folder: RunFolder, candidates: list, options: RunOptions,
                 manifest: Manifest | None, device: str):
        self.plan = plan
        self.plan_path = plan_path
        self.folder = folder
        self.candidates = candidates
        self.opt = options
        self.manifest = manifest
        self.device = device
        self.order = stage_order(candidates, options)
        self.log = StageLog(folder, self.order, options.progress)
        self.lm_eval: dict[int | str, LmEvalScores] = {}  # --lm-eval-tasks: "dense" or a candidate's rank -> scores
        self.model_spec = plan_model_spec(plan)
        self.inputs = RunInputs(plan, folder, options, device, self.model_spec)
        self.executor = None  # planner.run.executors: runs the candidates' pipelines

    @property
    def timings(self) -> list[StageTiming]:
        return self.log.timings

    def stage(self, name: str, fn: Callable[[], Output], output: type[Output], record: bool = True) -> Output:
        """The output of stage `name`: read back from its record when an earlier run finished it, else computed by
        `fn` and recorded (unless `record` is False)."""
        return self.log.stage(name, fn, output, record)


# -- entry point -------------------------------------------------------------------------------------------------


def _options(options: RunOptions | None, kwargs: dict[str, Any]) -> RunOptions:
    names = {f.name for f in fields(RunOptions)}
    for key in kwargs:
        if key not in names:
            raise TypeError(did_you_mean(key, names, "run option"))
    opt = replace(options, **kwargs) if options else RunOptions(**kwargs)
    return opt.check()


def run_plan(plan_path: str | Path, out_dir: str | Path | None = None, candidate: int | None = None,
             all_top: int | None = None, resume: bool = False, options: RunOptions | None = None,
             executor: str = "sequential", ray_address: str | None = None, **kwargs) -> Results:
    """Run the plan's chosen candidate (rank `candidate`, default 1; or the top `all_top`) against the dense
    model and write results.json (and report.html) into the run folder. Returns the Results document.

    `executor`: "sequential" (the candidates one after another in this process) or "ray" (one Ray task each, on a
    local Ray instance or on the cluster at `ray_address`; planner.run.executors). A candidate that fails is
    recorded in results.json while the others run on; the run then raises RunIncomplete (exit 3) once results.json
    and report.html are written (its `.results` holds them).

    The run folder is new, empty, or a run of this tool; a folder of other files is refused, and nothing but the
    run's own scratch folder is ever deleted. A run that fails its input checks before its first stage leaves no
    trace, so the same --out can be used again."""
    from planner._version import __version__
    from planner.decide.plan import load_plan
    from planner.models import resolve_source
    from planner.profile.device import pick_device
    from planner.run.executors import check_executor
    from planner.run.provenance import sha256_file

    opt = _options(options, kwargs)
    check_executor(executor, ray_address)
    plan_path = Path(plan_path)
    plan = load_plan(plan_path)
    plan_sha = sha256_file(plan_path)
    cands = select_candidates(plan, candidate, all_top)
    _check_candidate_inputs(cands)
    ranks = [c.rank for c in cands]
    root = Path(out_dir) if out_dir else default_run_dir(plan_path, plan_sha, ranks)
    folder = RunFolder(root)
    old = folder.check_usable(resume)

    if opt.threads is not None:
        import torch

        torch.set_num_threads(opt.threads)  # on a shared CPU, fewer threads than cores avoids spin-wait contention
    device = pick_device(opt.device)
    runner = Runner(plan, plan_path, folder, cands, opt, None, device)
    runner.inputs.prompt_sets()  # a bad prompt file fails now, before any work
    source = resolve_source(runner.model_spec)
    if not source.has_weights:
        raise InputError(f"the plan's model {plan.model!r} has no weights (config only); `plan run` needs weights")
    _check_positions(runner, source)
    for cand in cands:  # layered mode or --max-memory: what cannot run within the memory is refused now
        runner.inputs.check_candidate(cand)
    runner.executor = open_executor(executor, ray_address, opt, device)  # Ray joined, or refused, before any work
    try:
        results = _start_and_run(runner, source, old, resume, plan_sha, __version__)
    finally:
        runner.executor.close()
    path = save_results(results, root / "results.json", scratch=folder.scratch)
    say(f"[green]results[/] {path}", opt.progress)
    problem = _write_report(results, root / "report.html", plan, opt.progress) if opt.report else None
    folder.clean_partial()
    if problem or results.failures:
        error = RunIncomplete(_incomplete(results, path, problem))
        error.results = results
        raise error
    return results


def _start_and_run(runner: Runner, source, old: dict, resume: bool, plan_sha: str, version: str) -> Results:
    """Hash the inputs, start (or resume) the run folder, and run every stage."""
    from planner.run.provenance import device_info, model_hash, package_versions

    opt, folder = runner.opt, runner.folder
    say(f"hashing inputs (model at {source.path})", opt.progress)
    hashes = input_hashes(plan_sha, model_hash(source.path), opt.eval_text, opt.eval_prompts)
    devinfo = device_info(runner.device)
    manifest = Manifest(planner_version=version, plan=str(runner.plan_path),
                        model={"spec": runner.plan.model, "name": source.name, "path": str(source.path)},
                        input_hashes=hashes, candidates=[c.rank for c in runner.candidates],
                        options=opt.fingerprint(), packages=package_versions(),
                        device=devinfo.model_dump(mode="json"), started_at=utc_now())
    created = folder.start(manifest, old, resume, runner.plan_path, runner.plan)
    runner.manifest = manifest

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the stages report their own progress; weight-loading bars are noise
    try:
        return _run_stages(runner, source, devinfo)
    except KeyboardInterrupt:
        say(f"[yellow]interrupted[/]: finished stages are kept in {folder.root}; continue with --resume", True)
        raise
    except InputError:
        if not resume and not folder.finished_stages():
            folder.undo_fresh_start(created)  # nothing was run: leave the --out folder as it was
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _incomplete(results: Results, path: Path, report_problem: str | None) -> str:
    """The message of a run that wrote results.json but not everything it promised."""
    parts = []
    if results.failures:
        failed = "; ".join(f"candidate {f.rank} ({f.label or f.name}) in {f.stage}: {f.error_type}: "
                           f"{f.message[:200]}" for f in results.failures)
        parts.append(f"{len(results.failures)} of {len(results.plan.candidates)} candidates failed ({failed}); "
                     f"results.json {str(path)!r} holds the others; retry the failed ones with --resume")
    if report_problem:
        parts.append(f"results.json was written to {str(path)!r}, but report.html was not ({report_problem}); "
                     f"rebuild it with `plan report {path}`")
    return "; ".join(parts)


def _check_candidate_inputs(cands) -> None:
    """Text files a candidate's calibration or recovery names: a missing one fails now, not hours into the run."""
    from planner.documents import check_file

    for c in cands:
        for f in c.calibration.text_files:
            check_file(f, f"calibration text file of candidate {c.rank}")
        for f in c.recovery.text_files if c.recovery is not None else ():
            check_file(f, f"recovery text file of candidate {c.rank}")


def _check_positions(runner: Runner, source) -> None:
    """The latency stage comes last: a workload the model cannot hold fails before any work, not after it."""
    from planner.arch import get_adapter
    from planner.models import load_config
    from planner.workload import require_positions

    config, _ = load_config(str(source.path))
    require_positions(*runner.inputs.bench_lengths(), get_adapter(config).shape(config).max_positions,
                      "pass a shorter --prompt-len / --gen-len for the latency benchmark")


def _run_stages(runner: Runner, source, devinfo) -> Results:
    """The dense baseline, every candidate's stages (through the executor), latency and load, each skipped when
    finished earlier; then the results document from their outputs."""
    inputs, folder = runner.inputs, runner.folder
    if runner.opt.eval_text and not folder.done("quality:dense"):
        need, have = inputs.seq_len(inputs.dense.model), len(inputs.tokens("user"))
        if have < need:  # fail before hours of work, not in the middle
            raise InputError(f"--eval-text {', '.join(runner.opt.eval_text)} has {have} tokens; perplexity needs "
                             f"at least one window of {need} (use more text or a smaller --ppl-seq-len)")
    teacher = runner.stage("teacher", lambda: run_teacher(inputs), TeacherOutput)
    dense_quality = runner.stage("quality:dense", lambda: run_quality(inputs, inputs.dense.model, teacher.traces),
                                 Quality)
    if runner.opt.lm_eval_tasks:
        runner.lm_eval["dense"] = runner.stage(
            "lm-eval:dense", lambda: run_lm_eval(inputs, inputs.dense.model, str(source.path)), LmEvalScores)

    outcomes = runner.executor.run(runner, teacher)  # the candidates' stages, in rank order
    for o in outcomes:
        runner.timings.extend(o.timings)
        if o.lm_eval is not None:
            runner.lm_eval[o.rank] = o.lm_eval
    ok = [o for o in outcomes if o.failure is None]

    names = _variant_names(runner.candidates)
    checkpoints = {"dense": str(source.path)}
    checkpoints.update({names[o.rank]: str(folder.path(o.recovered.checkpoint)) for o in ok})
    # latency last, in this process, once every candidate is done: no two variants are timed at once. With a
    # failed candidate it is not recorded: the resume that retries the candidate times every variant again, together
    whole = len(ok) == len(outcomes)
    latency = runner.stage("latency", lambda: run_latency(inputs, checkpoints, devinfo.label), LatencyOutput,
                           record=whole).root
    results = _results(runner, source, devinfo, teacher, dense_quality, outcomes, names, latency)
    if runner.opt.load:  # latency under Poisson traffic, dense and candidates in alternating windows
        from planner.run.load import run_load_stage
        from planner.run.results import LoadResults

        load = runner.stage("load", lambda: run_load_stage(inputs, checkpoints, devinfo.label), LoadResults,
                            record=whole)
        results = results.model_copy(update={"load": load, "stages": runner.timings})
    return results


def _results(runner: Runner, source, devinfo, teacher: TeacherOutput, dense_quality: Quality,
             outcomes: list[CandidateOutcome], names: dict[int, str], latency: dict) -> Results:
    """The results document: the dense variant and one per candidate that finished, the failures, the plan as run,
    and where it all came from."""
    from planner._version import __version__

    variants = [Variant(name="dense", role="dense", checkpoint=str(source.path), size=teacher.dense_size,
                        quality=dense_quality, latency=latency.get("dense"))]
    by_rank = {c.rank: c for c in runner.candidates}
    for o in outcomes:
        if o.failure is not None:
            continue
        cand, quality = by_rank[o.rank], o.quality
        rec = o.recovered.recovery
        if rec is not None:
            rec = rec.model_copy(update={"ppl_after": quality.heldout_ppl})
        name = names[cand.rank]
        variants.append(Variant(name=name, role="pruned", candidate_rank=cand.rank,
                                checkpoint=str(runner.folder.path(o.recovered.checkpoint)), size=o.recovered.size,
                                pruning=o.pruned.pruning if cand.prune is not None else None, recovery=rec,
                                quantization=o.quantized.quantization if o.quantized is not None else None,
                                quality=quality, latency=latency.get(name)))
    for v in variants:  # --lm-eval-tasks
        v.lm_eval = runner.lm_eval.get("dense" if v.role == "dense" else v.candidate_rank)
    plan = runner.plan
    summary = PlanSummary(
        path=str(runner.plan_path), goal=plan.goal.value, gpu=plan.gpu,
        model=plan.model or source.name, workload=plan.workload, dense_predicted=plan.dense_predicted,
        dense_rates=plan.dense_rates, max_ppl_increase=plan.budget.max_ppl_increase,
        candidates=[CandidateSummary(rank=c.rank, name=c.name, label=c.label, prune=c.prune, quantize=c.quantize,
                                     shard=c.shard, recovery=c.recovery,
                                     projected_to=c.projected_to, goal_metric=c.goal_metric,
                                     predicted_goal=c.predicted_goal, predicted_speedup=c.predicted_speedup,
                                     predicted=c.predicted, quality=c.quality) for c in runner.candidates])
    manifest = runner.manifest
    provenance = Provenance(planner_version=__version__, packages=manifest.packages, device=devinfo,
                            input_hashes=manifest.input_hashes, started_at=manifest.started_at,
                            finished_at=utc_now(), run_dir=str(runner.folder.root), command=shlex.join(sys.argv))
    return Results(provenance=provenance, plan=summary, variants=variants, stages=runner.timings,
                   failures=[o.failure for o in outcomes if o.failure is not None])


def _variant_names(cands) -> dict[int, str]:
    names: dict[int, str] = {}
    for c in cands:
        name = c.name if c.name not in names.values() and c.name != "dense" else f"{c.name}#{c.rank}"
        names[c.rank] = name
    return names


def _write_report(results: Results, path: Path, plan, progress: bool) -> str | None:
    """Write report.html; return what went wrong instead of raising (results.json is already written, and a
    report problem must not lose the run)."""
    try:
        from planner.report import render_report

        render_report(results, path, plan=plan)
        say(f"[green]report[/] {path}", progress)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"


__all__ = ["RunOptions", "run_plan", "select_candidates", "plan_model_spec", "default_run_dir", "RunFolder", "Runner",
           "SCRATCH"]
