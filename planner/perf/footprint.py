"""Memory footprints from a model's shape: what one decoder layer, the embeddings, the whole model and a run hold.

`plan run` executes a candidate in one of two ways, and the plan says which before any work
(`planner.decide.execution`):

- **in memory**: the dense teacher and the student copy are both held whole (2 x the weights in the run dtype),
  plus activations; recovery adds gradients and optimizer states (`recovery_bytes`);
- **layer by layer** (`plan run --max-memory`): weights stay on disk and one decoder layer at a time is brought
  onto the compute device, with the calibration activations that pass through it (`layered_minimum_bytes`).

Every figure here is arithmetic on the config (bytes = parameters x bytes per element), not a measurement; the
bench `bench/big_model_layered.py` measures peak RSS of the layered path beside the model's weight bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.arch import ModelShape

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# AdamW in fp32 (what planner.recover trains with): the weights, their gradients, two moment estimates
FULL_FINETUNE_BYTES_PER_PARAM = 4 + 4 + 8
# what the Python interpreter with torch and transformers imported holds before any model (measured on this
# project's CPU host: ~0.45 GB RSS after `import torch, transformers`); a floor under every run, not a model figure
PROCESS_BASE_BYTES = 0.5e9


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def norm_width(shape: ModelShape) -> int:
    """Parameters per norm: RMSNorm has a scale; GPT-2's and OPT's LayerNorm a scale and a bias."""
    return shape.hidden_size * (1 if shape.family == "llama" else 2)


def _projection_weights(shape: ModelShape) -> int:
    """Weights (no biases) of one decoder layer's projections."""
    h, i = shape.hidden_size, shape.intermediate_size
    return h * (shape.q_dim + 2 * shape.kv_dim) + shape.q_dim * h + (3 if shape.gated_mlp else 2) * h * i


def linear_parameters(shape: ModelShape) -> int:
    """Weights (no biases) of every decoder layer's projections: what 2:4 sparsity would prune."""
    return shape.num_layers * _projection_weights(shape)


def layer_parameters(shape: ModelShape) -> int:
    """Parameters of one decoder layer: projections, their biases, the two norms."""
    h, i = shape.hidden_size, shape.intermediate_size
    bias = 0
    if shape.attention_bias or shape.model_type == "qwen2":  # Qwen2 has q/k/v biases and no config flag
        bias += shape.q_dim + 2 * shape.kv_dim
    if shape.attention_bias:
        bias += h
    if shape.mlp_bias:
        bias += (2 if shape.gated_mlp else 1) * i + h
    return _projection_weights(shape) + bias + 2 * norm_width(shape)


def embedding_parameters(shape: ModelShape) -> int:
    """The token embedding, the output head when it is not tied to it, learned positions (GPT-2, OPT), the final
    norm: everything outside the decoder layers."""
    h = shape.hidden_size
    total = shape.vocab_size * h * (1 if shape.tied_embeddings else 2) + norm_width(shape)
    if shape.family == "gpt2":
        total += (shape.max_positions or 0) * h
    elif shape.family == "opt":
        total += ((shape.max_positions or 0) + 2) * h  # OPT's learned positions are offset by 2
    return total


def parameter_count(shape: ModelShape) -> int:
    """All parameters, from the shape (checked against meta-device builds of every supported family)."""
    return shape.num_layers * layer_parameters(shape) + embedding_parameters(shape)


def largest_input(shape: ModelShape) -> int:
    """The widest input of any projection in a layer (down_proj's: the MLP width), whose Gram matrix SparseGPT and
    reconstruction hold."""
    return max(shape.hidden_size, shape.q_dim, shape.intermediate_size)


def layered_working_bytes(shape: ModelShape, tokens: int, seq_len: int, run_dtype: str = "fp32") -> int:
    """What the layer-by-layer path holds besides the interpreter: one layer twice (as read, and as being pruned),
    one Gram matrix of the widest input (fp32), the calibration hidden states in and out of the layer (fp32), the
    MLP's intermediate activations and one sequence's attention scores, and a 4096-row slice of the output head."""
    b = dtype_bytes(run_dtype)
    layer = 2 * layer_parameters(shape) * b
    gram = largest_input(shape) ** 2 * 4
    hidden = 2 * tokens * shape.hidden_size * 4
    mlp = 2 * seq_len * shape.intermediate_size * 4
    scores = shape.num_heads * seq_len * seq_len * 4
    head = min(4096, shape.vocab_size) * (shape.hidden_size * b + seq_len * 4)
    return layer + gram + hidden + mlp + scores + head


def layered_minimum_bytes(shape: ModelShape, tokens: int, seq_len: int, run_dtype: str = "fp32") -> int:
    """The least `--max-memory` the layer-by-layer path can run in: the interpreter's floor plus its working set."""
    return int(PROCESS_BASE_BYTES + layered_working_bytes(shape, tokens, seq_len, run_dtype))


def in_memory_bytes(shape: ModelShape, run_dtype: str = "fp32") -> int:
    """An in-memory run without recovery: the dense teacher and one student, whole, plus the interpreter."""
    return int(PROCESS_BASE_BYTES + 2 * parameter_count(shape) * dtype_bytes(run_dtype))


def recovery_bytes(shape: ModelShape, method: str) -> int:
    """An in-memory recovery in fp32: full fine-tuning or distillation holds the student with its gradients and
    AdamW states (16 bytes a parameter), distillation the teacher too; LoRA the frozen student and the teacher
    (its adapters are a rounding error). Activations come on top (they depend on the batch; not counted)."""
    params = parameter_count(shape)
    if method == "lora":
        return int(PROCESS_BASE_BYTES + 2 * params * 4)
    teacher = params * 4
    return int(PROCESS_BASE_BYTES + params * FULL_FINETUNE_BYTES_PER_PARAM + teacher)


@dataclass(frozen=True)
class Footprint:
    """One model's footprints, in bytes, at the run dtype."""

    run_dtype: str
    weights: int
    layer: int
    embeddings: int
    in_memory: int
    layered_minimum: int

    @classmethod
    def of(cls, shape: ModelShape, run_dtype: str, tokens: int, seq_len: int) -> Footprint:
        b = dtype_bytes(run_dtype)
        return cls(run_dtype=run_dtype, weights=parameter_count(shape) * b, layer=layer_parameters(shape) * b,
                   embeddings=embedding_parameters(shape) * b, in_memory=in_memory_bytes(shape, run_dtype),
                   layered_minimum=layered_minimum_bytes(shape, tokens, seq_len, run_dtype))
