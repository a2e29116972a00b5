"""Memory footprints from a model's shape: what one decoder layer, the embeddings, the whole model and a run hold.

`plan run` executes a candidate in one of two ways, and the plan says which before any work
(`planner.decide.execution`):

- **in memory**: the dense teacher and the student copy are both held whole (2 x the weights in the run dtype),
  plus activations; recovery adds gradients and optimizer states;
- **layer by layer** (`plan run --max-memory`): weights stay on disk and one decoder layer at a time is brought
  onto the compute device, with the calibration activations that pass through it (planner.layered.memory, which
  also estimates recovery's needs).

Every figure here is arithmetic on the config (bytes = parameters x bytes per element), not a measurement; the
bench `bench/big_model_layered.py` measures peak RSS of the layered path beside the model's weight bytes.
"""

from __future__ import annotations

from planner.arch import ModelShape

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
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


def in_memory_bytes(shape: ModelShape, run_dtype: str = "fp32") -> int:
    """An in-memory run without recovery: the dense teacher and one student, whole, plus the interpreter."""
    return int(PROCESS_BASE_BYTES + 2 * parameter_count(shape) * dtype_bytes(run_dtype))
