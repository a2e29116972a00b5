"""Bundled text: calibration (for saliency and recovery) and held-out (for perplexity only), kept apart.

See SOURCES.md beside this file for where the text comes from and its license.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import InputError

_DIR = Path(__file__).resolve().parent
CALIBRATION_FILE = _DIR / "calibration-python-docs.txt"
HELDOUT_FILE = _DIR / "heldout-python-docs.txt"


def calibration_text() -> str:
    """Calibration and recovery text (Python 3.11 docs, howto/*). Never used for evaluation."""
    return CALIBRATION_FILE.read_text(encoding="utf-8")


def heldout_text() -> str:
    """Held-out text (Python 3.11 docs, tutorial/* and faq/*). Only for evaluation."""
    return HELDOUT_FILE.read_text(encoding="utf-8")


def read_text_files(paths) -> str:
    """User-supplied text files joined; a missing or unreadable file is an InputError naming it."""
    from planner.documents import read_text

    parts = []
    for p in paths:
        parts.append(read_text(Path(p).expanduser(), "text file", max_bytes=2**31))  # folder, binary, non-UTF-8: InputError
    text = "\n\n".join(parts)
    if not text.strip():
        raise InputError(f"text files {', '.join(map(str, paths))} are empty")
    return text


def token_blocks(tokenizer, text: str, num_samples: int, seq_len: int, offset: int = 0):
    """`num_samples` consecutive, non-overlapping blocks of `seq_len` tokens from `text`, as a LongTensor
    of shape (num_samples, seq_len). Deterministic: block i starts at token offset + i*seq_len."""
    import torch

    if num_samples < 1 or seq_len < 2:
        raise InputError(f"need num_samples >= 1 and seq_len >= 2, got {num_samples} x {seq_len}")
    ids = tokenizer(text, return_tensors=None, add_special_tokens=False)["input_ids"]
    need = offset + num_samples * seq_len
    if len(ids) < need:
        raise InputError(
            f"the text has {len(ids)} tokens; {num_samples} samples x {seq_len} tokens need {need}. "
            "Use fewer or shorter samples, or more text"
        )
    block = torch.tensor(ids[offset:need], dtype=torch.long)
    return block.view(num_samples, seq_len)
