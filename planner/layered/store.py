"""A checkpoint on disk, used one decoder layer at a time ("sequential onloading").

    model = LayeredModel("ckpt/", device="cpu")     # reads the config and the safetensors headers, no weights
    inputs = model.first_inputs(ids, chunk=4)       # what decoder layer 0 receives, for every chunk of ids
    layer = model.load_layer(0)                     # one decoder layer on the compute device
    nll, count = model.head_nll(hidden, targets)    # final norm + LM head in vocabulary blocks

Each decoder layer is an instance of the model's own transformers class (e.g. LlamaDecoderLayer), built from the
config with its weights on the meta device, then given its tensors from disk in the compute dtype (fp32 on a CPU,
bf16 on CUDA). The embedding rows a batch needs are read in row blocks, the LM head in vocabulary blocks, so no
step holds more than one layer, the hidden states, and one block of the head.

What runs before the first decoder layer (position ids, the causal mask, rotary or learned position embeddings) runs
in a skeleton of the model whose parameters are on the meta device (accelerate's init_empty_weights: buffers such
as rotary frequencies are real, weights are not), with only the small tensors outside the layers loaded. So layer 0
receives exactly what it receives inside the whole model, and the layered engines give the in-memory results.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InputError

HEAD_BLOCK_BYTES = 32 * 2**20  # LM head rows read at once (in the compute dtype)
EMBED_BLOCK_BYTES = 64 * 2**20  # embedding rows read at once
TOKEN_BLOCK = 1024  # tokens whose logits against one head block exist at once (3 float32 copies)
INDEX_FILE = "model.safetensors.index.json"
MASKS_FILE = "masks.safetensors"  # planner.run.masks' format: bit-packed keep masks, shapes in the metadata

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def compute_dtype(device: str):
    """The dtype a layer is computed in: bf16 on CUDA (the serving dtype), fp32 on a CPU (no fast bf16 GEMMs)."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


# -- the files ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8 bytes of length, then the header): names, dtypes, shapes."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint's weights: those its shard index names, else model.safetensors, else
    every .safetensors file but planner's masks (masks.safetensors beside a masked export)."""
    index = folder / INDEX_FILE
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return sorted(f for f in folder.glob("*.safetensors") if f.name != MASKS_FILE)


