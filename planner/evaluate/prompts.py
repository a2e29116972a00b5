"""Prompt sets for teacher agreement: the capability slices shipped with the package and the user's own prompts.

One JSON object per line:

    {"id": "add-7-5", "prompt": "What is 7 + 5? Answer with only the number.", "gold": "12", "match": "number"}

- `prompt` (required): the user message (wrapped in the model's chat template when it has one and `chat` is true)
  or raw text to continue (`chat: false`, e.g. code completion).
- `gold` (optional): the answer, or a list of accepted answers. Only prompts with a gold answer count for exact
  match, and only those the dense model answers correctly (see agreement.py).
- `match`: how an answer is compared with gold, on the first non-empty line of the output, case- and
  punctuation-insensitive: "exact" (the line equals gold), "number" (the last number in the line equals gold),
  "word" (gold occurs in the line as whole words), "prefix" (the line starts with gold).
- `max_new_tokens` (default 32): length of the teacher's greedy continuation compared token by token.

The shipped sets are in `planner/evaluate/prompts/` (see SOURCES.md there).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import InputError, did_you_mean

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
SLICES = ("instruction", "code", "math", "multilingual", "long_context")


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    gold: list[str] | None = None
    match: Literal["exact", "number", "word", "prefix"] = "exact"
    chat: bool = True
    max_new_tokens: int = Field(32, ge=1, le=1024)

    @field_validator("gold", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and not value:
            return None
        return value


class PromptSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    source: Literal["bundled", "user"]
    prompts: list[Prompt]


def load_prompt_file(path: str | Path, name: str | None = None, source: str = "user") -> PromptSet:
    """Read a JSONL prompt file; a bad line is an InputError naming the file, the line and the field."""
    from planner.documents import describe_validation, parse_json, read_text

    path = Path(path).expanduser()
    prompts: list[Prompt] = []
    seen: set[str] = set()
    lines = read_text(path, "prompt file").splitlines()  # a folder, binary or non-UTF-8 file: InputError
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = parse_json(line, where)
        except InputError as exc:
            raise InputError(f"{where}: not a JSON object ({str(exc).removeprefix(where + ': ')}); expected one "
                             'object per line {"id": ..., "prompt": ..., "gold": ...}') from None
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object per line, got {type(data).__name__}")
        data.setdefault("id", f"line-{number}")
        try:
            prompt = Prompt.model_validate(data)
        except ValidationError as exc:
            raise InputError(f"{where}: {describe_validation(exc)} (accepted fields: "
                             f"{', '.join(Prompt.model_fields)})") from None
        if prompt.id in seen:
            raise InputError(f"{where}: prompt id {prompt.id[:80]!r} repeats")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise InputError(f"prompt file {str(path)!r} holds no prompts")
    return PromptSet(name=name or path.stem, source=source, prompts=prompts)  # type: ignore[arg-type]


def bundled_slice(name: str) -> PromptSet:
    if name not in SLICES:
        raise InputError(did_you_mean(name, SLICES, "capability slice"))
    return load_prompt_file(PROMPTS_DIR / f"{name}.jsonl", name, "bundled")


def bundled_slices(names=SLICES) -> list[PromptSet]:
    return [bundled_slice(n) for n in names]


# -- answers ------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def _norm(text: str) -> str:
    text = text.strip().lower().replace("`", "").replace('"', "").replace("'", "")
    return re.sub(r"\s+", " ", text).strip(" .,:;!?")


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _number(text: str) -> float | None:
    # the last number of the line: "7 + 5 = 12" answers 12
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        return float(raw)
    except ValueError:
        return None


def is_correct(output: str, prompt: Prompt) -> bool | None:
    """Whether `output` answers `prompt` per its match rule; None when the prompt has no gold answer."""
    if not prompt.gold:
        return None
    line = first_line(output)
    got = _norm(line)
    for gold in prompt.gold:
        want = _norm(gold)
        if prompt.match == "exact" and got == want:
            return True
        if prompt.match == "prefix" and got.startswith(want):
            return True
        if prompt.match == "word" and re.search(rf"(?<!\w){re.escape(want)}(?!\w)", got):
            return True
        if prompt.match == "number":
            a, b = _number(line), _number(gold)
            if a is not None and b is not None and a == b:
                return True
    return False
