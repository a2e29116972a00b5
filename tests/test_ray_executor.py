"""`plan run --all K --executor ray`: one Ray task per candidate, the same results as the sequential executor, a
failed candidate recorded while the others finish, a resume that retries only it, and bad executor input refused.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; the runs reuse it instead of starting their own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
import ray

from planner.cli import main
from planner.decide.plan import Candidate, Plan, Verdict, save_plan
from planner.prune.specs import CalibrationSpec, MlpChannelPruning, SemiStructuredPruning
from planner.quant.specs import QuantSpec
from planner.recover.specs import RecoverySpec
from planner.run.pipeline import TEST_FAIL_ENV
from planner.run.results import Results, load_results
from planner.workload import Workload
from tiny import save_tiny


@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             object_store_memory=128 * 2**20)
    yield
    ray.shutdown()


def three_candidate_plan(model: Path, path: Path) -> Path:
    """An MLP cut with distillation, 2:4 without recovery, and int8 weight-only quantization: every candidate stage."""
    distill = RecoverySpec(method="distill", max_steps=2, batch_size=2, seq_len=32, max_minutes=2)
    common = dict(projected_to="a100-80gb-sxm", basis="projected to a100-80gb-sxm (roofline model)",
                  goal_metric="p95_ms", quality_risk="low", calibration=CalibrationSpec(num_samples=2, seq_len=32))
    plan = Plan(model=str(model), goal="p95-latency", gpu="a100-80gb-sxm", goal_metric="p95_ms",
                rules_version="test", workload=Workload(prompt_len=16, gen_len=4),
                verdict=Verdict(action="prune", text="prune MLP channels"),
                candidates=[
                    Candidate(rank=1, name="mlp-50", label="MLP channels -50%", prune=MlpChannelPruning(
                        ratio=0.5, criterion="magnitude"), recovery=distill, predicted_speedup=1.4, **common),
                    Candidate(rank=2, name="nm-2-4", label="2:4", prune=SemiStructuredPruning(criterion="magnitude"),
                              recovery=RecoverySpec(method="none"), predicted_speedup=1.1, **common),
                    Candidate(rank=3, name="int8", label="int8 weight-only", prune=None,
                              quantize=QuantSpec(scheme="int8-weight-only"), recovery=RecoverySpec(method="none"),
                              predicted_speedup=1.2, **common)])
    return save_plan(plan, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    model = save_tiny(base, "llama")
    prompts = base / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "The interpreter", "max_new_tokens": 4, "chat": False})
                       + "\n" + json.dumps({"id": "b", "prompt": "2 + 2 =", "gold": "4", "match": "number",
                                            "max_new_tokens": 3, "chat": False}) + "\n")
    plan = three_candidate_plan(model, base / "plan.json")
    args = ["run", str(plan), "--all", "3", "--slices", "none", "--eval-prompts", str(prompts), "--ppl-seq-len", "64",
            "--ppl-tokens", "512", "--requests", "2", "--warmup", "0", "--no-memory", "--threads", "1", "--quiet"]
    return base, args


@pytest.fixture(scope="module")
def sequential(setup):
    base, args = setup
    out = base / "sequential"
    assert main([*args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def on_ray(setup, ray_session):
    base, args = setup
    out = base / "ray"
    assert main([*args, "--executor", "ray", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def failed_on_ray(setup, ray_session):
    base, args = setup
    out = base / "ray-failed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TEST_FAIL_ENV, "2")
        code = main([*args, "--executor", "ray", "--out", str(out)])
    return code, out


def figures(results: Results, root: Path) -> dict:
    """Every figure of every variant but timings: quality, pruning, recovery, quantization, sizes; checkpoint paths
    relative to the run folder."""
    out = {}
    for v in results.variants:
        data = v.model_dump(mode="json", exclude={"latency"})
        if v.role == "pruned":
            data["checkpoint"] = Path(v.checkpoint).relative_to(root.resolve()).as_posix()
        for part in ("pruning", "recovery", "quantization"):
            if data[part]:
                data[part].pop("seconds")
        out[v.name] = data
    return out


def test_a_ray_sweep_gives_the_sequential_results_but_timings(sequential, on_ray):
    seq, par = load_results(sequential / "results.json"), load_results(on_ray / "results.json")
    assert [v.name for v in par.variants] == ["dense", "mlp-50", "nm-2-4", "int8"]
    assert figures(par, on_ray) == figures(seq, sequential)
    assert par.variant("mlp-50").recovery.steps == 2 and par.variant("int8").quantization.linears_quantized == 21
    assert par.variant("nm-2-4").size.compressed_file_bytes < par.variant("nm-2-4").size.file_bytes
    assert [s.name for s in par.stages] == [s.name for s in seq.stages] == [
        "teacher", "quality:dense", "prune:1", "recover:1", "quality:1", "prune:2", "recover:2", "quality:2",
        "prune:3", "recover:3", "quantize:3", "quality:3", "latency"]
    assert all(v.latency is not None and v.latency.requests == 2 for v in par.variants)  # timed in the driver
    assert par.failures == [] and seq.failures == []


def test_a_failed_candidate_is_recorded_and_the_others_finish(failed_on_ray, capsys):
    code, out = failed_on_ray
    assert code == 3
    r = load_results(out / "results.json")
    assert [v.name for v in r.variants] == ["dense", "mlp-50", "int8"]
    assert all(v.quality is not None and v.latency is not None for v in r.variants)
    (f,) = r.failures
    assert (f.rank, f.name, f.label, f.stage, f.error_type) == (2, "nm-2-4", "2:4", "prune:2", "RuntimeError")
    assert TEST_FAIL_ENV in f.message and "Traceback" in f.traceback
    html = (out / "report.html").read_text()
    assert "failures-table" in html and "1 candidate failed" in html and "prune:2" in html
    assert not (out / "stages" / "latency.json").exists()  # the resume times every variant again, together


def test_the_sequential_executor_records_the_same_failure(setup, failed_on_ray, monkeypatch, capsys):
    base, args = setup
    out = base / "sequential-failed"
    monkeypatch.setenv(TEST_FAIL_ENV, "2")
    capsys.readouterr()
    assert main([arg for arg in args if arg != "--quiet"] + ["--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "failed candidates" in captured.out and "prune:2" in captured.out  # the CLI's table of failures
    assert "1 of 3 candidates failed" in captured.err and "--resume" in captured.err
    seq, par = load_results(out / "results.json"), load_results(failed_on_ray[1] / "results.json")
    assert [f.model_dump(exclude={"traceback"}) for f in seq.failures] == [
        f.model_dump(exclude={"traceback"}) for f in par.failures]
    assert figures(seq, out) == figures(par, failed_on_ray[1])


def test_a_resumed_sweep_skips_finished_candidates_and_retries_the_failed_one(setup, failed_on_ray, sequential):
    base, args = setup
    _, out = failed_on_ray
    assert main([*args, "--executor", "ray", "--resume", "--out", str(out)]) == 0
    r = load_results(out / "results.json")
    status = {s.name: s.status for s in r.stages}
    assert {status[s] for s in ("teacher", "quality:dense", "prune:1", "recover:1", "quality:1", "prune:3",
                                "recover:3", "quantize:3", "quality:3")} == {"resumed"}
    assert status["prune:2"] == status["recover:2"] == status["quality:2"] == status["latency"] == "done"
    assert r.failures == []
    assert figures(r, out) == figures(load_results(sequential / "results.json"), sequential)


def test_a_task_that_cannot_see_the_run_folder_says_so(tmp_path):
    from planner.run.executors import CandidateJob, run_candidate_job
    from planner.run.stages import RunOptions

    job = CandidateJob(plan=None, root=str(tmp_path / "elsewhere"), options=RunOptions(progress=False), device="cpu",
                       model_spec=None, rank=1, order=["teacher"], threads=None)
    outcome = run_candidate_job(job)
    assert "is not visible on Ray node" in outcome.bad_input and "every node reaches" in outcome.bad_input


@pytest.mark.parametrize("extra, message", [
    (["--executor", "dask"], "unknown executor 'dask' (accepted: ray, sequential)"),
    (["--ray-address", "auto"], "--ray-address joins a Ray cluster and needs --executor ray"),
    (["--executor", "ray", "--ray-address", "ray://127.0.0.1:1"], "cannot reach the Ray cluster at --ray-address "
                                                                  "'ray://127.0.0.1:1' (connection refused)"),
    (["--executor", "ray", "--ray-address", "http://head:8265"], "is not a Ray address (accepted: auto, host:port, "
                                                                 "ray://host:port)"),
])
def test_bad_executor_input_exits_2_before_any_work(setup, tmp_path, capsys, extra, message):
    _, args = setup
    out = tmp_path / "run"
    start = time.monotonic()
    assert main([*args, *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - start < 60 and not out.exists()


def test_the_ray_executor_without_ray_says_how_to_install_it(setup, tmp_path, capsys, monkeypatch):
    _, args = setup
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main([*args, "--executor", "ray", "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'planner[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_results_without_failures_still_load(sequential):
    data = json.loads((sequential / "results.json").read_text())
    data.pop("failures")
    assert Results.model_validate(data).failures == []


def test_a_missing_calibration_file_of_a_candidate_fails_before_any_work(setup, tmp_path, capsys):
    from planner.decide.plan import load_plan

    base, args = setup
    plan = load_plan(Path(args[1]))
    plan.candidates[2].calibration.text_files = [str(tmp_path / "missing.txt")]
    path = save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "run"
    assert main(["run", str(path), *args[2:], "--executor", "ray", "--out", str(out)]) == 2
    assert "calibration text file of candidate 3" in capsys.readouterr().err and not out.exists()
