"""The recovery training loop shared by distillation, fine-tuning and LoRA: the methods differ in which
parameters train and which loss they use, not in how a step is taken.

One step: a batch of token blocks from the recovery text (seeded shuffle), the teacher's logits without gradients,
the student's loss, AdamW, then the pruning masks re-applied. A batch can be split into micro-batches
(gradient accumulation) so the teacher's and student's logits never exist for the whole batch at once.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from planner.recover.budget import Budget
from planner.recover.losses import needs_teacher, recovery_loss


@dataclass
class TrainLog:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_by: str = "max_steps"
    trainable_params: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


@contextmanager
def train_only(model, params):
    """Only `params` require gradients inside the block; every flag is restored after (the runner's model is
    handed back as it came)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in params}
    for p, _ in flags:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def lr_at(fraction_done: float, spec) -> float:
    """Linear warm-up over the first `spec.warmup` of the budget, then cosine decay to 10%. `fraction_done` is the
    share of the binding budget (steps, tokens or minutes) spent once this step is done, so a run cut short by
    the minutes guard still warms up and decays instead of spending its few steps at a warm-up rate."""
    warm = min(1.0, fraction_done / spec.warmup) if spec.warmup else 1.0
    return spec.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * fraction_done)))


def batches(blocks, batch_size: int, seed: int):
    """Endless seeded shuffles of the (N, L) token blocks, `batch_size` blocks at a time."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(blocks.shape[0], generator=gen)
        for start in range(0, blocks.shape[0] - batch_size + 1, batch_size):
            yield blocks[order[start : start + batch_size]]


def train(student, teacher, params, blocks, spec, *, keeper=None, progress: bool = True,
          desc: str = "recovery") -> TrainLog:
    """Train `params` of `student` on `blocks` within the spec's budget; return the log."""
    import torch
    from tqdm.auto import tqdm

    params = [p for p in params]
    log = TrainLog(trainable_params=sum(p.numel() for p in params))
    budget = Budget.from_spec(spec)
    device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device if teacher is not None else None
    use_teacher = needs_teacher(spec.loss)
    micro = spec.micro_batch_size or spec.batch_size
    tokens_per_step = spec.batch_size * blocks.shape[1]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)
    data = batches(blocks, spec.batch_size, spec.seed)

    was_training = student.training
    teacher_was_training = teacher.training if teacher is not None else False
    student.train()
    if teacher is not None:
        teacher.eval()
    bar = tqdm(total=spec.max_steps, desc=desc, disable=not progress, leave=False)
    start = time.perf_counter()
    step_seconds: float | None = None
    try:
        with train_only(student, params):
            if keeper is not None:
                keeper.zero_pruned_grads()
            while True:
                elapsed = time.perf_counter() - start
                reason = budget.stop_reason(log.steps, log.tokens, elapsed, tokens_per_step, step_seconds)
                if reason:
                    log.stopped_by = reason
                    break
                step_start = time.perf_counter()
                done = budget.fraction_used(log.steps + 1, log.tokens + tokens_per_step, elapsed + (step_seconds or 0.0))
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(done, spec)
                batch = next(data)
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for chunk in batch.split(micro):
                    teacher_logits = None
                    if use_teacher:
                        with torch.no_grad():
                            teacher_logits = teacher(input_ids=chunk.to(teacher_device), use_cache=False).logits
                        teacher_logits = teacher_logits.to(device)
                    chunk = chunk.to(device)
                    logits = student(input_ids=chunk, use_cache=False).logits
                    loss = recovery_loss(logits, teacher_logits, chunk, spec.loss, spec.temperature,
                                         spec.lm_loss_weight) * (chunk.shape[0] / batch.shape[0])
                    loss.backward()
                    total += float(loss.detach())
                    del logits, teacher_logits, loss
                if not math.isfinite(total):
                    log.stopped_by = "non-finite loss"  # the step is not taken: the weights stay finite
                    break
                if spec.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
                optimizer.step()
                if keeper is not None:
                    keeper.apply()
                log.steps += 1
                log.tokens += tokens_per_step
                log.loss_curve.append((log.steps, total))
                step_seconds = time.perf_counter() - step_start
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
    finally:
        bar.close()
        if keeper is not None:
            keeper.remove_hooks()
        optimizer.zero_grad(set_to_none=True)
        student.train(was_training)
        if teacher is not None:
            teacher.train(teacher_was_training)
    log.seconds = time.perf_counter() - start
    return log
