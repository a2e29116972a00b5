"""The quantization engine: a plan's `quantize` spec applied in place with torchao, then exported as a checkpoint
that transformers reloads.

    {"scheme": "int4-weight-only", "group_size": 128}

Only the decoder blocks' projections (q/k/v/o, gate/up/down, as `planner.arch` names them) are quantized; the
embeddings and the LM head stay dense. Which torchao config serves a scheme depends on the device, because the
packed layouts are device-specific; `BACKENDS` is that table and `REFUSED` says why the missing pairs are missing.

torchao is optional (`pip install 'planner[quant]'`) and is imported only when a function here runs.

| scheme             | cpu                                             | cuda                                  |
| ------------------ | ----------------------------------------------- | ------------------------------------- |
| `int8-weight-only` | Int8WeightOnlyConfig                            | same                                  |
| `int4-weight-only` | PrototypeInt4WeightOnlyConfig (CPU tinygemm,    | Int4WeightOnlyConfig tile_packed_to_4d |
|                    | groups 32/64/128, no export)                    | (bf16 model)                          |
| `w8a8-int8`        | Int8DynamicActivationInt8WeightConfig           | same                                  |
| `fp8`              | refused: needs fp8 tensor cores                 | Float8DynamicActivationFloat8Weight-  |
|                    |                                                 | Config, per row (SM 8.9+)             |

The cuda column follows torchao's documentation; only the cpu column is exercised by the tests here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from planner.errors import InputError
from planner.quant.specs import SCHEMES, QuantSpec

MIN_TORCHAO = "0.18"
INSTALL_HINT = "pip install 'planner[quant]' (torchao >= 0.18)"


@dataclass(frozen=True)
class Backend:
    """How torchao runs one scheme on one device type."""

    make_config: Callable[[QuantSpec], Any]  # QuantSpec -> torchao AOBaseConfig (imports torchao when called)
    tensor: str  # class name of the weight subclass the config produces; checked after quantize_
    group_sizes: tuple[int, ...] = ()  # grouped schemes: the group sizes the kernel accepts
    out_multiple: int = 1  # output features must be a multiple of this (the kernel's packing)
    dtypes: tuple[str, ...] = ()  # serving dtypes the kernel accepts (empty: any)
    min_capability: tuple[int, int] | None = None  # CUDA compute capability
    export_refused: str | None = None  # why a checkpoint of this layout cannot be written
    notes: tuple[str, ...] = ()


def _int8_weight_only(spec: QuantSpec):
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig(set_inductor_config=False)  # eager serving: leave inductor's globals alone


def _w8a8_int8(spec: QuantSpec):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def _int4_cpu(spec: QuantSpec):
    # torchao's Int4WeightOnlyConfig layouts need mslk (plain) or CUDA (tile_packed_to_4d, plain_int32); the CPU
    # tinygemm kernel (aten._weight_int4pack_mm_for_cpu) is reached through the prototype config
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=spec.group_size, set_inductor_config=False)


def _int4_cuda(spec: QuantSpec):
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=spec.group_size, int4_packing_format="tile_packed_to_4d",
                                set_inductor_config=False)


def _fp8_cuda(spec: QuantSpec):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


_W8A8_NOTE = "activations are quantized per token at run time"
BACKENDS: dict[tuple[str, str], Backend] = {
    ("cpu", "int8-weight-only"): Backend(_int8_weight_only, "Int8Tensor"),
    ("cpu", "int4-weight-only"): Backend(
        _int4_cpu, "Int4OpaqueTensor", group_sizes=(32, 64, 128), out_multiple=16,
        export_refused="torchao's CPU int4 layout (Int4OpaqueTensor) has no safetensors serialization in torchao "
                       "0.18, so transformers cannot save it; keep the dense checkpoint and quantize after loading, "
                       "or export int4 from a CUDA device (tile_packed_to_4d layout)"),
    ("cpu", "w8a8-int8"): Backend(_w8a8_int8, "Int8Tensor", notes=(_W8A8_NOTE,)),
    ("cuda", "int8-weight-only"): Backend(_int8_weight_only, "Int8Tensor"),
    ("cuda", "int4-weight-only"): Backend(_int4_cuda, "Int4TilePackedTo4dTensor", group_sizes=(32, 64, 128, 256),
                                          dtypes=("bf16",)),
    ("cuda", "w8a8-int8"): Backend(_w8a8_int8, "Int8Tensor", notes=(_W8A8_NOTE,)),
    ("cuda", "fp8"): Backend(_fp8_cuda, "Float8Tensor", min_capability=(8, 9), notes=(_W8A8_NOTE,)),
}
REFUSED = {("cpu", "fp8"): "it needs fp8 tensor cores (CUDA compute capability 8.9+: L4, L40S, H100, H200)"}
DEVICES = ("cpu", "cuda")
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class QuantResult:
    scheme: str
    linears_quantized: int
    params_quantized: int
    seconds: float
    backend: str  # "torchao 0.18.0 Int8WeightOnlyConfig (Int8Tensor)"
    device: str = "cpu"
    dense_bytes: int = 0  # the quantized linears' weights before
    quantized_bytes: int = 0  # ... and after (packed data, scales and zero points)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- torchao, optional ------------------------------------------------------------------------------------------


def require_torchao():
    """Import torchao (quietly) or raise an InputError saying how to install it."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:  # a CPU build cannot load torchao's CUDA kernels; that is expected, not worth a warning
        log.setLevel(logging.ERROR)
    try:
        import torchao
    except ImportError as exc:
        raise InputError(f"quantization needs torchao, which is not installed ({exc}); {INSTALL_HINT}") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    from packaging.version import Version

    if Version(torchao.__version__.split("+")[0]) < Version(MIN_TORCHAO):
        raise InputError(f"torchao {torchao.__version__} is installed; planner needs >= {MIN_TORCHAO}: "
                         f"{INSTALL_HINT}")
    return torchao


