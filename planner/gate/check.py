"""Evaluate a gate policy against results.json: one row per check with the measured value, the threshold and
pass/fail. A threshold whose figure is missing from the results is a failed row ("missing"), never a pass.

    report = check_gate(load_results("results.json"), load_policy("gate.yaml"))
    report.passed, [row.check for row in report.failed]
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from planner.errors import InputError, did_you_mean
from planner.gate.policy import ALL_SLICES, GatePolicy, per_slice

Status = Literal["pass", "fail", "missing"]


class GateRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: str  # the policy key, e.g. "max_ppl_increase"
    variant: str
    subject: str  # what was measured, in words: "held-out perplexity increase over dense"
    slice: str | None = None
    op: Literal["<=", ">=", "=="]
    threshold: float | str
    measured: float | str | None
    unit: Literal["", "x", "GB", "frac", "nats"] = ""
    source: str = ""  # "measured on CPU ...", "held-out text", ...
    status: Status
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class GateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    results_path: str | None = None
    policy_path: str | None = None
    goal: str
    target_gpu: str
    measured_on: str
    variants: list[str]
    rows: list[GateRow]
    warnings: list[str] = []  # e.g. results.json's latency samples differ from the run's own stage file

    @computed_field
    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failed(self) -> list[GateRow]:
        return [r for r in self.rows if not r.passed]


def _compare(measured: float, op: str, threshold: float) -> bool:
    return measured <= threshold if op == "<=" else measured >= threshold


def _row(check, variant, subject, op, threshold, measured, *, unit="", source="", slice=None, note="") -> GateRow:
    if measured is None:
        status: Status = "missing"
        note = note or "figure missing from the results: a gated figure that was not measured fails"
    else:
        status = "pass" if _compare(measured, op, threshold) else "fail"
    return GateRow(check=check, variant=variant, subject=subject, slice=slice, op=op, threshold=threshold,
                   measured=measured, unit=unit, source=source, status=status, note=note)


def select_variants(results, which: str) -> list:
    """The pruned variants the policy gates: "best" (top-ranked candidate that was run), "all", or a name."""
    pruned = [v for v in results.variants if v.role == "pruned"]
    if which == "all":
        return pruned
    if which == "best":
        ranked = sorted(pruned, key=lambda v: (v.candidate_rank is None, v.candidate_rank or 0))
        return ranked[:1]
    names = [v.name for v in results.variants]
    if which not in names:
        raise InputError(did_you_mean(which, names + ["best", "all"], "variant"))
    chosen = results.variant(which)
    if chosen.role != "pruned":
        raise InputError(f"variant {which!r} is the dense baseline; the gate checks a pruned variant against it "
                         f"(accepted: best, all, {', '.join(v.name for v in pruned)})")
    return [chosen]


def _slice_rows(check, variant, threshold, op, field, unit, subject) -> list[GateRow]:
    slices = variant.quality.slices if variant.quality is not None else {}
    wanted = per_slice(threshold)
    rows = []
    named = [name for name in wanted if name != ALL_SLICES]
    for name in named:
        s = slices.get(name)
        rows.append(_row(check, variant.name, f"{subject}, slice {name}", op, wanted[name],
                         getattr(s, field) if s is not None else None, unit=unit, slice=name,
                         source="against the dense teacher",
                         note="" if s is not None else f"slice {name!r} is not in the results"
                                                       f" (have: {', '.join(slices) or 'none'})"))
    if ALL_SLICES in wanted:
        rest = [name for name in slices if name not in named]
        if not rest and not named:
            rows.append(_row(check, variant.name, f"{subject}, every slice", op, wanted[ALL_SLICES], None,
                             unit=unit, slice=ALL_SLICES,
                             note="the results hold no agreement slices for this variant"))
        for name in rest:
            rows.append(_row(check, variant.name, f"{subject}, slice {name}", op, wanted[ALL_SLICES],
                             getattr(slices[name], field), unit=unit, slice=name,
                             source="against the dense teacher"))
    return rows


def _task_rows(check, variant, dense, threshold) -> list[GateRow]:
    """lm-eval task rows: the task's primary score (min_task_score), or its loss against dense (max_task_drop,
    in the metric's units; for a lower-is-better metric the loss is the increase)."""
    scores = variant.lm_eval.tasks if variant.lm_eval is not None else {}
    dense_scores = dense.lm_eval.tasks if dense is not None and dense.lm_eval is not None else {}
    wanted = per_slice(threshold)
    named = [t for t in wanted if t != ALL_SLICES]
    tasks = named + ([t for t in sorted(scores) if t not in named] if ALL_SLICES in wanted else [])
    source = (f"lm-evaluation-harness {variant.lm_eval.lm_eval_version}" if variant.lm_eval is not None
              else "lm-evaluation-harness")
    rows = []
    if not tasks:
        return [_row(check, variant.name, "lm-eval task score, every task", ">=" if check == "min_task_score"
                     else "<=", wanted[ALL_SLICES], None, slice=ALL_SLICES, source=source,
                     note="the results hold no lm-eval task scores for this variant (run with --lm-eval-tasks)")]
    for task in tasks:
        limit = wanted.get(task, wanted.get(ALL_SLICES))
        score = scores.get(task)
        note = "" if score is not None else (f"task {task!r} is not in the results (have: "
                                             f"{', '.join(sorted(scores)) or 'none'})")
        if check == "min_task_score":
            better = score.higher_is_better if score is not None else True
            subject = f"lm-eval {task}" + (f" {score.primary}" if score is not None else "")
            if score is not None and score.stderr is not None:
                subject += f" (± {score.stderr:.3f} standard error)"
            rows.append(_row(check, variant.name, subject, ">=" if better else "<=", limit,
                             score.value if score is not None else None, source=source, slice=task, note=note))
            continue
        base = dense_scores.get(task)
        drop = None
        if score is not None and base is not None:
            drop = base.value - score.value if score.higher_is_better else score.value - base.value
        elif score is not None:
            note = f"dense has no score for task {task!r}"
        subject = f"lm-eval {task}" + (f" {score.primary}" if score is not None else "") + " lost against dense"
        rows.append(_row(check, variant.name, subject, "<=", limit, drop, source=source, slice=task, note=note))
    return rows


