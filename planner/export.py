"""Export a pruned model as a standard Hugging Face checkpoint folder that loads with plain `from_pretrained`.

The folder is written under a temporary name and renamed into place when complete; an existing folder is never
overwritten unless `overwrite=True`. `planner.json` beside the weights records what was done (pattern, achieved
sparsity, kept shapes) and parameter/file-size figures.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from planner.errors import InputError

METADATA_FILE = "planner.json"


def export_model(model, tokenizer, folder: str | Path, metadata: dict[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Save `model` (+ tokenizer) to `folder` as safetensors; return the metadata written (with
    `parameters` and `file_bytes`)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise InputError(f"export folder {str(folder)!r} already exists; choose another or remove it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        seen: set[int] = set()
        params = 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel()
        file_bytes = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        meta = dict(metadata or {})
        meta.update({"parameters": params, "file_bytes": file_bytes})
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def read_metadata(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
