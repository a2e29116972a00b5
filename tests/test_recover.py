"""Recovery: masks kept exactly, LoRA merged away with pruned shapes, KD loss falls, budgets, seeds, bad input."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model, tiny_tokenizer

from planner.arch import get_adapter
from planner.data import calibration_text
from planner.errors import InputError
from planner.recover import RecoveryResult, recover
from planner.recover.budget import Budget
from planner.recover.losses import kd_loss, lm_loss, recovery_loss
from planner.recover.specs import RecoverySpec

FAST = dict(max_steps=4, batch_size=2, seq_len=32, lr=1e-3, warmup=0.0, max_minutes=None)
SHORT = calibration_text()[:20_000]  # tokenizing all of it costs more than a tiny model's training


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a shared 2-core machine, two intra-op threads of a tiny model spend most of their time waiting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def magnitude_2to4(model):
    """Zero the 2 smallest of every 4 consecutive input weights of every projection; return the masks."""
    adapter = get_adapter(model)
    masks = {}
    with torch.no_grad():
        for _, _, name, module in adapter.iter_linears(model):
            w = module.weight.t() if adapter.conv1d else module.weight  # (out, in)
            groups = w.abs().reshape(w.shape[0], -1, 4)
            drop = groups.argsort(dim=-1)[..., :2]
            keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(w.shape)
            keep = keep.t().contiguous() if adapter.conv1d else keep
            module.weight.mul_(keep)
            masks[name] = keep
    return masks


def zeros_per_group(model, name):
    adapter = get_adapter(model)
    w = model.get_submodule(name).weight.detach()
    w = w.t() if adapter.conv1d else w
    return (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)


def slice_mlp(model, keep: int):
    """Structured pruning for the test: keep the first `keep` MLP channels (gate/up rows, down columns)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in adapter.get_layers(model):
            for role in ("gate", "up"):
                lin = adapter.projection(layer, role)
                lin.weight = torch.nn.Parameter(lin.weight[:keep].clone())
                lin.out_features = keep
            down = adapter.projection(layer, "down")
            down.weight = torch.nn.Parameter(down.weight[:, :keep].clone())
            down.in_features = keep
    adapter.set_shape(model.config, intermediate_size=keep)
    return model


def fixed_kd(student, teacher, ids, temperature=2.0):
    with torch.no_grad():
        return float(kd_loss(student(input_ids=ids).logits, teacher(input_ids=ids).logits, temperature))


# -- losses and budget ----------------------------------------------------------------------------------------


def test_kd_loss_is_scaled_kl_and_zero_for_equal_logits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    T = 3.0
    p_t = F.softmax(t / T, -1)
    expected = (p_t * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, T), expected, atol=1e-6)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_lm_loss_and_mix():
    torch.manual_seed(1)
    logits, teacher = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    ids = torch.randint(0, 9, (2, 6))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 9), ids[:, 1:].reshape(-1))
    assert torch.allclose(lm_loss(logits, ids), expected)
    kd = kd_loss(logits[:, :-1], teacher[:, :-1], 2.0)
    mixed = recovery_loss(logits, teacher, ids, "kd+lm", 2.0, 0.25)
    assert torch.allclose(mixed, 0.75 * kd + 0.25 * expected)


def test_budget_stops_on_the_first_limit():
    b = Budget(max_steps=10, max_tokens=1000, max_seconds=60.0)
    assert b.stop_reason(3, 0, 0.0, 256, None) is None
    assert b.stop_reason(10, 0, 0.0, 256, None) == "max_steps"
    assert b.stop_reason(3, 768, 0.0, 256, 1.0) == "max_tokens"  # 768 + 256 > 1000
    assert b.stop_reason(3, 0, 55.0, 256, 6.0) == "max_minutes"  # the next step would overrun
    assert b.fraction_used(5, 100, 6.0) == pytest.approx(0.5)
    assert b.fraction_used(1, 900, 6.0) == pytest.approx(0.9)


def test_learning_rate_warms_up_then_decays_over_the_budget():
    from planner.recover.train import lr_at

    spec = RecoverySpec(lr=1e-3, warmup=0.1)
    assert lr_at(0.05, spec) == pytest.approx(0.5e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.05))))
    assert lr_at(0.1, spec) < 1e-3 and lr_at(0.1, spec) > lr_at(0.5, spec) > lr_at(1.0, spec)
    assert lr_at(1.0, spec) == pytest.approx(1e-4)  # cosine ends at 10% of the peak
    assert lr_at(0.0, RecoverySpec(lr=1e-3, warmup=0.0)) == pytest.approx(1e-3)


# -- masks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,method", [("llama", "distill"), ("llama", "finetune"), ("llama", "lora"),
                                           ("gpt2", "lora"), ("gpt2", "distill")])
