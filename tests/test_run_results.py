"""The Results document: percentiles over the recorded samples, strict loading, atomic saving."""

import json

import numpy as np
import pytest

from planner.errors import InputError
from planner.run.results import (CandidateSummary, DeviceInfo, Latency, PlanSummary, Provenance, Quality, Results,
                                 SliceAgreement, Size, Variant, load_results, percentile, save_results)
from planner.workload import Workload

SAMPLES = [12.0, 15.5, 11.2, 30.1, 14.9, 13.3, 12.8, 19.7, 16.4, 12.1, 45.0, 13.9]


def latency(samples, **kw):
    return Latency(measured_on="CPU test", runtime="hf-eager", dtype="fp32", prompt_len=8, gen_len=4, batch_size=2,
                   warmup=1, samples_ms=samples, ttft_samples_ms=[s / 4 for s in samples],
                   tpot_samples_ms=[s / 8 for s in samples], **kw)


def make_results():
    dev = DeviceInfo(kind="cpu", name="Test CPU", torch_threads=2)
    q = Quality(heldout_ppl=12.5, heldout_nll=float(np.log(12.5)), heldout_tokens=1000, seq_len=128,
                slices={"math": SliceAgreement(name="math", prompts=3, positions=30, kl=0.1, top1_agreement=0.9,
                                               gold_prompts=3, gold_correct=1, teacher_correct=2,
                                               exact_match_hits=1)})
    return Results(
        provenance=Provenance(planner_version="0.1.0", device=dev, started_at="2025-01-01T00:00:00+00:00",
                              run_dir="runs/x", input_hashes={"plan": "ab", "model": "cd"}),
        plan=PlanSummary(path="plan.json", goal="p95-latency", gpu="a100-80gb-sxm", model="tiny",
                         workload=Workload(),
                         candidates=[CandidateSummary(rank=1, name="mlp-25", prune={"kind": "mlp_channels",
                                                                                    "ratio": 0.25},
                                                      projected_to="a100-80gb-sxm", predicted_speedup=1.3)]),
        variants=[Variant(name="dense", role="dense", size=Size(parameters=100), quality=q,
                          latency=latency(SAMPLES)),
                  Variant(name="mlp-25", role="pruned", candidate_rank=1, size=Size(parameters=80), quality=q,
                          latency=latency([s * 0.8 for s in SAMPLES]))])


def test_percentiles_match_numpy_on_a_fixed_list():
    lat = latency(SAMPLES)
    for q, field in ((50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms")):
        assert getattr(lat, field) == pytest.approx(float(np.percentile(SAMPLES, q)), rel=1e-12)
    # sorted, rank 0.95 * 11 = 10.45: 30.1 + 0.45 * (45.0 - 30.1), by hand
    assert percentile(SAMPLES, 95) == pytest.approx(36.805, rel=1e-9)
    assert lat.ttft_p95_ms == pytest.approx(float(np.percentile([s / 4 for s in SAMPLES], 95)))
    assert lat.tpot_p50_ms == pytest.approx(float(np.percentile([s / 8 for s in SAMPLES], 50)))
    assert lat.requests == len(SAMPLES)
    assert lat.tokens_per_s == pytest.approx(2 * 4 * len(SAMPLES) / (sum(SAMPLES) / 1000))
    assert percentile([], 95) is None


def test_speedup_is_computed_from_measurements_and_keeps_the_prediction_apart():
    r = make_results()
    (row,) = r.speedups
    assert row.metric == "p95_ms"
    assert row.measured == pytest.approx(1 / 0.8)
    assert row.predicted == 1.3
    assert r.variants[0].quality.slices["math"].exact_match == 0.5


def test_round_trip(tmp_path):
    r = make_results()
    path = save_results(r, tmp_path / "results.json")
    again = load_results(path)
    assert again == r
    assert again.variants[1].latency.p95_ms == r.variants[1].latency.p95_ms
    data = json.loads(path.read_text())
    assert data["variants"][0]["latency"]["p95_ms"] == pytest.approx(np.percentile(SAMPLES, 95))
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["variants"][0]["latency"].__setitem__("p95_ms", 1.0), "p95_ms"),
    (lambda d: d["variants"][0].__setitem__("speed", 2), "speed"),
    (lambda d: d["speedups"][0].__setitem__("measured", 5.0), "speedups"),
    (lambda d: d.__setitem__("version", 99), "version 99"),
    (lambda d: d["variants"][0]["quality"].pop("heldout_ppl"), "heldout_ppl"),
])
def test_hand_edited_results_are_rejected(tmp_path, edit, message):
    path = save_results(make_results(), tmp_path / "results.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        load_results(path)


def test_corrupt_or_missing_results(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_results(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_results(tmp_path / "nope.json")
