"""The kind registry: every built-in kind answers for itself, and a new kind registered from this file alone (no
product file touched) is proposed by its own rules, predicted, ranked, explained, written to plan.json, read back,
described by the report and applied to a real model by the runner's pruning entry point."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field

from planner.arch import ModelShape
from planner.decide.engine import decide
from planner.decide.facts import FACTS
from planner.decide.plan import Plan, parse_plan
from planner.decide.rules import load_rules
from planner.gpus import get_gpu
from planner.kinds import Kind, get_kind, kind_names, register_kind, unregister_kind
from planner.prune import apply_pruning
from planner.prune.specs import SpecBase
from planner.report.format import describe_prune
from planner.workload import Goal, QualityBudget, Workload

SMOL = ModelShape(family="llama", model_type="llama", num_layers=30, hidden_size=576, intermediate_size=1536,
                  num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152, gated_mlp=True, tied_embeddings=True,
                  max_positions=8192)


# -- a throwaway kind: trim the vocabulary (embedding rows and LM-head rows of the last token ids) ---------------------


class VocabTrim(SpecBase):
    kind: Literal["vocab_trim"] = "vocab_trim"
    ratio: float = Field(..., gt=0.0, lt=1.0)
    criterion: Literal["last_ids"] = "last_ids"


class VocabTrimKind(Kind):
    name = "vocab_trim"
    spec = VocabTrim
    label = "vocabulary"
    structured = True
    ratio_field = "ratio"

    def pruned_shape(self, shape, spec):
        kept = shape.vocab_size - int(shape.vocab_size * spec.ratio)
        return shape.model_copy(update={"vocab_size": kept}), 1 - kept / shape.vocab_size

    def ratio_text(self, spec, shape):
        if shape is None:
            return f"-{spec.ratio:.0%}"
        new, _ = self.pruned_shape(shape, spec)
        return f"-{spec.ratio:.0%} ({shape.vocab_size}->{new.vocab_size} tokens)"

    def amount(self, spec):
        return f"{round(spec.ratio * 100)}"

    def apply(self, model, spec, calib_ids=None, **kwargs):
        from planner.prune import PruneResult

        before = sum(p.numel() for p in model.parameters())
        kept = model.config.vocab_size - int(model.config.vocab_size * spec.ratio)
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        with torch.no_grad():
            emb.weight = torch.nn.Parameter(emb.weight[:kept].clone())
            head.weight = torch.nn.Parameter(head.weight[:kept].clone())
        emb.num_embeddings, head.out_features = kept, kept
        model.config.vocab_size = kept
        return PruneResult(self.name, before, sum(p.numel() for p in model.parameters()))


RULE_YAML = """version: 1
rules:
  - id: consider-vocab-trim
    statement: "a smaller vocabulary: fewer embedding and LM-head rows"
    then:
      propose:
        spec: {kind: vocab_trim, criterion: last_ids}
        ratios: [0.25, 0.5]
        recovery: [none]
    rationale: "test rule for a kind registered from a test"
    sources: ["this test"]
  - id: vocab-trim-note
    statement: "the vocabulary trim drops tokens a product may need"
    when: {all: [{fact: kind, eq: vocab_trim}, {fact: criterion, eq: last_ids}]}
    then:
      note: "{plan}: check that no product prompt needs the dropped token ids"
    rationale: "test note on a candidate fact of the new kind"
    sources: ["this test"]
