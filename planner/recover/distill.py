"""Distillation: the pruned student learns the dense teacher's next-token distributions (KD loss, optionally mixed
with LM) on the recovery text.

What trains: the decoder blocks and the final norm, where pruning did its damage. Embeddings and the LM head stay
as the teacher has them: pruning never touches them, and with tied embeddings (SmolLM2, Qwen2) their gradient is a
vocab x hidden matrix product per step, the largest single cost on a CPU. Use `finetune` to train everything.

    {"method": "distill", "loss": "kd", "temperature": 2.0, "max_steps": 200, "max_minutes": 8}
"""

from __future__ import annotations

from planner.arch import get_adapter, get_submodule
from planner.recover.train import TrainLog, train


def distill(student, teacher, blocks, spec, *, keeper=None, progress: bool = True) -> TrainLog:
    return train(student, teacher, block_parameters(student), blocks, spec, keeper=keeper, progress=progress,
                 desc="distill")


def block_parameters(model) -> list:
    adapter = get_adapter(model)
    modules = [get_submodule(model, adapter.layers), get_submodule(model, adapter.final_norm)]
    frozen = {id(p) for name in (adapter.embed, adapter.lm_head, adapter.position_embed) if name
              for p in get_submodule(model, name).parameters()}
    return [p for m in modules for p in m.parameters() if id(p) not in frozen]
