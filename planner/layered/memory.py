"""Memory figures of the layered path: sizes the user writes (`--max-memory 2GB`), what a model needs whole, what one
decoder layer needs at a time, and what a recovery needs. Estimates from shapes, stated as such.

    parse_size("1500MB") -> 1_500_000_000      parse_size("1.5GiB") -> 1_610_612_736
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import InputError
from planner.layered.store import TOKEN_BLOCK
from planner.perf.footprint import parameter_count

# Units as accelerate's `max_memory` and the Hugging Face hub write them: KB/MB/GB/TB are powers of 1000, KiB/MiB/
# GiB/TiB powers of 1024; a bare K/M/G/T reads as KB/MB/GB/TB.
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE_FORMS = ("a number of bytes with an optional unit, e.g. 2GB, 1500MB, 1.5GiB, 800M (KB, MB, GB, TB: powers of "
              "1000; KiB, MiB, GiB, TiB: powers of 1024)")


def parse_size(text: str, what: str = "--max-memory") -> int:
    """Bytes of a size such as '2GB', '1500MB', '1.5GiB' or '4000000000'; an InputError naming the accepted forms."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InputError(f"{what} {text!r} is not a size; accepted: {SIZE_FORMS}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise InputError(f"{what} {text!r} is not a size above zero; accepted: {SIZE_FORMS}")
    return value


def fmt_bytes(n: float) -> str:
    """'1.73 GB' (powers of 1000, as --max-memory reads them)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype."""
    return dtype.itemsize


# -- the layered pass ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNeed:
    """What one step of the layered path holds at once, in bytes (an estimate from shapes)."""

    layer: int  # the largest decoder layer's weights, in the compute dtype
    working: int  # copies made while pruning one matrix (scores, masks, SparseGPT's float32 work)
    activations: int  # the hidden states of every calibration sample or evaluation window, and one chunk's
    head_block: int  # one block of the LM head and its logits

    @property
    def total(self) -> int:
        return self.layer + self.working + self.activations + self.head_block


def layer_need(shape, *, layer_params: int, largest_matrix: int, compute_bytes: int, tokens: int,
               chunk_tokens: int, seq_len: int, head_rows: int, hessian: bool = True) -> LayerNeed:
    """The layered path's need for a model of `shape` (planner.arch.ModelShape) whose largest decoder layer holds
    `layer_params` parameters and largest matrix `largest_matrix`: `tokens` hidden states in flight (calibration
    samples x length, or evaluation windows x length), `chunk_tokens` of them (sequences of `seq_len`) through a
    layer at once, LM head blocks of `head_rows` vocabulary rows. `hessian`: SparseGPT's in x in statistics."""
    hidden, inter = shape.hidden_size, shape.intermediate_size
    widest = max(hidden, inter)
    # scores (float32) + bool mask of one matrix; SparseGPT: W^T in float32, its mask, and the statistics
    working = largest_matrix * (4 + 1 + 4)
    if hessian:
        working += 4 * (widest * widest * 2 + hidden * hidden)  # H and its inverse factor, and q/k/v's H
    # hidden states in and out (float32 statistics read them in place); one chunk's MLP intermediates (gate, up,
    # their product) and residual copies, and its attention scores (heads x len x len per sequence, float32)
    activations = tokens * hidden * compute_bytes * 2 + chunk_tokens * (3 * inter + 4 * hidden) * 4
    activations += chunk_tokens * shape.num_heads * seq_len * 4
    head_rows = min(head_rows, shape.vocab_size)
    # the block's weights, and logits of TOKEN_BLOCK tokens against it: the logits, shifted, exponentiated (float32)
    head_block = head_rows * hidden * compute_bytes + min(tokens, TOKEN_BLOCK) * head_rows * 4 * 3
    return LayerNeed(layer=layer_params * compute_bytes, working=working, activations=activations,
                     head_block=head_block)


