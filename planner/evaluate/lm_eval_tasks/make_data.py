"""Build the two task files of this folder from the bundled held-out text (planner/data/heldout-python-docs.txt).

    python -m planner.evaluate.lm_eval_tasks.make_data     # rewrites next_line.jsonl and last_word.jsonl

Deterministic (a fixed seed); the files are committed, so a run never rebuilds them. Held-out text only: never the
calibration text that pruning and recovery see.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
ITEMS = 200


def paragraphs(text: str) -> list[list[str]]:
    """Blocks of prose: runs of consecutive non-empty, unindented lines (an indented line, code or a list item's
    continuation, ends a block), so every block is contiguous in the source."""
    blocks, block = [], []
    for line in text.splitlines():
        if not line.strip() or line.startswith((" ", "\t")):
            if block:
                blocks.append(block)
            block = []
        else:
            block.append(line.strip())
    if block:
        blocks.append(block)
    return [b for b in blocks if len(b) >= 3]


def _prose(line: str) -> bool:
    return len(line.split()) >= 6 and sum(c.isalpha() for c in line) > 0.7 * len(line.replace(" ", ""))


def next_line_items(blocks: list[list[str]], rng: random.Random) -> list[dict]:
    """Multiple choice: after 2-4 lines of a paragraph, which of four lines comes next (three from elsewhere)."""
    pool = [line for b in blocks for line in b if _prose(line)]
    items = []
    for i, block in enumerate(blocks):
        k = min(len(block) - 1, 2 + i % 3)
        answer = block[k]
        if not all(_prose(line) for line in block[:k + 1]):
            continue
        distractors = []
        while len(distractors) < 3:
            line = rng.choice(pool)
            if line not in block and line not in distractors:
                distractors.append(line)
        choices = distractors + [answer]
        rng.shuffle(choices)
        items.append({"id": f"next-line-{len(items)}", "context": "\n".join(block[:k]), "choices": choices,
                      "label": choices.index(answer)})
    return items


WORD = re.compile(r"^[A-Za-z][a-z]{2,}$")


def last_word_items(blocks: list[list[str]], rng: random.Random) -> list[dict]:
    """Generation: a passage cut before the last word of one of its sentences; the model writes that word."""
    items = []
    for block in blocks:
        text = " ".join(block)
        sentences = [s for s in re.split(r"(?<=\.)\s+", text) if s.endswith(".")]
        for s_index, sentence in enumerate(sentences):
            words = sentence[:-1].split()
            if len(words) < 8 or not WORD.match(words[-1]):
                continue
            before = " ".join(sentences[:s_index] + [" ".join(words[:-1])])
            items.append({"id": f"last-word-{len(items)}", "context": before, "target": words[-1]})
            break
    rng.shuffle(items)
    return items


def main() -> None:
    from planner.data import heldout_text

    blocks = paragraphs(heldout_text())
    for name, make in (("next_line", next_line_items), ("last_word", last_word_items)):
        items = make(blocks, random.Random(SEED))[:ITEMS]
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        print(f"{path.name}: {len(items)} items")


if __name__ == "__main__":
    main()