class TensorIndex:
    """Where every tensor of a safetensors checkpoint lives, read from the file headers only."""

    def __init__(self, folder: Path):
        files = weight_files(folder)
        if not files:
            raise InputError(f"checkpoint {str(folder)!r} has no .safetensors files; the layered path reads "
                             "safetensors only (save the model with safe_serialization=True)")
        self.entries: dict[str, TensorEntry] = {}
        for path in files:
            for name, info in read_header(path).items():
                if name != "__metadata__":
                    self.entries[name] = TensorEntry(path, info["dtype"], tuple(info["shape"]))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, names: list[str], device, dtype) -> dict[str, Any]:
        """The tensors `names`, copied onto `device` in `dtype` (the file's mapping is closed afterwards)."""
        from safetensors import safe_open

        out: dict[str, Any] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.entries[name].file, []).append(name)
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for name in group:
                    out[name] = _convert(f.get_tensor(name), device, dtype)
        return out

    def rows(self, name: str, start: int, stop: int, device, dtype):
        """Rows [start, stop) of a 2-D tensor, read without the rest of it."""
        from safetensors import safe_open

        with safe_open(str(self.entries[name].file), framework="pt") as f:
            return _convert(f.get_slice(name)[start:stop], device, dtype)

    def blocks(self, name: str, block_bytes: int, device, dtype):
        """(start, rows) for consecutive row blocks of a tensor of about `block_bytes` each in `dtype`."""
        import torch

        entry = self.entries[name]
        if not entry.shape:  # a scalar
            yield 0, self.read([name], device, dtype)[name]
            return
        width = max(1, entry.numel // max(1, entry.shape[0]))
        size = (dtype or getattr(torch, SAFETENSORS_DTYPES[entry.dtype])).itemsize
        step = max(1, block_bytes // (width * size))
        for start in range(0, entry.shape[0], step):
            yield start, self.rows(name, start, min(start + step, entry.shape[0]), device, dtype)


def _convert(tensor, device, dtype):
    """A private copy: the tensor safetensors returns maps the file, and the engines change weights in place."""
    if tensor.is_floating_point() and dtype is not None:
        return tensor.to(device=device, dtype=dtype, copy=True)
    return tensor.to(device=device, copy=True)


# -- the model ------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    pass


class LayeredModel:
    """A causal LM checkpoint folder (config.json + safetensors) run one decoder layer at a time."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype=None, attn_implementation: str | None = None):
        from transformers import AutoConfig

        from planner.arch import get_adapter

        self.folder = Path(folder)
        self.device = device
        self.dtype = dtype if dtype is not None else compute_dtype(device)
        self.config = AutoConfig.from_pretrained(str(self.folder))
        self.adapter = get_adapter(self.config)
        self.shape = self.adapter.shape(self.config)
        self.index = TensorIndex(self.folder)
        self._attn = attn_implementation
        self._skeleton = None
        self._offloaded = None
        self.offload_dir: Path | None = None  # where accelerate may spill (offloaded(): usually nothing)
        self._prefix = self._find_prefix()

    def __repr__(self) -> str:
        return f"LayeredModel({str(self.folder)!r}, device={self.device!r}, dtype={self.dtype})"

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    # -- names ---------------------------------------------------------------------------------------------

    def _find_prefix(self) -> str:
        """How the checkpoint names the model's modules: as the model does ('model.layers.0...'), or without the
        base model's prefix (GPT-2 checkpoints on the hub: 'h.0...')."""
        layers = self.adapter.layers
        stripped = layers.split(".", 1)[1] if "." in layers else layers
        for prefix, layer_path in (("", layers), (layers.split(".", 1)[0] + ".", stripped)):
            if any(name.startswith(f"{layer_path}.0.") for name in self.index.entries):
                return prefix
        raise InputError(f"checkpoint {str(self.folder)!r} has no tensors named {layers}.0.* (nor {stripped}.0.*); "
                         "the layered path reads checkpoints saved by transformers' save_pretrained")

    def file_name(self, module_name: str) -> str:
        """The checkpoint's name of a tensor the model names `module_name`."""
        if self._prefix and module_name.startswith(self._prefix):
            return module_name[len(self._prefix):]
        return module_name

    def layer_names(self, i: int) -> dict[str, str]:
        """Checkpoint name -> name inside the layer, for decoder layer `i`."""
        start = self.file_name(f"{self.adapter.layers}.{i}.")
        return {name: name[len(start):] for name in self.index.entries if name.startswith(start)}

    @property
    def embed_name(self) -> str:
        return self.file_name(f"{self.adapter.embed}.weight")

    @property
    def head_name(self) -> str:
        """The LM head's tensor: the embedding when the two are tied."""
        name = self.file_name(f"{self.adapter.lm_head}.weight")
        return name if name in self.index and not self.shape.tied_embeddings else self.embed_name

    def outer_names(self) -> list[str]:
        """Checkpoint names of every tensor outside the decoder layers (embeddings, final norm, LM head...)."""
        start = self.file_name(f"{self.adapter.layers}.")
        return [n for n in self.index.entries if not n.startswith(start)]

    # -- sizes ---------------------------------------------------------------------------------------------

    def parameter_count(self) -> int:
        """Parameters in the checkpoint (a tied LM head counted once, as `model.parameters()` does)."""
        names = [n for n in self.index.entries if not (self.shape.tied_embeddings and n == self._untied_head())]
        return sum(self.index.entries[n].numel for n in names)

    def _untied_head(self) -> str:
        return self.file_name(f"{self.adapter.lm_head}.weight")

    def layer_parameters(self) -> int:
        """Parameters of the largest decoder layer."""
        return max(sum(self.index.entries[n].numel for n in self.layer_names(i)) for i in range(self.num_layers))

    def largest_matrix(self) -> int:
        return max(self.index.entries[n].numel for i in range(self.num_layers) for n in self.layer_names(i))

    def weight_bytes(self, element_bytes: int) -> int:
        return self.parameter_count() * element_bytes

    def count_nonzero(self) -> tuple[int, int]:
        """(parameters, non-zero parameters), reading one row block of one tensor at a time."""
        total = nonzero = 0
        for name in self.index.entries:
            if self.shape.tied_embeddings and name == self._untied_head():
                continue
            for _, block in self.index.blocks(name, EMBED_BLOCK_BYTES, "cpu", None):
                total += block.numel()
                nonzero += int((block != 0).sum())
        return total, nonzero

    # -- the pieces ----------------------------------------------------------------------------------------

    @property
    def skeleton(self):
        """The whole model with its parameters on the meta device, but for the small ones outside the decoder
        layers (final norm, position embeddings) loaded on the compute device."""
        if self._skeleton is None:
            from accelerate import init_empty_weights
            from transformers import AutoModelForCausalLM

            kwargs = {"attn_implementation": self._attn} if self._attn else {}
            with init_empty_weights():
                skeleton = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype, **kwargs)
            skeleton.eval()
            layers = self.adapter.layers + "."
            big = {f"{self.adapter.embed}.weight", f"{self.adapter.lm_head}.weight"}
            for name, _ in list(skeleton.named_parameters()):
                if not name.startswith(layers) and name not in big:
                    file_name = self.file_name(name)
                    if file_name not in self.index:
                        raise InputError(f"checkpoint {str(self.folder)!r} has no tensor {file_name!r}")
                    _set_tensor(skeleton, name, self.index.read([file_name], self.device, self.dtype)[file_name])
            for name, buffer in list(skeleton.named_buffers()):
                if not name.startswith(layers) and buffer.device.type != "meta":
                    _set_tensor(skeleton, name, buffer.to(self.device), parameter=False)
            self._skeleton = skeleton
        return self._skeleton

    def layer_class(self):
        from planner.arch import get_submodule

        return type(get_submodule(self.skeleton, self.adapter.layers)[0])

    def load_layer(self, i: int):
        """Decoder layer `i`, built from the config and given its tensors, on the compute device, in eval mode."""
        from accelerate import init_empty_weights

        names = self.layer_names(i)
        with init_empty_weights():
            layer = self.layer_class()(self.skeleton.config, layer_idx=i)
        state = self.index.read(list(names), self.device, self.dtype)
        layer.load_state_dict({names[k]: v for k, v in state.items()}, strict=True, assign=True)
        for name, buffer in list(layer.named_buffers()):
            _set_tensor(layer, name, buffer.to(self.device), parameter=False)
        for p in layer.parameters():
            p.requires_grad_(False)
        return layer.eval()

    def embed(self, ids):
        """Embedding rows of `ids` ((B, L) token ids), gathered from the file block by block."""
        import torch

        flat = ids.reshape(-1).to("cpu")
        uniq, inverse = torch.unique(flat, return_inverse=True)
        rows = torch.empty((len(uniq), self.shape.hidden_size), dtype=self.dtype, device=self.device)
        entry = self.index.entries[self.embed_name]
        step = max(1, EMBED_BLOCK_BYTES // (entry.shape[1] * rows.element_size()))
        for start in range(0, entry.shape[0], step):
            stop = min(start + step, entry.shape[0])
            inside = (uniq >= start) & (uniq < stop)
            if bool(inside.any()):
                block = self.index.rows(self.embed_name, start, stop, self.device, self.dtype)
                rows[inside.to(self.device)] = block[(uniq[inside] - start).to(self.device)]
                del block
        return rows[inverse.to(self.device)].view(*ids.shape, -1)

    def first_inputs(self, ids, chunk: int):
        """What decoder layer 0 receives for every chunk of `chunk` rows of `ids` (as
        planner.prune.masked.calibration.capture_first_inputs captures it inside the whole model)."""
        import torch

        from planner.arch import get_submodule
        from planner.prune.masked.calibration import LayerInputs

        inputs = LayerInputs()

        def grab(module, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            inputs.hidden.append(hidden.detach())
            inputs.extra_args.append(tuple(args[1:]))
            inputs.extra_kwargs.append(dict(kwargs))
            raise _StopForward

        skeleton = self.skeleton
        handle = get_submodule(skeleton, self.adapter.layers)[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                for start in range(0, ids.shape[0], chunk):
                    try:
                        skeleton(inputs_embeds=self.embed(ids[start : start + chunk]), use_cache=False)
                    except _StopForward:
                        pass
        finally:
            handle.remove()
        return inputs

    def final_norm(self, hidden):
        import torch

        from planner.arch import get_submodule

        with torch.no_grad():
            return get_submodule(self.skeleton, self.adapter.final_norm)(hidden)

    def head_nll(self, hidden, targets, progress: bool = False) -> tuple[float, int]:
        """(sum of next-token NLL, tokens) of `hidden` ((T, H), after the final norm) against `targets` ((T,)): the
        LM head read in blocks of vocabulary rows, a running log-sum-exp per token (float64)."""
        import torch

        from tqdm.auto import tqdm

        tokens = hidden.shape[0]
        targets = targets.to(self.device)
        running_max = torch.full((tokens,), float("-inf"), dtype=torch.float64, device=self.device)
        running_sum = torch.zeros(tokens, dtype=torch.float64, device=self.device)
        target_logit = torch.zeros(tokens, dtype=torch.float64, device=self.device)
        entry = self.index.entries[self.head_name]
        bar = tqdm(total=entry.shape[0], desc="LM head", unit="rows", disable=not progress, leave=False)
        with torch.no_grad():
            for start, weight in self.index.blocks(self.head_name, HEAD_BLOCK_BYTES, self.device, self.dtype):
                stop = start + weight.shape[0]
                for t0 in range(0, tokens, TOKEN_BLOCK):
                    t1 = min(t0 + TOKEN_BLOCK, tokens)
                    logits = torch.nn.functional.linear(hidden[t0:t1], weight).float()
                    new_max = torch.maximum(running_max[t0:t1], logits.max(dim=-1).values.double())
                    shifted = torch.exp(logits - new_max.float()[:, None]).sum(dim=-1, dtype=torch.float64)
                    running_sum[t0:t1] = running_sum[t0:t1] * torch.exp(running_max[t0:t1] - new_max) + shifted
                    running_max[t0:t1] = new_max
                    tgt = targets[t0:t1]
                    inside = (tgt >= start) & (tgt < stop)
                    rows = torch.nonzero(inside).squeeze(1)
                    target_logit[t0 + rows] = logits[rows, tgt[rows] - start].double()
                bar.update(weight.shape[0])
                del weight
        bar.close()
        nll = running_max + torch.log(running_sum) - target_logit
        return float(nll.sum()), tokens

    def head_logits(self, hidden):
        """Full-vocabulary logits of a few positions ((T, H) after the final norm), float32, block by block."""
        import torch

        parts = []
        with torch.no_grad():
            for _, weight in self.index.blocks(self.head_name, HEAD_BLOCK_BYTES, self.device, self.dtype):
                parts.append(torch.nn.functional.linear(hidden, weight).float())
        return torch.cat(parts, dim=-1)

    # -- whole-model fallbacks --------------------------------------------------------------------------------

    def offloaded(self):
        """The whole model for generation, with accelerate's disk offload: every decoder layer and the LM head stay
        in the safetensors files and are read for each forward, the embedding and the small tensors stay in memory.
        Slow (one read of the weights per generated token), bounded in memory."""
        if self._offloaded is None:
            import tempfile

            from transformers import AutoModelForCausalLM

            from transformers.utils import logging as hf_logging

            self.offload_dir = Path(tempfile.mkdtemp(prefix="planner-offload-"))
            kwargs = {"attn_implementation": self._attn} if self._attn else {}
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # "some parameters are on the meta device": that is the point
            try:
                self._offloaded = AutoModelForCausalLM.from_pretrained(
                    str(self.folder), dtype=self.dtype, device_map=self.device_map(),
                    offload_folder=str(self.offload_dir), **kwargs).eval()
            except Exception as exc:
                raise InputError(f"could not open {str(self.folder)!r} with disk offload (accelerate): "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from None
            finally:
                hf_logging.set_verbosity(verbosity)
        return self._offloaded

    def device_map(self) -> dict[str, str]:
        """accelerate device map: decoder layers and an untied LM head on "disk", the rest on the compute device."""
        from planner.arch import get_submodule

        on_disk = [f"{self.adapter.layers}.{i}" for i in range(self.num_layers)]
        if not self.shape.tied_embeddings:
            on_disk.append(self.adapter.lm_head)
        kept = []
        for name, _ in self.skeleton.named_children():  # top-level modules, split down to the decoder layers
            kept += _split(self.skeleton, name, self.adapter.layers, self.adapter.lm_head, get_submodule)
        device = self.device if self.device != "cuda" else "cuda:0"
        mapping = {name: device for name in kept if name not in on_disk}
        mapping.update({name: "disk" for name in on_disk})
        return mapping

    def close(self) -> None:
        """Drop the offloaded model and its spill folder."""
        import shutil

        self._offloaded = None
        if self.offload_dir is not None:
            shutil.rmtree(self.offload_dir, ignore_errors=True)
            self.offload_dir = None


def _split(root, name: str, layers: str, lm_head: str, get_submodule) -> list[str]:
    """Module names under `name` that a device map lists: `name` itself, unless the decoder layers (or the LM head)
    are inside it, then its children, recursively; the layer list becomes one entry per layer."""
    if name == layers:
        return [f"{layers}.{i}" for i in range(len(get_submodule(root, layers)))]
    if name == lm_head or not (layers.startswith(name + ".") or lm_head.startswith(name + ".")):
        return [name]
    out = []
    for child, _ in get_submodule(root, name).named_children():
        out += _split(root, f"{name}.{child}", layers, lm_head, get_submodule)
    return out


def _set_tensor(root, name: str, value, parameter: bool = True) -> None:
    import torch

    from planner.arch import get_submodule

    owner, _, attr = name.rpartition(".")
    module = get_submodule(root, owner) if owner else root
    if parameter:
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attr] = value


__all__ = ["LayeredModel", "TensorIndex", "TensorEntry", "read_header", "weight_files", "compute_dtype",
           "SAFETENSORS_DTYPES", "INDEX_FILE", "MASKS_FILE"]
