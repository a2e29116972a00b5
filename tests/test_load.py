"""The load generator of `plan run --load` (planner.run.load) on a tiny real model: requests served by a batching
thread, Poisson windows, time limits, bad rates, and no thread left running."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from planner.errors import InputError
from planner.run.load import BatchServer, parse_rates, run_load, send_window, window_offsets
from planner.run.results import LoadResults


def _servers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "planner-load-server" and t.is_alive()]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model("llama").eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _prompt(n: int = 8):
    return torch.arange(1, n + 1).view(1, n)


def test_the_server_batches_waiting_requests_and_is_always_joined(model):
    import time

    with BatchServer(model, max_batch=4, gen_len=3, pad_token_id=0) as server:
        items = [server.submit(_prompt()) for _ in range(4)]
        for p in items:
            assert p.done.wait(timeout=60)
        assert all(p.arrival <= p.first <= p.finish for p in items)
        # sent together while the server was idle: the first may run alone, the rest share one batch
        assert len({p.finish for p in items}) <= 2
        started = time.perf_counter()
    assert not _servers() and time.perf_counter() - started < 5


def test_a_window_times_every_request_from_its_arrival(model):
    offsets = window_offsets(50.0, 5, seed=3)
    assert offsets[0] == 0.0 and offsets == sorted(offsets) and offsets == window_offsets(50.0, 5, seed=3)
    import time

    with BatchServer(model, max_batch=1, gen_len=4, pad_token_id=0) as server:
        w = send_window(server, _prompt(), offsets, gen_len=4, deadline=time.perf_counter() + 120)
    assert w.complete and len(w.e2e_ms) == 5
    assert all(e >= t > 0 for e, t in zip(w.e2e_ms, w.ttft_ms)) and all(x > 0 for x in w.tpot_ms)
    assert not _servers()


def test_the_time_limit_stops_a_window_and_the_server(model):
    import time

    with BatchServer(model, max_batch=1, gen_len=4, pad_token_id=0) as server:
        w = send_window(server, _prompt(), [0.0, 0.0, 5.0, 10.0], gen_len=4, deadline=time.perf_counter() + 0.5)
    assert not w.complete and "time limit" in w.note and len(w.e2e_ms) <= 2
    assert not _servers()


def test_a_failing_model_surfaces_and_the_thread_ends():
    class Broken:
        def generate(self, **kw):
            raise ValueError("boom")

    import time

    with pytest.raises(RuntimeError, match="load server failed: ValueError: boom"):
        with BatchServer(Broken(), max_batch=1, gen_len=2, pad_token_id=0) as server:
            send_window(server, _prompt(), [0.0, 0.01], gen_len=2, deadline=time.perf_counter() + 30)
    assert not _servers()


@pytest.mark.parametrize("text", ["-1", "0", "abc", "1,,2", "inf"])
def test_bad_rates_are_bad_input(text):
    with pytest.raises(InputError, match=r"--load .* is not a request rate; accepted: 'auto' or rates > 0"):
        parse_rates(text)
    assert parse_rates("auto") == "auto" and parse_rates("0.5, 1") == [0.5, 1.0]


def test_plan_run_checks_load_options_before_any_work():
    from planner.run.stages import RunOptions

    with pytest.raises(InputError, match="--load '-1'"):
        RunOptions(load="-1").check()
    with pytest.raises(InputError, match="--load-requests must be >= 2"):
        RunOptions(load="auto", load_requests=1).check()
    with pytest.raises(InputError, match="--load-time-limit must be > 0"):
        RunOptions(load="1", load_time_limit=0).check()


def test_a_rate_the_machine_cannot_sustain_is_refused_with_its_capacity(model, tokenizer):
    with pytest.raises(InputError, match=r"more than this machine sustains for dense: its measured capacity is "):
        run_load({"dense": model}, tokenizer, rates=[1e6], prompt_len=8, gen_len=3, progress=False)
    assert not _servers()


def test_run_load_alternates_variants_on_the_same_arrivals(model, tokenizer):
    import copy

    other = copy.deepcopy(model)
    other.model.layers = other.model.layers[:1]
    other.config.num_hidden_layers = 1
    fields = run_load({"dense": model, "one-layer": other}, tokenizer, rates="auto", prompt_len=8, gen_len=3,
                      requests=4, windows=2, progress=False, measured_on="CPU test")
    load = LoadResults.model_validate(fields)
    assert len(load.rates) == 3 and load.rates[0] < load.rates[1] < load.rates[2] < load.capacity_rps["dense"]
    assert [p.variant for p in load.points[:2]] == ["dense", "one-layer"]
    for a, b in zip(load.points[::2], load.points[1::2]):
        assert a.rate == b.rate and a.windows == b.windows and len(a.windows) == 2
        assert len(a.e2e_samples_ms) == 4 and a.complete and a.p95_ms >= a.p50_ms > 0
    again = LoadResults.model_validate(load.model_dump(mode="json"))  # derived figures recomputed and checked
    assert again.points[0].p95_ms == load.points[0].p95_ms
    assert not _servers()


def test_plan_run_load_writes_results_and_the_report_chart(tmp_path, capsys):
    import json

    from tiny import save_tiny

    from planner.cli import main
    from planner.decide.plan import Candidate, Plan, Verdict, save_plan
    from planner.prune.specs import CalibrationSpec, MlpChannelPruning
    from planner.recover.specs import RecoverySpec
    from planner.run.results import load_results
    from planner.workload import Workload

    model = save_tiny(tmp_path, "llama")
    plan = Plan(model=str(model), goal="p95-latency", gpu="a100-80gb-sxm", goal_metric="p95_ms", rules_version="test",
                workload=Workload(prompt_len=8, gen_len=3), verdict=Verdict(action="prune", text="prune"),
                candidates=[Candidate(rank=1, name="mlp-50", label="MLP channels -50%",
                                      prune=MlpChannelPruning(ratio=0.5, criterion="magnitude"),
                                      recovery=RecoverySpec(method="none"), projected_to="a100-80gb-sxm",
                                      basis="projected", goal_metric="p95_ms", quality_risk="low",
                                      predicted_speedup=1.2, calibration=CalibrationSpec(num_samples=2, seq_len=16))])
    path = save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), "--slices", "none", "--ppl-seq-len", "32", "--ppl-tokens",
                 "256", "--requests", "2", "--warmup", "1", "--no-memory", "--load", "auto", "--load-requests", "2",
                 "--threads", "1"])
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0, printed
    results = load_results(out / "results.json")
    assert results.load is not None and len(results.load.points) == 6
    assert {p.variant for p in results.load.points} == {"dense", "mlp-50"}
    assert "load" in [s.name for s in results.stages]
    assert "under Poisson traffic, measured on" in printed
    html = (out / "report.html").read_text()
    assert 'id="load-table"' in html and "Latency against request rate" in html
    assert json.loads((out / "results.json").read_text())["load"]["points"][0]["p95_ms"] > 0
    assert not _servers()
