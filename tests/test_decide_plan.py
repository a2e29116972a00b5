"""plan.json: round trip, and load_plan's errors naming the file and the bad key or value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_decide import SCENARIOS, run_scenario  # tests/ is on sys.path (conftest)

from planner.decide.plan import Plan, load_plan, save_plan
from planner.errors import InputError
from planner.prune.specs import LayerPruning, MlpChannelPruning


@pytest.fixture(scope="module")
def plan() -> Plan:
    return run_scenario(SCENARIOS[0])


def test_round_trip(tmp_path, plan):
    path = save_plan(plan, tmp_path / "plan.json")
    again = load_plan(path)
    assert again == plan
    assert again.top.prune == plan.candidates[0].prune
    assert isinstance(again.top.prune, (LayerPruning, MlpChannelPruning))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["kind"] == "planner.plan" and data["goal"] == "p95-latency"
    assert data["gpu"] == "a100-80gb-sxm" and data["rules_version"].startswith("1+")
    top = data["candidates"][0]
    assert top["basis"] == "projected to a100-80gb-sxm (roofline model)"
    assert {"prune", "recovery", "calibration", "predicted_speedup", "quality_risk", "chosen_by", "reasons"} <= set(top)
    assert data["rejected"] and all(r["reasons"] for r in data["rejected"])


def _write(tmp_path, data) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_load_errors_name_the_problem(tmp_path, plan):
    good = json.loads(plan.model_dump_json())
    cases = []
    bad = dict(good, extra_field=1)
    cases.append((bad, "extra_field: unknown key"))
    bad = json.loads(json.dumps(good))
    bad["candidates"][0]["prune"]["sparsityy"] = 0.5
    cases.append((bad, "candidates.0.prune"))
    bad = dict(good, goal="p95-latncy")
    cases.append((bad, "goal: Input should be"))
    bad = dict(good, version=7)
    cases.append((bad, "plan version 7 is not supported"))
    bad = json.loads(json.dumps(good))
    bad["candidates"][0]["recovery"]["method"] = "magic"
    cases.append((bad, "candidates.0.recovery.method"))
    bad = json.loads(json.dumps(good))
    bad["candidates"][0]["rank"] = 5
    cases.append((bad, "candidate ranks must be 1.."))
    bad = json.loads(json.dumps(good))
    bad["workload"]["dtype"] = "fp12"
    cases.append((bad, "fp12"))
    cases.append((dict(good, kind="planner.results"), "not a plan"))
    cases.append(([1, 2], "a plan is a JSON object"))
    for data, fragment in cases:
        path = _write(tmp_path, data)
        with pytest.raises(InputError) as err:
            load_plan(path)
        assert fragment in str(err.value) and str(path) in str(err.value), (fragment, str(err.value))


def test_corrupt_and_missing_files(tmp_path):
    path = _write(tmp_path, '{"version": 1, "goal": ')
    with pytest.raises(InputError, match=r"not valid JSON \(line 1, column"):
        load_plan(path)
    with pytest.raises(InputError, match="does not exist"):
        load_plan(tmp_path / "nope.json")


def test_save_refuses_to_overwrite_what_is_not_a_plan(tmp_path, plan):
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_plan(plan, notes)
    assert notes.read_text() == '{"my": "notes"}'
    with pytest.raises(InputError, match="is a folder"):
        save_plan(plan, tmp_path)
    path = save_plan(plan, tmp_path / "plan.json")
    save_plan(plan, path)  # replacing a plan is fine
    assert load_plan(path) == plan
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".plan-")] == []  # no temporary files left


def test_the_plan_budget_sets_every_recovery_in_steps_and_tokens_and_round_trips(tmp_path):
    from test_decide import RULES, roofline_facts

    from planner.api import target_dtype
    from planner.decide.engine import decide
    from planner.gpus import get_gpu
    from planner.recover.budget import plan_budget
    from planner.workload import Goal, QualityBudget, Workload

    s = SCENARIOS[0]
    gpu = get_gpu(s.gpu)
    budget = plan_budget(134_515_008, device="cpu (test)", flops_per_second=1.4e11)
    workload, _ = target_dtype(Workload(**s.workload), gpu)
    plan = decide(goal=Goal(s.goal), gpu=gpu, workload=workload, budget=QualityBudget(max_ppl_increase=s.budget),
                  shape=s.shape, ruleset=RULES, profile_facts=roofline_facts(s.shape, workload, gpu) | s.facts,
                  recovery_budget=budget)
    recovered = [c for c in [*plan.candidates, *plan.rejected] if c.recovery is not None]
    assert any(c.recovery.method != "none" for c in recovered)
    for c in recovered:
        if c.recovery.method == "none":
            assert c.recovery.max_minutes == 8.0 and c.recovery.guard_minutes is None  # untouched
        else:
            r = c.recovery
            assert (r.max_steps, r.max_tokens, r.max_minutes, r.guard_minutes) == \
                (budget.steps, budget.tokens, None, budget.guard_minutes)
    path = save_plan(plan, tmp_path / "plan.json")
    again = load_plan(path)
    assert again.recovery_budget == budget
    assert json.loads(path.read_text())["recovery_budget"]["bound_by"] == "time allowance"
