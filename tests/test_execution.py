"""How `plan run` would execute a plan (planner.decide.execution) from the config's footprints (planner.perf.footprint)."""

from __future__ import annotations

import json

import pytest

from planner.arch import get_adapter
from planner.cli import main
from planner.decide.execution import run_execution
from planner.gpus import get_gpu
from planner.layered.memory import recovery_need
from planner.perf.footprint import PROCESS_BASE_BYTES, embedding_parameters, layer_parameters, parameter_count
from planner.prune.specs import CalibrationSpec
from planner.recover.specs import RecoverySpec
from tiny import FAMILIES, tiny_config, tiny_model

LLAMA3_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}


def _candidates(*methods, samples=32, seq_len=512):
    from types import SimpleNamespace

    return [SimpleNamespace(calibration=CalibrationSpec(num_samples=samples, seq_len=seq_len), prune=None,
                            recovery=RecoverySpec(method=m)) for m in methods]


def _shape(config):
    return get_adapter(config).shape(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_and_embedding_parameters_match_a_real_build(family):
    config = tiny_config(family)
    model = tiny_model(family)
    shape = _shape(config)
    layer = get_adapter(model).get_layers(model)[0]
    assert layer_parameters(shape) == sum(p.numel() for p in layer.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert parameter_count(shape) == total
    assert embedding_parameters(shape) == total - shape.num_layers * layer_parameters(shape)


def test_a_70b_model_runs_layer_by_layer_here_and_serves_on_two_a100s():
    from transformers import LlamaConfig

    shape = _shape(LlamaConfig(**LLAMA3_70B))
    facts = {"weights_gb": parameter_count(shape) * 2 / 1e9, "kv_cache_gb": 0.2, "gpu_usable_memory_gb": 76.0}
    ex = run_execution(shape, device="cpu (test)", device_kind="cpu", available_bytes=24e9, serving_dtype="bf16",
                       flops=1e11, candidates=_candidates("none", "distill", "lora"), facts=facts,
                       target=get_gpu("a100-80gb-sxm"))
    params = parameter_count(shape)
    here, gpu = ex.here, ex.on_target
    assert 70.5e9 < params < 70.6e9  # Llama-3-70B: 70.55B
    assert here.run_dtype == "fp32" and here.weights_bytes == params * 4
    assert here.in_memory_bytes == int(PROCESS_BASE_BYTES + 2 * params * 4)
    assert here.mode == "layer-by-layer" and ex.mode == "layer-by-layer"
    assert here.layer_bytes == layer_parameters(shape) * 4 < here.layered_minimum_bytes < 24e9
    assert gpu.run_dtype == "bf16" and gpu.weights_bytes == params * 2 and gpu.mode == "layer-by-layer"
    assert ex.recovery_method == "distill"  # the most demanding of the candidates'
    need = recovery_need(shape, shape, RecoverySpec(method="distill")).total
    assert here.recovery_bytes == int(PROCESS_BASE_BYTES + need) and need > 16 * params  # weights x2, grads, AdamW
    assert here.recovery_fits is False
    assert ex.target_gpus == 2  # 141 GB of bf16 weights on 76 GB usable
    # compute time of the passes: 2 FLOPs per weight per token, calibration (16,384) + held-out (16,384) tokens
    assert here.pass_minutes == pytest.approx(gpu.pass_minutes * get_gpu("a100-80gb-sxm").peak_flops("bf16") / 1e11)
    assert 600 < here.pass_minutes < 800
    text = "\n".join(ex.lines())
    assert "--max-memory >=" in text and "does NOT fit" in text and "2 GPUs" in text and "(projected)" in text


def test_small_models_run_in_memory_and_nothing_fits_in_too_little():
    from transformers import LlamaConfig

    shape = _shape(tiny_config("llama"))
    ex = run_execution(shape, device="cpu", device_kind="cpu", available_bytes=24e9, serving_dtype="bf16",
                       flops=None, candidates=_candidates("lora", samples=8, seq_len=64))
    assert ex.here.mode == "in-memory" and ex.here.recovery_fits is True and ex.here.pass_minutes is None
    assert ex.on_target is None and ex.target_gpus is None
    big = _shape(LlamaConfig(**LLAMA3_70B))
    tight = run_execution(big, device="cpu", device_kind="cpu", available_bytes=4e9, serving_dtype="bf16", flops=None,
                          candidates=_candidates("none"))
    assert tight.here.mode == "does-not-fit" and tight.recovery_method is None


def test_config_only_plan_says_how_plan_run_would_execute_it(tmp_path, capsys):
    folder = tmp_path / "llama-70b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_70B))
    out = tmp_path / "plan.json"
    assert main(["--goal", "p95-latency", "--gpu", "h100", "--model", str(folder), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer by layer: --max-memory >=" in printed and "serving on h100" in printed
    plan = json.loads(out.read_text())
    ex = plan["execution"]
    assert ex["here"]["mode"] in ("layer-by-layer", "does-not-fit")  # 282 GB of fp32 weights on a test machine
    assert ex["on_target"]["run_dtype"] == "bf16" and ex["on_target"]["weights_bytes"] > 140e9
    assert ex["target_gpus"] == 2
