"""Architecture adapters: where each supported family keeps its decoder layers, projections, norms and heads.

Every stage that walks a model (profiler, pruning, recovery) asks the adapter instead of hard-coding module
names. Llama, Mistral, Qwen2 and SmolLM share one layout; GPT-2 uses fused Conv1D projections; OPT has a plain MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

from planner.errors import InputError


class ModelShape(BaseModel):
    """The shape facts of a decoder-only LM, from its config alone (no weights needed)."""

    model_config = ConfigDict(extra="forbid")
    family: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    gated_mlp: bool
    tied_embeddings: bool
    max_positions: int | None = None
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ArchAdapter:
    """Module paths of one family, relative to the model (`layers`) or to one decoder layer (the rest).

    `qkv` is set for fused attention input projections (GPT-2 `c_attn`), else `q`, `k`, `v` are.
    `gate` is None for plain (non-gated) MLPs; `up` is then the first MLP projection (`c_fc`, `fc1`).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    lm_head: str
    attn: str
    o: str
    up: str
    down: str
    input_norm: str
    post_attn_norm: str
    mlp: str | None  # None where the MLP projections sit directly on the layer (OPT)
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    gate: str | None = None
    position_embed: str | None = None
    conv1d: bool = False  # GPT-2's Conv1D stores weight as (in, out)
    # config attribute names
    cfg_layers: str = "num_hidden_layers"
    cfg_hidden: str = "hidden_size"
    cfg_intermediate: str = "intermediate_size"
    cfg_heads: str = "num_attention_heads"
    cfg_kv_heads: str | None = "num_key_value_heads"

    # -- module access -------------------------------------------------------------------------------------
    def get_layers(self, model) -> Any:
        return get_submodule(model, self.layers)

    def linear_roles(self) -> list[tuple[str, str]]:
        """(role, path in layer) of every prunable projection of a decoder layer, in forward order."""
        roles: list[tuple[str, str]] = []
        if self.qkv:
            roles.append(("qkv", self.qkv))
        else:
            roles += [("q", self.q), ("k", self.k), ("v", self.v)]
        roles.append(("o", self.o))
        if self.gate:
            roles.append(("gate", self.gate))
        roles += [("up", self.up), ("down", self.down)]
        return roles

    def iter_linears(self, model) -> Iterator[tuple[int, str, str, Any]]:
        """Yield (layer index, role, full module name, module) for every prunable projection."""
        for i, layer in enumerate(self.get_layers(model)):
            for role, path in self.linear_roles():
                yield i, role, f"{self.layers}.{i}.{path}", get_submodule(layer, path)

    def projection(self, layer, role: str):
        path = dict(self.linear_roles())[role]
        return get_submodule(layer, path)

    # -- config ---------------------------------------------------------------------------------------------
    def shape(self, config) -> ModelShape:
        hidden = int(getattr(config, self.cfg_hidden))
        heads = int(getattr(config, self.cfg_heads))
        kv = getattr(config, self.cfg_kv_heads, None) if self.cfg_kv_heads else None
        kv = int(kv) if kv else heads
        inter = getattr(config, self.cfg_intermediate, None)
        inter = int(inter) if inter else 4 * hidden  # GPT-2's n_inner=None means 4*hidden
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        tied = bool(getattr(config, "tie_word_embeddings", True))
        return ModelShape(
            family=self.family,
            model_type=config.model_type,
            num_layers=int(getattr(config, self.cfg_layers)),
            hidden_size=hidden,
            intermediate_size=inter,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=int(head_dim),
            vocab_size=int(config.vocab_size),
            gated_mlp=self.gate is not None,
            tied_embeddings=tied,
            max_positions=getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None),
            attention_bias=bool(getattr(config, "attention_bias", self.family != "llama")),
            mlp_bias=bool(getattr(config, "mlp_bias", self.family != "llama")),
        )

    def set_shape(self, config, *, num_layers=None, intermediate_size=None, num_heads=None, num_kv_heads=None):
        """Write pruned shape facts back into a config (keeps head_dim fixed and explicit)."""
        head_dim = self.shape(config).head_dim
        if num_layers is not None:
            setattr(config, self.cfg_layers, int(num_layers))
            if getattr(config, "layer_types", None) is not None:
                config.layer_types = list(config.layer_types)[: int(num_layers)]
        if intermediate_size is not None:
            setattr(config, self.cfg_intermediate, int(intermediate_size))
        if num_heads is not None:
            setattr(config, self.cfg_heads, int(num_heads))
            if self.family == "llama":
                config.head_dim = head_dim
        if num_kv_heads is not None and self.cfg_kv_heads:
            setattr(config, self.cfg_kv_heads, int(num_kv_heads))
        return config


def get_submodule(root, path: str):
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


_LLAMA = ArchAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    mlp="mlp",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    input_norm="input_layernorm",
    post_attn_norm="post_attention_layernorm",
)

_GPT2 = ArchAdapter(
    family="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    embed="transformer.wte",
    position_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    attn="attn",
    qkv="attn.c_attn",
    o="attn.c_proj",
    mlp="mlp",
    up="mlp.c_fc",
    down="mlp.c_proj",
    input_norm="ln_1",
    post_attn_norm="ln_2",
    conv1d=True,
    cfg_layers="n_layer",
    cfg_hidden="n_embd",
    cfg_intermediate="n_inner",
    cfg_heads="n_head",
    cfg_kv_heads=None,
)

_OPT = ArchAdapter(
    family="opt",
    model_types=("opt",),
    layers="model.decoder.layers",
    embed="model.decoder.embed_tokens",
    position_embed="model.decoder.embed_positions",
    final_norm="model.decoder.final_layer_norm",
    lm_head="lm_head",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    mlp=None,
    up="fc1",
    down="fc2",
    input_norm="self_attn_layer_norm",
    post_attn_norm="final_layer_norm",
    cfg_intermediate="ffn_dim",
    cfg_kv_heads=None,
)

ADAPTERS: tuple[ArchAdapter, ...] = (_LLAMA, _GPT2, _OPT)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def get_adapter(model_or_config) -> ArchAdapter:
    """The adapter for a model or a config; a clear error for unsupported families."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise InputError(
        f"unsupported model family {model_type!r}; supported: {', '.join(supported_model_types())}"
    )
