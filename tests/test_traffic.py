"""Tail latency under traffic (planner.perf.traffic): the simulator against queueing theory, the projection under
traffic, its effect on the decisions, and bad input."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from test_perf import LLAMA2_7B, SMOLLM_135M

from planner.errors import InputError
from planner.gpus import get_gpu
from planner.perf.runtimes import get_runtime
from planner.perf.traffic import (Policy, Request, StepModel, capacity_rps, load_trace, p95_at, poisson_arrivals, policy_for,
                                  saturation_rps, simulate)
from planner.profile.roofline import estimate
from planner.workload import Workload


@dataclass
class _Step:
    prefill_ms: float
    decode_ms_per_token: float


def linear_steps(workload, prefill=(40.0, 10.0), decode=(5.0, 1.0)) -> StepModel:
    """A step model whose times are a + b x batch: exact values to check the simulation against."""
    def project(wl):
        return _Step(prefill[0] + prefill[1] * wl.batch_size, decode[0] + decode[1] * wl.batch_size)

    return StepModel(project, workload)


def test_batch_1_is_an_md1_queue_mean_wait_matches_pollaczek_khinchine():
    wl = Workload(prompt_len=64, gen_len=20)
    steps = linear_steps(wl)
    service_s = steps.isolated_ms() / 1e3  # 50 + 20 x 6 = 170 ms
    assert service_s == pytest.approx(0.170)
    for rho in (0.3, 0.6, 0.8):
        rate = rho / service_s
        result = simulate(poisson_arrivals(rate, 40_000, 64, 20, seed=1), steps, Policy(False, 1, "hf-eager"))
        mean_wait = sum(result.e2e_ms) / len(result.e2e_ms) / 1e3 - service_s
        # M/D/1: Wq = rho S / (2 (1 - rho))
        expected = rho * service_s / (2 * (1 - rho))
        assert mean_wait == pytest.approx(expected, rel=0.06), rho
        assert result.mean_decode_batch == 1.0
        assert result.utilization == pytest.approx(rho, rel=0.03)


def test_p95_equals_the_isolated_request_at_a_tiny_rate_and_rises_with_the_rate():
    for runtime, gpu in (("vllm", "a100"), ("hf-eager", "a100")):
        wl = Workload(runtime=runtime)
        steps = StepModel(lambda w: estimate(SMOLLM_135M, w, gpu), wl)
        policy = policy_for(get_runtime(runtime), wl)
        isolated = estimate(SMOLLM_135M, wl, gpu).request_ms
        assert steps.isolated_ms() == pytest.approx(isolated, rel=1e-12)
        low = p95_at(1e-4, steps, policy, requests=200)
        assert low.p50_ms == pytest.approx(isolated, rel=1e-9) and low.p95_ms == pytest.approx(isolated, rel=1e-9)
        sat = saturation_rps(steps, policy)
        p95s = [p95_at(f * sat, steps, policy, requests=600).p95_ms for f in (0.05, 0.3, 0.6, 0.8, 0.9)]
        assert all(a <= b + 1e-9 for a, b in zip(p95s, p95s[1:])), p95s
        near = p95_at(0.9 * sat, steps, policy, requests=600)
        assert near.p95_ms > 1.3 * near.p50_ms or near.p95_ms > 2 * isolated


def test_capacity_is_where_p95_crosses_the_target():
    wl = Workload(runtime="hf-eager", prompt_len=64, gen_len=20)
    steps = linear_steps(wl)
    policy = Policy(False, 1, "hf-eager")
    target = 3 * steps.isolated_ms()
    cap = capacity_rps(target, steps, policy, requests=400)
    assert 0 < cap < 1 / (steps.isolated_ms() / 1e3)
    assert p95_at(cap * 0.97, steps, policy, requests=400).p95_ms <= target
    assert p95_at(cap * 1.05, steps, policy, requests=400).p95_ms > target
    assert capacity_rps(steps.isolated_ms() / 2, steps, policy) == 0.0  # even a lone request misses it


def test_static_batches_and_continuous_batching_form_the_batches_they_should():
    wl = Workload(prompt_len=64, gen_len=20, batch_size=4)
    steps = linear_steps(wl)
    # 8 requests at once: two static batches of 4; the second waits for the whole first one
    burst = [Request(0.0, 64, 20) for _ in range(8)]
    static = simulate(burst, steps, Policy(False, 4, "hf-eager"))
    one_batch = (40 + 10 * 4 + 20 * (5 + 4)) / 1e3
    assert static.max_batch_seen == 4 and static.mean_decode_batch == 4
    assert max(static.e2e_ms) == pytest.approx(2 * one_batch * 1e3, rel=1e-6)
    # continuous: all 8 prefilled together, decoded together, out at the same time
    cont = simulate(burst, steps, Policy(True, 256, "vllm"))
    assert cont.max_batch_seen == 8
    assert max(cont.e2e_ms) == pytest.approx(40 + 10 * 8 + 20 * (5 + 8), rel=1e-6)
    # a request arriving mid-decode joins at the next step boundary; the running ones stall for its prefill
    late = simulate([Request(0.0, 64, 20), Request(0.100, 64, 20)], steps, Policy(True, 8, "vllm"))
    assert late.max_batch_seen == 2 and sorted(late.e2e_ms)[0] > 50 + 20 * 6


def test_concurrency_changes_throughput_and_the_batch_and_rate_raises_p95():
    from planner.decide.predict import figures

    a100 = get_gpu("a100")
    one = figures(LLAMA2_7B, None, Workload(runtime="vllm"), a100)[0]
    busy = figures(LLAMA2_7B, None, Workload(runtime="vllm", concurrency=64), a100)[0]
    assert busy["traffic_batch"] == pytest.approx(64) and busy["tokens_per_s"] > 10 * one["tokens_per_s"]
    assert one["p95_ms"] == one["p50_ms"] == one["request_ms"]  # no traffic: the isolated request, as before
    sat = busy["saturation_rps"]
    near = figures(LLAMA2_7B, None, Workload(runtime="vllm", request_rate=0.95 * sat), a100)[0]
    low = figures(LLAMA2_7B, None, Workload(runtime="vllm", request_rate=0.001), a100)[0]
    assert near["p95_ms"] > near["p50_ms"] > low["p95_ms"]
    assert low["p95_ms"] == pytest.approx(one["request_ms"], rel=1e-9)
    assert 0 < low["capacity_rps"] <= sat


def test_the_2to4_judgement_uses_the_batch_the_traffic_produces():
    from planner.api import plan

    alone = plan("p95-latency", "h100", measure=False, probe=False)
    busy = plan("p95-latency", "h100", measure=False, probe=False, workload={"concurrency": 64})
    rule = "nm-no-gain-in-batch1-decode"
    assert alone.facts["traffic_batch"] == 1 and busy.facts["traffic_batch"] == pytest.approx(64)
    assert any(rule in r.rules for r in alone.rejected if r.prune is not None and r.prune.kind == "nm")
    assert not any(rule in r.rules for r in busy.rejected if r.prune is not None and r.prune.kind == "nm")
    assert alone.dense_predicted["tokens_per_s"] != busy.dense_predicted["tokens_per_s"]


def test_a_trace_file_and_its_bad_values(tmp_path):
    good = tmp_path / "trace.csv"
    good.write_text("arrival_s,prompt_len,gen_len\n0.0,64,20\n0.5\n0.25,32,10  # comment\n")
    reqs = load_trace(good, 64, 20)
    assert [(r.arrival_s, r.prompt_len, r.gen_len) for r in reqs] == [(0.0, 64, 20), (0.25, 32, 10), (0.5, 64, 20)]
    bad = tmp_path / "neg.csv"
    bad.write_text("0.5\n-1\n")
    with pytest.raises(InputError, match=r"line 2: arrival time -1.0 is invalid; accepted: seconds >= 0"):
        Workload(trace=str(bad))
    with pytest.raises(InputError, match=r"--request-rate -1.0 is invalid; accepted: a request rate > 0"):
        Workload(request_rate=-1)
    from planner.api import make_workload

    with pytest.raises(InputError, match="request_rate"):
        make_workload({"request_rate": float("nan")})
    with pytest.raises(InputError, match="both set"):
        Workload(request_rate=1.0, trace=str(good))
    steps = linear_steps(Workload(prompt_len=64, gen_len=20))
    result = simulate(reqs, steps, Policy(False, 1, "hf-eager"))
    assert len(result.e2e_ms) == 3


def test_goal_with_a_target_and_a_rate():
    from planner.goals import parse_traffic_goal
    from planner.workload import Goal

    assert parse_traffic_goal("p95 under 800 ms at 2 req/s") == (Goal.P95_LATENCY, 800.0, 2.0)
    assert parse_traffic_goal("p95<1.5s@0.5") == (Goal.P95_LATENCY, 1500.0, 0.5)
    assert parse_traffic_goal("p95-latency") is None
    with pytest.raises(InputError, match="must be numbers > 0"):
        parse_traffic_goal("p95 under 0 ms at 2 req/s")


@pytest.mark.parametrize("args, message", [
    (["--request-rate", "-1"], "--request-rate -1.0 is invalid; accepted: a request rate > 0"),
    (["--request-rate", "0"], "--request-rate 0.0 is invalid"),
    (["--goal", "p95 under 800 ms at -2 req/s"], "must be numbers > 0"),
])
def test_bad_traffic_values_exit_2(args, message, capsys, tmp_path):
    from planner.cli import main

    argv = ["--goal", "p95-latency", "--no-measure", "-o", str(tmp_path / "p.json")]
    code = main(argv + args)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in err and "Traceback" not in err


def test_the_cli_prints_the_traffic_line_and_meets_the_goal(capsys, tmp_path, monkeypatch):
    from planner.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    code = main(["--goal", "p95 under 2 s at 1 req/s", "--gpu", "a100", "--no-measure",
                 "-o", str(tmp_path / "p.json")])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "traffic (Poisson 1 req/s)" in out and "the goal's target is met" in out and "capacity" in out
    assert math.isfinite(float(out.split("capacity ")[1].split(" req/s")[0].replace(",", "")))
