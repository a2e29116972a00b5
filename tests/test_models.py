import hashlib
import json
from pathlib import Path

import pytest
import torch

from planner.cli import main
from planner.errors import InputError
from planner.models import _gguf_key, convert_gguf, embedded_gguf_path, load_model, resolve_source
from tiny import save_tiny

LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_config_only_llama2_7b(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
    assert resolve_source(str(tmp_path)).kind == "config-only"
    assert main(["model", "--model", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 6_738_415_616  # the published Llama-2-7B count
    assert info["source"]["weights_present"] is False
    assert info["shape"]["num_layers"] == 32 and info["shape"]["head_dim"] == 128
    # 2 (k,v) * 32 layers * 4096 * 2 bytes
    assert info["kv_cache_bytes_per_token"] == 2 * 32 * 4096 * 2


def test_config_only_cannot_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
    with pytest.raises(InputError, match="no weights"):
        load_model(str(tmp_path))


def test_load_folder_roundtrip_and_source_untouched(tmp_path):
    folder = save_tiny(tmp_path, "llama")
    before = _tree_hash(folder)
    lm = load_model(str(folder))
    assert lm.source.kind == "folder"
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.zero_()  # mutate the loaded copy only
    assert _tree_hash(folder) == before
    assert lm.tokenizer.pad_token is not None


def test_missing_path_is_exit_2(tmp_path, capsys):
    assert main(["model", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_uncached_hub_id_is_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["model", "--model", "someone/not-a-cached-model"]) == 2
    err = capsys.readouterr().err
    assert "someone/not-a-cached-model" in err and "never downloads" in err


def test_corrupt_safetensors_is_clear_error(tmp_path):
    folder = save_tiny(tmp_path, "llama")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="could not load the weights"):
        load_model(str(folder))


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["model", "--model", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_unsupported_family_from_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert main(["model", "--model", str(tmp_path)]) == 2
    assert "unsupported model family 'bert'" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_default_shapes(capsys):
    assert main(["model", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    s = info["shape"]
    assert (s["num_layers"], s["hidden_size"], s["intermediate_size"], s["num_heads"], s["num_kv_heads"]) == (
        30, 576, 1536, 9, 3)
    assert info["parameters"] == 134_515_008
    assert info["source"]["kind"] == "embedded"


@pytest.mark.slow
def test_incomplete_conversion_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path))
    gguf = embedded_gguf_path()
    target = tmp_path / "models" / _gguf_key(gguf)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{ half written")  # what a killed run could leave behind
    folder = convert_gguf(gguf)
    assert folder == target and (folder / ".planner-complete").is_file()
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 30
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert convert_gguf(gguf) == folder  # reused, not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime == mtime
