"""The GPU catalog: one YAML file per GPU under `profiles/gpus/`, every figure citing its datasheet.

A file looks like this (abridged; see profiles/gpus/a100-80gb-sxm.yaml):

```yaml
version: 1
id: a100-80gb-sxm              # = the file name stem
name: NVIDIA A100 80GB SXM4
vendor: nvidia
architecture: ampere
compute_capability: "8.0"
family: a100                   # variants of one chip share a family
aliases: [a100, a100-80gb]     # short names; `a100` picks this variant
peak_tflops:                   # DENSE peaks (TOPS for int8), never the with-sparsity figure
  fp32: 19.5
  bf16: 312
sparse_2to4:
  dtypes: [tf32, bf16, fp16, int8]
memory_gb: 80
bandwidth_gb_s: 2039
sources:                       # field -> citation; every non-null figure needs one
  peak_tflops: "NVIDIA A100 datasheet, https://..."
  sparse_2to4: "..."
  memory_gb: "..."
  bandwidth_gb_s: "..."
```

`sources` keys are field paths: `memory_gb`, `peak_tflops.bf16` (or `peak_tflops` for all peaks), `sparse_2to4`,
`price`. Units are decimal: GB = 1e9 bytes, GB/s = 1e9 bytes/s, TFLOPS = 1e12 FLOP/s.
"""

from __future__ import annotations

import datetime
import functools
import os
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from planner.errors import InputError, did_you_mean
from planner.paths import gpus_dir

# every dtype a GPU figure can be given for; planner.workload.DTYPES is the serving subset
GPU_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8"]

# fields that are figures and so need a citation (peaks are added per dtype)
_CITED_FIELDS = ("compute_capability", "memory_gb", "bandwidth_gb_s", "l2_mb", "sm_count", "tdp_w")


class PeakTflops(BaseModel):
    """Dense peak throughput in TFLOPS (int8: TOPS); null where the GPU has no such path."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fp32: float | None = Field(None, gt=0, description="FP32 without tensor cores (CUDA cores / vector units)")
    tf32: float | None = Field(None, gt=0)
    bf16: float | None = Field(None, gt=0, description="tensor cores with FP32 accumulate")
    fp16: float | None = Field(None, gt=0, description="tensor cores with FP32 accumulate")
    fp8: float | None = Field(None, gt=0)
    int8: float | None = Field(None, gt=0, description="TOPS")


class Sparse2to4(BaseModel):
    """Dtypes for which the hardware runs 2:4 semi-structured sparse matmuls faster than dense (up to 2x)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dtypes: list[Dtype] = Field(default_factory=list)
    note: str | None = None


