"""Perplexity by hand, teacher agreement, answer matching and prompt files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from planner.errors import InputError
from planner.evaluate.agreement import position_agreement, slice_agreement, teacher_traces
from planner.evaluate.perplexity import perplexity, perplexity_of_ids
from planner.evaluate.prompts import Prompt, PromptSet, SLICES, bundled_slice, is_correct, load_prompt_file
from tiny import example_ids, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_perplexity_equals_exp_of_mean_nll_by_hand():
    model = tiny_model("llama")
    ids = example_ids(3, 20, seed=1)
    nlls = []
    with torch.no_grad():
        for row in ids:
            logp = F.log_softmax(model(input_ids=row[None]).logits[0].double(), dim=-1)
            for t in range(1, len(row)):
                nlls.append(-float(logp[t - 1, row[t]]))
    by_hand = math.exp(sum(nlls) / len(nlls))
    got = perplexity_of_ids(model, ids, batch_size=2)
    assert got["tokens"] == 3 * 19
    assert got["ppl"] == pytest.approx(by_hand, rel=1e-5)
    assert got["nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-5)


def test_perplexity_of_text_uses_whole_windows(tok):
    model = tiny_model("gpt2")
    text = "The interpreter reads a line, executes it and prints the result. " * 40
    got = perplexity(model, tok, text, seq_len=32, max_tokens=200)
    ids = tok(text, add_special_tokens=False)["input_ids"][:192]
    direct = perplexity_of_ids(model, torch.tensor(ids).view(6, 32))
    assert got["windows"] == 6 and got["ppl"] == pytest.approx(direct["ppl"], rel=1e-6)
    with pytest.raises(InputError, match="seq_len=4096"):
        perplexity(model, tok, "too short", seq_len=4096)


def test_position_agreement_by_hand():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    s = torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    kl_sum, agree, n = position_agreement(t, s)
    pt, ps = F.softmax(t, -1), F.softmax(s, -1)
    expected = float((pt * (pt.log() - ps.log())).sum())
    assert kl_sum == pytest.approx(expected, rel=1e-5)
    assert (agree, n) == (1, 2)


def test_agreement_of_a_model_with_itself_and_with_a_damaged_copy(tok):
    teacher = tiny_model("llama", seed=3)
    prompts = PromptSet(name="t", source="user", prompts=[
        Prompt(id="a", prompt="The interpreter reads", max_new_tokens=6, gold="x", match="word", chat=False),
        Prompt(id="b", prompt="import os\nimport", max_new_tokens=5, chat=False)])
    traces = teacher_traces(teacher, tok, prompts, progress=False)
    assert [len(t["continuation"]) for t in traces] == [6, 5]  # tiny vocab has no EOS pressure: full lengths
    same = slice_agreement(teacher, teacher, tok, prompts, traces, progress=False)
    assert same["kl"] == 0.0 and same["top1_agreement"] == 1.0 and same["positions"] == 11
    damaged = tiny_model("llama", seed=3)
    with torch.no_grad():
        damaged.model.layers[0].mlp.down_proj.weight.mul_(0.0)
    other = slice_agreement(damaged, teacher, tok, prompts, traces, progress=False)
    cache = {}
    slice_agreement(teacher, teacher, tok, prompts, traces, progress=False, teacher_cache=cache)
    assert len(cache) == 2
    assert slice_agreement(damaged, teacher, tok, prompts, traces, progress=False, teacher_cache=cache) == other
    assert other["kl"] > 0 and 0 <= other["top1_agreement"] <= 1
    assert other["positions"] == 11 and other["gold_prompts"] == 1
    # exact match counts only gold prompts the teacher gets right: "x" is not what a random model says
    assert other["teacher_correct"] == 0 and other["exact_match_hits"] == 0


def test_prompts_too_long_for_the_model_are_skipped(tok):
    model = tiny_model("llama")  # 256 positions
    ps = PromptSet(name="long", source="bundled", prompts=[Prompt(id="l", prompt="word " * 400, chat=False)])
    traces = teacher_traces(model, tok, ps, progress=False)
    assert "skipped" in traces[0]
    row = slice_agreement(model, model, tok, ps, traces, progress=False)
    assert row["skipped"] == 1 and row["prompts"] == 0 and row["kl"] is None


@pytest.mark.parametrize("output, gold, match, ok", [
    ("7 + 5 = 12\nmore", "12", "number", True),
    ("10 minus 3 is 2.", "7", "number", False),
    (" 1,200 apples", "1200", "number", True),
    ("The French word is 'chat'.", "chat", "word", True),
    ("chateau", "chat", "word", False),
    ("  Paris. ", "paris", "exact", True),
    ("Paris is the capital", "paris", "exact", False),
    (" a + b\n\ndef", "a + b", "prefix", True),
    ("\n\nyes", "yes", "word", True),
])
def test_answer_matching(output, gold, match, ok):
    assert is_correct(output, Prompt(id="p", prompt="q", gold=gold, match=match)) is ok


def test_no_gold_means_no_verdict():
    assert is_correct("anything", Prompt(id="p", prompt="q")) is None


def test_bundled_slices_load_and_have_gold_answers():
    for name in SLICES:
        ps = bundled_slice(name)
        assert 8 <= len(ps.prompts) <= 16, name
        if name in ("math", "long_context"):
            assert all(p.gold for p in ps.prompts), name
    assert sum(len(p.prompt.split()) for p in bundled_slice("long_context").prompts) > 8 * 600
    with pytest.raises(InputError, match="did you mean math"):
        bundled_slice("maths")


def test_prompt_file_errors_name_the_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "hi"}) + "\n\n" + json.dumps({"id": "g", "prompt": "2+2", "gold": "4",
                                                                        "match": "number"}) + "\n")
    ps = load_prompt_file(good)
    assert [p.id for p in ps.prompts] == ["line-1", "g"] and ps.prompts[1].gold == ["4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "answer": "x"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: answer: unknown field"):
        load_prompt_file(bad)
    bad.write_text("{oops\n")
    with pytest.raises(InputError, match="bad.jsonl:1: not a JSON object"):
        load_prompt_file(bad)
    bad.write_text(json.dumps({"prompt": "a", "match": "fuzzy"}) + "\n")
    with pytest.raises(InputError, match="match"):
        load_prompt_file(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.jsonl")
