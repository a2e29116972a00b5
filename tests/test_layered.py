"""The layered path (planner.layered): a checkpoint on disk pruned and evaluated one decoder layer at a time gives the
in-memory engines' weights, masks and perplexity; its export reloads with transformers; `plan run --max-memory`."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from planner.cli import main
from planner.errors import InputError
from planner.evaluate.perplexity import perplexity_of_ids
from planner.export import load_compressed, write_compressed
from planner.layered import LayeredModel, check_layered, layered_perplexity_of_ids, parse_size, prune_layered
from planner.layered.memory import recovery_need
from planner.perf.footprint import parameter_count
from planner.layered.perplexity import layered_hidden
from planner.layered.writer import SafetensorsStream
from planner.prune import apply_pruning
from planner.prune.specs import HeadPruning, MlpChannelPruning, SemiStructuredPruning, UnstructuredPruning
from planner.recover.specs import RecoverySpec
from planner.run.masks import load_masks
from tiny import VOCAB, save_mlp_plan, save_tiny, tiny_tokenizer

PPL_RTOL = 1e-5  # the layered LM head sums the softmax over vocabulary blocks: another order, float rounding


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("layered")
    return {family: save_tiny(base, family) for family in ("llama", "qwen2", "gpt2")}


def ids(rows: int, length: int, seed: int):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def whole(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert sa[name].shape == sb[name].shape, name
        assert torch.equal(sa[name], sb[name]), f"{name}: max diff {(sa[name] - sb[name]).abs().max()}"


MASKED = [UnstructuredPruning(sparsity=0.5, criterion="wanda"),
          UnstructuredPruning(sparsity=0.5, criterion="sparsegpt"),
          SemiStructuredPruning(n=2, m=4, criterion="wanda"),
          UnstructuredPruning(sparsity=0.3, criterion="magnitude")]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("spec", MASKED, ids=lambda s: f"{s.kind}-{s.criterion}")
def test_layered_masks_equal_the_in_memory_engine(checkpoints, tokenizer, tmp_path, family, spec):
    calib = ids(6, 32, seed=1)
    model = whole(checkpoints[family])
    expected = apply_pruning(model, spec, calib)
    pruned = prune_layered(LayeredModel(checkpoints[family]), spec, calib, tmp_path / "out", tokenizer,
                           {"test": True}, compressed=True)
    assert_same_weights(model, whole(tmp_path / "out"))
    assert pruned.result.achieved_sparsity == expected.achieved_sparsity
    assert pruned.result.details == expected.details
    assert (pruned.result.params_before, pruned.result.params_after) == (expected.params_before,
                                                                        expected.params_after)
    data = ids(3, 40, seed=6)  # the export, read back layer by layer beside its masks file, as the run reads it
    assert layered_perplexity_of_ids(LayeredModel(tmp_path / "out"), data)["ppl"] == pytest.approx(
        perplexity_of_ids(model, data)["ppl"], rel=PPL_RTOL)
    masks = load_masks(tmp_path / "out" / "masks.safetensors")
    assert sorted(masks) == sorted(expected.masks)
    assert all(torch.equal(masks[n], expected.masks[n]) for n in masks)
    # the bitmask copy restores the in-memory model's state exactly
    compressed = load_compressed(tmp_path / "out")
    state = model.state_dict()
    assert sorted(compressed) == sorted(state)
    assert all(torch.equal(compressed[n], state[n]) for n in state)
    assert pruned.exported["compressed_file_bytes"] == (tmp_path / "out" / "compressed" /
                                                       "weights.bitmask.safetensors").stat().st_size
    assert abs(pruned.exported["compressed_file_bytes"] - write_compressed(model, tmp_path / "mem")) < 4096


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("criterion", ["activation", "magnitude"])
def test_layered_mlp_channels_equal_the_in_memory_engine(checkpoints, tokenizer, tmp_path, family, criterion):
    spec = MlpChannelPruning(ratio=0.25, criterion=criterion)
    calib = ids(6, 32, seed=2)
    model = whole(checkpoints[family])
    expected = apply_pruning(model, spec, calib)
    pruned = prune_layered(LayeredModel(checkpoints[family]), spec, calib, tmp_path / "out", tokenizer, {})
    reloaded = whole(tmp_path / "out")
    assert_same_weights(model, reloaded)
    inter = "n_inner" if family == "gpt2" else "intermediate_size"
    assert getattr(reloaded.config, inter) == getattr(model.config, inter) == {"llama": 96, "gpt2": 192}[family]
    assert pruned.result.details == expected.details
    assert pruned.result.params_after == expected.params_after < expected.params_before


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_layered_perplexity_equals_in_memory(checkpoints, family):
    data = ids(5, 40, seed=3)
    expected = perplexity_of_ids(whole(checkpoints[family]), data)
    got = layered_perplexity_of_ids(LayeredModel(checkpoints[family]), data)
    assert got["tokens"] == expected["tokens"] == 5 * 39
    assert (got["windows"], got["seq_len"]) == (5, 40)
    assert got["ppl"] == pytest.approx(expected["ppl"], rel=PPL_RTOL)
    assert got["ppl"] > 100  # random weights: near the vocabulary size, not a degenerate 1.0


def test_export_reloads_with_transformers_and_gives_the_layered_logits(checkpoints, tokenizer, tmp_path):
    spec = UnstructuredPruning(sparsity=0.5, criterion="wanda")
    prune_layered(LayeredModel(checkpoints["qwen2"]), spec, ids(4, 32, seed=4), tmp_path / "out", tokenizer, {})
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert json.loads((tmp_path / "out" / "planner.json").read_text())["written"] == "layer by layer"
    data = ids(2, 24, seed=5)
    with torch.no_grad():
        expected = whole(tmp_path / "out")(input_ids=data).logits
    layered = LayeredModel(tmp_path / "out")
    hidden = layered_hidden(layered, data, batch_size=2).hidden[0]
    got = layered.head_logits(layered.final_norm(hidden).reshape(-1, hidden.shape[-1])).view_as(expected)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_a_layer_is_the_models_own_class_on_the_compute_device(checkpoints):
    model = LayeredModel(checkpoints["llama"])
    layer = model.load_layer(1)
    assert type(layer).__name__ == "LlamaDecoderLayer"
    assert {p.device.type for p in layer.parameters()} == {"cpu"}
    assert {p.dtype for p in layer.parameters()} == {torch.float32}
    assert torch.equal(layer.mlp.down_proj.weight, whole(checkpoints["llama"]).model.layers[1].mlp.down_proj.weight)
    assert model.parameter_count() == sum(p.numel() for p in whole(checkpoints["llama"]).parameters())


def test_what_needs_the_whole_model_is_refused_layer_by_layer():
    check_layered(UnstructuredPruning(sparsity=0.5, criterion="wanda"))
    check_layered(MlpChannelPruning(ratio=0.5, criterion="activation"))
    for spec, why in [(MlpChannelPruning(ratio=0.5, criterion="taylor"), "gradients"),
                      (UnstructuredPruning(sparsity=0.5, criterion="magnitude", scope="global"), "every layer"),
                      (UnstructuredPruning(sparsity=0.5, criterion="wanda", allocation="owl"), "statistic"),
                      (HeadPruning(ratio=0.25), "not built layer by layer")]:
        with pytest.raises(InputError, match=why):
            check_layered(spec)


def test_streamed_safetensors_read_back_exactly(tmp_path):
    from safetensors import safe_open

    a = torch.randn(7, 5).to(torch.bfloat16)
    b = torch.arange(10, dtype=torch.int64)
    stream = SafetensorsStream(tmp_path / "x.safetensors")
    stream.add("a", a)
    stream.add_blocks("b", torch.int64, (10,), [b[:3], b[3:]])
    stream.close()
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("a"), a) and torch.equal(f.get_tensor("b"), b)
    assert not (tmp_path / "x.safetensors.data").exists()


@pytest.mark.parametrize("text, value", [("2GB", 2_000_000_000), ("1500MB", 1_500_000_000), ("1.5GiB", 1_610_612_736),
                                         ("800m", 800_000_000), ("4096", 4096), (" 3 kib ", 3072)])
def test_sizes_parse(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["2 gigs", "GB", "-1GB", "0", "1.2.3GB", ""])
def test_bad_sizes_name_the_accepted_forms(text):
    with pytest.raises(InputError, match="accepted: a number of bytes with an optional unit, e.g. 2GB"):
        parse_size(text)


def test_recovery_need_counts_weights_gradients_and_adamw():
    from planner.arch import get_adapter
    from tiny import tiny_config

    config = tiny_config("llama")
    shape = get_adapter(config).shape(config)
    model = AutoModelForCausalLM.from_config(config)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    finetune = recovery_need(shape, shape, RecoverySpec(method="finetune", loss="lm", batch_size=2, seq_len=32))
    n = parameter_count(shape)
    assert (finetune.student, finetune.teacher, finetune.gradients, finetune.optimizer) == (4 * n, 0, 4 * n, 8 * n)
    distill = recovery_need(shape, shape, RecoverySpec(method="distill", batch_size=2, seq_len=32))
    assert distill.teacher == 4 * n and distill.gradients == 4 * (n - 2 * VOCAB * 64)
    lora = recovery_need(shape, shape, RecoverySpec(method="lora", batch_size=2, seq_len=32, lora_rank=4))
    from peft import LoraConfig, get_peft_model

    from planner.arch import get_adapter as adapter_of

    targets = [name for _, _, name, _ in adapter_of(model).iter_linears(model)]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    assert lora.gradients == 4 * sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


# -- plan run --max-memory ---------------------------------------------------------------------------------------

# 8 layers of width 256 and MLP 768: 25.8 MB of fp32 weights, ~15 MB needed one layer at a time with this run's
# settings (RUN_ARGS), its 50%-MLP candidate 16.4 MB; --max-memory counts the process, with the interpreter's
# 0.5 GB floor (planner.perf.footprint.PROCESS_BASE_BYTES): 520 MB leaves 20 MB for tensors
BIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, head_dim=64)
RUN_ARGS = ["--slices", "none", "--ppl-seq-len", "64", "--ppl-tokens", "1024", "--requests", "2", "--warmup", "1",
            "--no-memory", "--quiet"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    base = tmp_path_factory.mktemp("layered-run")
    model = save_tiny(base, "llama", **BIG)
    prompts = base / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "The interpreter", "max_new_tokens": 3, "chat": False}) + "\n")
    return base, model, prompts


def test_plan_run_below_one_layer_exits_2_before_any_work(big, capsys):
    base, model, _ = big
    plan = save_mlp_plan(model, base / "plan-min.json")
    out = base / "run-min"
    assert main(["run", str(plan), "--out", str(out), "--max-memory", "5MB", *RUN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "--max-memory 5.00 MB is below what this model needs one decoder layer at a time" in err
    assert "accepted: --max-memory 51" in err  # the minimum: the interpreter's 500 MB and ~15 MB
    assert not out.exists() or not any(out.iterdir())


def test_plan_run_with_a_bad_size_exits_2_naming_the_forms(big, capsys):
    base, model, _ = big
    plan = save_mlp_plan(model, base / "plan-bad.json")
    assert main(["run", str(plan), "--out", str(base / "run-bad"), "--max-memory", "lots", *RUN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "--max-memory 'lots' is not a size" in err and "2GB, 1500MB, 1.5GiB" in err


def test_a_recovery_that_does_not_fit_is_refused_proposing_lora_on_a_gpu(big, capsys):
    base, model, _ = big
    plan = save_mlp_plan(model, base / "plan-rec.json",
                         recovery=RecoverySpec(method="distill", max_steps=2, batch_size=2, seq_len=32))
    out = base / "run-rec"
    assert main(["run", str(plan), "--out", str(out), "--max-memory", "520MB", *RUN_ARGS]) == 2
    assert not out.exists() or not any(out.iterdir())  # refused before the teacher or any other stage
    err = " ".join(capsys.readouterr().err.split())
    assert "recovery cannot run within --max-memory 520.00 MB" in err
    assert "distill needs about" in err and "AdamW states" in err
    assert "LoRA (recovery method 'lora') would need about" in err and "with LoRA on a GPU" in err


def two_candidate_plan(model, path):
    """50% of the MLP channels (magnitude) and 50% Wanda masks, no recovery, at a 16+4 token workload."""
    from planner.decide.plan import Candidate, Plan, Verdict, save_plan
    from planner.prune.specs import CalibrationSpec
    from planner.workload import Workload

    common = dict(projected_to="a100-80gb-sxm", basis="projected", goal_metric="p95_ms", quality_risk="low",
                  calibration=CalibrationSpec(num_samples=2, seq_len=32), recovery=RecoverySpec(method="none"))
    plan = Plan(model=str(model), goal="p95-latency", gpu="a100-80gb-sxm", goal_metric="p95_ms", rules_version="test",
                workload=Workload(prompt_len=16, gen_len=4), verdict=Verdict(action="prune", text="prune"),
                candidates=[Candidate(rank=1, name="mlp-50", label="MLP channels -50%", predicted_speedup=1.4,
                                      prune=MlpChannelPruning(ratio=0.5, criterion="magnitude"), **common),
                            Candidate(rank=2, name="wanda-50", label="Wanda 50%", predicted_speedup=1.0,
                                      prune=UnstructuredPruning(sparsity=0.5, criterion="wanda"), **common)])
    return save_plan(plan, path)


@pytest.fixture(scope="module")
def layered_run(big):
    base, model, prompts = big
    plan = two_candidate_plan(model, base / "plan.json")
    out = base / "run"
    code = main(["run", str(plan), "--out", str(out), "--all", "2", "--max-memory", "520MB", "--eval-prompts",
                 str(prompts), *RUN_ARGS])
    return code, out, model


def test_plan_run_goes_layer_by_layer_end_to_end(layered_run):
    code, out, model = layered_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    dense, pruned, masked = results["variants"]
    # the dense model (25.8 MB) is not timed within 20 MB beside the interpreter, and says why; the pruned one
    # (16.4 MB) is
    assert dense["latency"] is None
    assert any("latency not measured" in n and "exceed --max-memory 520.00 MB" in n
               for n in dense["quality"]["notes"])
    assert pruned["latency"] is not None and pruned["latency"]["requests"] == 2
    assert not any("latency not measured" in n for n in pruned["quality"]["notes"])
    assert all("one decoder layer at a time" in v["quality"]["notes"][0] for v in (dense, pruned))
    # agreement measured through disk offload: the dense model agrees with itself
    assert dense["quality"]["slices"]["user"]["top1_agreement"] == 1.0
    assert pruned["quality"]["slices"]["user"]["positions"] == dense["quality"]["slices"]["user"]["positions"] > 0
    assert pruned["size"]["shape"]["intermediate_size"] == 384
    assert pruned["size"]["parameters"] < dense["size"]["parameters"]
    # the masked candidate keeps the dense shape (25.8 MB: not timed), its masks and its bitmask copy
    assert masked["latency"] is None and masked["size"]["achieved_sparsity"] == 0.5
    assert masked["size"]["compressed_file_bytes"] < masked["size"]["file_bytes"]
    assert masked["size"]["nonzero_parameters"] < masked["size"]["parameters"] == dense["size"]["parameters"]
    masks = load_masks(Path(masked["checkpoint"]) / "masks.safetensors")
    assert len(masks) == 8 * 7 and all(m.float().mean() == 0.5 for m in masks.values())


def test_the_layered_run_measures_what_the_whole_model_would(layered_run, tokenizer):
    code, out, model = layered_run
    results = json.loads((out / "results.json").read_text())
    dense, pruned, masked = results["variants"]
    from planner.data import heldout_text
    from planner.evaluate.perplexity import perplexity_of_tokens

    held = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    expected = perplexity_of_tokens(whole(model), held, seq_len=64, max_tokens=1024)["ppl"]
    assert dense["quality"]["heldout_ppl"] == pytest.approx(expected, rel=PPL_RTOL)
    reference = whole(model)
    apply_pruning(reference, MlpChannelPruning(ratio=0.5, criterion="magnitude"))
    assert_same_weights(reference, whole(pruned["checkpoint"]))
    # the run's calibration: 2 blocks of 32 tokens of the bundled calibration text
    from planner.data import calibration_text, token_blocks

    reference = whole(model)
    apply_pruning(reference, UnstructuredPruning(sparsity=0.5, criterion="wanda"),
                  token_blocks(tokenizer, calibration_text(), 2, 32))
    assert_same_weights(reference, whole(masked["checkpoint"]))
