"""Recovery after pruning: distillation from the dense teacher, LoRA (peft, merged back), or fine-tuning.

`recover(student, teacher, tokenizer, spec, masks=...)` trains the pruned student in place on the recovery text
(default: the bundled calibration text, never the held-out text) within the spec's budget and returns a
`RecoveryResult` with the loss curve and, on request, held-out perplexity before and after. The student comes back
with no adapter modules, its pruned shapes, and every masked weight still exactly zero.

    from planner.recover import recover
    from planner.recover.specs import RecoverySpec
    result = recover(pruned, dense, tokenizer, RecoverySpec(method="distill"), masks=prune_result.masks,
                     evaluate=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InputError
from planner.recover.specs import RecoverySpec

EVAL_MAX_TOKENS = 8192


class RecoveryResult(BaseModel):
    """What recovery did, for results.json and the report. Every figure was measured on `device`."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    method: str
    loss: str
    device: str
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training wall time, evaluation excluded
    stopped_by: str = "max_steps"  # max_steps | max_tokens | max_minutes | non-finite loss | method none
    trainable_params: int = 0
    loss_curve: list[tuple[int, float]] = Field(default_factory=list)  # (step, training loss of that step)
    initial_loss: float | None = None  # mean loss of the first steps (up to 5, at most a quarter of the run)
    final_loss: float | None = None  # mean loss of the last steps (as many)
    text: str = "bundled calibration text"
    text_tokens: int = 0
    masked_modules: int = 0
    ppl_before: float | None = None  # held-out perplexity of the pruned model before recovery
    ppl_after: float | None = None
    eval_tokens: int | None = None


