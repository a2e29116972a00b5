"""The main job `plan --goal ... --gpu ...`: tiny checkpoints (projection only, a private cache) for the fast tests,
the embedded SmolLM2-135M for the real one."""

from __future__ import annotations

import json

import pytest
from tiny import save_tiny

from planner.cli import main
from planner.decide.plan import load_plan, parse_plan


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    # room for the default workload (512 + 128 tokens)
    return save_tiny(tmp_path_factory.mktemp("ckpt"), "llama", max_position_embeddings=1024)


@pytest.fixture()
def tiny_ckpt(tiny_folder, tmp_path_factory, monkeypatch):
    # profiles of tiny models go to a cache of this module, not ~/.cache; the first test profiles, the rest reuse it
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path_factory.getbasetemp() / "plan-cli-cache"))
    monkeypatch.setenv("COLUMNS", "200")
    return tiny_folder


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())


LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}


def test_tiny_model_is_overhead_bound_so_width_and_byte_cuts_buy_nothing(tmp_path, tiny_ckpt, capsys):
    """A model of a few thousand parameters on an A100: every step is per-step overhead; no width or byte cut gains
    anything, only removing layers (their kernels) can."""
    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "p95-latency", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-measure",
                             "--max-ppl-increase", "0.5", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert all(c.prune.kind == "layers" and c.predicted_speedup < 1.05 for c in plan.candidates)
    assert plan.facts["overhead_bound"] is True and plan.facts["decode_bound"] == "overhead"
    assert any("overhead-bound" in r for rej in plan.rejected for r in rej.rules)


def test_plan_writes_a_ranked_explained_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    model = tmp_path / "llama-2-7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "p95-latency", "--gpu", "a100", "--model", str(model), "--no-measure",
                             "--max-ppl-increase", "0.5", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.model_path == str(model.resolve()) or plan.model == str(model)
    assert plan.goal.value == "p95-latency" and plan.gpu == "a100-80gb-sxm"
    assert plan.budget.max_ppl_increase == 0.5 and plan.workload.dtype == "bf16"
    # a 7B model decoding at batch 1 on an A100 under vLLM: weight-only quantization reads fewer bytes per token
    # at low risk, and outranks every pruning plan
    assert plan.verdict.action == "quantize" and plan.candidates and plan.candidates[0].quantize is not None
    assert plan.candidates[0].prune is None and any(c.prune is not None for c in plan.candidates)
    assert "not_measured" in plan.profile or "measured" not in plan.profile
    top = plan.candidates[0]
    assert top.rank == 1 and top.reasons and top.chosen_by and top.predicted_speedup > 1
    # the table: ranked plan, projected figures, reasons, rejected alternatives, verdict
    assert "ranked candidates" in stdout and "projected to a100-80gb-sxm" in stdout
    assert top.label in stdout and "rejected alternatives" in stdout
    assert "dense kernels multiply the zeros" in stdout
    assert "verdict: don't prune; quantize:" in stdout and "'a100' is a100-80gb-sxm" in stdout


