"""Bad input across every command, as a table: each case must exit 2 (never 1, which means "gate failed" to CI),
without a traceback, with a message under 2 KB that names the bad value, and without changing any file that
existed before (hashed before and after).

A case is (id, argv, the fragment of the bad value the message must name). `{b}` in an argument is the shared
folder of inputs built once by the `base` fixture; `@env:NAME=VALUE` and `@cwd:FOLDER` prefixes set the
environment or working folder for that case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from test_report_data import make_results

from planner.cli import main
from planner.paths import gpus_dir
from tiny import save_mlp_plan, save_tiny, tiny_config

EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "examples" / "gate.yaml"
BINARY = bytes(range(256)) * 4
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
LONG = "z" * 20_000  # a value that must not be echoed in full


def _plan(model: Path, path: Path, **changes) -> Path:
    return save_mlp_plan(model, path, **changes)


def _config(base: Path, name: str, **changes) -> Path:
    folder = base / f"cfg-{name}"
    folder.mkdir()
    data = tiny_config("llama").to_dict()
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _rules(base: Path, name: str, text: str) -> Path:
    folder = base / f"rules-{name}"
    folder.mkdir()
    (folder / "mine.yaml").write_text(text) if isinstance(text, str) else (folder / "mine.yaml").write_bytes(text)
    return folder


RULE = """version: 1
rules:
  - id: my-rule
    statement: a statement
    when: {{fact: kind, eq: unstructured}}
    then:
      reject: "{text}"
    rationale: because
    sources: [me]
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    b = tmp_path_factory.mktemp("bad-input")
    model = save_tiny(b, "llama")
    _plan(model, b / "plan.json")
    plan = json.loads((b / "plan.json").read_text())
    (b / "plan-truncated.json").write_text((b / "plan.json").read_text()[:200])
    (b / "plan-binary.json").write_bytes(BINARY)
    (b / "plan-empty.json").write_text("")
    (b / "plan-list.json").write_text("[1, 2]")
    (b / "plan-gpu.json").write_text(json.dumps({**plan, "gpu": "a1000-imaginary"}))
    (b / "plan-nan.json").write_text(json.dumps({**plan, "workload": {**plan["workload"], "queueing_ms": 1e400}}))
    (b / "plan-dup.json").write_text('{"gpu": "a100-80gb-sxm", ' + (b / "plan.json").read_text().strip()[1:])
    (b / "plan-dir.json").mkdir()
    gpu_text = (gpus_dir() / "a100-80gb-sxm.yaml").read_text().replace("id: a100-80gb-sxm", "id: my-gpu")
    gpu_text = "\n".join(line for line in gpu_text.splitlines() if not line.startswith("aliases:"))
    (b / "gpus-bad").mkdir()
    (b / "gpus-bad" / "my-gpu.yaml").write_text(gpu_text.replace("memory_gb: 80", "memroy_gb: 80"))
    (b / "gpus-unsourced").mkdir()
    (b / "gpus-unsourced" / "my-gpu.yaml").write_text(gpu_text.replace("  tdp_w: *ds\n", ""))
    changed = b / "model-changed"
    shutil.copytree(model, changed)
    _plan(changed, b / "plan-changed.json")
    cwd = os.getcwd()
    os.chdir(b)
    try:  # a plan made with a relative --model, from the folder that holds the model
        _plan(Path("model-changed"), b / "plan-relative.json")
    finally:
        os.chdir(cwd)
    (changed / "config.json").write_text((changed / "config.json").read_text().replace('"num_hidden_layers": 3',
                                                                                        '"num_hidden_layers": 2'))
    (b / "elsewhere").mkdir()

    results = make_results()
    (b / "results.json").write_text(json.dumps(results))
    bad = json.loads(json.dumps(results))
    bad["variants"][1]["latency"]["samples_ms"][0] = -5.0
    bad["variants"][1]["latency"] = {k: v for k, v in bad["variants"][1]["latency"].items()
                                     if k in ("measured_on", "runtime", "dtype", "prompt_len", "gen_len",
                                              "batch_size", "warmup", "samples_ms", "ttft_samples_ms",
                                              "tpot_samples_ms", "peak_memory_bytes", "peak_memory_kind")}
    (b / "results-negative-latency.json").write_text(json.dumps(bad))
    bad = json.loads(json.dumps(results))
    bad["variants"][0]["quality"]["heldout_ppl"] = 0
    (b / "results-zero-ppl.json").write_text(json.dumps(bad))
    bad["variants"][0]["quality"]["heldout_ppl"] = -3.5
    (b / "results-negative-ppl.json").write_text(json.dumps(bad))
    (b / "results-nan.json").write_text(json.dumps(results).replace('"heldout_nll": ', '"heldout_nll": NaN, "x": ', 1))
    (b / "results-truncated.json").write_text(json.dumps(results)[:500])
    (b / "results-binary.json").write_bytes(BINARY)
    (b / "results-empty.json").write_text("")
    (b / "results-dup.json").write_text('{"version": 1, ' + json.dumps(results)[1:])
    (b / "results-dir.json").mkdir()
    (b / "results-plan.json").write_text((b / "plan.json").read_text())

    (b / "policy-bomb.yaml").write_text(BOMB + "min_speedup: 1.1\n")
    (b / "policy-dup.yaml").write_text("min_speedup: 1.5\nmax_ppl_increase: 0.1\nmin_speedup: 0.01\n")
    (b / "policy-inf.yaml").write_text("max_ppl_increase: .inf\n")
    (b / "policy-huge.yaml").write_text("max_ppl_increase: 1.0e+400\n")
    (b / "policy-binary.yaml").write_bytes(BINARY)
    (b / "policy-empty.yaml").write_text("")
    (b / "policy-list.yaml").write_text("- 1\n- 2\n")
    (b / "policy-typo.yaml").write_text("min_speedp: 1.1\n")
    (b / "policy-long.yaml").write_text(f"variant: best\nmin_speedup: '{LONG}'\n")
    (b / "policy-dir.yaml").mkdir()

    (b / "workload-bomb.yaml").write_text(BOMB)
    (b / "workload-dup.yaml").write_text("prompt_len: 128\nprompt_len: 4096\n")
    (b / "workload-huge.yaml").write_text("queueing_ms: 1.0e+400\n")
    (b / "workload-huge.json").write_text('{"queueing_ms": 1e400}')
    (b / "workload-nan.json").write_text('{"network_ms": NaN}')
    (b / "workload-binary.yaml").write_bytes(BINARY)
    (b / "workload-deep.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    (b / "workload-dtype.yaml").write_text(f"dtype: {LONG}\n")
    (b / "workload-dir.yaml").mkdir()

    _config(b, "heads0", num_attention_heads=0)
    _config(b, "vocab0", vocab_size=0)
    _config(b, "indivisible", num_attention_heads=5, num_key_value_heads=5)
    _config(b, "float", hidden_size=64.5)
    _config(b, "layers-neg", num_hidden_layers=-1)
    _config(b, "hidden0", hidden_size=0)
    _config(b, "kv3", num_attention_heads=4, num_key_value_heads=3)
    _config(b, "string", intermediate_size="wide")
    ok = _config(b, "ok")
    (ok / "other.json").write_text(json.dumps(tiny_config("llama", num_hidden_layers=7).to_dict()))
    _config(b, "binary")
    (b / "cfg-binary" / "config.json").write_bytes(BINARY)

    _rules(b, "zz", RULE.format(text="{speedup:zz}"))
    _rules(b, "wide", RULE.format(text="{gpu:>20000000}"))
    _rules(b, "nested", RULE.format(text="{gpu:{goal:{kind}}}"))
    _rules(b, "attr", RULE.format(text="{gpu.__class__}"))
    _rules(b, "binary", BINARY)
    _rules(b, "dup", RULE.format(text="ok") + "version: 1\n")
    _rules(b, "bomb", BOMB)
    _rules(b, "long-id", RULE.format(text="ok").replace("my-rule", "Bad_" + LONG))

    (b / "profile-binary.json").write_bytes(BINARY)
    (b / "profile-dir.json").mkdir()
    (b / "notes.md").write_text("my own notes\n")
    (b / "mine.html").write_text("<html>my page</html>\n")
    (b / "user.txt").write_text("keep me\n")
    (b / "text-binary.txt").write_bytes(BINARY)
    (b / "prompts-bad.jsonl").write_text('{"id": "a", "prompt": "x", "max_new_tokens": NaN}\n')
    (b / "prompts-binary.jsonl").write_bytes(BINARY)
    user = b / "user-folder"
    (user / "src").mkdir(parents=True)
    (user / ".tmprc").write_text("mine")
    (user / ".cache_tmpfiles").mkdir()
    (user / ".cache_tmpfiles" / "a").write_text("mine")
    (user / "src" / ".attmpt_notes").write_text("mine")
    (b / "run-truncated").mkdir()
    (b / "run-truncated" / "manifest.json").write_text('{"version": 1, "kind": "planner.ru')
    (b / "run-truncated" / ".tmprc").write_text("mine")
    (b / "run-foreign").mkdir()
    (b / "run-foreign" / "manifest.json").write_text('{"name": "my own manifest"}')
    return b


RUN = ["--slices", "none", "--requests", "1", "--warmup", "0", "--no-memory", "--quiet", "--ppl-seq-len", "16"]
MAIN = ["--goal", "p95-latency", "--gpu", "a100", "--model", "{b}/cfg-ok", "--no-measure", "--prompt-len", "16",
        "--gen-len", "4"]

CASES = [
    # -- plan run: the plan document --
    ("run-plan-missing", ["run", "{b}/nope.json"], "nope.json"),
    ("run-plan-folder", ["run", "{b}/plan-dir.json"], "plan-dir.json"),
    ("run-plan-truncated", ["run", "{b}/plan-truncated.json"], "plan-truncated.json"),
    ("run-plan-binary", ["run", "{b}/plan-binary.json"], "plan-binary.json"),
    ("run-plan-empty", ["run", "{b}/plan-empty.json"], "plan-empty.json"),
    ("run-plan-list", ["run", "{b}/plan-list.json"], "list"),
    ("run-plan-unknown-gpu", ["run", "{b}/plan-gpu.json"], "a1000-imaginary"),
    ("run-plan-non-finite", ["run", "{b}/plan-nan.json"], "Infinity"),
    ("run-plan-duplicate-key", ["run", "{b}/plan-dup.json"], "'gpu'"),
    ("run-plan-model-changed", ["run", "{b}/plan-changed.json", "--out", "{b}/r1", *RUN], "model-changed"),
    ("run-plan-relative-model-elsewhere", ["@cwd:elsewhere", "run", "{b}/plan-relative.json", "--out", "{b}/r2",
                                           *RUN], "model-changed"),
    # -- plan run: options and the run folder --
    ("run-out-user-folder", ["run", "{b}/plan.json", "--out", "{b}/user-folder", *RUN], "user-folder"),
    ("run-resume-user-folder", ["run", "{b}/plan.json", "--out", "{b}/user-folder", "--resume", *RUN],
     "user-folder"),
    ("run-out-is-a-file", ["run", "{b}/plan.json", "--out", "{b}/user.txt", *RUN], "user.txt"),
    ("run-resume-truncated-manifest", ["run", "{b}/plan.json", "--out", "{b}/run-truncated", "--resume", *RUN],
     "run-truncated"),
    ("run-foreign-manifest", ["run", "{b}/plan.json", "--out", "{b}/run-foreign", *RUN], "run-foreign"),
    ("run-out-unwritable", ["run", "{b}/plan.json", "--out", "{b}/user.txt/run", *RUN], "user.txt"),
    ("run-requests-zero", ["run", "{b}/plan.json", "--requests", "0"], "0"),
    ("run-slices-unknown", ["run", "{b}/plan.json", "--slices", "kode"], "kode"),
    ("run-runtime-unknown", ["run", "{b}/plan.json", "--runtime", LONG], "zzzz"),
    ("run-candidate-absent", ["run", "{b}/plan.json", "--candidate", "7", "--out", "{b}/r3"], "7"),
    ("run-eval-text-folder", ["run", "{b}/plan.json", "--out", "{b}/r4", "--eval-text", "{b}/elsewhere", *RUN],
     "elsewhere"),
    ("run-eval-text-binary", ["run", "{b}/plan.json", "--out", "{b}/r5", "--eval-text", "{b}/text-binary.txt",
                              *RUN], "text-binary.txt"),
    ("run-eval-prompts-non-finite", ["run", "{b}/plan.json", "--out", "{b}/r6", "--eval-prompts",
                                     "{b}/prompts-bad.jsonl", *RUN], "prompts-bad.jsonl"),
    ("run-eval-prompts-binary", ["run", "{b}/plan.json", "--out", "{b}/r7", "--eval-prompts",
                                 "{b}/prompts-binary.jsonl", *RUN], "prompts-binary.jsonl"),
    ("run-bench-dtype", ["run", "{b}/plan.json", "--bench-dtype", "fp4"], "fp4"),
    # -- plan report --
    ("report-missing", ["report", "{b}/nope.json"], "nope.json"),
    ("report-folder", ["report", "{b}/results-dir.json"], "results-dir.json"),
    ("report-truncated", ["report", "{b}/results-truncated.json"], "results-truncated.json"),
    ("report-binary", ["report", "{b}/results-binary.json"], "results-binary.json"),
    ("report-empty", ["report", "{b}/results-empty.json"], "results-empty.json"),
    ("report-plan-not-results", ["report", "{b}/results-plan.json"], "results-plan.json"),
    ("report-negative-latency", ["report", "{b}/results-negative-latency.json"], "-5.0"),
    ("report-zero-ppl", ["report", "{b}/results-zero-ppl.json", "-o", "{b}/r.html"], "heldout_ppl"),
    ("report-negative-ppl", ["report", "{b}/results-negative-ppl.json", "-o", "{b}/r.html"], "-3.5"),
    ("report-nan", ["report", "{b}/results-nan.json", "-o", "{b}/r.html"], "NaN"),
    ("report-duplicate-key", ["report", "{b}/results-dup.json", "-o", "{b}/r.html"], "'version'"),
    ("report-over-results", ["report", "{b}/results.json", "-o", "{b}/results.json"], "results.json"),
    ("report-over-user-html", ["report", "{b}/results.json", "-o", "{b}/mine.html"], "mine.html"),
    ("report-into-folder", ["report", "{b}/results.json", "-o", "{b}/elsewhere"], "elsewhere"),
    ("report-unwritable", ["report", "{b}/results.json", "-o", "{b}/user.txt/report.html"], "user.txt"),
    ("report-profile-binary", ["report", "{b}/results.json", "-o", "{b}/r.html", "--profile",
                               "{b}/profile-binary.json"], "profile-binary.json"),
    ("report-profile-folder", ["report", "{b}/results.json", "-o", "{b}/r.html", "--profile",
                               "{b}/profile-dir.json"], "profile-dir.json"),
    ("report-plan-binary", ["report", "{b}/results.json", "-o", "{b}/r.html", "--plan", "{b}/plan-binary.json"],
     "plan-binary.json"),
    # -- plan gate --
    ("gate-policy-alias-bomb", ["gate", "{b}/results.json", "--policy", "{b}/policy-bomb.yaml"], "alias"),
    ("gate-policy-duplicate-key", ["gate", "{b}/results.json", "--policy", "{b}/policy-dup.yaml"], "min_speedup"),
    ("gate-policy-inf", ["gate", "{b}/results.json", "--policy", "{b}/policy-inf.yaml"], ".inf"),
    ("gate-policy-huge", ["gate", "{b}/results.json", "--policy", "{b}/policy-huge.yaml"], "1.0e+400"),
    ("gate-policy-binary", ["gate", "{b}/results.json", "--policy", "{b}/policy-binary.yaml"], "policy-binary"),
    ("gate-policy-empty", ["gate", "{b}/results.json", "--policy", "{b}/policy-empty.yaml"], "policy-empty"),
    ("gate-policy-list", ["gate", "{b}/results.json", "--policy", "{b}/policy-list.yaml"], "list"),
    ("gate-policy-typo", ["gate", "{b}/results.json", "--policy", "{b}/policy-typo.yaml"], "min_speedp"),
    ("gate-policy-long-value", ["gate", "{b}/results.json", "--policy", "{b}/policy-long.yaml"], "zzzz"),
    ("gate-policy-folder", ["gate", "{b}/results.json", "--policy", "{b}/policy-dir.yaml"], "policy-dir.yaml"),
    ("gate-policy-missing", ["gate", "{b}/results.json", "--policy", "{b}/nope.yaml"], "nope.yaml"),
    ("gate-results-zero-ppl", ["gate", "{b}/results-zero-ppl.json", "--policy", str(EXAMPLE_POLICY)],
     "heldout_ppl"),
    ("gate-results-binary", ["gate", "{b}/results-binary.json", "--policy", str(EXAMPLE_POLICY)],
     "results-binary.json"),
    ("gate-markdown-over-user-file", ["gate", "{b}/results.json", "--policy", str(EXAMPLE_POLICY), "--markdown",
                                      "{b}/notes.md"], "notes.md"),
    ("gate-markdown-over-results", ["gate", "{b}/results.json", "--policy", str(EXAMPLE_POLICY), "--markdown",
                                    "{b}/results.json"], "results.json"),
    ("gate-markdown-unwritable", ["gate", "{b}/results.json", "--policy", str(EXAMPLE_POLICY), "--markdown",
                                  "{b}/user.txt/gate.md"], "user.txt"),
    ("gate-variant-unknown", ["gate", "{b}/results.json", "--policy", str(EXAMPLE_POLICY), "--variant",
                              "candidate-9"], "candidate-9"),
    # -- the main job (plan --goal ... --gpu ...) --
    ("main-goal-unknown", ["--goal", "p95-latancy", "--gpu", "a100"], "p95-latancy"),
    ("main-goal-long", ["--goal", LONG, "--gpu", "a100"], "zzzz"),
    ("main-gpu-unknown", ["--goal", "p95-latency", "--gpu", "a10x"], "a10x"),
    ("main-max-ppl-inf", [*MAIN, "--max-ppl-increase", "inf"], "inf"),
    ("main-max-ppl-nan", [*MAIN, "--max-ppl-increase", "nan"], "nan"),
    ("main-workload-alias-bomb", [*MAIN, "--workload", "{b}/workload-bomb.yaml"], "alias"),
    ("main-workload-duplicate-key", [*MAIN, "--workload", "{b}/workload-dup.yaml"], "prompt_len"),
    ("main-workload-huge-yaml", [*MAIN, "--workload", "{b}/workload-huge.yaml"], "1.0e+400"),
    ("main-workload-huge-json", [*MAIN, "--workload", "{b}/workload-huge.json"], "1e400"),
    ("main-workload-nan-json", [*MAIN, "--workload", "{b}/workload-nan.json"], "NaN"),
    ("main-workload-binary", [*MAIN, "--workload", "{b}/workload-binary.yaml"], "workload-binary.yaml"),
    ("main-workload-deep", [*MAIN, "--workload", "{b}/workload-deep.yaml"], "nested"),
    ("main-workload-long-dtype", [*MAIN, "--workload", "{b}/workload-dtype.yaml"], "zzzz"),
    ("main-workload-folder", [*MAIN, "--workload", "{b}/workload-dir.yaml"], "workload-dir.yaml"),
    ("main-output-user-file", [*MAIN, "-o", "{b}/user.txt"], "user.txt"),
    ("main-output-results", [*MAIN, "-o", "{b}/results.json"], "results.json"),
    ("main-output-unwritable", [*MAIN, "-o", "{b}/user.txt/plan.json"], "user.txt"),
    ("main-cache-unwritable", ["@env:PLANNER_CACHE={b}/user.txt/cache", *MAIN, "-o", "{b}/p-cache.json"],
     "user.txt"),
    ("main-rules-format-zz", [*MAIN, "--rules", "{b}/rules-zz"], "zz"),
    ("main-rules-width", [*MAIN, "--rules", "{b}/rules-wide"], "20000000"),
    ("main-rules-binary", [*MAIN, "--rules", "{b}/rules-binary"], "mine.yaml"),
    ("main-model-other-json", ["--goal", "p95-latency", "--gpu", "a100", "--model", "{b}/cfg-ok/other.json",
                               "--no-measure"], "other.json"),
    ("main-model-heads0", [*MAIN[:5], "{b}/cfg-heads0", "--no-measure"], "num_attention_heads"),
    # -- plan rules --check --
    ("rules-format-zz", ["rules", "--check", "{b}/rules-zz"], "zz"),
    ("rules-format-width", ["rules", "--check", "{b}/rules-wide"], "20000000"),
    ("rules-format-nested", ["rules", "--check", "{b}/rules-nested"], "{goal"),
    ("rules-format-attribute", ["rules", "--check", "{b}/rules-attr"], "gpu.__class__"),
    ("rules-binary", ["rules", "--check", "{b}/rules-binary"], "mine.yaml"),
    ("rules-duplicate-key", ["rules", "--check", "{b}/rules-dup"], "version"),
    ("rules-alias-bomb", ["rules", "--check", "{b}/rules-bomb"], "alias"),
    ("rules-long-id", ["rules", "--check", "{b}/rules-long-id"], "Bad_zzz"),
    ("rules-folder-missing", ["rules", "--check", "{b}/no-rules"], "no-rules"),
    # -- plan model: absurd configs --
    ("model-heads0", ["model", "--model", "{b}/cfg-heads0"], "num_attention_heads"),
    ("model-vocab0", ["model", "--model", "{b}/cfg-vocab0"], "vocab_size"),
    ("model-heads-not-dividing", ["model", "--model", "{b}/cfg-indivisible"], "5"),
    ("model-float-size", ["model", "--model", "{b}/cfg-float"], "64.5"),
    ("model-negative-layers", ["model", "--model", "{b}/cfg-layers-neg"], "-1"),
    ("model-hidden0", ["model", "--model", "{b}/cfg-hidden0"], "hidden_size"),
    ("model-kv-heads-3-of-4", ["model", "--model", "{b}/cfg-kv3"], "3 KV heads"),
    ("model-string-size", ["model", "--model", "{b}/cfg-string"], "wide"),
    ("model-binary-config", ["model", "--model", "{b}/cfg-binary"], "config.json"),
    ("model-other-json", ["model", "--model", "{b}/cfg-ok/other.json"], "other.json"),
    ("model-missing", ["model", "--model", "{b}/nope/"], "nope"),
    # -- plan profile --
    ("profile-output-user-file", ["profile", "--model", "{b}/cfg-ok", "--no-measure", "-o", "{b}/user.txt"],
     "user.txt"),
    ("profile-output-unwritable", ["profile", "--model", "{b}/cfg-ok", "--no-measure", "--prompt-len", "16",
                                   "-o", "{b}/user.txt/p.json"], "user.txt"),
    ("profile-workload-bomb", ["profile", "--model", "{b}/cfg-ok", "--no-measure", "--workload",
                               "{b}/workload-bomb.yaml"], "alias"),
    ("profile-gpu-unknown", ["profile", "--model", "{b}/cfg-ok", "--no-measure", "--gpu", "h1OO"], "h1OO"),
    # -- plan gpus --
    ("gpus-unknown", ["gpus", "a10"], "a10"),
    ("gpus-long-name", ["gpus", LONG], "zzzz"),
    ("gpus-check-unknown-field", ["gpus", "--check", "{b}/gpus-bad"], "memroy_gb"),
    ("gpus-check-unsourced", ["gpus", "--check", "{b}/gpus-unsourced"], "tdp_w"),
    ("gpus-check-missing-folder", ["gpus", "--check", "{b}/no-gpus"], "no-gpus"),
    ("gpus-user-folder-bad", ["gpus", "--gpus", "{b}/gpus-bad"], "my-gpu.yaml"),
    ("gpus-env-folder-bad", ["@env:PLANNER_GPUS={b}/gpus-bad", "gpus", "h100"], "memroy_gb"),
    ("main-gpus-folder-bad", [*MAIN, "--gpus", "{b}/gpus-bad"], "memroy_gb"),
    ("gpus-unknown-json", ["gpus", "zz-gpu", "--json"], "zz-gpu"),
]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in folder.rglob("*")}


def test_the_table_covers_every_command_with_enough_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    commands = {next(a for a in argv if not a.startswith("@")) for _, argv, _ in CASES}
    assert {"run", "report", "gate", "rules", "model", "profile", "gpus", "--goal"} <= commands


@pytest.mark.parametrize("argv, named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_short_message_and_touches_no_file(base, argv, named, capsys, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    args = []
    for a in argv:
        if a.startswith("@env:"):
            key, value = a[5:].split("=", 1)
            monkeypatch.setenv(key, value.replace("{b}", str(base)))
        elif a.startswith("@cwd:"):
            monkeypatch.chdir(base / a[5:])
        else:
            args.append(a.replace("{b}", str(base)))
    before = _hashes(base)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.encode()) < 2048, err[:300]
    assert named in err, err
    after = _hashes(base)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"files changed or removed: {changed}"
