"""Pruning masks on disk, so a resumed run recovers with exactly the masks the pruning stage chose.

Bool masks are bit-packed (8 weights per byte) into one safetensors file; the shapes ride in its metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def save_masks(masks: dict, path: str | Path) -> Path:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    packed, shapes = {}, {}
    for name, mask in masks.items():
        flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
        packed[name] = torch.from_numpy(np.packbits(flat))
        shapes[name] = list(mask.shape)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(packed, str(tmp), metadata={"shapes": json.dumps(shapes)})
    os.replace(tmp, path)
    return path


def load_masks(path: str | Path) -> dict:
    import numpy as np
    import torch
    from safetensors import safe_open

    masks = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        for name in f.keys():
            shape = shapes[name]
            count = int(np.prod(shape)) if shape else 1
            bits = np.unpackbits(f.get_tensor(name).numpy())[:count].astype(bool)
            masks[name] = torch.from_numpy(bits).reshape(shape)
    return masks