def layered_minimum(shape, *, compute_bytes: int, calibration_tokens: int, eval_tokens: int, seq_len: int,
                    hessian: bool, layer_params: int | None = None, largest_matrix: int | None = None) -> LayerNeed:
    """What the layered path holds for one step of a model of `shape` (planner.arch.ModelShape): the most hidden
    states in flight (calibration or evaluation tokens), chunks of CHUNK_SAMPLES sequences of `seq_len`, head blocks
    of HEAD_BLOCK_BYTES. `layer_params` / `largest_matrix` come from the checkpoint when there is one (its index),
    else from the shape. `plan run` adds the interpreter (PROCESS_BASE_BYTES) and refuses a --max-memory below."""
    from planner.layered.store import HEAD_BLOCK_BYTES
    from planner.perf.footprint import layer_parameters
    from planner.prune.masked.calibration import CHUNK_SAMPLES

    h = shape.hidden_size
    if largest_matrix is None:
        largest_matrix = max(h * shape.intermediate_size, h * shape.q_dim)
    return layer_need(shape, layer_params=layer_params if layer_params is not None else layer_parameters(shape),
                      largest_matrix=largest_matrix, compute_bytes=compute_bytes,
                      tokens=max(calibration_tokens, eval_tokens), chunk_tokens=CHUNK_SAMPLES * seq_len,
                      seq_len=seq_len, head_rows=HEAD_BLOCK_BYTES // (h * compute_bytes), hessian=hessian)


# -- recovery ---------------------------------------------------------------------------------------------------


def trainable_params(shape, method: str, lora_rank: int) -> int:
    """What a recovery method trains (planner/recover/README.md): distill the decoder blocks and the final norm,
    finetune every weight, lora rank-r adapters on every projection."""
    h = shape.hidden_size
    total = parameter_count(shape)
    if method == "finetune":
        return total
    if method == "distill":
        return total - shape.vocab_size * h * (1 if shape.tied_embeddings else 2)
    inter = shape.intermediate_size
    per_layer = (h + shape.q_dim) * 2 + (h + shape.kv_dim) * 2 + (h + inter) * (3 if shape.gated_mlp else 2)
    return shape.num_layers * per_layer * lora_rank


@dataclass(frozen=True)
class RecoveryNeed:
    """Bytes a recovery holds at its peak (fp32 training, AdamW), an estimate from shapes."""

    method: str
    student: int
    teacher: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.student + self.teacher + self.gradients + self.optimizer + self.activations

    def described(self) -> str:
        parts = [f"student weights {fmt_bytes(self.student)}"]
        if self.teacher:
            parts.append(f"teacher weights {fmt_bytes(self.teacher)}")
        parts += [f"gradients {fmt_bytes(self.gradients)}", f"AdamW states {fmt_bytes(self.optimizer)}",
                  f"activations {fmt_bytes(self.activations)}"]
        return f"{self.method} needs about {fmt_bytes(self.total)} ({', '.join(parts)})"


def recovery_need(student_shape, teacher_shape, spec) -> RecoveryNeed:
    """What recovering a student of `student_shape` with `spec` (a RecoverySpec) needs in fp32 on one device.

    Activations per decoder layer and micro-batch follow Korthikanti et al. 2022 (arXiv:2205.05198, sec. 4.1:
    s*b*h*(34 + 5*a*s/h) bytes in 16-bit), doubled for fp32; logits add tokens x vocab x 4 bytes for the student's
    logits, their softmax and gradient, and the teacher's."""
    from planner.recover.losses import needs_teacher

    student = parameter_count(student_shape) * 4
    teacher = parameter_count(teacher_shape) * 4 if needs_teacher(spec.loss) else 0
    trainable = trainable_params(student_shape, spec.method, spec.lora_rank)
    micro = spec.micro_batch_size or spec.batch_size
    s, h, a = spec.seq_len, student_shape.hidden_size, student_shape.num_heads
    per_layer = 2 * s * micro * h * (34 + 5 * a * s / h)
    logits = micro * s * student_shape.vocab_size * 4 * (3 + (1 if teacher else 0))
    activations = int(student_shape.num_layers * per_layer + logits)
    return RecoveryNeed(method=spec.method, student=student, teacher=teacher, gradients=trainable * 4,
                        optimizer=trainable * 8, activations=activations)


__all__ = ["parse_size", "fmt_bytes", "SIZE_FORMS", "LayerNeed", "layer_need", "layered_minimum",
           "trainable_params", "RecoveryNeed", "recovery_need"]
