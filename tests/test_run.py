"""The runner end to end on a tiny checkpoint: stages, run folder, resume after a kill, bad plans, CLI."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import transformers

from planner.cli import main
from planner.decide.plan import Candidate, Plan, Verdict, load_plan, save_plan
from planner.errors import InputError
from planner.prune.specs import CalibrationSpec, MlpChannelPruning, SemiStructuredPruning
from planner.recover.specs import RecoverySpec
from planner.run import run_plan
from planner.run.results import load_results
from planner.workload import Workload
from tiny import save_tiny


def folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def make_plan(model: Path, path: Path) -> Path:
    recovery = RecoverySpec(method="distill", max_steps=2, batch_size=2, seq_len=32, max_minutes=2)
    common = dict(projected_to="a100-80gb-sxm", basis="projected to a100-80gb-sxm (roofline model)",
                  goal_metric="p95_ms", quality_risk="low", calibration=CalibrationSpec(num_samples=2, seq_len=32))
    plan = Plan(model=str(model), goal="p95-latency", gpu="a100-80gb-sxm", goal_metric="p95_ms",
                rules_version="test", workload=Workload(prompt_len=16, gen_len=4),
                verdict=Verdict(action="prune", text="prune MLP channels"),
                candidates=[
                    Candidate(rank=1, name="mlp-50", label="MLP channels -50%", prune=MlpChannelPruning(
                        ratio=0.5, criterion="magnitude"), recovery=recovery, predicted_speedup=1.4, **common),
                    Candidate(rank=2, name="nm-2-4", label="2:4", prune=SemiStructuredPruning(criterion="magnitude"),
                              recovery=recovery, predicted_speedup=1.1, **common)])
    return save_plan(plan, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    model = save_tiny(base, "llama")
    prompts = base / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "The interpreter", "max_new_tokens": 4, "chat": False})
                       + "\n" + json.dumps({"id": "b", "prompt": "2 + 2 =", "gold": "4", "match": "number",
                                            "max_new_tokens": 3, "chat": False}) + "\n")
    text = base / "notes.txt"
    text.write_text("Our product answers questions about invoices and shipping dates. " * 60)
    return base, model, make_plan(model, base / "plan.json"), prompts, text


@pytest.fixture(scope="module")
def full_run(setup):
    base, model, plan, prompts, text = setup
    before = folder_hash(model)
    out = base / "run-all"
    code = main(["run", str(plan), "--out", str(out), "--all", "2", "--slices", "none", "--eval-prompts",
                 str(prompts), "--eval-text", str(text), "--ppl-seq-len", "64", "--ppl-tokens", "1024",
                 "--requests", "3", "--warmup", "1", "--no-memory"])
    return code, out, before, model


def test_full_run_writes_dense_and_pruned_quality_and_latency(full_run):
    code, out, before, model = full_run
    assert code == 0
    r = load_results(out / "results.json")
    assert [v.name for v in r.variants] == ["dense", "mlp-50", "nm-2-4"]
    dense, mlp, nm = r.variants
    for v in r.variants:
        assert v.quality.heldout_ppl > 1 and v.quality.user_text_ppl > 1
        assert v.latency.requests == 3 and v.latency.p95_ms > 0 and v.latency.ttft_p50_ms > 0
        assert v.latency.measured_on == r.provenance.device.label
    assert dense.quality.slices["user"].kl == 0.0 and dense.quality.slices["user"].top1_agreement == 1.0
    assert mlp.quality.slices["user"].positions == dense.quality.slices["user"].positions == 7
    assert mlp.size.shape["intermediate_size"] == 64 and dense.size.shape["intermediate_size"] == 128
    assert mlp.size.parameters < dense.size.parameters and nm.size.parameters == dense.size.parameters
    assert nm.size.pattern == "2:4" and nm.size.achieved_sparsity == pytest.approx(0.5)
    # the dense safetensors file keeps every zero; only the bitmask copy shrinks, and only for masked kinds
    assert nm.size.compressed_file_bytes < nm.size.file_bytes and mlp.size.compressed_file_bytes is None
    assert nm.size.checkpoint_bytes == nm.size.compressed_file_bytes
    assert mlp.recovery.steps == 2 and len(mlp.recovery.loss_curve) == 2
    assert mlp.recovery.ppl_after == mlp.quality.heldout_ppl and mlp.recovery.ppl_before > 1
    assert [s.variant for s in r.speedups] == ["mlp-50", "nm-2-4"]
    assert r.speedups[0].predicted == 1.4
    assert r.speedups[0].measured == pytest.approx(dense.latency.p95_ms / mlp.latency.p95_ms)
    assert {"plan", "model"} <= set(r.provenance.input_hashes)
    assert any(k.startswith("eval_prompts:") for k in r.provenance.input_hashes)
    packages = r.provenance.packages
    assert {"torch", "transformers", "safetensors", "pydantic", "numpy"} <= set(packages)
    assert packages["torch"].split("+")[0] == torch.__version__.split("+")[0]  # the torch that ran the stages
    assert packages["transformers"] == transformers.__version__
    assert [s.name for s in r.stages] == ["teacher", "quality:dense", "prune:1", "recover:1", "quality:1",
                                          "prune:2", "recover:2", "quality:2", "latency"]
    assert folder_hash(model) == before  # the source model is never modified
    html = (out / "report.html").read_text()
    assert "mlp-50" in html and "nm-2-4" in html


def test_exported_checkpoints_reload_with_their_shapes_and_masks(full_run):
    from transformers import AutoModelForCausalLM

    _, out, _, _ = full_run
    r = load_results(out / "results.json")
    mlp = AutoModelForCausalLM.from_pretrained(r.variant("mlp-50").checkpoint)
    assert mlp.model.layers[0].mlp.up_proj.weight.shape == (64, 64)
    nm = AutoModelForCausalLM.from_pretrained(r.variant("nm-2-4").checkpoint)
    w = nm.model.layers[1].mlp.down_proj.weight
    zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
    assert bool((zeros >= 2).all())  # recovery kept the 2:4 masks the pruning stage saved
    from planner.export import load_compressed

    state = load_compressed(r.variant("nm-2-4").checkpoint)
    for name, value in nm.state_dict().items():
        assert torch.equal(state[name], value), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["candidates"] == [1, 2] and manifest["kind"] == "planner.run"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (None, "unknown key"),
    (None, "ratio"),
])
def test_corrupt_or_hand_edited_plan_exits_2(setup, tmp_path, capsys, content, message):
    _, _, plan, _, _ = setup
    data = json.loads(Path(plan).read_text())
    if content is None and message == "unknown key":
        data["candidates"][0]["pruned_by_hand"] = True
    elif content is None:
        data["candidates"][0]["prune"]["ratio"] = 1.5
    bad = tmp_path / "plan.json"
    bad.write_text(content if content is not None else json.dumps(data))
    assert main(["run", str(bad), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_run_arguments_exit_2(setup, tmp_path, capsys):
    _, _, plan, _, _ = setup
    assert main(["run", str(plan), "--candidate", "7", "--out", str(tmp_path / "a")]) == 2
    assert "no candidate of rank 7 (accepted: 1, 2)" in capsys.readouterr().err
    assert main(["run", str(plan), "--slices", "maths", "--out", str(tmp_path / "b")]) == 2
    assert "did you mean math" in capsys.readouterr().err
    assert main(["run", str(plan), "--resume", "--out", str(tmp_path / "c")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["run", str(plan), "--prompt-len", "250", "--gen-len", "10", "--out", str(tmp_path / "f")]) == 2
    assert "prompt_len 250 + gen_len 10 exceeds the model's max_position_embeddings 256" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()  # nothing was started, so nothing blocks a corrected run
    assert main(["run", str(plan), "--eval-prompts", str(tmp_path / "missing.jsonl"), "--out",
                 str(tmp_path / "d")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    assert main(["run", str(plan), "--eval-text", str(short), "--slices", "none", "--out", str(tmp_path / "e")]) == 2
    assert "perplexity needs at least one window of 256" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, run_message, bench_message", [
    ("requests", 0, "requests must be >= 1, got 0", "benchmark requests must be >= 1, got 0"),
    ("warmup", -1, "warmup must be >= 0, got -1", "benchmark warmup must be >= 0, got -1"),
    ("prompt_len", 0, "prompt-len must be >= 1, got 0", "benchmark prompt_len must be >= 1, got 0"),
    ("runtime", "vlm", "unknown runtime 'vlm'; did you mean vllm?", "unknown runtime 'vlm'; did you mean vllm?"),
])
def test_run_options_and_the_benchmark_check_the_same_bounds(option, value, run_message, bench_message):
    from planner.latency import BenchConfig
    from planner.run.runner import RunOptions

    with pytest.raises(InputError) as run_error:
        RunOptions(**{option: value}).check()
    with pytest.raises(InputError) as bench_error:
        BenchConfig(**{option: value}).check()
    assert str(run_error.value).startswith(run_message) and str(bench_error.value).startswith(bench_message)
    RunOptions(prompt_len=None, gen_len=None, batch_size=None, threads=None).check()  # None: the plan's, or torch's


def test_masks_round_trip(tmp_path):
    from planner.run.masks import load_masks, save_masks

    g = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(5, 7, generator=g) > 0.5, "b": torch.rand(3, generator=g) > 0.3}
    back = load_masks(save_masks(masks, tmp_path / "m.safetensors"))
    assert back.keys() == masks.keys() and all(torch.equal(back[k], masks[k]) for k in masks)


def test_ctrl_c_after_pruning_then_resume_does_not_redo_pruning(setup, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    import planner.prune
    from planner.decide.plan import load_plan

    base, model, _, _, _ = setup
    plan = load_plan(base / "plan.json")
    plan.candidates[0].recovery.max_steps = 100_000  # the time budget stops it: the signal lands inside recovery
    plan.candidates[0].recovery.max_minutes = 0.3
    plan_path = save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "planner", "run", str(plan_path), "--out", str(out), "--slices", "none",
           "--ppl-seq-len", "64", "--ppl-tokens", "1024", "--requests", "2", "--warmup", "0", "--no-memory",
           "--no-report", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONPATH": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "stages" / "prune-1.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "no prune marker"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "resume" in err
    assert not (out / "stages" / "recover-1.json").exists() and not (out / "1-mlp-50" / "model").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    def no_pruning(*a, **k):
        raise AssertionError("pruning ran again on resume")

    monkeypatch.setattr(planner.prune, "apply_pruning", no_pruning)
    same = dict(slices=[], ppl_seq_len=64, ppl_max_tokens=1024, requests=2, warmup=0, measure_memory=False,
                report=False, progress=False)
    with pytest.raises(InputError, match="already holds a run"):
        run_plan(plan_path, out_dir=out, **same)
    with pytest.raises(InputError, match="options changed.*requests"):
        run_plan(plan_path, out_dir=out, resume=True, **{**same, "requests": 5})
    moved = tmp_path / "moved"  # stage outputs name files relative to the run folder: a moved run resumes too
    out.rename(moved)
    r = run_plan(plan_path, out_dir=moved, resume=True, **same)
    status = {s.name: s.status for s in r.stages}
    assert status["prune:1"] == status["teacher"] == status["quality:dense"] == "resumed"
    assert status["recover:1"] == status["latency"] == "done"
    mlp = r.variant("mlp-50")
    assert mlp.size.shape["intermediate_size"] == 64 and mlp.pruning.seconds > 0  # from the first run's output
    assert mlp.recovery.stopped_by == "max_minutes"  # the plan's (long) recovery ran on resume, to its time budget


def test_the_run_folder_keeps_the_profile_the_plan_was_decided_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    model = save_tiny(tmp_path, "qwen2")
    plan_path = tmp_path / "plan.json"
    assert main(["--goal", "p95-latency", "--gpu", "cpu", "--model", str(model), "--prompt-len", "16",
                 "--gen-len", "4", "--max-ppl-increase", "5", "-o", str(plan_path)]) == 0
    recorded = Path(load_plan(plan_path).profile["path"])
    assert recorded.is_file() and recorded.is_relative_to(tmp_path / "cache")
    out = tmp_path / "run"
    assert main(["run", str(plan_path), "--out", str(out), "--slices", "none", "--ppl-seq-len", "64",
                 "--ppl-tokens", "512", "--requests", "2", "--warmup", "1", "--no-memory", "--quiet"]) == 0
    assert (out / "profile.json").read_text() == recorded.read_text()
    recorded.unlink()  # the cache may be cleared; the run folder's report still has the profile
    capsys.readouterr()
    assert main(["report", str(out / "results.json"), "-o", str(tmp_path / "again.html")]) == 0
    html = (tmp_path / "again.html").read_text()
    assert "profile.json was not found" not in html and "Kernel-category breakdown" in html


def test_a_quantization_candidate_runs_beside_a_pruned_one(setup, tmp_path):
    """`plan run --all 2` with an int8 weight-only candidate (no pruning) and an MLP cut: the quantized variant is
    quantized by torchao, exported, reloaded for quality and latency, and recorded with its scheme and sizes."""
    from planner.quant.specs import QuantSpec

    base, model, _, _, _ = setup
    common = dict(projected_to="a100-80gb-sxm", basis="projected to a100-80gb-sxm (roofline model)",
                  goal_metric="p95_ms", quality_risk="low", calibration=CalibrationSpec(num_samples=2, seq_len=32))
    plan = Plan(model=str(model), goal="checkpoint-size", gpu="a100-80gb-sxm", goal_metric="file_bytes",
                rules_version="test", workload=Workload(prompt_len=16, gen_len=4),
                verdict=Verdict(action="quantize", text="quantize"),
                candidates=[Candidate(rank=1, name="int8", label="int8 weight-only", prune=None,
                                      quantize=QuantSpec(scheme="int8-weight-only"),
                                      recovery=RecoverySpec(method="none"), predicted_speedup=1.6, **common),
                            Candidate(rank=2, name="mlp-50", label="MLP channels -50%",
                                      prune=MlpChannelPruning(ratio=0.5, criterion="magnitude"),
                                      recovery=RecoverySpec(method="none"), predicted_speedup=1.3, **common)])
    path = save_plan(plan, tmp_path / "plan.json")
    r = run_plan(path, out_dir=tmp_path / "run", all_top=2, slices=[], ppl_seq_len=64, ppl_max_tokens=1024,
                 requests=2, warmup=0, measure_memory=False, report=True, progress=False)
    dense, quant, cut = r.variants
    assert quant.quantization is not None and quant.pruning is None and cut.quantization is None
    assert quant.quantization.spec.scheme == "int8-weight-only" and quant.size.pattern == "int8-weight-only"
    assert quant.quantization.linears_quantized == 3 * 7  # every projection of the 3 decoder layers
    assert quant.quantization.quantized_bytes < quant.quantization.dense_bytes / 3  # fp32 -> int8 + scales
    assert quant.size.file_bytes < dense.size.file_bytes and "torchao" in quant.quantization.backend
    assert quant.quality.heldout_ppl == pytest.approx(dense.quality.heldout_ppl, rel=0.05)
    assert quant.latency is not None and quant.latency.requests == 2
    assert {s.name for s in r.stages} >= {"quantize:1", "prune:2", "quality:1", "latency"}
    assert "int8 weight-only" in (tmp_path / "run" / "report.html").read_text()