def test_2to4_masks_survive_recovery(tok, family, method):
    teacher = tiny_model(family)
    student = copy.deepcopy(teacher)
    masks = magnitude_2to4(student)
    before = {n: student.get_submodule(n).weight.detach().clone() for n in masks}
    result = recover(student, teacher, tok, RecoverySpec(method=method, **FAST), masks=masks, progress=False,
                     text=SHORT if family == "gpt2" else None)
    assert result.steps == 4 and result.masked_modules == len(masks)
    moved = 0
    for name in masks:
        assert (zeros_per_group(student, name) == 2).all(), name
        weight = student.get_submodule(name).weight.detach()
        assert (weight[~masks[name]] == 0).all()
        moved += int((weight != before[name]).sum())
    assert moved > 0  # training changed kept weights
    assert not any("lora" in n for n, _ in student.named_parameters())


def test_lora_mask_hook_matches_the_merged_masked_layer():
    """While training, a masked LoRA layer computes x (W + M*BA)^T: what the merged, re-masked weight gives."""
    from peft import LoraConfig, get_peft_model

    from planner.recover.lora import ADAPTER_NAME, _masked_update_hook

    for family in ("llama", "gpt2"):
        model = tiny_model(family)
        adapter = get_adapter(model)
        masks = magnitude_2to4(model)
        name = next(iter(masks))
        dense_weight = model.get_submodule(name).weight.detach().clone()
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[name],
                                                      fan_in_fan_out=adapter.conv1d), adapter_name=ADAPTER_NAME)
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.lora_B[ADAPTER_NAME].weight.normal_(0, 0.5)  # peft starts B at zero
        layer.register_forward_hook(_masked_update_hook(masks[name], adapter.conv1d))
        x = torch.randn(3, dense_weight.shape[0] if adapter.conv1d else dense_weight.shape[1])
        with torch.no_grad():
            got = layer(x)
            merged = (dense_weight + layer.get_delta_weight(ADAPTER_NAME)) * masks[name]
            expected = x @ merged if adapter.conv1d else F.linear(x, merged)
            expected = expected + (layer.base_layer.bias if layer.base_layer.bias is not None else 0)
        assert torch.allclose(got, expected, atol=1e-5), family
        del peft_model


# -- LoRA merge, shapes, reload -------------------------------------------------------------------------------


def test_lora_merge_keeps_pruned_shapes_and_reloads(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from planner.export import export_model

    teacher = tiny_model("llama")
    student = slice_mlp(copy.deepcopy(teacher), 48)
    before = copy.deepcopy(student)
    result = recover(student, teacher, tok, RecoverySpec(method="lora", lora_rank=4, **FAST), progress=False)
    assert result.steps == 4 and 0 < result.trainable_params < 50_000
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in student.modules())
    assert not hasattr(student, "peft_config")
    assert [n for n, _ in student.named_parameters()] == [n for n, _ in before.named_parameters()]
    for (n, p), (_, q) in zip(student.named_parameters(), before.named_parameters()):
        assert p.shape == q.shape, n
        assert p.requires_grad == q.requires_grad
    assert student.model.layers[0].mlp.gate_proj.weight.shape == (48, 64)
    assert not torch.equal(student.model.layers[0].mlp.down_proj.weight, before.model.layers[0].mlp.down_proj.weight)

    export_model(student, tok, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert reloaded.config.intermediate_size == 48
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)


# -- training behaviour ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["distill", "lora"])
def test_distillation_loss_decreases(tok, method):
    """KD loss over every block of a short recovery text, before and after 12 steps on it (deterministic)."""
    from planner.recover import recovery_blocks

    teacher = tiny_model("llama")
    student = slice_mlp(copy.deepcopy(teacher), 32)
    text = calibration_text()[:6000]
    spec = RecoverySpec(method=method, **{**FAST, "max_steps": 12})
    blocks = recovery_blocks(tok, text, spec)
    start = fixed_kd(student, teacher, blocks)
    result = recover(student, teacher, tok, spec, text=text, progress=False)
    assert fixed_kd(student, teacher, blocks) < 0.95 * start
    assert result.text == "text given by the caller" and result.text_tokens == blocks.numel()
    assert [s for s, _ in result.loss_curve] == list(range(1, 13))


