"""The sensitivity probe (one-shot quality of each step, cached) and the recovery factor (priors, learned from runs)."""

import copy
import hashlib
import json

import pytest
import torch

from planner.data import calibration_text, token_blocks
from planner.evaluate.perplexity import perplexity_of_ids
from planner.probe import probe
from planner.probe.recovery import (NO_RECOVERY, PRIORS, budget_bucket, factor_for, load_store, prior_factor,
                                    size_bucket, update_factor)
from planner.probe.sensitivity import DEFAULT_CALIBRATION, apply_step, heldout_windows
from planner.prune.specs import HeadPruning, LayerPruning, MlpChannelPruning, UnstructuredPruning
from planner.quant.specs import QuantSpec
from planner.run.results import load_results
from tiny import save_tiny

TOKENS, SEQ = 512, 64


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from planner.models import load_model

    return load_model(str(save_tiny(tmp_path_factory.mktemp("probe"), "llama")))


def weights_hash(model) -> str:
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


_INPUTS = {}


def independent(loaded, prune=None, quantize=None):
    """The step measured without the probe: its own copy, calibration and perplexity."""
    if id(loaded) not in _INPUTS:  # tokenizing the texts takes a second: once per model
        _INPUTS[id(loaded)] = (heldout_windows(loaded.tokenizer, TOKENS, SEQ),
                               token_blocks(loaded.tokenizer, calibration_text(), DEFAULT_CALIBRATION.num_samples,
                                            DEFAULT_CALIBRATION.seq_len))
    data, calib = _INPUTS[id(loaded)]
    model = copy.deepcopy(loaded.model)
    apply_step(model, prune, quantize, calib)
    return perplexity_of_ids(model, data, batch_size=4)["ppl"]


MLP = {r: MlpChannelPruning(ratio=r, criterion="activation") for r in (0.0, 0.125, 0.25, 0.5)}


