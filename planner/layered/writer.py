"""Write a checkpoint layer by layer: one safetensors shard per decoder layer as it is pruned, then the tensors outside
the layers copied from the source in row blocks, the shard index, the config, the tokenizer and planner.json. The
folder is built under a temporary name and renamed into place when complete (as planner.export.export_model does),
and it loads with plain `AutoModelForCausalLM.from_pretrained`.

A shard is streamed: its tensors' bytes go to a data file as they come and the header (names, dtypes, shapes,
offsets) is written in front at the end, so no tensor is ever held twice and a large one (the embedding) is copied
block by block.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from planner.layered.store import EMBED_BLOCK_BYTES, INDEX_FILE, MASKS_FILE, SAFETENSORS_DTYPES

_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def dtype_code(dtype) -> str:
    return _CODES[str(dtype).removeprefix("torch.")]


class SafetensorsStream:
    """One safetensors file written tensor by tensor (or block by block for a tensor given in row blocks)."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = open(self._data_path, "wb")
        self._header: dict[str, Any] = {}
        self._offset = 0
        self._open: tuple | None = None

    def add(self, name: str, tensor) -> None:
        self.add_blocks(name, tensor.dtype, tuple(tensor.shape), [tensor])

    def add_blocks(self, name: str, dtype, shape: tuple[int, ...], blocks) -> None:
        """A tensor of `shape` given as consecutive row blocks (tensors of `dtype`)."""
        self.begin(name, dtype, shape)
        for block in blocks:
            self.write(block)
        self.end()

    def begin(self, name: str, dtype, shape: tuple[int, ...]) -> None:
        self._open = (name, dtype, list(shape), self._offset)

    def write(self, block) -> None:
        """The next row block of the tensor begun."""
        import torch

        name, dtype, _, _ = self._open
        data = block.detach().to("cpu").contiguous().reshape(-1)
        if data.dtype != dtype:
            raise ValueError(f"{name}: block of {data.dtype}, tensor of {dtype}")
        raw = data.view(torch.uint8).numpy()
        self._data.write(memoryview(raw))
        self._offset += raw.nbytes

    def end(self) -> None:
        name, dtype, shape, start = self._open
        self._header[name] = {"dtype": dtype_code(dtype), "shape": shape, "data_offsets": [start, self._offset]}
        self._open = None

    def close(self) -> int:
        """Write the file (header, then the data); return its bytes."""
        self._data.close()
        header = json.dumps({"__metadata__": self.metadata, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        with open(self.path, "wb") as out, open(self._data_path, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 16 * 2**20)
        os.remove(self._data_path)
        return self.path.stat().st_size

    def abort(self) -> None:
        self._data.close()
        for p in (self._data_path, self.path):
            if p.exists():
                os.remove(p)


class CheckpointWriter:
    """A checkpoint folder written layer by layer from a LayeredModel `source`, in the source's compute dtype.

    `compressed`: also write the lossless bitmask copy planner.export.write_compressed writes for masked kinds
    (compressed/weights.bitmask.safetensors), tensor by tensor; the tensors outside the layers, never pruned, are
    stored there as they are."""

    def __init__(self, source, folder: str | Path, scratch: str | Path | None = None, compressed: bool = False):
        from planner.documents import umask

        self.source = source
        self.folder = Path(folder)
        self.dtype = source.dtype
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        base = Path(scratch) if scratch is not None else self.folder.parent
        base.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.tmp-", dir=base))
        os.chmod(self.tmp, 0o777 & ~umask())
        self.shards = source.num_layers + 1  # one per decoder layer, one for the rest
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.parameters = 0
        self.nonzero = 0
        self.compressed: SafetensorsStream | None = None
        self._shapes: dict[str, list[int]] = {}
        self.masks: SafetensorsStream | None = None
        self._mask_shapes: dict[str, list[int]] = {}
        if compressed:
            from planner.export import COMPRESSED_DIR, COMPRESSED_FILE

            (self.tmp / COMPRESSED_DIR).mkdir()
            self.compressed = SafetensorsStream(self.tmp / COMPRESSED_DIR / COMPRESSED_FILE)

    def _shard_name(self, k: int) -> str:
        return f"model-{k:05d}-of-{self.shards:05d}.safetensors"

    def _count(self, tensor) -> None:
        self.total_size += tensor.numel() * tensor.element_size()
        self.parameters += tensor.numel()
        self.nonzero += int((tensor != 0).sum())

    def add_layer(self, i: int, layer) -> None:
        """Decoder layer `i` (its state dict, in the source's naming) as shard i + 1."""
        from planner.export import compress_tensor

        name = self._shard_name(i + 1)
        stream = SafetensorsStream(self.tmp / name)
        prefix = self.source.file_name(f"{self.source.adapter.layers}.{i}.")
        module_prefix = f"{self.source.adapter.layers}.{i}."
        try:
            for local, tensor in layer.state_dict().items():
                stream.add(prefix + local, tensor)
                self.weight_map[prefix + local] = name
                self._count(tensor)
                if self.compressed is not None:
                    stored, shape = compress_tensor(module_prefix + local, tensor)
                    for key, value in stored.items():
                        self.compressed.add(key, value)
                    if shape is not None:
                        self._shapes[module_prefix + local] = shape
        except BaseException:
            stream.abort()
            raise
        stream.close()

    def add_masks(self, masks: dict[str, Any]) -> None:
        """Keep masks (name -> bool tensor) of one layer, bit-packed into masks.safetensors as they come."""
        from planner.export import pack_bits

        if self.masks is None:
            self.masks = SafetensorsStream(self.tmp / MASKS_FILE)
        for name, keep in masks.items():
            self.masks.add(name, pack_bits(keep))
            self._mask_shapes[name] = list(keep.shape)

    def _copy_outer(self) -> None:
        """The tensors outside the decoder layers, from the source, in row blocks, converted to the dtype."""
        import torch

        source = self.source
        name = self._shard_name(self.shards)
        stream = SafetensorsStream(self.tmp / name)
        skip = source._untied_head() if source.shape.tied_embeddings else None
        for tensor_name in source.outer_names():
            if tensor_name == skip:
                continue
            entry = source.index.entries[tensor_name]
            floating = SAFETENSORS_DTYPES[entry.dtype].startswith(("float", "bfloat"))
            dtype = self.dtype if floating else getattr(torch, SAFETENSORS_DTYPES[entry.dtype])
            module_name = self._module_name(tensor_name)
            targets = [stream] + ([self.compressed] if self.compressed is not None else [])
            for target, key in zip(targets, (tensor_name, module_name)):
                target.begin(key, dtype, entry.shape)
            for _, block in source.index.blocks(tensor_name, EMBED_BLOCK_BYTES, "cpu", dtype):
                for target in targets:
                    target.write(block)
                self.nonzero += int((block != 0).sum())
            for target in targets:
                target.end()
            self.weight_map[tensor_name] = name
            self.total_size += entry.numel * dtype.itemsize
            self.parameters += entry.numel
        stream.close()

    def _module_name(self, tensor_name: str) -> str:
        """The model's name of a checkpoint tensor (what write_compressed keys by)."""
        prefix = self.source._prefix
        return tensor_name if not prefix or tensor_name.startswith(prefix) else prefix + tensor_name

    def finish(self, config, tokenizer, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy the rest, write index, config (`config`, e.g. with a new intermediate size), tokenizer and
        planner.json, and move the folder into place; returns the metadata written (with parameters, file_bytes,
        and compressed_file_bytes when asked for)."""
        from planner.export import METADATA_FILE, compressed_metadata

        try:
            self._copy_outer()
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
            config.dtype = self.dtype
            config.save_pretrained(self.tmp)
            generation = self.source.folder / "generation_config.json"
            if generation.is_file():
                shutil.copy(generation, self.tmp / generation.name)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.tmp)
            file_bytes = sum(f.stat().st_size for f in self.tmp.glob("*.safetensors"))
            meta = dict(metadata or {})
            meta.update({"parameters": self.parameters, "file_bytes": file_bytes, "written": "layer by layer"})
            if self.compressed is not None:
                aliases = {}
                if self.source.shape.tied_embeddings:  # stored once, as save_pretrained and write_compressed do
                    aliases[f"{self.source.adapter.lm_head}.weight"] = f"{self.source.adapter.embed}.weight"
                self.compressed.metadata.update(compressed_metadata(self._shapes, aliases))
                meta["compressed_file_bytes"] = self.compressed.close()
                self.compressed = None
            if self.masks is not None:
                self.masks.metadata = {"shapes": json.dumps(self._mask_shapes)}
                self.masks.close()
                self.masks = None
            (self.tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
            if self.folder.exists():
                shutil.rmtree(self.folder)
            os.replace(self.tmp, self.folder)
        finally:
            self.abort()
        return meta

    def abort(self) -> None:
        for stream in (self.compressed, self.masks):
            if stream is not None:
                stream.abort()
        self.compressed = self.masks = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


__all__ = ["SafetensorsStream", "CheckpointWriter", "dtype_code", "INDEX_FILE", "MASKS_FILE"]