def check_variant(results, variant, policy: GatePolicy) -> list[GateRow]:
    dense = results.dense
    device = results.provenance.device
    measured_on = f"measured on {device.label}"
    rows: list[GateRow] = []
    name = variant.name

    if policy.max_ppl_increase is not None:
        increase = None
        if dense is not None and dense.quality is not None and variant.quality is not None:
            increase = variant.quality.heldout_ppl / dense.quality.heldout_ppl - 1.0
        rows.append(_row("max_ppl_increase", name, "held-out perplexity increase over dense", "<=",
                         policy.max_ppl_increase, increase, unit="frac", source="bundled held-out text"))
    if policy.max_kl is not None:
        rows += _slice_rows("max_kl", variant, policy.max_kl, "<=", "kl", "nats", "KL(teacher || model)")
    if policy.min_top1_agreement is not None:
        rows += _slice_rows("min_top1_agreement", variant, policy.min_top1_agreement, ">=", "top1_agreement",
                            "frac", "top-1 agreement with the teacher")
    if policy.min_exact_match is not None:
        rows += _slice_rows("min_exact_match", variant, policy.min_exact_match, ">=", "exact_match", "frac",
                            "exact match on gold prompts the teacher answers")
    if policy.min_speedup is not None:
        speedup = next((s for s in results.speedups if s.variant == name), None)
        metric = speedup.metric if speedup else "goal metric"
        note = "" if speedup else f"no measured speedup for goal {results.plan.goal!r} in the results"
        rows.append(_row("min_speedup", name, f"speedup of {results.plan.goal} ({metric}) over dense", ">=",
                         policy.min_speedup, speedup.measured if speedup else None, unit="x", source=measured_on,
                         note=note))
    if policy.max_peak_memory_gb is not None:
        peak = variant.latency.peak_memory_bytes if variant.latency is not None else None
        kind = variant.latency.peak_memory_kind if variant.latency is not None else None
        rows.append(_row("max_peak_memory_gb", name, "peak memory" + (f" ({kind})" if kind else ""), "<=",
                         policy.max_peak_memory_gb, peak / 1e9 if peak is not None else None, unit="GB",
                         source=measured_on))
    if policy.max_checkpoint_gb is not None:
        size = variant.size.checkpoint_bytes
        source = ("bitmask-compressed safetensors" if variant.size.compressed_file_bytes is not None
                  else "safetensors files")
        rows.append(_row("max_checkpoint_gb", name, "checkpoint size on disk", "<=", policy.max_checkpoint_gb,
                         size / 1e9 if size is not None else None, unit="GB", source=source))
    if policy.min_task_score is not None:
        rows += _task_rows("min_task_score", variant, None, policy.min_task_score)
    if policy.max_task_drop is not None:
        rows += _task_rows("max_task_drop", variant, dense, policy.max_task_drop)
    if policy.require_device is not None:
        ok = device.kind == policy.require_device
        rows.append(GateRow(check="require_device", variant=name, subject="device the figures were measured on",
                            op="==", threshold=policy.require_device, measured=device.kind,
                            source=measured_on, status="pass" if ok else "fail",
                            note="" if ok else f"measured on {device.kind}; the policy requires "
                                                 f"{policy.require_device}"))
    return rows