# -- choosing the backend ---------------------------------------------------------------------------------------


def accepted_schemes(device_type: str) -> list[str]:
    return [s for s in SCHEMES if (device_type, s) in BACKENDS]


def backend_for(spec: QuantSpec, device: str, model=None) -> Backend:
    """The Backend for `spec` on `device`, or an InputError naming the scheme, the device and what is accepted."""
    import torch

    device_type = torch.device(device).type
    if device_type not in DEVICES:
        raise InputError(f"quantization on device {device!r} is not supported (accepted: {', '.join(DEVICES)})")
    key = (device_type, spec.scheme)
    if key not in BACKENDS:
        why = REFUSED.get(key, "torchao has no kernel for it there")
        raise InputError(f"scheme {spec.scheme!r} cannot run on {device_type}: {why} "
                         f"(accepted on {device_type}: {', '.join(accepted_schemes(device_type))})")
    backend = BACKENDS[key]
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} was asked for but no CUDA GPU is visible (accepted: cpu)")
        if backend.min_capability and torch.cuda.get_device_capability(device) < backend.min_capability:
            found = ".".join(map(str, torch.cuda.get_device_capability(device)))
            need = ".".join(map(str, backend.min_capability))
            ok = [s for s in accepted_schemes("cuda") if not BACKENDS["cuda", s].min_capability]
            raise InputError(f"scheme {spec.scheme!r} needs CUDA compute capability {need}+; "
                             f"{torch.cuda.get_device_name(device)} has {found} (accepted here: {', '.join(ok)})")
    if spec.group_size is not None and backend.group_sizes and spec.group_size not in backend.group_sizes:
        raise InputError(f"{spec.scheme} group_size {spec.group_size} is not supported on {device_type} "
                         f"(accepted there: {', '.join(map(str, backend.group_sizes))})")
    if model is not None and backend.dtypes:
        dtype = _DTYPE_NAMES.get(str(next(model.parameters()).dtype).removeprefix("torch."), "?")
        if dtype not in backend.dtypes:
            raise InputError(f"{spec.scheme} on {device_type} needs the model in {' or '.join(backend.dtypes)}, "
                             f"not {dtype}; load it with dtype {backend.dtypes[0]}")
    return backend