def test_seed_reproducible_and_teacher_untouched(tok):
    teacher = tiny_model("qwen2")
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    pruned = slice_mlp(copy.deepcopy(teacher), 64)
    runs = []
    for seed in (0, 0, 1):
        student = copy.deepcopy(pruned)
        recover(student, teacher, tok, RecoverySpec(method="finetune", seed=seed, **FAST), text=SHORT,
                progress=False)
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_distill_trains_blocks_only_and_finetune_everything(tok):
    teacher = tiny_model("llama")
    results = {}
    for method in ("distill", "finetune"):
        student = copy.deepcopy(teacher)
        results[method] = recover(student, teacher, tok, RecoverySpec(method=method, loss="kd+lm",
                                                                      lm_loss_weight=0.5, **FAST),
                                   text=SHORT, progress=False)
        embed_same = torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
        assert embed_same == (method == "distill")
        assert not torch.equal(student.model.layers[1].self_attn.q_proj.weight,
                               teacher.model.layers[1].self_attn.q_proj.weight)
    total = sum(p.numel() for p in teacher.parameters())
    embed_and_head = teacher.model.embed_tokens.weight.numel() + teacher.lm_head.weight.numel()
    assert results["finetune"].trainable_params == total
    assert results["distill"].trainable_params == total - embed_and_head


def test_budget_in_tokens_and_minutes(tok):
    teacher = tiny_model("llama")
    spec = RecoverySpec(method="distill", **{**FAST, "max_steps": 100, "max_tokens": 3 * 2 * 32 + 10})
    result = recover(copy.deepcopy(teacher), teacher, tok, spec, text=SHORT, progress=False)
    assert (result.steps, result.tokens, result.stopped_by) == (3, 192, "max_tokens")
    spec = RecoverySpec(method="distill", **{**FAST, "max_steps": 100, "max_minutes": 1e-6})
    result = recover(copy.deepcopy(teacher), teacher, tok, spec, text=SHORT, progress=False)
    assert (result.steps, result.stopped_by) == (1, "max_minutes")  # the first step always runs


def test_lm_finetune_needs_no_teacher_and_reports_perplexity(tok):
    student = slice_mlp(tiny_model("llama"), 32)
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"ppl": 12.5 + len(calls), "tokens": 99}

    result = recover(student, None, tok, RecoverySpec(method="finetune", loss="lm", **FAST), progress=False,
                     eval_fn=eval_fn)
    assert (result.ppl_before, result.ppl_after, result.eval_tokens) == (13.5, 14.5, 99)
    assert calls == [False, False]
    dumped = RecoveryResult.model_validate(result.model_dump())
    assert dumped.loss_curve == result.loss_curve and dumped.device == "cpu"


def test_evaluate_uses_heldout_text(tok):
    from planner.data import heldout_text
    from planner.evaluate.perplexity import perplexity

    teacher = tiny_model("llama")
    student = copy.deepcopy(teacher)
    expected = perplexity(student, tok, heldout_text(), seq_len=256, max_tokens=1024)["ppl"]
    result = recover(student, teacher, tok, RecoverySpec(method="none"), evaluate=True, eval_max_tokens=1024)
    assert result.ppl_before == pytest.approx(expected) and result.ppl_after == result.ppl_before
    assert result.steps == 0 and result.stopped_by == "method none"
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_is_an_input_error(tok, tmp_path):
    from planner.data import HELDOUT_FILE

    teacher = tiny_model("llama")
    student = copy.deepcopy(teacher)
    cases = [
        (dict(method="distill", loss="lm"), {}, "loss 'kd' or 'kd+lm'"),
        (dict(loss="kd+lm"), {}, "lm_loss_weight"),
        (dict(text_files=[str(HELDOUT_FILE)]), {}, "held-out"),
        (dict(text_files=[str(tmp_path / "missing.txt")]), {}, "missing.txt"),
        (dict(max_tokens=100), {}, "max_tokens=100"),
        (dict(seq_len=512), {}, "seq_len=512"),
        (dict(batch_size=4, seq_len=64), {"text": "far too short"}, "fewer than one batch"),
        (dict(method="lora"), {"teacher": None}, "needs the dense teacher"),
    ]
    for fields, kwargs, needle in cases:
        kwargs = {"teacher": teacher, **kwargs}
        with pytest.raises(InputError, match=re.escape(needle)):
            recover(student, kwargs.pop("teacher"), tok, RecoverySpec(**fields), progress=False, **kwargs)
    with pytest.raises(Exception, match="extra"):
        RecoverySpec.model_validate({"methd": "lora"})


