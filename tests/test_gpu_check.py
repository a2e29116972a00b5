"""bench/gpu_check.py without a GPU: the dry run runs every step that needs no CUDA and writes its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(gpu_check, out, *extra):
    lines = []
    code = gpu_check.main(["--dry-run", "--out", str(out), *extra], say=lines.append)
    return code, lines, json.loads((out / "gpu_check.json").read_text())


def _check_dry_document(gpu_check, doc, n_linears):
    gpu_check.check_document(doc)
    steps = doc["steps"]
    assert doc["dry_run"] is True and doc["target_gpu"] == "h100-sxm"
    assert {name: s["status"] for name, s in steps.items()} == {
        "nvml": "done", "profile": "done", "serving": "skipped: no CUDA (projections only)",
        "gemm": "skipped: no CUDA (2:4 GEMMs not timed)", "sparse_2to4": "done", "calibration": "skipped: no CUDA"}
    nvml = steps["nvml"]["data"]
    assert nvml["catalog_entry"]["id"] == "h100-sxm" and nvml["catalog_entry"]["compute_capability"] == "9.0"
    matches = nvml["catalog_match_of_nvml_names"]
    assert matches["NVIDIA A100-SXM4-80GB"] == "a100-80gb-sxm" and matches["NVIDIA A100-SXM4-40GB"] == "a100-40gb-sxm"
    assert matches["NVIDIA H100 80GB HBM3"] == "h100-sxm" and matches["Tesla T4"] == "t4"
    if not torch.cuda.is_available():
        assert nvml["nvml"]["available"] is False
    profile = steps["profile"]["data"]
    assert profile["prefill"]["median_ms"] > 0 and profile["decode"]["median_ms"] > 0
    assert profile["measured_on"].startswith("measured on cpu")
    assert sum(profile["decode"]["by_category_ms"].values()) > 0
    serving = steps["serving"]["data"]["runtimes"]
    for runtime in ("hf-eager", "hf-compile"):
        assert serving[runtime]["measured"] == "skipped: no CUDA"
        assert serving[runtime]["projected"]["tpot_ms"] > 0
    # CUDA graphs remove the per-layer host time: hf-compile is projected faster per token on the same GPU
    assert serving["hf-compile"]["projected"]["tpot_ms"] < serving["hf-eager"]["projected"]["tpot_ms"]
    rows = steps["gemm"]["data"]["rows"]
    assert [r["tokens"] for r in rows] == [1, 16, 256] and all(r["dense_ms"] > 0 for r in rows)
    assert all(r["sparse_ms"] == "skipped: no CUDA" for r in rows)
    sparse = steps["sparse_2to4"]["data"]
    assert sparse["pruned"]["achieved_sparsity"] == pytest.approx(0.5)
    assert sparse["plan"]["layers"] == n_linears and sparse["end_to_end"] == "skipped: no CUDA"
    assert sparse["plan"]["backend"] == "cusparselt" and sparse["plan"]["fallback"] is None
    return sparse


def test_dry_run_on_a_tiny_model(gpu_check, tmp_path):
    folder = save_tiny(tmp_path, "llama")
    out = tmp_path / "check"
    code, lines, doc = _dry_run(gpu_check, out, "--model", str(folder), "--prompt-len", "16", "--gen-len", "4")
    assert code == 0
    sparse = _check_dry_document(gpu_check, doc, n_linears=21)
    assert sparse["plan"]["qualify"] == 21 and sparse["plan"]["kept_dense"] == {}  # every tiny linear fits cuSPARSELt
    table = lines[lines.index(next(line for line in lines if line.startswith("step "))):]
    assert table[0].split() == ["step", "status", "s", "figures"] and len(table) == 8  # header, 6 steps, path
    assert [line.split()[0] for line in table[1:7]] == list(gpu_check.STEPS)
    assert lines[-1].endswith("gpu_check.json")
    # the folder now holds only its own document: a second dry run may rewrite it
    assert _dry_run(gpu_check, out, "--model", str(folder), "--prompt-len", "16", "--gen-len", "4",
                    "--steps", "nvml,sparse_2to4")[0] == 0


@pytest.mark.slow
def test_dry_run_on_the_embedded_model(gpu_check, tmp_path):
    code, _, doc = _dry_run(gpu_check, tmp_path / "check")
    assert code == 0
    sparse = _check_dry_document(gpu_check, doc, n_linears=30 * 7)
    assert sparse["plan"]["qualify"] == 210  # SmolLM2-135M: 576/192/1536-wide linears, all multiples of 16


def test_bad_input_exits_2(gpu_check, tmp_path, capsys):
    cases = [(["--dry-run", "--out", str(tmp_path / "a"), "--gpu", "a10"], "did you mean a10g"),
             (["--dry-run", "--out", str(tmp_path / "b"), "--steps", "gemm,warp"], "unknown step(s) warp"),
             (["--dry-run", "--out", str(tmp_path / "c"), "--dtype", "fp32"], "--dtype must be bf16 or fp16"),
             (["--dry-run", "--out", str(tmp_path / "d"), "--requests", "0"], "--requests must be >= 1")]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "other.txt").write_text("not ours")
    cases.append((["--dry-run", "--out", str(tmp_path / "e")], "must be a new or empty folder"))
    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path / "f")], "no CUDA device is visible to torch; run with --dry-run"))
    for argv, message in cases:
        assert gpu_check.main(argv, say=lambda line: None) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert (tmp_path / "e" / "other.txt").read_text() == "not ours"


def test_two_four_helper_makes_a_real_2to4_pattern(gpu_check):
    from planner.prune.masked.patterns import nm_violations

    w = torch.randn(32, 64)
    pruned = gpu_check.two_four(w)
    assert nm_violations(pruned != 0, 2, 4) == 0 and int((pruned == 0).sum()) == 32 * 64 // 2
    kept = pruned != 0
    assert torch.equal(pruned[kept], w[kept])  # the larger two of every four are kept as they were
