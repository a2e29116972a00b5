"""Fine-tuning: every remaining weight of the pruned model trains (embeddings and LM head included), with the KD
loss against the dense teacher, the LM loss, or a mix (`loss`).

    {"method": "finetune", "loss": "lm", "lr": 5e-5, "max_tokens": 200000}
"""

from __future__ import annotations

from planner.recover.train import TrainLog, train


def finetune(student, teacher, blocks, spec, *, keeper=None, progress: bool = True) -> TrainLog:
    return train(student, teacher, list(student.parameters()), blocks, spec, keeper=keeper, progress=progress,
                 desc="finetune")
