"""Models larger than memory, one decoder layer at a time ("sequential onloading").

| module        | what it holds                                                                          |
| ------------- | -------------------------------------------------------------------------------------- |
| store.py      | `LayeredModel`: a checkpoint on disk; one decoder layer built at a time, embedding rows |
|               | gathered, the LM head read in blocks; `offloaded()` for generation (accelerate)        |
| prune.py      | `prune_layered`: masks (magnitude, Wanda, SparseGPT), MLP channels (magnitude,          |
|               | activation), each layer written as it is done; the weights planner.prune gives         |
| perplexity.py | held-out perplexity: every window through one layer at a time, then a blocked LM head  |
| writer.py     | the checkpoint, shard by shard (streamed safetensors), index, config, tokenizer        |
| memory.py     | `--max-memory` sizes; what one layer needs; what a recovery needs                      |

The memory held is one decoder layer in the compute dtype (fp32 on a CPU, bf16 on CUDA), the hidden states of the
calibration samples or evaluation windows, and one block of the LM head: `plan run --max-memory SIZE` takes this
path for a model whose weights do not fit (planner.run.stages).
"""

from __future__ import annotations

from planner.layered.memory import fmt_bytes, parse_size
from planner.layered.perplexity import layered_perplexity_of_ids, layered_perplexity_of_tokens
from planner.layered.prune import LayeredPrune, check_layered, layered_refusal, prune_layered
from planner.layered.store import LayeredModel, compute_dtype

__all__ = ["LayeredModel", "LayeredPrune", "check_layered", "compute_dtype", "fmt_bytes", "layered_perplexity_of_ids",
           "layered_perplexity_of_tokens", "layered_refusal", "parse_size", "prune_layered"]
