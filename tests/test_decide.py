"""Decision scenarios, table-driven: (goal, GPU, workload, profile facts, budget) -> the expected top recommendation
or exclusion, each citing the rule it expects. Predictions use the real roofline model on real model shapes
(SmolLM2-135M, Llama-2-7B, Llama-3-8B) built from their config values; no weights are needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from planner.api import target_dtype
from planner.arch import ModelShape
from planner.decide.engine import decide
from planner.decide.rules import load_rules
from planner.gpus import get_gpu
from planner.profile.facts import projection_facts
from planner.profile.roofline import estimate
from planner.workload import Goal, QualityBudget, Workload

SMOL = ModelShape(family="llama", model_type="llama", num_layers=30, hidden_size=576, intermediate_size=1536,
                  num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152, gated_mlp=True, tied_embeddings=True,
                  max_positions=8192)
LLAMA2_7B = ModelShape(family="llama", model_type="llama", num_layers=32, hidden_size=4096, intermediate_size=11008,
                       num_heads=32, num_kv_heads=32, head_dim=128, vocab_size=32000, gated_mlp=True,
                       tied_embeddings=False, max_positions=4096)
LLAMA3_8B = LLAMA2_7B.model_copy(update={"intermediate_size": 14336, "num_kv_heads": 8, "vocab_size": 128256,
                                         "max_positions": 8192})
LLAMA2_70B = LLAMA2_7B.model_copy(update={"num_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
                                          "num_heads": 64, "num_kv_heads": 8})
GPT2 = ModelShape(family="gpt2", model_type="gpt2", num_layers=12, hidden_size=768, intermediate_size=3072,
                  num_heads=12, num_kv_heads=12, head_dim=64, vocab_size=50257, gated_mlp=False, tied_embeddings=True,
                  max_positions=1024, attention_bias=True, mlp_bias=True)

RULES = load_rules()


def roofline_facts(shape, workload, gpu) -> dict:
    """The profile facts the product derives from a projection alone (planner.profile.facts)."""
    return projection_facts(shape, workload, gpu)


@dataclass
class Scenario:
    name: str
    goal: str
    gpu: str
    shape: ModelShape = field(default_factory=lambda: SMOL)
    workload: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # overrides of the profile facts
    budget: float = 0.10
    verdict: str = "prune"
    top_kind: str | None = None  # kind of the rank-1 candidate
    rule: str | None = None  # the rule this scenario is about: it must fire
    kept: tuple[str, str] | None = None  # (kind, rule): a kept candidate of this kind was chosen by this rule
    rejected: tuple[str, str] | None = None  # (kind, rule): every candidate of this kind was rejected by this rule
    reason: str | None = None  # text in the rejection reason / verdict


SCENARIOS = [
    # -- unstructured: no dense-GPU latency win; fine for checkpoint size ------------------------------------------
    Scenario("unstructured gives no dense latency win", "p95-latency", "a100", rule="unstructured-no-dense-speedup",
             rejected=("unstructured", "unstructured-no-dense-speedup"), top_kind="layers",
             reason="speedup 1.00x on a100-80gb-sxm: dense kernels multiply the zeros"),
    Scenario("unstructured gives no throughput win on H100 either", "throughput", "h100", shape=LLAMA3_8B,
             workload={"batch_size": 16}, rule="unstructured-no-dense-speedup",
             rejected=("unstructured", "unstructured-no-dense-speedup")),
    Scenario("unstructured does not shrink serving memory", "peak-memory", "l4", shape=LLAMA2_7B,
             rule="unstructured-no-memory-win", rejected=("unstructured", "unstructured-no-memory-win"),
             verdict="quantize", reason="don't prune; quantize: int4 weight-only"),
    Scenario("checkpoint size makes unstructured acceptable", "checkpoint-size", "a100", budget=0.10,
             rule="checkpoint-size-accepts-unstructured", verdict="quantize",
             kept=("unstructured", "checkpoint-size-accepts-unstructured")),
    # -- 2:4: sparse tensor cores, a kernel, and batch ---------------------------------------------------------------
    # (7B with 8 x 2048 tokens of KV cache does not fit 16 GB: every candidate that still does not fit is set aside)
    Scenario("2:4 needs sparse tensor cores: T4 has none", "ttft", "t4", shape=LLAMA2_7B,
             workload={"prompt_len": 2048, "batch_size": 8}, rule="nm-needs-sparse-tensor-cores", verdict="dont_prune",
             rejected=("nm", "nm-needs-sparse-tensor-cores"), reason="t4 has no sparse tensor cores for fp16"),
    Scenario("2:4 needs sparse tensor cores: V100 has none", "throughput", "v100", shape=LLAMA2_7B,
             workload={"batch_size": 32, "dtype": "fp16"}, rule="nm-needs-sparse-tensor-cores", verdict="dont_prune",
             rejected=("nm", "nm-needs-sparse-tensor-cores")),
    Scenario("2:4 runs on Ampere sparse tensor cores for compute-bound prefill", "ttft", "a100", shape=LLAMA2_7B,
             workload={"prompt_len": 2048, "batch_size": 8}, budget=0.30, rule="sparse-tensor-cores-available",
             kept=("nm", "sparse-tensor-cores-available")),
    Scenario("2:4 gains vanish in batch-1 decode", "tpot", "h100", shape=LLAMA3_8B, rule="nm-no-gain-in-batch1-decode",
             rejected=("nm", "nm-no-gain-in-batch1-decode"), reason="decode dominates and runs at batch 1"),
    # -- what bounds the phase decides the lever ---------------------------------------------------------------------
    Scenario("memory-bound decode: fewer weight bytes", "tpot", "a100", rule="memory-bound-decode-fewer-bytes",
             kept=("mlp_channels", "memory-bound-decode-fewer-bytes")),
    Scenario("compute-bound prefill: fewer FLOPs", "ttft", "a100", shape=LLAMA2_7B,
             workload={"prompt_len": 4096, "batch_size": 4}, rule="compute-bound-prefill-fewer-flops",
             kept=("mlp_channels", "compute-bound-prefill-fewer-flops")),
    # -- depth vs width ------------------------------------------------------------------------------------------------
    Scenario("depth pruning cuts latency most per parameter removed", "p95-latency", "a100", top_kind="layers",
             rule="depth-cuts-latency-most", kept=("layers", "depth-cuts-latency-most")),
    Scenario("width pruning keeps quality better", "p95-latency", "a100", rule="width-keeps-quality",
             kept=("mlp_channels", "width-keeps-quality")),
    # -- GQA: whole KV groups ----------------------------------------------------------------------------------------
    Scenario("GQA head pruning removes whole KV groups", "p95-latency", "a100", shape=LLAMA3_8B, budget=0.30,
             rule="gqa-whole-kv-groups", kept=("heads", "gqa-whole-kv-groups")),
    Scenario("GQA per-group head removal keeps the KV cache", "kv-capacity", "a100", shape=LLAMA3_8B,
             workload={"batch_size": 32, "prompt_len": 4096}, budget=0.30, rule="per-group-heads-keep-kv-cache",
             reason="all 8 KV heads stay"),
    # -- recovery is hard above ~50% structured removal ----------------------------------------------------------------
    Scenario("above half of a component, recovery is hard", "p95-latency", "a100", budget=0.39,
             rule="risk-structured-above-half", reason="quality risk severe"),
    # -- quality budget ------------------------------------------------------------------------------------------------
    Scenario("a tight budget says don't prune", "p95-latency", "a100", budget=0.005, verdict="dont_prune",
             rule="dont-prune-tight-budget", reason="don't prune; use quantization, distillation"),
    Scenario("a generous budget keeps riskier, faster plans", "p95-latency", "a100", budget=0.35, top_kind="layers",
             rule="risk-depth-medium", kept=("layers", "risk-depth-medium")),
    # -- the bottleneck is not the model -------------------------------------------------------------------------------
    Scenario("network and queueing dominate: don't prune", "p95-latency", "a100",
             workload={"queueing_ms": 40, "network_ms": 30}, verdict="dont_prune",
             rule="dont-prune-non-model-bottleneck", reason="don't prune; use serving-path, batching, prefix-caching"),
    Scenario("a small gain is not worth the risk", "kv-capacity", "a100", rule="no-predicted-win",
             rejected=("mlp_channels", "no-predicted-win"), verdict="prune+quantize"),
    # -- other levers ---------------------------------------------------------------------------------------------
    Scenario("throughput on memory-bound decode: batch more", "throughput", "a100", rule="batch-for-throughput"),
    Scenario("decode-dominated latency: speculative decoding", "tpot", "a100",
             rule="speculative-decoding-for-decode-latency"),
    Scenario("memory-bound decode: quantize", "p95-latency", "l4", rule="quantize-memory-bound"),
    Scenario("FP8 tensor cores: quantize to fp8", "throughput", "h100", workload={"batch_size": 8},
             rule="fp8-tensor-cores"),
    Scenario("long prompts: prefix caching", "ttft", "a100", workload={"prompt_len": 4096},
             rule="prefix-caching-long-prompts"),
    Scenario("KV capacity: KV-cache levers", "kv-capacity", "a100", rule="kv-cache-levers", verdict="prune+quantize"),
    Scenario("ReLU MLP at batch-1 decode: dynamic sparsity", "tpot", "a100", shape=GPT2,
             rule="dynamic-sparsity-for-relu-decode"),
    # -- the model does not fit on one GPU -----------------------------------------------------------------------
    Scenario("70B in bf16 does not fit one H100: shard or quantize", "p95-latency", "h100", shape=LLAMA2_70B,
             rule="model-does-not-fit", rejected=("mlp_channels", "projection-assumes-a-fit"),
             verdict="prune+quantize", reason="it would not run; quantize or shard it"),
    Scenario("a memory goal is met only by a fit: 70B on a 40 GB A100", "peak-memory", "a100-40gb",
             shape=LLAMA2_70B, verdict="quantize", rule="memory-goal-needs-a-fit",
             rejected=("mlp_channels", "memory-goal-needs-a-fit"), reason="does not fit after pruning"),
    Scenario("a memory goal a pruned 8B meets on a 16 GB GPU", "peak-memory", "t4", shape=LLAMA3_8B,
             budget=0.45, verdict="quantize", rule="model-does-not-fit"),
]


def run_scenario(s: Scenario):
    gpu = get_gpu(s.gpu)
    workload, _ = target_dtype(Workload(**s.workload), gpu)  # the runtime stays unset: the bare roofline
    facts = roofline_facts(s.shape, workload, gpu) | s.facts
    return decide(goal=Goal(s.goal), gpu=gpu, workload=workload, budget=QualityBudget(max_ppl_increase=s.budget),
                  shape=s.shape, ruleset=RULES, profile_facts=facts)


@pytest.mark.parametrize("s", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(s: Scenario):
    plan = run_scenario(s)
    assert plan.verdict.action == s.verdict, plan.verdict.text
    if s.rule:
        assert s.rule in plan.rules_fired, f"{s.rule} did not fire; fired: {plan.rules_fired}"
    if s.top_kind:
        assert plan.candidates and plan.candidates[0].prune_kind == s.top_kind, \
            [(c.label, c.score) for c in plan.candidates[:3]]
    if s.kept:
        kind, rule = s.kept
        assert any(c.prune_kind == kind and rule in c.chosen_by for c in plan.candidates), \
            [(c.label, c.chosen_by) for c in plan.candidates]
    if s.rejected:
        kind, rule = s.rejected
        of_kind = [r for r in plan.rejected if r.prune_kind == kind]
        assert of_kind and any(rule in r.rules for r in of_kind)
        assert not any(c.prune_kind == kind and rule in c.chosen_by for c in plan.candidates)
    if s.reason:
        texts = [plan.verdict.text] + [reason for r in plan.rejected for reason in r.reasons]
        assert any(s.reason in t for t in texts), texts[:5]
    # every scenario's plan is a valid, ranked, explained document
    assert [c.rank for c in plan.candidates] == list(range(1, len(plan.candidates) + 1))
    scores = [c.score for c in plan.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in plan.candidates:
        assert c.reasons and c.chosen_by and c.basis.startswith(f"projected to {plan.gpu}")
        assert c.predicted_speedup and c.predicted_speedup > 1.03
    for r in plan.rejected:
        assert r.reasons and r.rules


# -- specific properties, with exact figures ---------------------------------------------------------------------


def test_predicted_figures_are_the_roofline_of_the_pruned_shape():
    s = SCENARIOS[0]
    plan = run_scenario(s)
    gpu, workload = get_gpu("a100"), Workload()
    dense = estimate(SMOL, workload, gpu)
    assert plan.dense_goal == pytest.approx(dense.request_ms)  # p95 = model time + 0 ms outside the model
    layers = next(c for c in plan.candidates if c.prune_kind == "layers")
    assert layers.prune.num_layers == 3 and layers.shape["num_layers"] == 27
    pruned = estimate(SMOL.model_copy(update={"num_layers": 27}), workload, gpu)
    assert layers.predicted_goal == pytest.approx(pruned.request_ms)
    assert layers.predicted_speedup == pytest.approx(dense.request_ms / pruned.request_ms)
    assert layers.predicted["tpot_ms"] == pytest.approx(pruned.decode_ms_per_token)
    mlp = next(c for c in plan.candidates if c.prune_kind == "mlp_channels")
    # 12.5% of 1536 channels rounded to a multiple of 64 (bf16 on Ampere: 128-byte tiles) = 1344 kept
    assert mlp.prune.round_to == 64 and mlp.shape["intermediate_size"] == 1344
    assert mlp.predicted_goal == pytest.approx(
        estimate(SMOL.model_copy(update={"intermediate_size": 1344}), workload, gpu).request_ms)


def test_unstructured_is_projected_at_the_dense_shape():
    plan = run_scenario(SCENARIOS[0])
    for r in (r for r in plan.rejected if r.prune_kind == "unstructured"):
        assert r.predicted_speedup == pytest.approx(1.0)
        assert "dense kernels multiply the zeros" in r.reasons[0]


def test_depth_removes_more_latency_per_parameter_than_width():
    plan = run_scenario(Scenario("generous", "p95-latency", "a100", budget=0.35))
    everything = {c.name: c for c in plan.candidates}
    layers = [c for c in everything.values() if c.prune_kind == "layers"]
    mlp = [c for c in everything.values() if c.prune_kind == "mlp_channels"]
    per_param = lambda c: (1 - 1 / c.predicted_speedup) / c.params_removed_frac  # noqa: E731
    assert min(per_param(c) for c in layers) > max(per_param(c) for c in mlp)


def test_checkpoint_size_predicts_the_compressed_format():
    plan = run_scenario(SCENARIOS[3])
    cand = next(c for c in plan.candidates if c.prune_kind == "unstructured" and c.prune.sparsity == 0.3)
    from planner.profile.roofline import linear_parameters, parameter_count

    n, lin = parameter_count(SMOL), linear_parameters(SMOL)
    dense_bytes, b = n * 2.0, 2.0  # bf16
    expected = dense_bytes - lin * b + lin * b * 0.7 + lin / 8  # 70% of the values + a 1-bit mask per weight
    assert plan.dense_goal == pytest.approx(dense_bytes)
    assert cand.predicted_goal == pytest.approx(expected)
    assert any("compressed sparse format" in n for n in cand.notes)


def test_2to4_on_t4_is_projected_dense_and_on_a100_sparse():
    t4 = run_scenario(SCENARIOS[4])
    nm = [r for r in t4.rejected if r.prune_kind == "nm"]
    assert nm and all(r.predicted_speedup == pytest.approx(1.0) for r in nm)
    a100 = run_scenario(SCENARIOS[6])
    kept = next(c for c in a100.candidates if c.prune_kind == "nm")
    assert kept.predicted_speedup > 1.2  # compute-bound prefill at twice the math peak on the projections


def test_heads_round_to_whole_kv_groups():
    plan = run_scenario(Scenario("gqa", "p95-latency", "a100", budget=0.39))
    everything = list(plan.candidates) + list(plan.rejected)
    kv = sorted(c.prune.ratio for c in everything if c.prune_kind == "heads" and c.prune.mode == "kv_group")
    assert kv == [pytest.approx(1 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4)]  # 1 or 2 of SmolLM2's 3 groups
    c = next(c for c in plan.candidates if c.prune_kind == "heads" and c.prune.mode == "kv_group")
    assert c.shape["num_kv_heads"] == 2 and c.shape["num_heads"] == 6


def test_budget_filters_by_risk_tier():
    tight = run_scenario(Scenario("b", "p95-latency", "a100", budget=0.10))
    loose = run_scenario(Scenario("b", "p95-latency", "a100", budget=0.35))
    assert {c.quality_risk for c in tight.candidates} <= {"low", "medium"}
    assert "high" in {c.quality_risk for c in loose.candidates}
    assert len(loose.candidates) > len(tight.candidates)
    over = [r for r in tight.rejected if "budget" in r.rules]
    assert over and all(r.quality_risk in ("high", "severe") for r in over)
    assert all("exceeds the +10% budget" in r.reasons[0] for r in over)


def test_unknown_profile_facts_leave_their_rules_silent():
    gpu, workload = get_gpu("a100"), Workload()
    plan = decide(goal=Goal.P95_LATENCY, gpu=gpu, workload=workload, budget=QualityBudget(), shape=SMOL,
                  ruleset=RULES, profile_facts=None)
    assert "memory-bound-decode-fewer-bytes" not in plan.rules_fired  # decode_bound unknown
    assert "unstructured-no-dense-speedup" in plan.rules_fired  # needs no profile
    assert plan.candidates and plan.facts["decode_bound"] is None


def test_head_pruning_unsupported_family_is_rejected_with_the_reason():
    plan = run_scenario(Scenario("gpt2", "p95-latency", "a100", shape=GPT2, budget=0.39))
    heads = [r for r in plan.rejected if r.prune_kind == "heads"]
    assert heads and "not supported for 'gpt2'" in heads[0].reasons[0]
    assert not any(c.prune_kind == "heads" for c in plan.candidates)


def test_cost_per_token_uses_the_catalog_price():
    plan = run_scenario(Scenario("cost", "cost-per-token", "a100", workload={"batch_size": 8}, budget=0.35))
    assert plan.goal_metric == "usd_per_million_tokens"
    dense = estimate(SMOL, Workload(batch_size=8), get_gpu("a100"))
    price = get_gpu("a100").price.usd_per_hour
    assert plan.dense_goal == pytest.approx(price / (dense.tokens_per_s * 3600) * 1e6)


def test_user_rule_changes_the_decision(tmp_path):
    (tmp_path / "team.yaml").write_text("""\
version: 1
rules:
  - id: team-no-depth-pruning
    statement: our evaluation found removed layers break tool calling
    when: {fact: kind, eq: layers}
    then: {reject: "team policy: no depth pruning"}
    rationale: internal eval
    sources: ["internal eval report 2024-11"]
""")
    ruleset = load_rules([tmp_path])
    gpu, workload = get_gpu("a100"), Workload()
    plan = decide(goal=Goal.P95_LATENCY, gpu=gpu, workload=workload, budget=QualityBudget(), shape=SMOL,
                  ruleset=ruleset, profile_facts=roofline_facts(SMOL, workload, gpu))
    assert plan.candidates[0].prune_kind == "mlp_channels"
    assert all("team-no-depth-pruning" in r.rules for r in plan.rejected if r.prune_kind == "layers")