"""


@pytest.fixture
def vocab_kind(tmp_path):
    register_kind(VocabTrimKind())
    (tmp_path / "vocab.yaml").write_text(RULE_YAML)
    try:
        yield tmp_path
    finally:
        unregister_kind("vocab_trim")


def test_builtin_kinds_answer_for_themselves():
    assert kind_names() == ["none", "unstructured", "nm", "mlp_channels", "heads", "layers"]
    assert [n for n in kind_names() if get_kind(n).masked] == ["unstructured", "nm"]
    assert [n for n in kind_names() if get_kind(n).structured] == ["mlp_channels", "heads", "layers"]
    # the facts' choices come from the registered spec types
    assert FACTS["kind"].choices == tuple(kind_names())
    assert FACTS["criterion"].choices == ("none", "magnitude", "wanda", "sparsegpt", "activation", "taylor", "obs",
                                          "block_influence", "angular", "ablation")
    assert FACTS["head_mode"].choices == ("none", "kv_group", "per_group")
    assert FACTS["recovery"].choices == ("none", "lora", "distill", "finetune")
    layers = get_kind("layers")
    spec = layers.spec(num_layers=3)
    new, removed = layers.pruned_shape(SMOL, spec)
    assert (new.num_layers, removed) == (27, pytest.approx(0.1))
    assert layers.ratio_text(spec, SMOL) == "-3 of 30"
    assert layers.with_ratio({"kind": "layers"}, 0.1, num_layers=30) == {"kind": "layers", "num_layers": 3}
    with pytest.raises(KeyError, match="layer"):
        get_kind("layer")


def test_a_kind_registered_from_a_test_goes_through_the_whole_decision(vocab_kind):
    assert "vocab_trim" in FACTS["kind"].choices and "last_ids" in FACTS["criterion"].choices
    ruleset = load_rules([vocab_kind])
    gpu = get_gpu("a100")
    plan = decide(goal=Goal.CHECKPOINT_SIZE, gpu=gpu, workload=Workload(), budget=QualityBudget(max_ppl_increase=0.5),
                  shape=SMOL, ruleset=ruleset)
    ours = [c for c in plan.candidates if c.prune_kind == "vocab_trim"]
    assert [c.label for c in ours] == ["vocabulary -50% (49152->24576 tokens) (last_ids)",
                                       "vocabulary -25% (49152->36864 tokens) (last_ids)"]
    half = ours[0]
    assert half.name == "vocab_trim-50-last_ids-none"
    assert half.shape["num_layers"] == 30 and half.predicted["file_bytes"] < plan.dense_predicted["file_bytes"]
    # the checkpoint shrinks by the LM-head/embedding rows removed (tied: one matrix of 24,576 x 576 at bf16)
    removed = plan.dense_predicted["file_bytes"] - half.predicted["file_bytes"]
    assert removed == pytest.approx(24576 * 576 * 2, rel=1e-6)
    assert "consider-vocab-trim" in half.chosen_by and "vocab-trim-note" in half.chosen_by
    notes = [w for w in half.why if w.kind == "note" and w.rules == ["vocab-trim-note"]]
    assert notes and notes[0].text.startswith("vocabulary -50%")
    # plan.json round trip keeps the new spec with its own fields
    again = parse_plan(Plan.model_validate_json(plan.model_dump_json()).model_dump(mode="json"))
    assert again.candidates[half.rank - 1].prune == half.prune
    assert describe_prune(half.prune) == "vocabulary -50% (last_ids)"


def test_a_kind_registered_from_a_test_prunes_a_real_model(vocab_kind):
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    spec = VocabTrim(ratio=0.25)
    result = apply_pruning(model, spec)
    assert model.config.vocab_size == 240 and model.get_output_embeddings().weight.shape == (240, 64)
    assert result.params_before - result.params_after == 2 * 80 * 64  # untied: embedding and LM head rows
    assert model(ids).logits.shape == (1, 4, 240)


def test_an_unknown_kind_in_a_plan_is_refused_with_the_accepted_ones():
    from planner.errors import InputError

    data = {"kind": "layerz", "num_layers": 3}
    with pytest.raises(ValueError, match="layers"):
        from planner.prune.specs import parse_spec

        parse_spec(data)
    with pytest.raises(InputError):
        parse_plan({"kind": "planner.plan", "goal": "p95-latency", "gpu": "a100", "goal_metric": "p95_ms",
                    "rules_version": "1", "verdict": {"action": "prune", "text": "x"},
                    "candidates": [{"rank": 1, "name": "x", "label": "x", "prune": data, "projected_to": "a100",
                                    "basis": "x", "goal_metric": "p95_ms", "quality_risk": "low"}]})


def test_candidates_that_refit_get_more_calibration_text():
    from planner.prune.structured.reconstruct import RECONSTRUCT_SAMPLES

    plan = decide(goal=Goal.P95_LATENCY, gpu=get_gpu("a100"), workload=Workload(),
                  budget=QualityBudget(max_ppl_increase=10.0), shape=SMOL, ruleset=load_rules())
    samples = {}
    for c in plan.candidates:
        if c.prune is not None:
            samples.setdefault((c.prune.kind, getattr(c.prune, "criterion", None),
                                bool(getattr(c.prune, "reconstruct", False))), set()).add(c.calibration.num_samples)
    # the rules propose MLP cuts chosen by obs and head cuts with the re-fit: both re-fit, both get more text
    assert samples[("mlp_channels", "obs", False)] == {RECONSTRUCT_SAMPLES}
    assert samples[("heads", "activation", True)] == {RECONSTRUCT_SAMPLES}
    assert all(n == {32} for (kind, criterion, rebuild), n in samples.items()
               if criterion != "obs" and not rebuild), samples
    assert get_kind("mlp_channels").calibration(get_kind("mlp_channels").spec(ratio=0.25)).num_samples == 32
    assert get_kind("unstructured").calibration(None).num_samples == 32


def test_nm_with_dense_layers_is_projected_on_the_pattern_layers_only():
    """2:4 with 6 of 30 layers left dense: sparse kernels (speed, compressed bytes) on 24 of 30 layers' linears."""
    from planner.decide.predict import figures
    from planner.prune.specs import SemiStructuredPruning

    gpu, w = get_gpu("a100"), Workload(prompt_len=2048, gen_len=16, dtype="bf16")
    kind = get_kind("nm")
    full, part = SemiStructuredPruning(), SemiStructuredPruning(dense_layers=6)
    dense_figs, _ = figures(SMOL, None, w, gpu)
    full_figs, _ = figures(SMOL, full, w, gpu)
    part_figs, notes = figures(SMOL, part, w, gpu)
    assert kind.pruned_shape(SMOL, part)[1] == pytest.approx(0.5 * 24 / 30)
    assert kind.sparse_share(part, SMOL) == pytest.approx(0.8)
    assert full_figs["prefill_ms"] < part_figs["prefill_ms"] < dense_figs["prefill_ms"]
    assert full_figs["file_bytes"] < part_figs["file_bytes"] < dense_figs["file_bytes"]
    # the compressed bytes are saved on 24 of 30 layers: 80% of the full pattern's saving
    saved_full = dense_figs["file_bytes"] - full_figs["file_bytes"]
    assert dense_figs["file_bytes"] - part_figs["file_bytes"] == pytest.approx(0.8 * saved_full)
    assert any("6 decoder layers (highest block influence) stay dense" in n for n in notes)
    assert (kind.ratio_text(part, SMOL), kind.amount(part)) == ("2:4, 6 layers dense", "2of4-d6")
    assert kind.describe(part) == "2:4 semi-structured (wanda, 6 layers dense)"
    assert (kind.ratio_text(full, SMOL), kind.amount(full)) == ("2:4", "2of4")
