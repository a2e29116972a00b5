"""Tiny random-weight models of every supported family, built from transformers configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

VOCAB = 320

FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "opt")


def tiny_config(family: str, **overrides):
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **common)
    elif family == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **common)
    elif family == "mistral":
        cfg = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=1, max_position_embeddings=256, sliding_window=None, **common)
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, n_inner=None,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif family == "opt":
        cfg = OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                        max_position_embeddings=256, word_embed_proj_dim=64, dropout=0.0, **common)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation="eager")
    # random init puts some weights near zero only by chance; scale up so logits are not flat
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.eval()


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a slice of the bundled calibration text (vocab VOCAB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from planner.data import calibration_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([calibration_text()[:50_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    return fast


def save_tiny(tmp_path, family: str = "llama", seed: int = 0, **overrides):
    """Save a tiny model plus tokenizer as a checkpoint folder; return its path."""
    folder = tmp_path / f"tiny-{family}"
    model = tiny_model(family, seed, **overrides)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def example_ids(batch: int = 2, seq: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


def save_mlp_plan(model, path, recovery=None, **changes):
    """plan.json with one candidate (50% of the MLP channels, magnitude) for `model`, at a 16+4 token workload;
    `recovery` defaults to none; `changes` are further Plan fields."""
    from planner.decide.plan import Candidate, Plan, Verdict, save_plan
    from planner.prune.specs import CalibrationSpec, MlpChannelPruning
    from planner.recover.specs import RecoverySpec
    from planner.workload import Workload

    common = dict(projected_to="a100-80gb-sxm", basis="projected to a100-80gb-sxm (roofline model)",
                  goal_metric="p95_ms", quality_risk="low", calibration=CalibrationSpec(num_samples=2, seq_len=32))
    plan = Plan(model=str(model), goal="p95-latency", gpu="a100-80gb-sxm", goal_metric="p95_ms",
                rules_version="test", workload=Workload(prompt_len=16, gen_len=4),
                verdict=Verdict(action="prune", text="prune MLP channels"),
                candidates=[Candidate(rank=1, name="mlp-50", label="MLP channels -50%",
                                      prune=MlpChannelPruning(ratio=0.5, criterion="magnitude"),
                                      recovery=recovery or RecoverySpec(method="none"), predicted_speedup=1.4,
                                      **common)],
                **changes)
    return save_plan(plan, path)
