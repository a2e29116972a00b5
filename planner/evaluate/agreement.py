"""Agreement with the dense teacher on a prompt set (a capability slice).

For each prompt the teacher writes its greedy continuation once (`teacher_traces`). A student (pruned, recovered)
is then run teacher-forced on prompt + that continuation, and at every continuation position its next-token
distribution is compared with the teacher's: KL(teacher || student) in nats and whether the two argmax tokens
agree. Comparing along one shared continuation keeps the positions aligned even after the student would have
drifted into different text. Exact match counts only prompts with a gold answer that the dense teacher gets right:
there a miss is a regression of the student, not a weakness both share.

    traces = teacher_traces(teacher, tokenizer, bundled_slice("math"))
    row = slice_agreement(student, teacher, tokenizer, bundled_slice("math"), traces)
    row["kl"], row["top1_agreement"], row["exact_match_hits"], row["teacher_correct"]
"""

from __future__ import annotations

from typing import Any

from planner.evaluate.prompts import Prompt, PromptSet, is_correct


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of the prompt: the chat template (with the assistant turn opened) when the tokenizer has one."""
    if prompt.chat and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt.prompt}],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(prompt.prompt, add_special_tokens=True)["input_ids"])


def max_positions(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    from planner.latency import pad_id

    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad_id(model),
                             temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()  # ends with EOS when the model stopped by itself


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def teacher_traces(teacher, tokenizer, prompt_set: PromptSet, progress: bool = True) -> list[dict[str, Any]]:
    """The teacher's greedy continuation of every prompt (JSON-able; a prompt too long for the model is marked
    skipped)."""
    from tqdm.auto import tqdm

    limit = max_positions(teacher)
    traces = []
    for prompt in tqdm(prompt_set.prompts, desc=f"teacher: {prompt_set.name}", disable=not progress, leave=False):
        ids = encode_prompt(tokenizer, prompt)
        if limit is not None and len(ids) + prompt.max_new_tokens > limit:
            traces.append({"id": prompt.id, "skipped": f"{len(ids)} prompt tokens + {prompt.max_new_tokens} "
                                                       f"exceed the model's {limit} positions"})
            continue
        cont = _greedy(teacher, tokenizer, ids, prompt.max_new_tokens)
        text = _decode(tokenizer, cont)
        traces.append({"id": prompt.id, "prompt_ids": ids, "continuation": cont, "text": text,
                       "correct": is_correct(text, prompt)})
    return traces


def position_agreement(teacher_logits, student_logits) -> tuple[float, int, int]:
    """Over aligned (positions, vocab) logits: (sum of KL(teacher || student) in nats, argmax agreements, positions)."""
    import torch.nn.functional as F

    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1).clamp_min(0.0)  # clamp: rounding can give -1e-9 for identical rows
    agree = (t.argmax(-1) == s.argmax(-1)).sum()
    return float(kl.sum()), int(agree), int(t.shape[0])


def _continuation_logits(model, ids: list[int], n_prompt: int):
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        logits = model(input_ids=x, use_cache=False).logits[0]
    # the logits at position i predict token i+1: positions n_prompt-1 .. len-2 predict the continuation
    return logits[n_prompt - 1 : len(ids) - 1]


def slice_agreement(student, teacher, tokenizer, prompt_set: PromptSet, traces: list[dict[str, Any]],
                    progress: bool = True, teacher_cache: dict | None = None) -> dict[str, Any]:
    """Fields of results.SliceAgreement for `student` against `teacher` on `prompt_set`.

    teacher_cache: a dict the caller keeps across students; the teacher's continuation logits are computed once
    per prompt and reused from it."""
    from tqdm.auto import tqdm

    by_id = {t["id"]: t for t in traces}
    kl_sum = 0.0
    agree = positions = 0
    prompts = skipped = 0
    gold_prompts = gold_correct = teacher_correct = hits = 0
    same = student is teacher
    for prompt in tqdm(prompt_set.prompts, desc=f"agreement: {prompt_set.name}", disable=not progress, leave=False):
        trace = by_id.get(prompt.id)
        if trace is None:
            raise ValueError(f"no teacher trace for prompt {prompt.id!r} of slice {prompt_set.name!r}")
        if "skipped" in trace:
            skipped += 1
            continue
        prompts += 1
        ids = trace["prompt_ids"] + trace["continuation"]
        n = len(trace["prompt_ids"])
        if trace["continuation"]:
            key = (prompt_set.name, prompt.id)
            if teacher_cache is not None and key in teacher_cache:
                t_logits = teacher_cache[key].to(next(teacher.parameters()).device)
            else:
                t_logits = _continuation_logits(teacher, ids, n)
                if teacher_cache is not None:
                    teacher_cache[key] = t_logits.float().cpu()
            s_logits = t_logits if same else _continuation_logits(student, ids, n)
            k, a, p = position_agreement(t_logits, s_logits)
            kl_sum, agree, positions = kl_sum + k, agree + a, positions + p
        if prompt.gold:
            gold_prompts += 1
            if same:
                own = trace["correct"]
            else:
                own = is_correct(_decode(tokenizer, _greedy(student, tokenizer, trace["prompt_ids"],
                                                            prompt.max_new_tokens)), prompt)
            gold_correct += bool(own)
            if trace["correct"]:
                teacher_correct += 1
                hits += bool(own)
    return {"name": prompt_set.name, "source": prompt_set.source, "prompts": prompts, "skipped": skipped,
            "positions": positions, "kl": kl_sum / positions if positions else None,
            "top1_agreement": agree / positions if positions else None, "gold_prompts": gold_prompts,
            "gold_correct": gold_correct, "teacher_correct": teacher_correct, "exact_match_hits": hits}
