"""One candidate's stages, and the stage log every stage of a run is recorded through.

    prune:<rank>     -> PruneOutput      the pruned checkpoint (a dense copy for a quantization-only candidate)
    recover:<rank>   -> RecoverOutput    the recovered checkpoint (the pruned one when recovery is "none")
    quantize:<rank>  -> QuantizeOutput   a candidate with a quantization scheme
    quality:<rank>   -> Quality          against the dense teacher's traces (the teacher stage's output)
    lm-eval:<rank>   -> LmEvalScores     with --lm-eval-tasks

`run_candidate` runs them in that order; both executors call it (planner.run.executors): the sequential one in this
process, sharing the dense model the teacher stage loaded, the Ray one inside a task, which loads its own. A stage
whose record the run folder holds is read back instead of run (`--resume`), so a resumed sweep skips the finished
stages of every candidate, and a candidate that failed before is retried from its first unfinished stage.

A candidate whose stage raises comes back with a `CandidateFailure` (stage, error) instead of its outputs: the
other candidates of the sweep run on. An InputError (bad input, the user's to fix) is raised as from any stage.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pydantic import BaseModel, ValidationError

from planner.console import escape, say
from planner.errors import InputError
from planner.run.folder import RunFolder
from planner.run.results import CandidateFailure, LmEvalScores, Quality, StageTiming
from planner.run.stages import (PruneOutput, QuantizeOutput, RecoverOutput, RunInputs, RunOptions, run_lm_eval,
                                run_prune, run_quality, run_quantize, run_recover)

Output = TypeVar("Output", bound=BaseModel)

# Test-only: the rank of a candidate whose first stage to run raises on purpose (tests/test_ray_executor.py). The
# driver reads it and hands it to the candidate's pipeline as an argument, so it reaches Ray workers too.
TEST_FAIL_ENV = "PLANNER_TEST_FAIL_CANDIDATE"


def failing_rank_for_test() -> int | None:
    value = os.environ.get(TEST_FAIL_ENV, "").strip()
    return int(value) if value.isdigit() else None


# -- stage order ------------------------------------------------------------------------------------------------


def candidate_stages(cand, opt: RunOptions) -> list[str]:
    names = [f"prune:{cand.rank}", f"recover:{cand.rank}"]
    if cand.quantize is not None:
        names.append(f"quantize:{cand.rank}")
    names.append(f"quality:{cand.rank}")
    if opt.lm_eval_tasks:
        names.append(f"lm-eval:{cand.rank}")
    return names


def stage_order(cands, opt: RunOptions) -> list[str]:
    """Every stage of the run in the order the sequential executor runs it: the numbers progress lines show."""
    names = ["teacher", "quality:dense"] + (["lm-eval:dense"] if opt.lm_eval_tasks else [])
    for cand in cands:
        names += candidate_stages(cand, opt)
    return names + ["latency"] + (["load"] if opt.load else [])


# -- the stage log ------------------------------------------------------------------------------------------------


def read_output(folder: RunFolder, name: str, output: type[Output]) -> tuple[Output, float]:
    """The output of a finished stage and the seconds it took, from its record in the run folder."""
    record = folder.read(name)
    try:
        result = output.model_validate(record["output"])
    except ValidationError as exc:
        from planner.documents import describe_validation

        raise InputError(f"stage output {str(folder.marker(name))!r} is not a finished stage record "
                         f"({describe_validation(exc)}){folder.redo_hint(name)}") from None
    return result, float(record.get("seconds", 0.0))


class StageLog:
    """Runs the stages of one run folder (or reads back those an earlier run finished) and keeps their timings."""

    def __init__(self, folder: RunFolder, order: list[str], progress: bool, prefix: str = ""):
        self.folder = folder
        self.order = order
        self.progress = progress
        self.prefix = escape(prefix)  # "[candidate 2] " is text, not rich markup
        self.timings: list[StageTiming] = []
        self.current: str | None = None  # the stage running (or being read back) now

    def stage(self, name: str, fn: Callable[[], Output], output: type[Output], record: bool = True) -> Output:
        """The output of stage `name`: read back from its record when an earlier run finished it, else computed by
        `fn` and recorded (unless `record` is False: a resume then runs it again)."""
        self.current = name
        number = f"{self.order.index(name) + 1}/{len(self.order)}"
        if self.folder.done(name):
            result, seconds = read_output(self.folder, name, output)
            self.timings.append(StageTiming(name=name, seconds=seconds, status="resumed"))
            say(f"[dim]{self.prefix}stage {number} {name}: finished earlier, skipped[/]", self.progress)
            return result
        say(f"{self.prefix}[bold]stage {number}[/] {name}", self.progress)
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        if record:
            self.folder.write(name, seconds, result.model_dump(mode="json"))
        self.timings.append(StageTiming(name=name, seconds=seconds, status="done"))
        return result


# -- one candidate --------------------------------------------------------------------------------------------------


@dataclass
class CandidateOutcome:
    """What one candidate's stages produced, or the failure that stopped them; picklable (a Ray task returns it)."""

    rank: int
    timings: list[StageTiming] = field(default_factory=list)
    pruned: PruneOutput | None = None
    recovered: RecoverOutput | None = None  # with the quantized checkpoint and size when the candidate quantizes
    quantized: QuantizeOutput | None = None
    quality: Quality | None = None
    lm_eval: LmEvalScores | None = None
    failure: CandidateFailure | None = None
    bad_input: str | None = None  # a Ray task's InputError, raised again in the driver


