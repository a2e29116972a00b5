"""Pruning masks on disk, so a resumed run recovers with exactly the masks the pruning stage chose.

Bool masks are bit-packed (8 weights per byte) into one safetensors file; the shapes ride in its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_masks(masks: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    from planner.documents import write_atomic
    from planner.export import pack_bits

    packed, shapes = {}, {}
    for name, mask in masks.items():
        packed[name] = pack_bits(mask)
        shapes[name] = list(mask.shape)
    return write_atomic(path, lambda tmp: save_file(packed, str(tmp), metadata={"shapes": json.dumps(shapes)}),
                        what="pruning masks")


def load_masks(path: str | Path) -> dict:
    from safetensors import safe_open

    from planner.export import unpack_bits

    masks = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        for name in f.keys():
            masks[name] = unpack_bits(f.get_tensor(name), shapes[name])
    return masks
