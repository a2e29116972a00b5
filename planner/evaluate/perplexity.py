"""Held-out perplexity: exp(mean next-token NLL) over non-overlapping windows."""

from __future__ import annotations

import math

from planner.errors import InputError

HELDOUT_TOKENS = 16_384  # held-out tokens `plan run` measures perplexity on by default (--ppl-tokens)


def perplexity(model, tokenizer, text: str, seq_len: int = 512, max_tokens: int | None = 16_384,
               batch_size: int = 4) -> dict:
    """Perplexity of `model` on `text` in windows of `seq_len` tokens (the first token of each window is context
    only). Returns {"ppl", "nll", "tokens", "windows", "seq_len"}; nll is the mean over predicted tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return perplexity_of_tokens(model, ids, seq_len, max_tokens, batch_size)


def perplexity_of_tokens(model, ids: list[int], seq_len: int = 512, max_tokens: int | None = 16_384,
                         batch_size: int = 4, progress: bool = False) -> dict:
    """perplexity() of an already tokenized text (a caller evaluating many models tokenizes once)."""
    return perplexity_of_ids(model, token_windows(ids, seq_len, max_tokens), batch_size, progress)


def token_windows(ids: list[int], seq_len: int, max_tokens: int | None):
    """The first `max_tokens` of `ids` as a (windows, seq_len) LongTensor of whole windows."""
    import torch

    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = len(ids) // seq_len
    if windows < 1:
        raise InputError(f"evaluation text has {len(ids)} tokens; need at least seq_len={seq_len}")
    return torch.tensor(ids[: windows * seq_len], dtype=torch.long).view(windows, seq_len)


def perplexity_of_ids(model, data, batch_size: int = 4, progress: bool = False) -> dict:
    """Perplexity over a (windows, seq_len) LongTensor of token ids."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total_nll = 0.0
    total = 0
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for start in tqdm(range(0, data.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
            batch = data[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            target = batch[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            total_nll += float(nll)
            total += target.numel()
    mean = total_nll / total
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total, "windows": int(data.shape[0]),
            "seq_len": int(data.shape[1])}