# -- the real model -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_masked_lora_round_trip(tmp_path):
    """SmolLM2-135M, 2:4 masks on two MLPs, two LoRA steps: masks exact, merged, reloads with equal logits."""
    from transformers import AutoModelForCausalLM

    from planner.export import export_model
    from planner.models import load_model

    loaded = load_model()
    teacher, tokenizer = loaded.model, loaded.tokenizer
    student = copy.deepcopy(teacher)
    all_masks = magnitude_2to4(student)
    masks = {n: m for n, m in all_masks.items() if n.startswith("model.layers.3.mlp")}
    with torch.no_grad():  # only layer 3's MLP stays 2:4 sparse; restore the rest
        for name in all_masks.keys() - masks.keys():
            student.get_submodule(name).weight.copy_(teacher.get_submodule(name).weight)
    spec = RecoverySpec(method="lora", max_steps=2, batch_size=1, seq_len=64, lr=1e-3, max_minutes=None)
    result = recover(student, teacher, tokenizer, spec, masks=masks, progress=False)
    assert result.steps == 2 and result.loss_curve[0][1] > 0
    for name in masks:
        assert (zeros_per_group(student, name) == 2).all()
    export_model(student, tokenizer, tmp_path / "smol")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "smol").eval()
    ids = torch.tensor(tokenizer("def main():\n    print('hi')")["input_ids"])[None]
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-4)


def test_the_guard_stops_a_run_but_never_shapes_its_schedule():
    b = Budget(max_steps=10, max_tokens=None, max_seconds=None, guard_seconds=60.0)
    assert b.fraction_used(5, 0, 59.0) == pytest.approx(0.5)  # a slow machine follows the same schedule
    assert b.stop_reason(3, 0, 55.0, 256, 6.0) == "guard_minutes"
    assert b.stop_reason(3, 0, 50.0, 256, 6.0) is None
    spec = RecoverySpec(method="distill", max_steps=7, max_minutes=None, guard_minutes=2.0)
    assert Budget.from_spec(spec) == Budget(7, None, None, 120.0)


def test_a_busy_machine_trains_the_same_model_only_later(tok, monkeypatch):
    """Steps fix the recovery: a clock running 50x slower (a crowded machine) changes nothing but the time."""
    import planner.recover.train as train_mod

    teacher = tiny_model("llama")
    spec = RecoverySpec(method="distill", **{**FAST, "max_steps": 5, "warmup": 0.2, "guard_minutes": 60.0})
    quiet = copy.deepcopy(teacher)
    first = recover(quiet, teacher, tok, spec, text=SHORT, progress=False)
    real = train_mod.time.perf_counter
    start = real()
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: start + 50 * (real() - start))
    busy = copy.deepcopy(teacher)
    second = recover(busy, teacher, tok, spec, text=SHORT, progress=False)
    assert (first.steps, second.steps, second.stopped_by) == (5, 5, "max_steps")
    assert second.seconds > 10 * first.seconds
    for (name, a), b in zip(quiet.state_dict().items(), busy.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_plan_budget_scales_with_the_model_and_the_device():
    from planner.recover.budget import TOKENS_PER_PARAM, plan_budget

    small = plan_budget(134_515_008, device="cpu", flops_per_second=1.4e11)
    assert small.bound_by == "time allowance" and small.tokens == small.steps * 512
    # what fits 10 minutes at 8N FLOPs per token and 0.7 of the GEMM rate, rounded down to 2 significant figures
    fits = 10 * 60 / (8 * 134_515_008 * 512 / (1.4e11 * 0.7))
    assert small.steps == (int(fits) if fits < 100 else int(fits // 10 * 10))
    assert small.estimated_minutes <= 10.0
    assert small.spec_fields() == {"max_steps": small.steps, "max_tokens": small.tokens, "max_minutes": None,
                                   "guard_minutes": small.guard_minutes}
    quick_gpu = plan_budget(134_515_008, device="cuda", flops_per_second=4e14)
    assert quick_gpu.bound_by == "model size"
    assert quick_gpu.tokens >= TOKENS_PER_PARAM * 134_515_008 > quick_gpu.tokens - 512
    big = plan_budget(7_000_000_000, device="cuda", flops_per_second=4e14, allowance_minutes=120)
    assert big.bound_by == "model size" and big.tokens == pytest.approx(14e6, rel=1e-3)
    assert big.estimated_minutes == pytest.approx(8 * 7e9 * big.tokens / (4e14 * 0.7) / 60, rel=1e-3)
    unknown = plan_budget(134_515_008, device="cpu", flops_per_second=None)
    assert unknown.estimated_minutes is None and unknown.bound_by == "model size"
    asked = plan_budget(134_515_008, device="cpu", flops_per_second=1.4e11, tokens=5000)
    assert (asked.steps, asked.tokens, asked.bound_by) == (10, 5120, "asked tokens")
    slow = plan_budget(7_000_000_000, device="cpu", flops_per_second=1e11)
    assert (slow.steps, slow.bound_by) == (10, "minimum steps") and "minimum" in slow.described
    with pytest.raises(InputError, match="--recovery-minutes"):
        plan_budget(1000, device="cpu", flops_per_second=1e9, allowance_minutes=0)