def recover(student, teacher, tokenizer, spec: RecoverySpec | dict, *, masks: dict | None = None,
            text: str | None = None, progress: bool = True, eval_fn: Callable[[Any], float] | None = None,
            evaluate: bool = False, eval_max_tokens: int = EVAL_MAX_TOKENS) -> RecoveryResult:
    """Recover `student` (trained in place) toward the dense `teacher`.

    masks: PruneResult.masks ({module name: bool tensor, True = kept}); empty/None after structured pruning.
    text: recovery text; default `spec.text_files`, else the bundled calibration text.
    eval_fn: model -> held-out perplexity (a float or perplexity()'s dict), called before and after; else,
    with `evaluate=True`, perplexity over the first `eval_max_tokens` tokens of the bundled held-out text.
    The student is handed back in eval mode.
    """
    import torch

    from planner.recover.masks import MaskKeeper

    if isinstance(spec, dict):
        spec = RecoverySpec.model_validate(spec)
    text, text_label = _recovery_text(spec, text)
    _check(student, teacher, spec)
    keeper = MaskKeeper(student, masks) if masks else None
    if keeper is not None:
        keeper.apply()
    result = RecoveryResult(method=spec.method, loss=spec.loss, device=str(next(student.parameters()).device),
                            text=text_label, masked_modules=len(keeper) if keeper else 0)
    if eval_fn is None and evaluate:
        eval_fn = lambda m: heldout_perplexity(m, tokenizer, eval_max_tokens)  # noqa: E731
    if eval_fn is not None:
        result.ppl_before, result.eval_tokens = _ppl(eval_fn(student))
    if spec.method == "none":
        result.stopped_by = "method none"
        result.ppl_after = result.ppl_before
        return result

    blocks = recovery_blocks(tokenizer, text, spec)
    result.text_tokens = int(blocks.numel())
    method = _methods()[spec.method]
    devices = [torch.cuda.current_device()] if next(student.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):  # seeded, without disturbing the caller's random state
        torch.manual_seed(spec.seed)
        log = method(student, teacher, blocks, spec, keeper=keeper, progress=progress)
    student.eval()
    if keeper is not None and keeper.violations():
        raise RuntimeError(f"recovery moved {keeper.violations()} pruned weights off zero")

    losses = [loss for _, loss in log.loss_curve]
    result.steps, result.tokens, result.seconds = log.steps, log.tokens, log.seconds
    result.stopped_by, result.trainable_params = log.stopped_by, log.trainable_params
    result.loss_curve = log.loss_curve
    if losses:
        window = max(1, min(5, len(losses) // 4))  # smooth step noise without mixing start and end
        result.initial_loss = sum(losses[:window]) / window
        result.final_loss = sum(losses[-window:]) / window
    if eval_fn is not None:
        result.ppl_after, _ = _ppl(eval_fn(student))
    return result


def heldout_perplexity(model, tokenizer, max_tokens: int = EVAL_MAX_TOKENS) -> dict:
    """planner.evaluate.perplexity on the bundled held-out text: {"ppl", "nll", "tokens", ...}."""
    from planner.data import heldout_text
    from planner.evaluate.perplexity import perplexity

    return perplexity(model, tokenizer, heldout_text(), seq_len=_eval_seq_len(model), max_tokens=max_tokens)


def recovery_blocks(tokenizer, text: str, spec: RecoverySpec):
    """All non-overlapping `seq_len` blocks of the recovery text, (N, seq_len)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_blocks = len(ids) // spec.seq_len
    if n_blocks < spec.batch_size:
        raise InputError(
            f"the recovery text has {len(ids)} tokens, fewer than one batch of batch_size={spec.batch_size} x "
            f"seq_len={spec.seq_len}; give more text (text_files) or a smaller batch_size/seq_len"
        )
    return torch.tensor(ids[: n_blocks * spec.seq_len], dtype=torch.long).view(n_blocks, spec.seq_len)


# -- internals ------------------------------------------------------------------------------------------------


def _methods():
    from planner.recover.distill import distill
    from planner.recover.finetune import finetune
    from planner.recover.lora import lora

    return {"distill": distill, "finetune": finetune, "lora": lora}


def _recovery_text(spec: RecoverySpec, text: str | None) -> tuple[str, str]:
    from planner.data import HELDOUT_FILE, calibration_text, read_text_files

    if text is not None:
        if not text.strip():
            raise InputError("the recovery text is empty")
        return text, "text given by the caller"
    if spec.text_files:
        for f in spec.text_files:
            if Path(f).expanduser().resolve() == HELDOUT_FILE.resolve():
                raise InputError(f"text file {f!r} is the bundled held-out text, kept for evaluation only; "
                                 "recover on the calibration text or your own files")
        return read_text_files(spec.text_files), "files: " + ", ".join(spec.text_files)
    return calibration_text(), "bundled calibration text"


def _check(student, teacher, spec: RecoverySpec) -> None:
    from planner.recover.losses import needs_teacher

    if spec.method == "distill" and spec.loss == "lm":
        raise InputError("recovery method 'distill' needs a teacher loss: loss 'kd' or 'kd+lm', got 'lm' "
                         "(for LM-only training use method 'finetune' or 'lora')")
    if spec.loss == "kd+lm" and not 0 < spec.lm_loss_weight < 1:
        raise InputError(f"loss 'kd+lm' mixes the two with lm_loss_weight strictly between 0 and 1, got "
                         f"{spec.lm_loss_weight}; use loss 'kd' or 'lm' for one alone")
    if spec.method != "none" and needs_teacher(spec.loss):
        if teacher is None:
            raise InputError(f"recovery loss {spec.loss!r} needs the dense teacher model; none was given")
        if teacher.config.vocab_size != student.config.vocab_size:
            raise InputError(f"teacher vocabulary ({teacher.config.vocab_size}) differs from the student's "
                             f"({student.config.vocab_size}); distillation needs the same tokenizer")
    if spec.max_tokens is not None and spec.max_tokens < spec.batch_size * spec.seq_len:
        raise InputError(f"max_tokens={spec.max_tokens} is less than one batch (batch_size x seq_len = "
                         f"{spec.batch_size * spec.seq_len}); raise max_tokens or shrink the batch")
    limit = _max_positions(student)
    if limit is not None and spec.seq_len > limit:
        raise InputError(f"recovery seq_len={spec.seq_len} exceeds the model's {limit} positions; "
                         f"use seq_len <= {limit}")


def _max_positions(model) -> int | None:
    cfg = model.config
    value = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(value) if value else None


def _eval_seq_len(model) -> int:
    limit = _max_positions(model)
    return min(512, limit) if limit else 512


def _ppl(value) -> tuple[float, int | None]:
    """An eval_fn may return a perplexity or perplexity()'s dict; (ppl, tokens evaluated if known)."""
    if isinstance(value, dict):
        return float(value["ppl"]), value.get("tokens")
    return float(value), None
