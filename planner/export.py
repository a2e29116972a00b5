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
                 overwrite: bool = False, scratch: str | Path | None = None) -> dict[str, Any]:
    """Save `model` (+ tokenizer) to `folder` as safetensors; return the metadata written (with
    `parameters` and `file_bytes`). The folder is built in `scratch` (default: beside it; same file system)."""
    from planner.documents import umask

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise InputError(f"export folder {str(folder)!r} already exists; choose another or remove it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    base = Path(scratch) if scratch is not None else folder.parent
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=base))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a checkpoint is for sharing
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


# -- compressed sparse copy: what a checkpoint-size goal can actually ship ------------------------------------

COMPRESSED_DIR = "compressed"
COMPRESSED_FILE = "weights.bitmask.safetensors"


def pack_bits(mask):
    """A bool tensor as a flat uint8 tensor, 8 entries per byte (numpy bit order)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.packbits(mask.detach().to("cpu", torch.bool).reshape(-1).numpy()))


def unpack_bits(packed, shape):
    """The bool tensor of `shape` that `pack_bits` packed."""
    import numpy as np
    import torch

    count = int(np.prod(shape)) if len(shape) else 1
    return torch.from_numpy(np.unpackbits(packed.numpy())[:count].astype(bool)).reshape(shape)


def write_compressed(model, folder: str | Path) -> int:
    """Write a lossless bitmask-compressed copy of `model`'s weights to `folder/compressed/`; return its bytes.

    A dense safetensors file keeps every zero, so masked pruning (unstructured, N:M) does not shrink it. Here
    each tensor that gets smaller this way is stored as a bit-packed non-zero mask (1 bit per weight) plus its
    non-zero values in order; the others are stored as they are. `load_compressed` restores exact tensors. The
    folder sits beside the standard checkpoint, which `from_pretrained` keeps loading unchanged."""
    from safetensors.torch import save_file

    from planner.documents import write_atomic

    folder = Path(folder) / COMPRESSED_DIR
    tensors: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    aliases: dict[str, str] = {}  # tied weights (LM head = embeddings) are stored once, as save_pretrained does
    owners: dict[tuple, str] = {}
    for name, value in model.state_dict().items():
        key = (value.data_ptr(), tuple(value.shape), value.dtype)
        if key in owners:
            aliases[name] = owners[key]
            continue
        owners[key] = name
        stored, shape = compress_tensor(name, value)
        tensors.update(stored)
        if shape is not None:
            shapes[name] = shape
    metadata = compressed_metadata(shapes, aliases)
    path = write_atomic(folder / COMPRESSED_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata),
                        what="compressed checkpoint")
    return path.stat().st_size


def compress_tensor(name: str, value) -> tuple[dict[str, Any], list[int] | None]:
    """How `write_compressed` stores one tensor: (stored tensors by name, its shape when bit-packed else None)."""
    value = value.detach().to("cpu").contiguous()
    nonzero = value != 0
    kept = int(nonzero.sum())
    dense_bytes = value.numel() * value.element_size()
    packed_bytes = kept * value.element_size() + (value.numel() + 7) // 8
    if value.dim() >= 2 and packed_bytes < dense_bytes:
        return {f"{name}.bitmask": pack_bits(nonzero), f"{name}.values": value[nonzero].clone()}, list(value.shape)
    return {name: value.clone()}, None


def compressed_metadata(shapes: dict[str, list[int]], aliases: dict[str, str]) -> dict[str, str]:
    return {"format": "planner-bitmask-v1", "shapes": json.dumps(shapes), "aliases": json.dumps(aliases)}


def load_compressed(folder: str | Path) -> dict[str, Any]:
    """The state dict stored by `write_compressed` under `folder` (the checkpoint folder), exact."""
    import torch
    from safetensors import safe_open

    path = Path(folder) / COMPRESSED_DIR / COMPRESSED_FILE
    if not path.is_file():
        raise InputError(f"no compressed weights at {str(path)!r}; only masked (unstructured, N:M) exports have them")
    state: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "planner-bitmask-v1":
            raise InputError(f"{str(path)!r} is not a planner bitmask file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        for key in f.keys():
            if key.endswith(".bitmask") or key.endswith(".values"):
                continue
            state[key] = f.get_tensor(key)
        for name, shape in shapes.items():
            values = f.get_tensor(f"{name}.values")
            out = torch.zeros(shape, dtype=values.dtype)
            out[unpack_bits(f.get_tensor(f"{name}.bitmask"), shape)] = values
            state[name] = out
    for name, owner in json.loads(meta.get("aliases", "{}")).items():
        state[name] = state[owner]
    return state
