"""Datasets of the bundled lm-eval tasks, read from the JSONL files beside this module (no hub, no network).

lm-eval calls these through `custom_dataset: !function utils.<name>` in the task YAMLs; they return a DatasetDict
with one `test` split.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def next_line(**_):
    return _load("next_line")


def last_word(**_):
    return _load("last_word")