def test_json_output_is_the_plan(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "p.json"
    code, stdout, err = run(["--goal", "ttft", "--gpu", "l4", "--model", str(tiny_ckpt), "--no-measure", "--json",
                             "-o", str(out)], capsys)
    assert code == 0, err
    printed = parse_plan(json.loads(stdout))
    assert printed == load_plan(out)
    assert printed.goal.value == "ttft" and printed.gpu == "l4"


def test_a_gpu_without_bf16_plans_in_fp16(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "t4.json"
    code, _, err = run(["--goal", "p95-latency", "--gpu", "t4", "--model", str(tiny_ckpt), "--no-measure",
                        "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.workload.dtype == "fp16" and any("planning for fp16" in n for n in plan.notes)
    assert any("nm-needs-sparse-tensor-cores" in r.rules for r in plan.rejected)
    code, _, err = run(["--goal", "p95-latency", "--gpu", "t4", "--dtype", "bf16", "--model", str(tiny_ckpt),
                        "--no-measure", "-o", str(out)], capsys)
    assert code == 2 and "t4 has no bf16" in err


def test_user_rules_are_added(tmp_path, tiny_ckpt, capsys):
    rules = tmp_path / "team-rules"
    rules.mkdir()
    (rules / "team.yaml").write_text("""\
version: 1
rules:
  - id: team-prefers-batching
    statement: our traffic batches well
    when: {fact: goal, eq: throughput}
    then: {suggest: [batching]}
    rationale: measured in production
    sources: ["team dashboard, 2024-11"]
""")
    out = tmp_path / "plan.json"
    code, _, err = run(["--goal", "throughput", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-measure",
                        "--rules", str(rules), "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert "team-prefers-batching" in plan.rules_fired
    assert any(f.endswith("team-rules/team.yaml") for f in plan.rule_files)
    assert any("team-prefers-batching" in lever.rules for lever in plan.verdict.levers)


def test_dont_prune_outcome(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "p95-latency", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-measure",
                             "--max-ppl-increase", "0.005", "-o", str(out), "--execute"], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.verdict.action == "dont_prune" and not plan.candidates
    assert "verdict: don't prune; use quantization, distillation" in " ".join(stdout.split())
    assert "nothing to execute" in err


@pytest.mark.parametrize("args, fragment", [
    ([], "--goal is required"),
    (["--goal", "latncy"], "unknown goal 'latncy'; did you mean latency"),
    (["--goal", "p95-latency", "--gpu", "a10"], "unknown GPU 'a10'; did you mean a10g"),
    (["--goal", "p95-latency", "--max-ppl-increase", "-1"], "--max-ppl-increase -1.0 is invalid"),
    (["--goal", "p95-latency", "--top", "0"], "--top 0 is invalid"),
    (["--goal", "p95-latency", "--dtype", "fp12"], "unknown dtype 'fp12'"),
    (["--goal", "p95-latency", "--rules", "/nonexistent/rules"], "rules folder '/nonexistent/rules' does not exist"),
    (["--goal", "p95-latency", "--model", "/nonexistent/model"], "model path '/nonexistent/model' does not exist"),
    (["--goal", "p95-latency", "--recovery-minutes", "-1"], "--recovery-minutes -1.0: accepted: minutes > 0"),
    (["--goal", "p95-latency", "--recovery-tokens", "0"], "--recovery-tokens 0: accepted"),
    (["--goal", "p95-latency", "--recovery-tokens", "100", "--recovery-minutes", "3"], "both given"),
])
def test_bad_input_exits_2_with_a_message(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    code, _, err = run(args + ["-o", str(tmp_path / "plan.json")], capsys)
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "plan.json").exists()


def test_refuses_to_overwrite_a_file_that_is_not_a_plan(tmp_path, tiny_ckpt, capsys):
    precious = tmp_path / "results.json"
    precious.write_text('{"not": "a plan"}')
    code, _, err = run(["--goal", "p95-latency", "--model", str(tiny_ckpt), "--no-measure", "-o", str(precious)],
                       capsys)
    assert code == 2 and "refusing to write the plan" in err
    assert precious.read_text() == '{"not": "a plan"}'


def test_bad_rules_folder_exits_2(tmp_path, tiny_ckpt, capsys):
    rules = tmp_path / "bad-rules"
    rules.mkdir()
    (rules / "x.yaml").write_text("version: 1\nrules:\n  - id: r\n    statement: s\n    when: {fact: gpu_sparse_2to4,"
                                  " eq: maybe}\n    then: {suggest: [batching]}\n    rationale: r\n    sources: [s]\n")
    code, _, err = run(["--goal", "p95-latency", "--model", str(tiny_ckpt), "--no-measure", "--rules", str(rules),
                        "-o", str(tmp_path / "plan.json")], capsys)
    assert code == 2 and "x.yaml" in err and "rule 'r'" in err and "expects true or false" in err


@pytest.mark.slow
def test_main_job_on_the_embedded_model(tmp_path, embedded_path, capsys, monkeypatch):
    """`plan --goal p95-latency --gpu a100` on SmolLM2-135M: measured locally (cached after the first run), then
    decided; the plan carries the measured profile's provenance."""
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "p95-latency", "--gpu", "a100", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.model == "" and "SmolLM2-135M" in plan.model_name
    assert plan.profile.get("model_parameters") == 134_515_008
    assert "measured" in plan.profile  # the local measurement stands beside the projection
    assert plan.facts["num_layers"] == 30 and plan.facts["gqa"] is True
    assert plan.workload.runtime == "vllm" and plan.facts["runtime"] == "vllm"
    assert plan.dense_rates["runtime"] == "vllm" and set(plan.dense_by_runtime) >= {"vllm", "hf-eager"}
    # a 135M model at batch 1 is overhead-bound under vLLM: no width or byte cut is ranked
    assert plan.facts["overhead_bound"] is True
    assert all(c.prune.kind == "layers" for c in plan.candidates)
    for c in plan.candidates:
        assert c.basis == "projected to a100-80gb-sxm (serving-stack model, vllm)"
    # under vLLM a 3-layer cut is projected at about 1.03x: kept only when it clears the 3% no-win threshold
    assert ("ranked candidates" in stdout) == bool(plan.candidates) and "verdict:" in stdout
    if not plan.candidates:
        assert plan.verdict.action == "dont_prune" and "batching" in plan.verdict.text


def test_the_library_call_makes_the_plan_the_cli_writes(tmp_path, tiny_ckpt, capsys):
    import planner

    out = tmp_path / "plan.json"
    code, _, err = run(["--goal", "throughput", "--gpu", "t4", "--model", str(tiny_ckpt), "--no-measure",
                        "--batch-size", "8", "--max-ppl-increase", "0.3", "-o", str(out)], capsys)
    assert code == 0, err
    from_cli = load_plan(out)
    from_lib = planner.plan("throughput", "t4", model=str(tiny_ckpt), workload={"batch_size": 8},
                            max_ppl_increase=0.3, measure=False)
    assert from_lib.workload.dtype == "fp16" and from_lib.workload.runtime == "vllm"  # t4: no bf16 peak
    assert any("planning for fp16" in n for n in from_lib.notes)
    strip = {"created_at": True, "profile": {"created_at"}}
    assert from_lib.model_dump(exclude=strip) == from_cli.model_dump(exclude=strip)
    assert [c.name for c in from_lib.candidates] == [c.name for c in from_cli.candidates]
    from planner.errors import InputError

    with pytest.raises(InputError, match="goal"):
        planner.plan("fastest", "a100", model=str(tiny_ckpt), measure=False)


@pytest.mark.parametrize("scheme, gpu, fragment", [
    ("int5-weight-only", "a100", "accepted"),
    ("int4-weight-only:g96", "a100", "accepted: 32, 64, 128, 256"),
    ("int4-weight-only:gx", "a100", "group size is a number"),
    ("fp8", "t4", "t4 has no FP8 tensor cores (accepted on t4: int8-weight-only, int4-weight-only, w8a8-int8)"),
    ("int4-weight-only:g256", "a100", "group size 256 does not divide the model's hidden size 64"),
])
def test_bad_quantize_schemes_exit_2(scheme, gpu, fragment, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "plan.json"
    code, _, err = run(["--goal", "p95-latency", "--gpu", gpu, "--model", str(tiny_ckpt), "--no-measure",
                        "--quantize", scheme, "-o", str(out)], capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists()


def test_asked_schemes_are_decided_like_the_rest(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "plan.json"
    code, _, err = run(["--goal", "checkpoint-size", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-measure",
                        "--quantize", "int4-weight-only:g32", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    asked = [c for c in list(plan.candidates) + list(plan.rejected)
             if c.quantize is not None and c.quantize.group_size == 32]
    assert asked and all(c.prune is None for c in asked)
    assert "asked-to-quantize" in plan.rules_fired


def test_the_quality_probe_measures_each_step_on_the_model(tmp_path, tiny_ckpt, capsys):
    """With weights, `plan` applies every candidate's step one-shot to the model, measures held-out perplexity,
    and rates risk and budget on the loss predicted after recovery; --no-probe keeps the rules' priors."""
    from planner.decide.engine import tier_of

    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "checkpoint-size", "--gpu", "a100", "--model", str(tiny_ckpt),
                             "--max-ppl-increase", "0.5", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.probe["measured"] and plan.probe["steps"] >= 5 and plan.probe["ppl_dense"] > 1
    judged = [c for c in list(plan.candidates) + list(plan.rejected) if c.quality is not None]
    assert judged and "quality probe:" in stdout and "after recovery" in stdout
    for c in judged:
        q = c.quality
        assert q.predicted_ppl_increase == pytest.approx(max(0.0, q.one_shot_ppl_increase) * q.recovery_factor)
        if c.recovery is not None and c.recovery.method == "none":
            assert q.recovery_factor == 1.0
    for c in plan.candidates:
        if c.quality is not None:
            assert c.quality_risk == tier_of(c.quality.predicted_ppl_increase)
            assert c.quality.predicted_ppl_increase <= 0.5
    over = [r for r in plan.rejected if r.why and r.why[0].kind == "budget" and "probe" in r.why[0].rules]
    assert all(r.quality.predicted_ppl_increase > 0.5 for r in over)
    # measured, not a prior: the figures differ from step to step (random weights: not necessarily monotone)
    assert len({round(c.quality.one_shot_ppl_increase, 6) for c in judged}) > 3

    code, _, err = run(["--goal", "checkpoint-size", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-probe",
                        "--max-ppl-increase", "0.5", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    assert not plan.probe["measured"] and all(c.quality is None for c in plan.candidates)


def test_the_plan_states_its_recovery_in_steps_and_tokens(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "plan.json"
    code, stdout, err = run(["--goal", "checkpoint-size", "--gpu", "a100", "--model", str(tiny_ckpt), "--no-probe",
                             "--max-ppl-increase", "0.5", "--recovery-tokens", "3000", "-o", str(out)], capsys)
    assert code == 0, err
    plan = load_plan(out)
    b = plan.recovery_budget
    assert (b.steps, b.tokens, b.bound_by) == (6, 3072, "asked tokens") and b.estimated_minutes > 0
    recovered = [c for c in plan.candidates if c.recovery.method != "none"]
    assert recovered and all((c.recovery.max_steps, c.recovery.max_tokens, c.recovery.max_minutes) == (6, 3072, None)
                             for c in recovered)
    assert "recovery budget: 6 steps x 512 tokens = 3,072 tokens" in " ".join(stdout.split())
