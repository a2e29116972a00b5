"""End to end on a real (tiny, random-weight) run: `plan run` writes results.json and report.html; `plan report`
re-renders it from the files; `plan gate` finds every gated figure in what the runner wrote."""

from __future__ import annotations

import json

import pytest
from test_report_data import make_plan
from tiny import save_tiny

from planner.cli import main
from planner.run.results import load_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from planner.run.runner import RunOptions, run_plan

    root = tmp_path_factory.mktemp("tiny-run")
    model = save_tiny(root, "llama")
    plan = make_plan()
    plan["model"] = str(model)
    plan["workload"] = {"prompt_len": 16, "gen_len": 4, "dtype": "bf16"}
    plan["candidates"] = plan["candidates"][:1]
    plan["candidates"][0]["prune"] = {"kind": "mlp_channels", "ratio": 0.5, "criterion": "magnitude"}
    plan["candidates"][0]["recovery"] = {"method": "distill", "max_steps": 3, "batch_size": 2, "seq_len": 32}
    plan["candidates"][0]["calibration"] = {"num_samples": 4, "seq_len": 32}
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan))
    options = RunOptions(slices=["code"], ppl_seq_len=64, ppl_max_tokens=512, requests=3, warmup=1, prompt_len=16,
                         gen_len=4, progress=False)
    run_plan(plan_path, root / "run", options=options)
    return root / "run"


def test_runner_writes_a_report_with_every_section(tiny_run):
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    for name in ("verdict", "context", "profile", "decision", "results", "recovery", "provenance"):
        assert f'<section id="{name}"' in page
    results = load_results(tiny_run / "results.json")
    assert page.count('class="name">candidate-1<') >= 3  # results, latency, size tables (at least)
    assert f"measured on {results.provenance.device.label}" in page
    assert page.count('<svg class="chart"') >= 2  # quality-latency scatter and speedups; loss curve with steps
    assert "<script" not in page


def test_report_and_gate_read_the_runner_files(tiny_run, tmp_path):
    out = tmp_path / "again.html"
    assert main(["report", str(tiny_run / "results.json"), "-o", str(out)]) == 0
    assert "The plan&#39;s verdict" in out.read_text(encoding="utf-8")  # plan.json found in the run folder
    policy = tmp_path / "gate.yaml"
    # thresholds every real run meets: the check is that the runner recorded each gated figure
    policy.write_text("max_ppl_increase: 1000\nmax_kl: 1000\nmin_top1_agreement: 0\nmin_speedup: 0.001\n"
                      "max_peak_memory_gb: 10000\nmax_checkpoint_gb: 10000\n")
    assert main(["gate", str(tiny_run / "results.json"), "--policy", str(policy)]) == 0