def run_candidate(inputs: RunInputs, cand, traces: dict, order: list[str], fail_for_test: bool = False
                  ) -> CandidateOutcome:
    """Prune, recover, quantize, evaluate one candidate (each stage skipped when finished earlier). `traces`: the
    teacher stage's continuations; `order`: the run's stage_order, for the progress numbers."""
    log = StageLog(inputs.folder, order, inputs.opt.progress, prefix=f"[candidate {cand.rank}] ")
    outcome = CandidateOutcome(rank=cand.rank, timings=log.timings)
    try:
        _stages(inputs, cand, traces, log, outcome, fail_for_test)
    except InputError:
        raise
    except Exception as exc:  # this candidate stops here; the sweep goes on with the others
        outcome.failure = failure_of(cand, log.current or candidate_stages(cand, inputs.opt)[0], exc)
        say(f"[red]{log.prefix}failed in {log.current}[/]: {escape(outcome.failure.error)}", inputs.opt.progress)
    return outcome


def _stages(inputs: RunInputs, cand, traces: dict, log: StageLog, out: CandidateOutcome, fail_for_test: bool) -> None:
    folder, rank = inputs.folder, cand.rank

    def prune():
        if fail_for_test:
            raise RuntimeError(f"{TEST_FAIL_ENV}={rank}: this candidate fails on purpose (a test)")
        return run_prune(inputs, cand)

    out.pruned = log.stage(f"prune:{rank}", prune, PruneOutput)
    recovered = log.stage(f"recover:{rank}", lambda: run_recover(inputs, cand, out.pruned), RecoverOutput)
    if cand.quantize is not None:
        out.quantized = log.stage(f"quantize:{rank}", lambda: run_quantize(inputs, cand, recovered), QuantizeOutput)
        recovered = recovered.model_copy(update={"checkpoint": out.quantized.checkpoint, "size": out.quantized.size})
    checkpoint = folder.path(recovered.checkpoint)
    out.quality = log.stage(f"quality:{rank}",
                            lambda: run_quality(inputs, inputs.load_checkpoint(checkpoint), traces), Quality)
    if inputs.opt.lm_eval_tasks:
        out.lm_eval = log.stage(f"lm-eval:{rank}",
                                lambda: run_lm_eval(inputs, inputs.load_checkpoint(checkpoint), str(checkpoint)),
                                LmEvalScores)
    out.recovered = recovered


def failure_of(cand, stage: str, exc: BaseException) -> CandidateFailure:
    from planner.documents import bounded

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return CandidateFailure(rank=cand.rank, name=cand.name, label=cand.label, stage=stage,
                            error_type=type(exc).__name__, message=bounded(str(exc), 1000), traceback=trace[-4000:])


__all__ = ["StageLog", "CandidateOutcome", "run_candidate", "candidate_stages", "stage_order", "read_output",
           "failure_of", "TEST_FAIL_ENV", "failing_rank_for_test"]
