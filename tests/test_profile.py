"""run_profile, facts, provenance labels, the profile cache, NVML fallback and `plan profile`."""

import json
import sys
import types

import pytest

from planner.cli import main
from planner.errors import InputError
from planner.profile import FACT_NAMES, load_or_run_profile, read_profile, run_profile
from planner.profile.nvml import match_catalog, query_nvml
from planner.profile.schema import Profile
from planner.workload import Workload
from tiny import save_tiny, tiny_config

SMALL = Workload(prompt_len=24, gen_len=6, batch_size=1, dtype="bf16")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache folder for the module, so local peaks are measured once."""
    return tmp_path_factory.mktemp("planner-cache")


@pytest.fixture(autouse=True)
def _cache(cache_root, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE", str(cache_root))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt"), "llama")


@pytest.fixture(scope="module")
def profile(tiny_folder, cache_root):
    mp = pytest.MonkeyPatch()
    mp.setenv("PLANNER_CACHE", str(cache_root))
    try:
        return run_profile(str(tiny_folder), "a100", SMALL, decode_steps=3, repeats=2)
    finally:
        mp.undo()


@pytest.fixture
def config_only(tmp_path):
    folder = tmp_path / "llama-config-only"
    tiny_config("llama", max_position_embeddings=1024).save_pretrained(folder)  # holds the default workload
    return folder


def test_profile_has_measured_and_projected_parts(profile, tiny_folder):
    assert profile.document == "planner-profile" and profile.version == 1
    assert profile.model.source_kind == "folder" and profile.model.shape.num_layers == 3
    assert profile.target_gpu == "a100-80gb-sxm"
    m = profile.measured
    assert m is not None and m.dtype == "fp32"
    assert m.prefill.new_tokens == 24 and len(m.decode.unprofiled_ms) == 3
    assert m.peaks.flops > 0 and m.peaks.bandwidth > 0
    # the local roofline is computed at the measured lengths with the measured peaks
    assert m.local_roofline.workload.prompt_len == 24
    assert m.local_roofline.peak_flops == m.peaks.flops
    assert m.prefill.local_lower_bound_ms == m.local_roofline.prefill_ms
    assert 0 < m.prefill.efficiency
    assert profile.projected.workload == SMALL.model_copy(update={"runtime": "vllm"})  # the GPU target's default
    assert profile.model.parameters == profile.projected.parameters


def test_every_section_says_where_its_figures_come_from(profile):
    local = profile.local.label
    assert local.startswith("cpu (")
    assert profile.measured.label == f"measured on {local}"
    assert profile.measured.prefill.label.startswith("measured on cpu")
    assert profile.measured.peaks.label.startswith("measured on cpu")
    assert profile.projected.label.startswith("projected to a100-80gb-sxm (bf16")
    assert profile.memory.label.startswith("projected to a100-80gb-sxm")
    assert profile.labels["measured"].startswith("measured on cpu")
    assert profile.labels["projected"].startswith("projected to a100-80gb-sxm")
    assert "NVML" in profile.labels["local_device"]


def test_facts(profile):
    facts = profile.facts
    assert tuple(facts) == FACT_NAMES
    # a tiny model under vLLM: per-step overhead, not bytes, bounds decode; the bare roofline says memory
    assert facts["decode_bound"] == "overhead" and profile.projected.decode.bound == "memory"
    assert facts["overhead_bound"] is True and facts["runtime"] == "vllm" and facts["runtime_cuda_graphs"] is True
    assert 0.5 <= facts["decode_overhead_share"] <= 1.0
    assert facts["prefill_bound"] in ("memory", "compute", "overhead")
    assert facts["dominant_phase"] in ("prefill", "decode")
    assert facts["measured"] is True and facts["gqa"] is True and facts["num_layers"] == 3.0
    assert facts["fits_on_gpu"] is True and 0 < facts["memory_headroom_frac"] < 1
    assert facts["weights_gb"] == pytest.approx(profile.projected.weight_bytes / 1e9)
    assert facts["weights_gb"] == pytest.approx(profile.model.parameters * 2 / 1e9)  # bf16
    assert facts["request_ms_projected"] == pytest.approx(
        facts["prefill_ms_projected"] + SMALL.gen_len * facts["decode_ms_per_token_projected"])
    shares = [facts[f"{c}_time_share"] for c in ("mlp", "attn_proj", "attn_core", "lm_head")]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) <= 1.0
    assert facts["non_model_share"] == 0.0
    for name, value in facts.items():
        assert isinstance(value, (float, str, bool)), name


def test_non_model_share_and_memory_fit(tiny_folder):
    w = Workload(prompt_len=64, gen_len=16, network_ms=30.0, queueing_ms=10.0)
    p = run_profile(str(tiny_folder), "t4", w.model_copy(update={"dtype": "fp16"}), measure=False)
    f = p.facts
    assert f["non_model_share"] == pytest.approx(40.0 / (40.0 + f["request_ms_projected"]))
    assert f["measured"] is False and p.measured is None and "skipped" in p.measured_note
    assert p.memory.gpu_memory_bytes == 16e9
    assert p.memory.total_bytes == pytest.approx(p.memory.weight_bytes + p.memory.kv_cache_bytes
                                                 + p.memory.activation_peak_bytes)


def test_profile_round_trips_through_json(profile, tmp_path):
    from planner.profile import save_profile

    path = save_profile(profile, tmp_path / "profile.json")
    data = json.loads(path.read_text())
    assert data["facts"]["decode_bound"] == "overhead"  # derived figures are written for readers
    again = read_profile(path)
    assert again == profile
    assert again.facts == profile.facts


def test_config_only_model_is_projected_not_measured(config_only):
    p = run_profile(str(config_only), "h100", Workload(prompt_len=128, gen_len=32))
    assert p.measured is None
    assert "config-only" in p.measured_note
    assert p.model.weights_present is False
    assert p.projected.prefill_ms > 0 and p.facts["measured"] is False
    assert p.labels["measured"].startswith("not measured")


def test_cache_reuses_a_profile(config_only, monkeypatch, cache_root):
    import planner.profile as prof

    w = Workload(prompt_len=100, gen_len=10)
    first = load_or_run_profile(str(config_only), "a100", w)
    assert list((cache_root / "profiles").glob("*.json"))

    def refuse(*args, **kwargs):
        raise AssertionError("the cached profile should have been used")

    monkeypatch.setattr(prof, "run_profile", refuse)
    again = load_or_run_profile(str(config_only), "a100", w)
    assert again == first
    with pytest.raises(AssertionError):  # another GPU or workload is another profile
        load_or_run_profile(str(config_only), "h100", w)
    with pytest.raises(AssertionError):
        load_or_run_profile(str(config_only), "a100", w.model_copy(update={"prompt_len": 101}))
    with pytest.raises(AssertionError):
        load_or_run_profile(str(config_only), "a100", w, refresh=True)


def test_bad_inputs_are_input_errors(config_only):
    from planner.errors import InputError

    with pytest.raises(InputError, match="did you mean"):
        run_profile(str(config_only), "a10", SMALL, measure=False)
    with pytest.raises(InputError, match="repeats"):
        run_profile(str(config_only), "a100", SMALL, repeats=0)


# -- NVML ------------------------------------------------------------------------------------------------------


def test_nvml_failure_is_reported_not_raised(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    report = query_nvml()
    assert report.available is False and "no NVIDIA device" in report.status and report.devices == []


def test_nvml_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    report = query_nvml()
    assert report.available is False and "cannot be imported" in report.status


def test_nvml_device_facts_and_catalog_match(monkeypatch):
    """A fake NVML library reporting an A100 80GB SXM: facts are read and matched to the catalog."""
    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"550.54.15",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: "NVIDIA A100-SXM4-80GB",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=85_899_345_920, used=1_000_000),
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 0),
        nvmlDeviceGetPowerUsage=lambda h: 61_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 400_000,
        nvmlDeviceGetClockInfo=lambda h, kind: 1410 if kind == 0 else 1593,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1410,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    report = query_nvml()
    assert report.available and report.driver_version == "550.54.15"
    device = report.devices[0]
    assert device.catalog_id == "a100-80gb-sxm" and device.compute_capability == "8.0"
    assert device.power_w == 61.0 and device.power_limit_w == 400.0 and device.memory_clock_mhz == 1593


@pytest.mark.parametrize("name,gib,expected", [
    ("NVIDIA A100-SXM4-40GB", 40, "a100-40gb-sxm"), ("NVIDIA A100 80GB PCIe", 80, "a100-80gb-pcie"),
    ("NVIDIA H100 80GB HBM3", 80, "h100-sxm"), ("NVIDIA H100 PCIe", 80, "h100-pcie"), ("NVIDIA L4", 23, "l4"),
    ("NVIDIA L40S", 45, "l40s"), ("Tesla T4", 15, "t4"), ("NVIDIA GeForce RTX 4090", 24, "rtx-4090"),
    ("NVIDIA GeForce GTX 1080", 8, None),
])
def test_match_catalog(name, gib, expected):
    assert match_catalog(name, gib * 2**30) == expected


# -- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_profile_without_nvidia_device(tiny_folder, tmp_path, monkeypatch, capsys):
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    out = tmp_path / "profile.json"
    code = main(["profile", "--model", str(tiny_folder), "--gpu", "l4", "--prompt-len", "16", "--gen-len", "4",
                 "--repeats", "1", "--decode-steps", "2", "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "measured on cpu" in text and "projected to l4" in text and "no NVIDIA device" in text
    saved = read_profile(out)
    assert saved.target_gpu == "l4" and saved.measured is not None and saved.local.nvml.available is False


def test_cli_refuses_to_overwrite_other_files(config_only, tmp_path):
    victim = tmp_path / "notes.json"
    victim.write_text('{"mine": true}')
    assert main(["profile", "--model", str(config_only), "-o", str(victim)]) == 2
    assert victim.read_text() == '{"mine": true}'
    assert main(["profile", "--model", str(config_only), "-o", str(tmp_path)]) == 2


def test_cli_json_and_overwrite_own_profile(config_only, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "--model", str(config_only), "--gpu", "h100", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["profile", "--model", str(config_only), "--gpu", "h100", "--json", "-o", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["document"] == "planner-profile" and data["measured"] is None
    assert Profile.model_validate(data).facts == data["facts"]


def test_cli_bad_values_exit_2(config_only, tmp_path, capsys):
    assert main(["profile", "--model", str(config_only), "--gpu", "a10", "-o", str(tmp_path / "x.json")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["profile", "--model", str(config_only), "--dtype", "fp7", "-o", str(tmp_path / "x.json")]) == 2


# -- the embedded model ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_default_workload(embedded_path):
    # one thread: on a crowded CI host two OpenMP threads wait on each other at every op (3x slower here)
    p = run_profile(None, "a100", Workload(), threads=1)
    m = p.measured
    assert p.model.shape.num_layers == 30 and abs(p.model.parameters - 134.5e6) < 0.1e6
    for phase in (m.prefill, m.decode):
        assert phase.coverage >= 0.95 and phase.op_coverage >= 0.95
        assert sum(phase.by_category.values()) == pytest.approx(phase.total_ms, rel=1e-9)
    assert m.prefill.new_tokens == 512 and len(m.decode.unprofiled_ms) == 16
    assert p.facts["decode_bound"] in ("memory", "overhead") and p.facts["measured"] is True


def test_importing_the_profiler_touches_no_torch_or_nvml():
    import subprocess

    code = ("import sys, planner.profile, planner.profile.measure, planner.profile.peaks, planner.profile.device, "
            "planner.cli.profile_cmd; print(sorted(m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_prompt_with_no_room_for_the_measured_decode_steps_is_measured_at_its_limit(tiny_folder):
    p = run_profile(str(tiny_folder), "a100", Workload(prompt_len=254, gen_len=2), decode_steps=2, repeats=1)
    assert p.measured.prefill.new_tokens == 256 - 2 - 2  # 256 positions, 2 warm-up + 2 timed decode steps
    assert any("prompt measured at 252 tokens" in note for note in p.measured.notes)
    assert p.projected.workload.prompt_len == 254


def test_workload_longer_than_the_model_is_bad_input(tiny_folder, tmp_path, capsys):
    expected = "prompt_len 300 \\+ gen_len 4 exceeds the model's max_position_embeddings 256"
    with pytest.raises(InputError, match=expected):
        run_profile(str(tiny_folder), "a100", Workload(prompt_len=300, gen_len=4), measure=False)
    assert main(["--goal", "p95-latency", "--gpu", "a100", "--model", str(tiny_folder), "--no-measure",
                 "--prompt-len", "300", "--gen-len", "4", "-o", str(tmp_path / "plan.json")]) == 2
    assert not (tmp_path / "plan.json").exists()
    assert "at most 256 tokens" in capsys.readouterr().err
