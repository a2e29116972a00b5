"""Local peak micro-benchmarks and their per-host cache."""

import json

import pytest

from planner.errors import InputError
from planner.profile import peaks


def test_micro_benchmarks_measure_something_plausible():
    flops, n = peaks.measure_gemm_flops("fp32", n=128)
    assert n == 128 and 1e7 < flops < 1e14
    bandwidth, nbytes = peaks.measure_copy_bandwidth(nbytes=8 << 20)
    assert nbytes == 8 << 20 and 1e7 < bandwidth < 1e13


def test_peaks_are_cached_per_host(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path))
    calls = []
    real_gemm, real_copy = peaks.measure_gemm_flops, peaks.measure_copy_bandwidth
    monkeypatch.setattr(peaks, "measure_gemm_flops", lambda d, dev: calls.append(d) or real_gemm(d, dev, n=64))
    monkeypatch.setattr(peaks, "measure_copy_bandwidth", lambda dev: real_copy(dev, nbytes=1 << 20))
    monkeypatch.setattr(peaks, "_host_busy", lambda: (False, 0.5))
    first = peaks.measure_local_peaks("fp32")
    assert first["cached"] is False and first["flops"] > 0 and first["bandwidth"] > 0 and first["gemm_n"] == 64
    second = peaks.measure_local_peaks("fp32")
    assert second["cached"] is True and second["flops"] == first["flops"] and len(calls) == 1
    files = list((tmp_path / "peaks").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["flops"] == first["flops"]
    # figures taken on a busy host are measured again once it is quiet
    files[0].write_text(json.dumps(json.loads(files[0].read_text()) | {"host_busy": True}))
    assert peaks.measure_local_peaks("fp32")["cached"] is False and len(calls) == 2
    files[0].write_text("not json")
    assert peaks.measure_local_peaks("fp32")["cached"] is False and len(calls) == 3


def test_unknown_dtype():
    with pytest.raises(InputError, match="fp8.*accepted: fp32, bf16, fp16"):
        peaks.measure_local_peaks("fp8")
