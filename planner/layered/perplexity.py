"""Held-out perplexity of a checkpoint on disk, one decoder layer at a time: the hidden states of every evaluation
window go through layer 0, then layer 1, ...; then the final norm, and the next-token NLL against the LM head read in
vocabulary blocks (a running log-sum-exp per token). Same windows and batches as planner.evaluate.perplexity, so the
two agree to float rounding (the LM head's blocks sum the softmax in another order)."""

from __future__ import annotations

import math
from typing import Any


def layered_hidden(model, data, batch_size: int = 4, progress: bool = False, desc: str = "layers"):
    """The last decoder layer's output for every row of `data` ((N, L) token ids), as chunks of `batch_size` rows
    (planner.prune.masked.calibration.LayerInputs)."""
    from tqdm.auto import tqdm

    from planner.prune.masked.calibration import run_layer

    inputs = model.first_inputs(data, batch_size)
    for i in tqdm(range(model.num_layers), desc=desc, unit="layer", disable=not progress, leave=False):
        layer = model.load_layer(i)
        run_layer(layer, inputs, replace=True)
        del layer
    return inputs


def layered_perplexity_of_ids(model, data, batch_size: int = 4, progress: bool = False) -> dict[str, Any]:
    """planner.evaluate.perplexity.perplexity_of_ids for a LayeredModel."""
    import torch

    inputs = layered_hidden(model, data, batch_size, progress, desc="perplexity")
    hidden = []
    for i in range(len(inputs.hidden)):
        h = model.final_norm(inputs.hidden[i])[:, :-1]
        hidden.append(h.reshape(-1, h.shape[-1]))
        inputs.hidden[i] = None  # free as we go: the normed copy replaces it
    hidden = torch.cat(hidden)
    nll, tokens = model.head_nll(hidden, data[:, 1:].reshape(-1), progress)
    mean = nll / tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": tokens, "windows": int(data.shape[0]),
            "seq_len": int(data.shape[1])}


def layered_perplexity_of_tokens(model, ids: list[int], seq_len: int = 512, max_tokens: int | None = 16_384,
                                 batch_size: int = 4, progress: bool = False) -> dict[str, Any]:
    """planner.evaluate.perplexity.perplexity_of_tokens for a LayeredModel."""
    from planner.evaluate.perplexity import token_windows

    return layered_perplexity_of_ids(model, token_windows(ids, seq_len, max_tokens), batch_size, progress)


__all__ = ["layered_hidden", "layered_perplexity_of_ids", "layered_perplexity_of_tokens"]