def test_probe_figures_are_the_engines_figures_and_the_model_is_left_alone(tiny):
    before = weights_hash(tiny.model)
    steps = [(MLP[0.5], None), (MLP[0.125], None), (MLP[0.25], None), (LayerPruning(num_layers=1), None),
             (UnstructuredPruning(sparsity=0.5), None), (UnstructuredPruning(sparsity=0.3), None)]
    report = probe(tiny, steps, tokens=TOKENS, seq_len=SEQ)
    assert weights_hash(tiny.model) == before
    assert report.tokens == (TOKENS // SEQ) * (SEQ - 1) and report.seq_len == SEQ
    assert report.ppl_dense == pytest.approx(independent(tiny), rel=1e-6)
    # shared importance scores (three MLP ratios) and in-place restores (two masks in a row) change no figure
    for prune, _ in steps:
        step = report.step(prune)
        assert step.error is None and not step.cached
        assert step.ppl == pytest.approx(independent(tiny, prune), rel=1e-6)
        assert step.ppl_increase == pytest.approx(step.ppl / report.ppl_dense - 1)


def test_bigger_cuts_agree_less_and_no_op_steps_change_nothing(tiny):
    steps = [(MLP[0.0], None), (LayerPruning(num_layers=0), None), (MLP[0.125], None), (MLP[0.5], None), (None, None)]
    report = probe(tiny, steps, tokens=TOKENS, seq_len=SEQ)
    noop, no_layers, small, big, dense = report.steps
    for same in (noop, no_layers, dense):
        assert same.ppl_increase == pytest.approx(0.0, abs=1e-9)
        assert same.top1_agreement == 1.0
    assert 1.0 > small.top1_agreement > big.top1_agreement > 0.0
    assert big.ppl != report.ppl_dense


def test_second_probe_reads_the_cache_and_runs_no_model(tiny, monkeypatch, own_cache):
    steps = [(MLP[0.25], None), (LayerPruning(num_layers=1), None), (None, QuantSpec(scheme="int8-weight-only"))]
    first = probe(tiny, steps, tokens=TOKENS, seq_len=SEQ)
    assert list((own_cache / "probe").rglob("*.json"))

    def no_compute(*args, **kwargs):
        raise AssertionError("the model ran although every figure was cached")

    monkeypatch.setattr(type(tiny.model), "forward", no_compute)
    monkeypatch.setattr(torch.nn.Linear, "forward", no_compute)
    second = probe(tiny, steps, tokens=TOKENS, seq_len=SEQ)
    assert second.ppl_dense == first.ppl_dense
    for a, b in zip(first.steps, second.steps):
        assert b.cached and not a.cached
        assert (b.ppl, b.top1_agreement, b.seconds) == (a.ppl, a.top1_agreement, a.seconds)
    with pytest.raises(AssertionError, match="cached"):  # other settings are another key
        probe(tiny, steps, tokens=TOKENS, seq_len=SEQ // 2)


def test_int8_weight_only_costs_little_and_refused_steps_say_why(tiny):
    int8, int4 = QuantSpec(scheme="int8-weight-only"), QuantSpec(scheme="int4-weight-only", group_size=128)
    steps = [(None, int8), (None, int4), (HeadPruning(ratio=0.1, mode="kv_group"), None), (MLP[0.5], int8)]
    report = probe(tiny, steps, tokens=TOKENS, seq_len=SEQ)
    q8 = report.step(quantize=int8)
    assert q8.error is None and abs(q8.ppl_increase) < 0.01 and q8.top1_agreement > 0.95
    assert q8.ppl == pytest.approx(independent(tiny, quantize=int8), rel=1e-6)
    assert "group_size 128" in report.step(quantize=int4).error and report.step(quantize=int4).ppl is None
    assert "removes no whole unit" in report.steps[2].error
    both = report.step(MLP[0.5], int8)
    assert both.error is None and both.ppl == pytest.approx(independent(tiny, MLP[0.5], int8), rel=1e-6)
    again = type(report).model_validate_json(report.model_dump_json())  # goes into plan.json as it is
    assert again == report and again.steps[0].ppl_increase == q8.ppl_increase


# -- recovery factor ------------------------------------------------------------------------------------------


SMOL = 134_515_008


def test_priors_are_the_measured_runs():
    mlp = prior_factor("distill", 140, 71_680, SMOL, kind="mlp_channels")
    assert mlp.factor == pytest.approx((26.352 / 15.339 - 1) / (62.229 / 15.339 - 1)) == pytest.approx(0.235, abs=1e-3)
    assert "bench/recovery.py" in mlp.source
    layers = prior_factor("distill", 200, None, SMOL, kind="layers")  # 200 default steps = 102,400 tokens
    assert layers.factor == pytest.approx((17.25 / 14.131 - 1) / (21.09 / 14.131 - 1))
    assert "issue 8" in layers.source
    short = prior_factor("distill", 27, 13_824, SMOL, kind="layers")
    assert short.factor == pytest.approx(0.34 / (21.09 / 14.131 - 1)) and short.factor > layers.factor
    heads = prior_factor("distill", 140, 71_680, SMOL, kind="heads")  # no prior of that kind: the bucket's mean
    assert heads.factor == pytest.approx((PRIORS[0].factor + PRIORS[1].factor) / 2) and "mean of 2" in heads.source
    assert prior_factor("none", 0, 0, SMOL) == NO_RECOVERY == (1.0, NO_RECOVERY.source)
    assert "no published lora" in prior_factor("lora", 140, 71_680, SMOL).source
    assert "likely pessimistic" in prior_factor("distill", 140, 71_680, 7_000_000_000).source
    assert budget_bucket(71_680) == "32k-256k tokens" and size_bucket(SMOL) == "under 0.5B parameters"


def make_results(tmp_path, one_shot=21.09, after=16.0, quantized=False):
    from planner.prune.specs import LayerPruning
    from planner.recover.specs import RecoverySpec
    from planner.run.results import (CandidateSummary, DeviceInfo, PlanSummary, Provenance, PruningInfo,
                                     QuantizationInfo, Quality, RecoveryInfo, Results, Size, Variant, save_results)
    from planner.workload import Workload

    def quality(ppl):
        return Quality(heldout_ppl=ppl, heldout_nll=float(torch.tensor(ppl).log()), heldout_tokens=16_384,
                       seq_len=512)

    spec = LayerPruning(num_layers=3)
    quant = None
    if quantized:
        quant = QuantizationInfo(spec=QuantSpec(scheme="int8-weight-only"), backend="torchao", linears_quantized=1,
                                 params_quantized=1, dense_bytes=4, quantized_bytes=1)
    results = Results(
        provenance=Provenance(planner_version="0.1.0", device=DeviceInfo(kind="cpu", name="Test CPU"),
                              started_at="2025-06-01T10:00:00+00:00", run_dir=str(tmp_path)),
        plan=PlanSummary(path="plan.json", goal="p95-latency", gpu="a100-80gb-sxm", model="", workload=Workload(),
                         candidates=[CandidateSummary(rank=1, name="layers-3-distill", prune=spec,
                                                      projected_to="a100-80gb-sxm")]),
        variants=[Variant(name="dense", role="dense", size=Size(parameters=SMOL), quality=quality(14.131)),
                  Variant(name="candidate-1", role="pruned", candidate_rank=1, size=Size(parameters=120_000_000),
                          pruning=PruningInfo(spec=spec, params_before=SMOL, params_after=120_000_000),
                          recovery=RecoveryInfo(spec=RecoverySpec(method="distill"), steps=119, tokens=60_928,
                                                ppl_before=one_shot),
                          quantization=quant, quality=quality(after))])
    return save_results(results, tmp_path / "results.json")


def test_a_run_updates_the_factor_of_its_bucket_with_provenance(tmp_path, own_cache):
    assert not load_store().measurements
    prior = factor_for("distill", 119, 60_928, SMOL, kind="layers")
    assert prior.source.startswith("prior")
    path = make_results(tmp_path)
    (recorded,) = update_factor(load_results(path), path)
    measured = (16.0 / 14.131 - 1) / (21.09 / 14.131 - 1)
    assert recorded.factor == pytest.approx(measured) and recorded.candidate == "layers-3-distill"
    assert (own_cache / "probe" / "recovery_factors.json").is_file()
    update_factor(load_results(path), path)  # the same run again replaces its entry
    assert len(load_store().measurements) == 1
    now = factor_for("distill", 119, 60_928, SMOL, kind="layers")
    assert now.factor == pytest.approx(measured) != pytest.approx(prior.factor)
    assert now.source.startswith("measured") and str(path) in now.source and "2025-06-01" in now.source
    # another bucket (a 7B model, a bigger budget) still gets the prior; no recovery is always 1
    assert factor_for("distill", 119, 60_928, 7_000_000_000).source.startswith("prior")
    assert factor_for("distill", 5_000, None, SMOL).source.startswith("prior")  # 42x the measured budget: too far
    near = factor_for("distill", None, 20_000, SMOL, kind="layers")  # another bucket, 3x fewer tokens: stands in
    assert near.factor == now.factor and "nearest budget" in near.source
    assert factor_for("none", 119, 60_928, SMOL) == NO_RECOVERY


def test_runs_that_say_nothing_about_recovery_are_not_recorded(tmp_path):
    assert _update(make_results(tmp_path, quantized=True)) == []  # its ppl holds the quantization loss too
    assert _update(make_results(tmp_path, one_shot=14.2)) == []  # +0.5% one-shot: no gap to close
    assert not load_store().measurements


def test_a_damaged_store_falls_back_to_the_prior_and_says_so(own_cache):
    path = own_cache / "probe" / "recovery_factors.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    found = factor_for("distill", 119, 60_928, SMOL, kind="layers")
    assert found.factor == pytest.approx(PRIORS[1].factor) and "unreadable" in found.source


# -- the embedded model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_probe_on_the_embedded_model(embedded_path):
    from planner.models import load_model

    loaded = load_model(str(embedded_path), dtype="fp32")  # converted in the real cache; the probe writes to tmp
    steps = [(MlpChannelPruning(ratio=r, criterion="activation", round_to=64), None) for r in (0.125, 0.5)]
    report = probe(loaded, steps)  # the probe's defaults
    small, big = report.steps
    assert report.ppl_dense < small.ppl < big.ppl
    assert 1.0 > small.top1_agreement > big.top1_agreement
    assert big.ppl_increase > 1.0  # half the MLP of a 135M model, one-shot: more than doubles perplexity


def _update(path):
    return update_factor(load_results(path), path)


def test_the_run_shows_the_predicted_quality_beside_the_measured(tmp_path):
    """results.json keeps the plan's quality estimate; the report and `plan run` put it beside the measurement."""
    from planner.decide.plan import QualityEstimate
    from planner.report.render import render_html
    from planner.run.compare import quality_vs_prediction

    path = make_results(tmp_path, one_shot=21.09, after=16.0)
    results = load_results(path)
    assert quality_vs_prediction(results) == []  # no estimate in the plan (--no-probe): nothing to compare
    estimate = QualityEstimate(one_shot_ppl_increase=0.40, predicted_ppl_increase=0.10, recovery_factor=0.25,
                               factor_source="prior: test")
    results.plan.candidates[0].quality = estimate
    results.plan.max_ppl_increase = 0.05
    (row,) = quality_vs_prediction(results)
    measured = 16.0 / 14.131 - 1
    assert row.measured == pytest.approx(measured) and row.run_one_shot == pytest.approx(21.09 / 14.131 - 1)
    assert row.error == pytest.approx(0.10 / measured - 1) and row.over_twice_budget  # +13% > 2 x 5%
    html = render_html(results)
    assert 'id="quality-prediction-table"' in html and "over twice the 5.0% budget" in html
    assert f"{100 * measured:+.1f}%" in html and "+10.0%" in html


def test_plan_calibrate_records_the_recovery_factors_of_a_gpu_plans_run(tmp_path, own_cache, capsys):
    from planner.cli import main

    path = make_results(tmp_path)  # a plan for an A100: no host latency to calibrate, a recovery to learn from
    assert main(["calibrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "recovery factor of candidate-1" in out and "nothing to calibrate" in out
    (m,) = load_store().measurements
    assert m.factor == pytest.approx((16.0 / 14.131 - 1) / (21.09 / 14.131 - 1))
