"""LoRA through peft: low-rank adapters on every projection of the pruned model's decoder blocks (the adapter's
linear roles, by full module name, so pruned shapes are whatever the modules now have), trained with the KD or LM
loss, then merged into the weights (`merge_and_unload`): the model handed back has no adapter modules and its
pruned shapes. Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

Masked (unstructured, N:M) models: a merged dense update B@A would fill the zeros, and re-masking it after the
merge would hand back a model the training never saw. So during training a forward hook on each masked module
subtracts the part of the adapter's update that falls on pruned positions: the layer computes x(W + M*BA)^T,
exactly what the merged, re-masked weight computes. It costs one more matrix product per masked layer.

    {"method": "lora", "loss": "kd", "lora_rank": 16, "lora_alpha": 32, "lr": 2e-4}
"""

from __future__ import annotations

import warnings

from planner.arch import get_adapter
from planner.recover.train import TrainLog, train

ADAPTER_NAME = "recovery"


def lora(student, teacher, blocks, spec, *, keeper=None, progress: bool = True) -> TrainLog:
    from peft import LoraConfig, get_peft_model

    arch = get_adapter(student)
    targets = [name for _, _, name, _ in arch.iter_linears(student)]
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0, bias="none",
                        target_modules=targets, fan_in_fan_out=arch.conv1d)
    flags = [(p, p.requires_grad) for p in student.parameters()]
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in 5.x; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(student, config, adapter_name=ADAPTER_NAME)
    hooks = []
    try:
        if keeper is not None:
            hooks = [student.get_submodule(name).register_forward_hook(_masked_update_hook(mask, arch.conv1d))
                     for name, mask in keeper.masks.items()]
        params = [p for n, p in student.named_parameters() if "lora_" in n]
        log = train(student, teacher, params, blocks, spec, progress=progress, desc="lora")
    finally:
        for h in hooks:
            h.remove()
        merged = peft_model.merge_and_unload()
        # peft leaves its config on the injected model; the handed-back model must look like a plain checkpoint
        if hasattr(merged, "peft_config"):
            del merged.peft_config
        for p, flag in flags:
            p.requires_grad_(flag)
    if merged is not student:
        raise RuntimeError("peft merge_and_unload returned a new model instead of the student it wrapped")
    if keeper is not None:
        keeper.bind(student)
        keeper.apply()  # the hook made training see masked updates; this makes the merged zeros exact
    return log


def _masked_update_hook(keep, conv1d: bool):
    def hook(module, args, output):
        import torch.nn.functional as F

        x = args[0]
        delta = module.get_delta_weight(ADAPTER_NAME).masked_fill(keep, 0)  # the update on pruned positions
        return output - (x @ delta if conv1d else F.linear(x, delta))

    return hook
