"""Recovery as a small versioned config, as it appears in plan.json.

    {"method": "distill", "max_steps": 200, "max_minutes": 8, "lr": 3e-4, "temperature": 2.0}

Methods (see planner/recover/README.md): `distill` trains the decoder blocks against the dense teacher (KD loss);
`finetune` trains every remaining weight with `loss`; `lora` trains peft LoRA adapters with `loss`, then merges them.
The budget is whichever of max_steps / max_tokens / max_minutes runs out first. A plan states its recovery in steps
and tokens (`planner.recover.budget.plan_budget`: scaled with the model, capped by a time allowance on the device that
runs it) with `max_minutes` off and `guard_minutes` on: a safety stop that does not shape the learning-rate schedule,
so a busy machine trains the same model, only later; a run the guard stops is flagged as cut short.

Defaults were chosen by measurement (SmolLM2-135M, 50% MLP channels removed, distill, 16 steps of 4 x 128 tokens on
this project's 2-core CPU): lr 3e-4 closed more of the held-out perplexity gap than 1e-4 or 1e-3; blocks of 128
tokens give twice the optimizer steps of 256 in the same minutes, and the minutes guard binds on a CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RecoverySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    method: Literal["none", "lora", "distill", "finetune"] = "distill"
    loss: Literal["kd", "lm", "kd+lm"] = "kd"  # for lora/finetune too: distillation or plain LM loss
    temperature: float = Field(2.0, gt=0)
    lm_loss_weight: float = Field(0.0, ge=0, le=1)  # for loss="kd+lm"
    max_steps: int = Field(200, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(8.0, gt=0)
    guard_minutes: float | None = Field(None, gt=0)  # safety stop only: never part of the schedule's budget
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(128, ge=8)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    seed: int = 0
    text_files: list[str] = Field(default_factory=list)  # default: the bundled calibration text, never held-out
    # added by the recovery engine (all optional, defaults keep older plans valid)
    warmup: float = Field(0.05, ge=0, lt=1)  # linear LR warm-up over this share of the budget, then cosine to 10%
    max_grad_norm: float | None = Field(1.0, gt=0)
    micro_batch_size: int | None = Field(None, ge=1)  # split each batch (teacher logits too) to bound memory