# -- which layers, and can they be quantized ---------------------------------------------------------------------


def target_linears(model) -> dict[str, Any]:
    """Full name -> module of every decoder-block projection (what gets quantized)."""
    import torch

    from planner.arch import get_adapter

    adapter = get_adapter(model)
    targets = {name: module for _, _, name, module in adapter.iter_linears(model)}
    for name, module in targets.items():
        if not isinstance(module, torch.nn.Linear):
            raise InputError(f"{name} is a {type(module).__name__}, not nn.Linear; torchao quantizes nn.Linear "
                             f"layers only, so {adapter.family} models (fused Conv1D projections) cannot be "
                             "quantized here")
    return targets


def check_shapes(targets: dict[str, Any], spec: QuantSpec, backend: Backend) -> None:
    """Refuse (before any weight changes) a layer the kernel cannot pack: group size or output multiple."""
    if backend.out_multiple > 1:
        for name, module in targets.items():
            if module.out_features % backend.out_multiple:
                raise InputError(f"{spec.scheme} cannot quantize {name}: its {module.out_features} output "
                                 f"features are not a multiple of {backend.out_multiple}, which the kernel needs "
                                 "(prune to a multiple of 16, or use int8-weight-only)")
    if spec.group_size is None:
        return
    dividing = [g for g in backend.group_sizes if all(m.in_features % g == 0 for m in targets.values())]
    for name, module in targets.items():
        if module.in_features % spec.group_size:
            choose = (f"group sizes that divide every layer's input: {', '.join(map(str, dividing))}" if dividing
                      else f"none of {', '.join(map(str, backend.group_sizes))} divides every layer's input; "
                           "use int8-weight-only")
            raise InputError(f"{spec.scheme} group_size {spec.group_size} does not divide the "
                             f"{module.in_features} input features of {name} ({choose})")


def stored_bytes(tensor) -> int:
    """Bytes a (possibly torchao subclass) tensor stores: its inner tensors (packed data, scales, zero points)."""
    import torch

    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(stored_bytes(getattr(tensor, n)) for n in names if getattr(tensor, n, None) is not None)


def _is_plain(tensor) -> bool:
    import torch

    return type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.dtype.is_floating_point


# -- quantize -----------------------------------------------------------------------------------------------------


def quantize_model(model, spec: QuantSpec, *, device: str = "cpu") -> QuantResult:
    """Quantize the decoder blocks' projections of `model` in place with torchao for `device` (the model is moved
    there first: packed layouts are device-specific). Every check runs before any weight changes."""
    torchao = require_torchao()
    backend = backend_for(spec, device, model)
    targets = target_linears(model)
    for name, module in targets.items():
        if not _is_plain(module.weight):
            raise InputError(f"{name} is already quantized ({type(module.weight).__name__}); quantize a dense model")
    check_shapes(targets, spec, backend)
    config = backend.make_config(spec)

    start = time.perf_counter()
    model.to(device)
    dense_bytes = sum(stored_bytes(m.weight) for m in targets.values())
    params = sum(m.weight.numel() for m in targets.values())
    torchao.quantize_(model, config, filter_fn=lambda module, fqn: fqn in targets)
    seconds = time.perf_counter() - start

    wrong = {name: type(m.weight).__name__ for name, m in targets.items() if type(m.weight).__name__ != backend.tensor}
    if wrong:  # torchao skips a layer it cannot handle without an error; the checks above should prevent it
        name, found = next(iter(wrong.items()))
        raise RuntimeError(f"torchao left {len(wrong)} of {len(targets)} layers unquantized (e.g. {name}: {found}, "
                           f"expected {backend.tensor})")
    import torch

    dense = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
             and n not in targets]
    notes = [f"embeddings and LM head left dense ({', '.join(dense)})", *backend.notes]
    if backend.export_refused:
        notes.append(f"no checkpoint export: {backend.export_refused}")
    return QuantResult(scheme=spec.scheme, linears_quantized=len(targets), params_quantized=params,
                       seconds=seconds, backend=f"torchao {torchao.__version__} {type(config).__name__} "
                                               f"({backend.tensor})",
                       device=str(device), dense_bytes=dense_bytes,
                       quantized_bytes=sum(stored_bytes(m.weight) for m in targets.values()), notes=notes)


