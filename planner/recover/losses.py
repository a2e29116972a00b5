"""Recovery losses: distillation from the dense teacher (KD) and plain language modelling (LM).

KD is the KL divergence KL(teacher || student) between temperature-softened next-token distributions, scaled by
T^2 so its gradient size does not shrink as T grows (Hinton et al. 2015, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531). LM is next-token cross-entropy on the recovery text.
"""

from __future__ import annotations


def kd_loss(student_logits, teacher_logits, temperature: float = 2.0):
    """Mean over tokens of T^2 * KL(softmax(teacher/T) || softmax(student/T)); logits are (..., vocab)."""
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean")  # batchmean: sum over vocab, mean over tokens
    return kl * temperature**2


def lm_loss(logits, input_ids):
    """Next-token cross-entropy: position i predicts token i+1."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


def needs_teacher(loss: str) -> bool:
    return loss in ("kd", "kd+lm")


def recovery_loss(student_logits, teacher_logits, input_ids, loss: str, temperature: float, lm_weight: float):
    """The loss named by RecoverySpec.loss. KD is taken on the positions that LM predicts (all but the last)."""
    if loss == "lm":
        return lm_loss(student_logits, input_ids)
    kd = kd_loss(student_logits[:, :-1], teacher_logits[:, :-1], temperature)
    if loss == "kd":
        return kd
    return (1.0 - lm_weight) * kd + lm_weight * lm_loss(student_logits, input_ids)
