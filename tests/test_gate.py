"""The pre-launch gate: policy loading, checks against results built in code, and `plan gate` exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from test_report_data import make_results, write_results

from planner.cli import main
from planner.errors import InputError
from planner.gate import GatePolicy, check_gate, load_policy, to_markdown
from planner.run.results import Results

EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "examples" / "gate.yaml"


def _policy(tmp_path, text: str, name: str = "gate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows(report, check):
    return [r for r in report.rows if r.check == check]


# -- policy ------------------------------------------------------------------------------------------------------


def test_example_policy_loads_and_sets_every_documented_threshold():
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.variant == "best"
    assert policy.max_ppl_increase == 0.10
    assert policy.min_top1_agreement == {"*": 0.75}
    assert policy.min_speedup == 1.10
    assert set(policy.thresholds_set()) >= {"max_ppl_increase", "max_kl", "min_top1_agreement", "min_speedup",
                                            "max_peak_memory_gb"}


@pytest.mark.parametrize("text, fragment", [
    ("max_ppl_increse: 0.1\n", "max_ppl_increse: unknown field"),
    ("max_ppl_increase: -0.1\n", "max_ppl_increase"),
    ("min_top1_agreement: {code: 1.5}\n", "1.5"),
    ("version: 2\nmin_speedup: 1.1\n", "version 2"),
    ("variant: best\n", "sets no threshold"),
    ("- 1\n- 2\n", "mapping"),
    ("max_kl: [unclosed\n", "not valid YAML"),
])
def test_bad_policy_is_an_input_error_naming_the_problem(tmp_path, text, fragment):
    with pytest.raises(InputError) as exc:
        load_policy(_policy(tmp_path, text))
    assert fragment in str(exc.value)


def test_missing_policy_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


# -- checks --------------------------------------------------------------------------------------------------


def test_checks_measure_the_best_candidate_against_dense():
    results = Results.model_validate(make_results())
    report = check_gate(results, load_policy(EXAMPLE_POLICY))
    assert report.variants == ["candidate-1"]
    assert report.passed
    (ppl,) = _rows(report, "max_ppl_increase")
    assert ppl.measured == pytest.approx(0.08)  # 10.8 / 10.0 - 1
    assert ppl.op == "<=" and ppl.threshold == 0.10
    top1 = {r.slice: r.measured for r in _rows(report, "min_top1_agreement")}
    assert top1 == {"code": pytest.approx(0.86), "facts": pytest.approx(1 - 0.14 * 1.1)}
    em = {r.slice: r.measured for r in _rows(report, "min_exact_match")}
    assert em == {"code": pytest.approx(7 / 8), "facts": pytest.approx(7 / 8)}
    (speed,) = _rows(report, "min_speedup")
    assert speed.measured == pytest.approx(1.25)  # p95 of samples scaled by 0.8
    assert "measured on CPU Test CPU 9000" in speed.source
    (mem,) = _rows(report, "max_peak_memory_gb")
    assert mem.measured == pytest.approx(1.0)


def test_named_slice_thresholds_override_the_default():
    results = Results.model_validate(make_results())
    policy = GatePolicy(min_top1_agreement={"*": 0.5, "facts": 0.85})
    report = check_gate(results, policy)
    rows = {r.slice: r for r in report.rows}
    assert rows["facts"].threshold == 0.85 and rows["facts"].status == "fail"
    assert rows["code"].threshold == 0.5 and rows["code"].status == "pass"
    assert not report.passed


def test_slow_candidate_fails_the_speedup_check():
    results = Results.model_validate(make_results())
    report = check_gate(results, load_policy(EXAMPLE_POLICY), variant="candidate-2")
    assert [r.check for r in report.failed] == ["min_speedup"]
    assert report.failed[0].measured == pytest.approx(1.0)


def test_all_variants_are_gated_when_asked():
    results = Results.model_validate(make_results())
    report = check_gate(results, GatePolicy(variant="all", min_speedup=1.1))
    assert [(r.variant, r.status) for r in report.rows] == [("candidate-1", "pass"), ("candidate-2", "fail")]


def test_missing_figures_fail_and_never_pass():
    data = make_results()
    best = data["variants"][1]
    best["latency"] = None
    best["quality"]["slices"].pop("facts")
    data["variants"][0]["quality"] = None  # no dense perplexity: the increase cannot be computed
    results = Results.model_validate(data)
    policy = GatePolicy(max_ppl_increase=0.5, min_top1_agreement={"facts": 0.1}, min_speedup=0.1,
                        max_peak_memory_gb=100.0, max_checkpoint_gb=100.0)
    report = check_gate(results, policy)
    status = {r.check: r.status for r in report.rows}
    assert status == {"max_ppl_increase": "missing", "min_top1_agreement": "missing", "min_speedup": "missing",
                      "max_peak_memory_gb": "missing", "max_checkpoint_gb": "pass"}
    assert not report.passed
    assert "facts" in _rows(report, "min_top1_agreement")[0].note


def test_results_without_slices_fail_a_slice_threshold():
    data = make_results()
    data["variants"][1]["quality"]["slices"] = {}
    report = check_gate(Results.model_validate(data), GatePolicy(max_kl=1.0))
    assert [(r.slice, r.status) for r in report.rows] == [("*", "missing")]


def _failure(rank: int) -> dict:
    return {"rank": rank, "name": f"candidate-{rank}", "label": f"candidate {rank}", "stage": f"recover:{rank}",
            "error_type": "OutOfMemoryError", "message": "CUDA out of memory"}


def test_a_failed_candidate_above_the_best_that_ran_fails_the_gate():
    data = make_results()
    data["variants"] = [v for v in data["variants"] if v.get("candidate_rank") != 1]
    data["failures"] = [_failure(1)]
    report = check_gate(Results.model_validate(data), GatePolicy(min_speedup=0.5))
    assert report.variants == ["candidate-2"] and not report.passed
    (row,) = _rows(report, "candidate_finished")
    assert (row.variant, row.status, row.measured) == ("candidate-1", "fail", "failed at recover:1")
    assert "OutOfMemoryError" in row.note and "--resume" in row.note
    assert [r.status for r in _rows(report, "min_speedup")] == ["pass"]  # the runner-up is still checked


def test_a_failed_candidate_below_the_best_does_not_fail_best_but_fails_all():
    data = make_results()
    data["failures"] = [_failure(3)]
    results = Results.model_validate(data)
    assert check_gate(results, load_policy(EXAMPLE_POLICY)).passed
    everything = check_gate(results, GatePolicy(variant="all", min_speedup=0.5))
    assert [(r.check, r.status) for r in everything.rows][-1] == ("candidate_finished", "fail")
    assert not everything.passed
    assert check_gate(results, GatePolicy(min_speedup=0.5), variant="candidate-2").passed  # named: its own figures


def test_results_with_no_pruned_variant_fail():
    data = make_results()
    data["variants"] = data["variants"][:1]
    report = check_gate(Results.model_validate(data), GatePolicy(min_speedup=1.0))
    assert not report.passed and report.rows[0].status == "missing"


def test_unknown_variant_is_an_input_error_with_a_suggestion():
    results = Results.model_validate(make_results())
    with pytest.raises(InputError, match="did you mean candidate-1"):
        check_gate(results, GatePolicy(min_speedup=1.0), variant="candidate1")
    with pytest.raises(InputError, match="dense baseline"):
        check_gate(results, GatePolicy(min_speedup=1.0), variant="dense")


def test_require_device():
    results = Results.model_validate(make_results())
    report = check_gate(results, GatePolicy(require_device="cuda"))
    assert [(r.measured, r.status) for r in report.rows] == [("cpu", "fail")]


def test_markdown_summary_escapes_user_text():
    data = make_results()
    data["variants"][1]["name"] = "cand|<b>1</b>"
    results = Results.model_validate(data)
    md = to_markdown(check_gate(results, GatePolicy(max_ppl_increase=0.01)))
    assert md.startswith("### ❌ Pre-launch gate: FAIL: 1 of 1 checks failed (max\\_ppl\\_increase)")
    assert "cand\\|\\<b\\>1\\</b\\>" in md
    assert "| 8.00% | ≤ 1.00% | ❌ fail |" in md


# -- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_pass_exits_0(tmp_path, capsys):
    results = write_results(tmp_path, make_results())
    assert main(["gate", str(results), "--policy", str(EXAMPLE_POLICY)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "min_speedup" in out


def test_cli_fail_exits_1_naming_the_failing_check(tmp_path, capsys):
    results = write_results(tmp_path, make_results())
    policy = _policy(tmp_path, "max_ppl_increase: 0.10\nmin_speedup: 1.30\n")
    md = tmp_path / "gate.md"
    assert main(["gate", str(results), "--policy", str(policy), "--json", "--markdown", str(md)]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["passed"] is False
    assert [r["check"] for r in report["rows"] if r["status"] != "pass"] == ["min_speedup"]
    assert "min_speedup" in captured.err
    assert "❌ fail" in md.read_text() and "min_speedup" in md.read_text()


def test_cli_missing_figure_exits_1(tmp_path, capsys):
    data = make_results()
    data["variants"][1]["latency"] = None
    results = write_results(tmp_path, data)
    assert main(["gate", str(results), "--policy", str(EXAMPLE_POLICY), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["check"] for r in rows if r["status"] == "missing"} == {"min_speedup", "max_peak_memory_gb"}


def test_cli_unknown_policy_key_exits_2(tmp_path, capsys):
    results = write_results(tmp_path, make_results())
    policy = _policy(tmp_path, "max_ppl_increase: 0.1\nmin_speedupp: 1.2\n")
    assert main(["gate", str(results), "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "min_speedupp" in err and "unknown field" in err


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1})])
def test_cli_bad_results_exits_2(tmp_path, capsys, content):
    path = tmp_path / "results.json"
    path.write_text(content)
    assert main(["gate", str(path), "--policy", str(EXAMPLE_POLICY)]) == 2
    assert "results file" in capsys.readouterr().err


def test_cli_markdown_to_stdout(tmp_path, capsys):
    results = write_results(tmp_path, make_results())
    assert main(["gate", str(results), "--policy", str(EXAMPLE_POLICY), "--markdown", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### ✅ Pre-launch gate: PASS")
    assert "| Check | Variant | Measured | Threshold | Result |" in out


def test_results_are_not_modified_by_the_gate(tmp_path):
    data = make_results()
    path = write_results(tmp_path, data)
    before = path.read_bytes()
    main(["gate", str(path), "--policy", str(EXAMPLE_POLICY)])
    assert path.read_bytes() == before
    assert copy.deepcopy(data) == make_results()
