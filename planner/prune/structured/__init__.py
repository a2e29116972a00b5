"""Structured pruning: remove MLP channels, attention heads (GQA-aware) or whole layers, leaving a smaller dense
model whose config says so, so `planner.export.export_model` writes a checkpoint that loads with plain
`AutoModelForCausalLM.from_pretrained`.

| kind           | module        | criteria                                  |
| -------------- | ------------- | ----------------------------------------- |
| `mlp_channels` | channels.py   | magnitude, activation, taylor (importance.py); obs (reconstruct.py) |
| `heads`        | heads.py      | magnitude, activation, taylor (importance.py); obs (reconstruct.py) |
| `layers`       | layers.py     | block_influence, angular, ablation        |

Each engine checks the request against the config (an InputError) before it touches the model.
"""

from __future__ import annotations

from planner.prune.base import register
from planner.prune.structured.channels import prune_mlp_channels
from planner.prune.structured.heads import prune_heads
from planner.prune.structured.layers import prune_layers
from planner.prune.structured.rounding import default_round_to

register("mlp_channels")(prune_mlp_channels)
register("heads")(prune_heads)
register("layers")(prune_layers)

__all__ = ["default_round_to", "prune_heads", "prune_layers", "prune_mlp_channels"]
