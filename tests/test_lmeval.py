"""lm-evaluation-harness as a quality stage: the bundled tasks, a user's task folder, real lm-eval runs on a tiny
model and (slow) on the embedded SmolLM2-135M, results.json, the report, and the gate's task checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from planner.cli import main
from planner.errors import InputError
from planner.evaluate import lmeval
from tiny import save_mlp_plan, save_tiny

pytest.importorskip("lm_eval")

TASKS = "planner_next_line,planner_last_word"


def _rows(name: str) -> list[dict]:
    text = (lmeval.TASKS_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_bundled_task_data_comes_from_the_heldout_text():
    from planner.data import heldout_text

    flat = " ".join(heldout_text().split())
    next_line = _rows("next_line")
    assert len(next_line) == 200
    for row in next_line:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        answer = row["choices"][row["label"]]
        assert " ".join(f"{row['context']}\n{answer}".split()) in flat  # the true next line follows its context
    last_word = _rows("last_word")
    assert len(last_word) == 200
    for row in last_word[:50]:
        assert f"{row['context']} {row['target']}" in flat and re.fullmatch(r"[A-Za-z][a-z]+", row["target"])


def test_unknown_task_is_bad_input_with_a_suggestion():
    with pytest.raises(InputError, match=r"unknown lm-eval task 'planner_next_lines'; did you mean planner_next_line"):
        lmeval.resolve_tasks(["planner_next_lines"])
    with pytest.raises(InputError, match="does not exist"):
        lmeval.resolve_tasks(["planner_next_line"], include=["/nonexistent/tasks"])


def _user_task(folder: Path) -> str:
    """A user's own task over a local JSON file (the way a cached or local dataset is used): lm-eval's `json`
    loader, absolute data_files."""
    data = folder / "yes_no.jsonl"
    data.write_text("".join(json.dumps({"question": f"Is {a} greater than {b}?", "label": int(a > b)}) + "\n"
                            for a, b in [(3, 1), (1, 3), (7, 2), (2, 9), (5, 4), (0, 6)]))
    (folder / "my_yes_no.yaml").write_text(
        "task: my_yes_no\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: \"{{question}} Answer:\"\n"
        "doc_to_choice: [\"no\", \"yes\"]\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return "my_yes_no"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("lmeval")
    return base, save_tiny(base, "llama")


def test_tiny_model_scores_bundled_and_user_tasks(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    _, folder = tiny_model
    users = tmp_path / "my-tasks"
    users.mkdir()
    mine = _user_task(users)
    tasks = lmeval.resolve_tasks(["planner_next_line", "planner_last_word", mine], include=[str(users)])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scores = lmeval.evaluate_model(model, tokenizer, tasks, include=[str(users)], limit=4)
    assert scores["backend"] == "hf" and scores["limit"] == 4
    assert set(scores["tasks"]) == set(tasks)
    nl = scores["tasks"]["planner_next_line"]
    assert nl["primary"] == "acc_norm" and set(nl["metrics"]) == {"acc", "acc_norm"} and nl["samples"] == 4
    for metric in nl["metrics"].values():
        assert metric["value"] in (0.0, 0.25, 0.5, 0.75, 1.0) and metric["stderr"] is not None
    lw = scores["tasks"]["planner_last_word"]
    assert lw["primary"] == "exact_match,first_word" and lw["higher_is_better"]
    assert scores["tasks"][mine]["samples"] == 4  # the user's local-JSON task ran too
    from planner.run.results import LmEvalScores

    LmEvalScores.model_validate(scores)  # the document results.json holds


@pytest.fixture(scope="module")
def tiny_run(tiny_model):
    base, model = tiny_model
    plan = save_mlp_plan(model, base / "plan.json")
    out = base / "run"
    code = main(["run", str(plan), "--out", str(out), "--slices", "none", "--ppl-seq-len", "64", "--ppl-tokens",
                 "512", "--requests", "2", "--warmup", "1", "--no-memory", "--quiet", "--lm-eval-tasks", TASKS,
                 "--lm-eval-limit", "4"])
    return code, out, plan


def test_run_writes_task_scores_for_dense_and_candidate(tiny_run):
    from planner.run.results import load_results

    code, out, _ = tiny_run
    results = load_results(out / "results.json")  # loads back through the schema
    assert code in (0, 3)  # 3: results written, report not (see the report test)
    names = [v.name for v in results.variants]
    assert names == ["dense", "mlp-50"]
    for v in results.variants:
        assert set(v.lm_eval.tasks) == {"planner_next_line", "planner_last_word"}
        assert all(t.samples == 4 for t in v.lm_eval.tasks.values())
    stages = [s.name for s in results.stages]
    assert "lm-eval:dense" in stages and "lm-eval:1" in stages
    raw = json.loads((out / "results.json").read_text())
    assert raw["variants"][0]["lm_eval"]["tasks"]["planner_next_line"]["metrics"]["acc"]["stderr"] is not None


def test_gate_reads_task_scores(tiny_run, tmp_path):
    from planner.gate import check_gate
    from planner.gate.policy import GatePolicy
    from planner.run.results import load_results

    results = load_results(tiny_run[1] / "results.json")
    dense, cand = results.variants
    score = cand.lm_eval.tasks["planner_next_line"].value
    policy = GatePolicy(min_task_score={"planner_next_line": min(1.0, score + 0.25)}, max_task_drop={"*": 1.0})
    report = check_gate(results, policy)
    rows = {(r.check, r.slice): r for r in report.rows}
    assert rows[("min_task_score", "planner_next_line")].measured == score
    assert rows[("min_task_score", "planner_next_line")].status == "fail"
    for task in ("planner_next_line", "planner_last_word"):
        drop = dense.lm_eval.tasks[task].value - cand.lm_eval.tasks[task].value
        assert rows[("max_task_drop", task)].measured == pytest.approx(drop)
        assert rows[("max_task_drop", task)].status == "pass"
    # a task the results do not hold is a failed ("missing") row, never a pass
    report = check_gate(results, GatePolicy(max_task_drop={"hellaswag": 0.1}))
    assert [r.status for r in report.rows] == ["missing"] and "hellaswag" in report.rows[0].note


def test_bad_lm_eval_arguments_exit_2_before_any_work(tiny_model, tmp_path, capsys):
    base, model = tiny_model
    plan = save_mlp_plan(model, tmp_path / "plan.json")
    for extra, named in ([["--lm-eval-tasks", "planner_next_lin"], "planner_next_lin"],
                         [["--lm-eval-tasks", TASKS, "--lm-eval-limit", "0"], "--lm-eval-limit"],
                         [["--lm-eval-limit", "5"], "--lm-eval-tasks"],
                         [["--lm-eval-tasks", TASKS, "--lm-eval-include", str(tmp_path / "none")], "none"]):
        out = tmp_path / f"run-{len(extra)}-{extra[-1][-4:]}"
        assert main(["run", str(plan), "--out", str(out), "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_embedded_model_task_scores_and_a_gate_failing_on_a_task_drop(embedded_path, tmp_path, capsys):
    """Acceptance: two bundled tasks on SmolLM2-135M, dense against 50% of its MLP channels removed (no recovery):
    scores in results.json and the report, and a gate policy that fails on the measured task drop."""
    from planner.gate import check_gate
    from planner.gate.policy import GatePolicy
    from planner.run.results import load_results

    plan = save_mlp_plan(embedded_path, tmp_path / "plan.json")
    out = tmp_path / "run"
    code = main(["run", str(plan), "--out", str(out), "--slices", "none", "--ppl-seq-len", "128", "--ppl-tokens",
                 "1024", "--requests", "2", "--warmup", "1", "--no-memory", "--threads", "1",
                 "--lm-eval-tasks", TASKS, "--lm-eval-limit", "16"])
    captured = capsys.readouterr()
    assert code in (0, 3), captured.err[-2000:]
    results = load_results(out / "results.json")
    dense, cand = results.variants
    drops = {t: dense.lm_eval.tasks[t].value - cand.lm_eval.tasks[t].value for t in dense.lm_eval.tasks}
    print("lm-eval (limit 16):", {v.name: {t: (s.value, s.stderr) for t, s in v.lm_eval.tasks.items()}
                                  for v in results.variants}, "drops:", drops)
    assert dense.lm_eval.tasks["planner_next_line"].value > 0.25  # the real model is above chance on its own docs
    worst = max(drops, key=drops.get)
    assert drops[worst] > 0  # removing half the MLP channels without recovery costs task score
    failing = check_gate(results, GatePolicy(max_task_drop={"*": drops[worst] / 2}))
    assert not failing.passed
    row = next(r for r in failing.rows if r.slice == worst)
    assert row.status == "fail" and row.measured == pytest.approx(drops[worst])
    assert check_gate(results, GatePolicy(max_task_drop={"*": drops[worst] + 0.01})).passed
    if code == 0:
        html = (out / "report.html").read_text()
        assert 'id="lm-eval-table"' in html and "planner_last_word" in html
    # the summary printed by `plan run` shows each task, dense beside the candidate
    assert "lm-evaluation-harness" in captured.out and "planner_next_line" in captured.out


def test_import_planner_loads_neither_lm_eval_nor_mlflow():
    import subprocess
    import sys

    code = ("import sys, planner, planner.cli, planner.track, planner.evaluate.lmeval, planner.run.runner;"
            "from planner.cli import build_parser; build_parser();"
            "print([m for m in ('lm_eval', 'mlflow', 'datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