class Price(BaseModel):
    """An example on-demand price per GPU-hour; a list price on a date, not a quote."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    usd_per_hour: float = Field(gt=0, description="per GPU: instance price / GPUs in the instance")
    offering: str = Field(min_length=1, description="which public offering, e.g. 'AWS g5.xlarge, us-east-1'")
    as_of: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$", description="YYYY-MM or YYYY-MM-DD")

    @field_validator("as_of", mode="before")
    @classmethod
    def _date_to_text(cls, value: object) -> object:
        return value.isoformat() if isinstance(value, datetime.date) else value  # YAML reads 2024-12-01 as a date


class GpuSpec(BaseModel):
    """One GPU of the catalog. Figures are datasheet peaks; `measured_local` specs are filled in by the profiler."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: int = 1
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str = Field(min_length=1)
    vendor: Literal["nvidia", "amd", "intel", "apple", "host"]
    architecture: str | None = None
    compute_capability: str | None = Field(None, pattern=r"^\d+\.\d+$")
    family: str | None = None
    aliases: list[str] = Field(default_factory=list)
    measured_local: bool = False
    peak_tflops: PeakTflops = Field(default_factory=PeakTflops)
    sparse_2to4: Sparse2to4 = Field(default_factory=Sparse2to4)
    memory_gb: float | None = Field(None, gt=0)
    memory_type: str | None = None
    bandwidth_gb_s: float | None = Field(None, gt=0)
    l2_mb: float | None = Field(None, gt=0)
    sm_count: int | None = Field(None, gt=0, description="SMs (NVIDIA) or compute units (AMD)")
    tdp_w: float | None = Field(None, gt=0)
    price: Price | None = None
    notes: str | None = None
    sources: dict[str, str] = Field(default_factory=dict)

    _file: Path | None = PrivateAttr(None)

    @field_validator("aliases")
    @classmethod
    def _normalise_aliases(cls, aliases: list[str]) -> list[str]:
        return [normalise_name(a) for a in aliases]

    @model_validator(mode="after")
    def _check(self) -> "GpuSpec":
        if self.version != 1:
            raise ValueError(f"version {self.version} is not supported (accepted: 1)")
        peaks = self.peak_tflops
        for dtype in self.sparse_2to4.dtypes:
            if getattr(peaks, dtype) is None:
                raise ValueError(f"sparse_2to4 lists {dtype!r} but peak_tflops.{dtype} is null")
        if not self.measured_local:
            missing = [f for f in ("memory_gb", "bandwidth_gb_s") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"{', '.join(missing)} required unless measured_local: true")
            if all(getattr(peaks, d) is None for d in GPU_DTYPES):
                raise ValueError("peak_tflops needs at least one figure unless measured_local: true")
        self._check_sources()
        return self

    def _check_sources(self) -> None:
        accepted = {"peak_tflops", "sparse_2to4", "price", *_CITED_FIELDS}
        accepted |= {f"peak_tflops.{d}" for d in GPU_DTYPES}
        for key, text in self.sources.items():
            if key not in accepted:
                raise ValueError("sources: " + did_you_mean(key, accepted, "field"))
            if not text.strip():
                raise ValueError(f"sources.{key} is empty")
        for figure, value in self.cited_figures().items():
            group = figure.split(".")[0]
            if figure not in self.sources and group not in self.sources:
                raise ValueError(
                    f"figure {figure!r} = {value!r} has no source; add sources.{figure}: '<document, URL>'"
                )

    def cited_figures(self) -> dict[str, object]:
        """Every non-null figure that must cite a source, by field path.

        None for a `measured_local` spec: its figures are the profiler's measurements, and say so.
        """
        if self.measured_local:
            return {}
        figures: dict[str, object] = {f: getattr(self, f) for f in _CITED_FIELDS if getattr(self, f) is not None}
        for dtype in GPU_DTYPES:
            value = getattr(self.peak_tflops, dtype)
            if value is not None:
                figures[f"peak_tflops.{dtype}"] = value
        figures["sparse_2to4"] = self.sparse_2to4.dtypes  # "no 2:4" is a claim too
        if self.price is not None:
            figures["price"] = self.price.usd_per_hour
        return figures

    # --- figures in SI units, for the roofline model and the profiler ---

    def peak_flops(self, dtype: str) -> float | None:
        """Dense peak in FLOP/s (int8: OP/s), or None where the GPU has no figure for `dtype`."""
        tflops = getattr(self.peak_tflops, check_dtype(dtype))
        return None if tflops is None else tflops * 1e12

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        return None if self.bandwidth_gb_s is None else self.bandwidth_gb_s * 1e9

    @property
    def memory_bytes(self) -> float | None:
        """Datasheet capacity in decimal bytes. The driver reports a little different (GiB, less reserved memory)."""
        return None if self.memory_gb is None else self.memory_gb * 1e9

    def ridge_point(self, dtype: str) -> float | None:
        """FLOP per byte of DRAM traffic at which a kernel stops being memory-bound (peak / bandwidth)."""
        flops, bandwidth = self.peak_flops(dtype), self.bandwidth_bytes_per_s
        if flops is None or bandwidth is None:
            return None
        return flops / bandwidth

    def sparse_2to4_for(self, dtype: str) -> bool:
        return check_dtype(dtype) in self.sparse_2to4.dtypes

    @property
    def file(self) -> Path | None:
        """The YAML file this spec was loaded from, if any."""
        return self._file


def normalise_name(name: str) -> str:
    """`A100_80GB SXM` -> `a100-80gb-sxm`: case, underscores and spaces do not matter in GPU names."""
    return "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def check_dtype(dtype: str) -> str:
    if dtype not in GPU_DTYPES:
        raise InputError(did_you_mean(dtype, GPU_DTYPES, "dtype"))
    return dtype


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def load_gpu_file(path: str | Path) -> GpuSpec:
    """Load and validate one GPU file; any problem raises InputError naming the file and the field."""
    from planner.documents import load_validated

    path = Path(path)
    shown = _display(path)
    # binary, duplicate keys, non-finite numbers, alias bombs, unknown or bad fields: InputError
    spec = load_validated(path, GpuSpec, "GPU file", where=shown, invalid="", suggest=True, named=True)
    if spec.id != path.stem:
        raise InputError(f"{shown}: field 'id': {spec.id!r} must equal the file name stem {path.stem!r}")
    spec._file = path
    return spec


ENV_VAR = "PLANNER_GPUS"  # folders of your own GPU files, separated like PATH
_cli_dirs: tuple[Path, ...] = ()  # set by `--gpus DIR`