def check_gate(results, policy: GatePolicy, *, variant: str | None = None, results_path: str | None = None,
               policy_path: str | None = None) -> GateReport:
    """Evaluate `policy` against `results` (a Results document). `variant` overrides the policy's choice."""
    chosen = select_variants(results, variant or policy.variant)
    rows: list[GateRow] = []
    for v in chosen:
        rows += check_variant(results, v, policy)
    rows += _failure_rows(results, chosen, variant or policy.variant)
    if not chosen and not rows:
        # nothing pruned was run: every threshold is a missing figure
        for check in policy.thresholds_set():
            rows.append(GateRow(check=check, variant="(none)", subject="a pruned variant", op="==",
                                threshold="present", measured=None, status="missing",
                                note="the results hold no pruned variant"))
    return GateReport(results_path=results_path, policy_path=policy_path, goal=results.plan.goal,
                      target_gpu=results.plan.gpu, measured_on=results.provenance.device.label,
                      variants=[v.name for v in chosen], rows=rows,
                      warnings=cross_check_latency(results, results_path))


def _failure_rows(results, chosen: list, which: str) -> list[GateRow]:
    """A sweep's failed candidates the policy would have gated (`plan run --all K`, results.failures): under "all"
    every one; under "best" one ranked above the best candidate that ran (the gate must not silently judge the
    runner-up). Each is a failed row: a candidate that did not finish cannot pass a pre-launch gate."""
    failures = list(getattr(results, "failures", None) or [])
    if which == "best":
        best = min((v.candidate_rank for v in chosen if v.candidate_rank is not None), default=None)
        failures = [f for f in failures if best is None or f.rank < best][:1]
    elif which != "all":
        return []
    return [GateRow(check="candidate_finished", variant=f.name or f"candidate {f.rank}",
                    subject=f"candidate {f.rank} ({f.label}) ran to the end", op="==", threshold="finished",
                    measured=f"failed at {f.stage}", status="fail",
                    note=f"{f.error}; `plan run --resume` retries it") for f in sorted(failures, key=lambda f: f.rank)]


def cross_check_latency(results, results_path: str | None) -> list[str]:
    """Compare results.json's latency samples with the run folder's stages/latency.json (what the benchmark
    wrote); a difference means one of them was edited or copied from another run, and is said."""
    import json
    from pathlib import Path

    from planner.run.results import _same

    folders = [Path(results_path).parent] if results_path else []
    folders.append(Path(results.provenance.run_dir))
    stage = next((f / "stages" / "latency.json" for f in folders if (f / "stages" / "latency.json").is_file()), None)
    if stage is None:
        return []
    try:
        recorded = json.loads(stage.read_text(encoding="utf-8"))["output"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"the run's latency stage file {str(stage)!r} is unreadable; the latency samples in the results "
                "could not be cross-checked"]
    differ = []
    for v in results.variants:
        mine = v.latency.model_dump(mode="json") if v.latency is not None else None
        theirs = recorded.get(v.name) if isinstance(recorded, dict) else None
        keys = ("samples_ms", "ttft_samples_ms", "tpot_samples_ms")
        if (mine is None) != (theirs is None) or (
                mine is not None and not all(_same(mine.get(k), (theirs or {}).get(k)) for k in keys)):
            differ.append(v.name)
    if not differ:
        return []
    return [f"latency samples of {', '.join(differ)} differ from the run's stage file {str(stage)!r}: the results "
            "were edited or come from another run"]
