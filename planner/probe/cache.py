"""The probe's disk cache: one small JSON record per measurement under <cache dir>/probe/<model key>/.

A record is keyed by the sha256 of everything its figures depend on: the probe version, the model (its config.json,
weight files' names, sizes and modification times, its in-memory config and dtype), the held-out token ids measured
(the text, the tokenizer, `tokens` and `seq_len` all show in them), the calibration token ids (for steps that
calibrate) and the step's JSON. Records are written atomically; one that cannot be read, or holds another key, is
a miss and gets rewritten: the cache only saves time, it never fails a plan.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from planner.paths import cache_dir

PROBE_VERSION = 1  # bump when a change to the probe or to an engine changes the figures it records


def cache_root() -> Path:
    return cache_dir() / "probe"


def digest(value: Any) -> str:
    """sha256 of a JSON value, keys sorted."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensor_digest(tensor) -> str:
    """sha256 of a tensor's shape, dtype and bytes (token ids: a few kilobytes)."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_key(loaded) -> str:
    """What identifies the loaded model cheaply: its source's fingerprint (planner.models.fingerprint) with the
    weight files' modification times, plus the in-memory config and dtype (a model changed in memory before the
    probe gets another key)."""
    from planner.models import fingerprint

    source = loaded.source.path
    found = fingerprint(source)
    mtimes = {}
    for name in found.get("weights", {}):
        try:
            mtimes[name] = (Path(source) / name).stat().st_mtime_ns
        except OSError:
            mtimes[name] = None
    model = loaded.model
    config = json.loads(model.config.to_json_string())
    return digest({"probe": PROBE_VERSION, "source": found, "mtimes": mtimes, "config": config,
                   "dtype": str(next(model.parameters()).dtype), "class": type(model).__name__})


def record_path(model: str, key: str) -> Path:
    return cache_root() / model[:20] / f"{key[:32]}.json"


def read_record(model: str, key: str) -> dict[str, Any] | None:
    """The cached record, or None (missing, unreadable, or another key under the same file name)."""
    path = record_path(model, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("model") != model:
        return None
    return data


def write_record(model: str, key: str, record: dict[str, Any]) -> Path:
    from planner.documents import write_atomic

    body = {"key": key, "model": model, **record}
    return write_atomic(record_path(model, key), json.dumps(body, separators=(",", ":")), what="probe cache record")