def gpu_files(folder: str | Path) -> list[Path]:
    """The GPU files of one folder; a folder that is missing or not a folder is an InputError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"GPU folder {_display(folder)!r} {what} (accepted: a folder of <id>.yaml GPU files, "
                         f"like {_display(gpus_dir())})")
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))


def load_catalog(extra_dirs: Iterable[str | Path] | None = None, *, override: bool = False) -> dict[str, GpuSpec]:
    """All GPU files of `profiles/gpus/` (plus `extra_dirs`), by id. Duplicate ids or aliases are errors, except
    that with `override` a file of `extra_dirs` whose id is a built-in GPU's replaces that GPU (aliases and all)."""
    catalog: dict[str, GpuSpec] = {}
    owner: dict[str, tuple[str, Path]] = {}  # every name (id or alias) -> (what it is, file)
    builtin = gpus_dir()
    for folder in [builtin, *(Path(d) for d in (extra_dirs or ()))]:
        for path in gpu_files(folder):
            spec = load_gpu_file(path)
            replaced = catalog.get(spec.id)
            if override and replaced is not None and replaced.file is not None and replaced.file.parent == builtin:
                for name in [replaced.id, *replaced.aliases]:
                    owner.pop(name, None)
            names = [(spec.id, "id")] + [(a, "alias") for a in spec.aliases]
            for name, kind in names:
                if name in owner:
                    other_kind, other_file = owner[name]
                    raise InputError(
                        f"GPU {kind} {name!r} in {_display(path)} is already the {other_kind} of a GPU in "
                        f"{_display(other_file)}; ids and aliases must be unique across the catalog"
                    )
                owner[name] = (kind, path)
            catalog[spec.id] = spec
    return catalog


def use_gpu_dirs(dirs: Iterable[str | Path] | None) -> None:
    """Add folders of your own GPU files to `catalog()` for this process (the CLI's `--gpus DIR`)."""
    global _cli_dirs
    _cli_dirs = tuple(Path(d) for d in (dirs or ()))


def user_gpu_dirs() -> list[Path]:
    """Folders of user GPU files: $PLANNER_GPUS (separated like PATH), then `--gpus DIR`."""
    from_env = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [*from_env, *_cli_dirs]


@functools.lru_cache(maxsize=8)
def _cached_catalog(dirs: tuple[Path, ...], _stamp: tuple) -> dict[str, GpuSpec]:
    return load_catalog(dirs, override=True)


def catalog() -> dict[str, GpuSpec]:
    """The bundled catalog plus the user's GPU folders (which add GPUs or replace built-in ones by id), loaded once
    per process for a set of folders and files (an edited user file is read again)."""
    dirs = tuple(user_gpu_dirs())
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for d in dirs for f in gpu_files(d))
    return _cached_catalog(dirs, stamp)


def is_user_gpu(spec: GpuSpec) -> bool:
    """True for a GPU from one of the user's folders rather than the bundled catalog."""
    return spec.file is not None and spec.file.parent != gpus_dir()


def alias_map(specs: dict[str, GpuSpec] | None = None) -> dict[str, str]:
    """Every alias -> the id it resolves to."""
    specs = catalog() if specs is None else specs
    return {alias: spec.id for spec in specs.values() for alias in spec.aliases}


def get_gpu(name: str, specs: dict[str, GpuSpec] | None = None) -> GpuSpec:
    """A GPU by id or alias, case-insensitively; unknown names raise InputError with a suggestion."""
    specs = catalog() if specs is None else specs
    key = normalise_name(name)
    if key in specs:
        return specs[key]
    aliases = alias_map(specs)
    if key in aliases:
        return specs[aliases[key]]
    raise InputError(did_you_mean(name, [*specs, *aliases], "GPU") + f"; {HOW_TO_ADD}")


HOW_TO_ADD = (f"to add a GPU, write <id>.yaml like {os.path.join('profiles', 'gpus', 'h200.yaml')} (a source for every "
              f"figure) in a folder of your own, check it with `plan gpus --check DIR`, then pass `--gpus DIR` or "
              f"set {ENV_VAR}=DIR")


def resolution_note(name: str, specs: dict[str, GpuSpec] | None = None) -> str | None:
    """What a short name stood for, for the user to see: None when `name` is the id itself.

    `a100` -> "'a100' is a100-80gb-sxm (NVIDIA A100 80GB SXM4); other variants: a100-40gb-sxm, a100-80gb-pcie"
    """
    specs = catalog() if specs is None else specs
    spec = get_gpu(name, specs)
    if normalise_name(name) == spec.id:
        return None
    note = f"{name!r} is {spec.id} ({spec.name})"
    variants = sorted(s.id for s in specs.values() if spec.family and s.family == spec.family and s.id != spec.id)
    if variants:
        note += f"; other variants: {', '.join(variants)} (pass one of them to choose)"
    return note