# -- export and reload --------------------------------------------------------------------------------------------


def export_quantized(model, tokenizer, folder: str | Path, spec: QuantSpec, *, overwrite: bool = False,
                     metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model` (quantized by `quantize_model` with `spec`) as a safetensors checkpoint that
    `AutoModelForCausalLM.from_pretrained` reloads (torchao installed): transformers' TorchAoConfig in config.json,
    torchao's flattened tensors in the weights. Returns planner.export's metadata: `file_bytes` is the bytes on disk
    of the weight files, `files` each file's size."""
    import torch
    from transformers import TorchAoConfig
    from transformers.quantizers.auto import AutoHfQuantizer

    from planner.export import export_model

    require_torchao()
    device = next(model.parameters()).device
    backend = backend_for(spec, str(device))
    targets = target_linears(model)
    found = {type(m.weight).__name__ for m in targets.values()}
    if found != {backend.tensor}:
        raise InputError(f"the model is not quantized as {spec.label} on {device.type} (its projections hold "
                         f"{', '.join(sorted(found))}, expected {backend.tensor}); run quantize_model first")
    if backend.export_refused:
        raise InputError(f"cannot export {spec.label} quantized on {device.type}: {backend.export_refused}")
    keep_dense = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in targets]
    quant_config = TorchAoConfig(backend.make_config(spec), modules_to_not_convert=keep_dense)
    saved = {"config": getattr(model.config, "quantization_config", None),
             "quantizer": getattr(model, "hf_quantizer", None)}
    # save_pretrained flattens torchao tensors (and writes the config) only through a model's hf_quantizer
    model.config.quantization_config = quant_config
    model.hf_quantizer = AutoHfQuantizer.from_config(quant_config, pre_quantized=True)
    try:
        meta = export_model(model, tokenizer, folder, metadata={**(metadata or {}), "quantize": spec.model_dump()},
                            overwrite=overwrite)
    finally:
        model.hf_quantizer = saved["quantizer"]
        if saved["config"] is None:
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        else:
            model.config.quantization_config = saved["config"]
    meta["files"] = {f.name: f.stat().st_size for f in sorted(Path(folder).glob("*.safetensors"))}
    return meta


def load_quantized(folder: str | Path, *, dtype: str = "fp32", device: str = "cpu"):
    """Reload a checkpoint written by `export_quantized` (a planner.models.LoadedModel)."""
    import json

    from planner.models import load_model

    require_torchao()
    config_file = Path(folder) / "config.json"
    raw = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if (raw.get("quantization_config") or {}).get("quant_method") != "torchao":
        raise InputError(f"{str(folder)!r} is not a torchao-quantized checkpoint (its config.json has no "
                         "quantization_config with quant_method 'torchao'); export one with export_quantized")
    return load_model(str(folder), dtype=dtype, device=device)


def is_quantized_checkpoint(folder) -> bool:
    """Whether the checkpoint folder holds a torchao-quantized export (its config.json says so)."""
    import json
    from pathlib import Path

    config = Path(folder) / "config.json"
    try:
        raw = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return False
    return (raw.get("quantization_config") or {}).get("quant_method") == "torchao"
