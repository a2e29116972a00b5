"""`plan run --track mlflow:URI`: a real run logged into a temporary MLflow store and read back with MLflow's client."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.errors import InputError
from planner import track
from tiny import save_mlp_plan, save_tiny

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    base = tmp_path_factory.mktemp("track")
    model = save_tiny(base, "llama")
    plan = save_mlp_plan(model, base / "plan.json")
    policy = base / "gate.yaml"
    policy.write_text("max_ppl_increase: 1000.0\n")  # a tiny random model: a policy it passes
    store = base / "mlruns"
    out = base / "run"
    code = main(["run", str(plan), "--out", str(out), "--slices", "none", "--ppl-seq-len", "64", "--ppl-tokens",
                 "512", "--requests", "3", "--warmup", "1", "--no-memory", "--quiet", "--track", f"mlflow:{store}",
                 "--gate", str(policy)])
    return code, out, store, plan


def test_run_is_logged_and_reads_back_through_mlflow(tracked):
    from mlflow.tracking import MlflowClient

    from planner.run.results import load_results

    code, out, store, plan = tracked
    assert code == 0
    track._allow_file_store(store.as_uri())
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("planner")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    results = load_results(out / "results.json")
    dense, cand = results.variants
    metrics = run.data.metrics
    # every figure of results.json, under its path; the values are the file's
    assert metrics["variants.dense.quality.heldout_ppl"] == pytest.approx(dense.quality.heldout_ppl)
    assert metrics["variants.mlp-50.quality.heldout_ppl"] == pytest.approx(cand.quality.heldout_ppl)
    assert metrics["variants.mlp-50.size.parameters"] == cand.size.parameters
    assert metrics["variants.dense.latency.p95_ms"] == pytest.approx(dense.latency.p95_ms)
    assert metrics["gate.passed"] == 1.0
    scalars, series = track.figures(results)
    assert set(scalars) <= set(metrics) and len(scalars) > 50
    samples = track.metric_history(store.as_uri(), run.info.run_id, "variants.dense.latency.samples_ms")
    assert samples == pytest.approx(dense.latency.samples_ms) and len(samples) == 3
    params = run.data.params
    assert params["goal"] == "p95-latency" and params["gpu"] == "a100-80gb-sxm"
    assert params["workload.prompt_len"] == "16" and params["candidates"] == "1: MLP channels -50%"
    assert run.data.tags["planner.gate"] == "pass" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plan.json", "results.json", "gate"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "gate")} == {"gate/gate.json", "gate/gate.md"}
    local = client.download_artifacts(run.info.run_id, "results.json", str(out.parent / "dl"))
    assert json.loads(open(local).read()) == json.loads((out / "results.json").read_text())


def test_parse_tracker_refuses_unknown_trackers_and_files(tmp_path):
    with pytest.raises(InputError, match="unknown tracker 'mlfow'; did you mean mlflow"):
        track.parse_tracker("mlfow")
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    with pytest.raises(InputError, match="is a file"):
        track.parse_tracker(f"mlflow:{user_file}")
    assert track.parse_tracker("mlflow:http://localhost:5000").uri == "http://localhost:5000"
    assert track.parse_tracker(f"mlflow:{tmp_path}/store").uri == (tmp_path / "store").as_uri()


def test_bad_track_argument_exits_2_before_any_work(tmp_path, capsys):
    model = save_tiny(tmp_path, "llama")
    plan = save_mlp_plan(model, tmp_path / "plan.json")
    out = tmp_path / "run"
    assert main(["run", str(plan), "--out", str(out), "--track", "wandb", "--json"]) == 2
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["exit"] == 2 and "wandb" in error["error"]
    assert not out.exists()
