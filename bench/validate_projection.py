"""Project every row of the published tables (bench/published/*.yaml) and print predicted / published and the error.

    python bench/validate_projection.py            # the table, the error on fitted and on held-out rows
    python bench/validate_projection.py --fit      # also search the runtime figures that fit the `fit` rows best
    python bench/validate_projection.py --json out.json

Rows are split by model, before any fitting: rows of the models in FIT_MODELS may be used to fit the runtime
profiles' figures (profiles/runtimes/*.yaml say which figures were fitted); every other model's rows are held out,
so the held-out error is the error on models the figures never saw. Tensor-parallel rows are projected with the
runtime's tensor-parallel model where it has one; HF eager over several GPUs (device_map) runs layers in sequence,
as one GPU would.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from planner.arch import ModelShape  # noqa: E402
from planner.gpus import get_gpu  # noqa: E402
from planner.perf.runtimes import get_runtime  # noqa: E402
from planner.profile.roofline import estimate  # noqa: E402
from planner.workload import Workload  # noqa: E402

FIT_MODELS = {"qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-32b", "llama-2-7b"}
QUANT_FORMATS = {"int8-weight-only", "int4-weight-only"}


def load_rows(folder: Path = HERE / "published") -> tuple[list[dict], dict[str, ModelShape]]:
    rows, shapes = [], {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for name, cfg in data["models"].items():
            fields = {k: v for k, v in cfg.items() if k in ModelShape.model_fields}
            shapes[name] = ModelShape(**fields)
        for row in data["rows"]:
            rows.append(dict(row, file=path.name))
    return rows, shapes


def project(row: dict, shape: ModelShape, runtime=None) -> float:
    """The row's metric, projected by the serving-stack model (runtime: a RuntimeProfile to use instead)."""
    spec = runtime or get_runtime(row["runtime"])
    if row.get("runtime_overrides"):  # the runtime version the row measured behaved differently, e.g. repeat_kv
        spec = spec.model_copy(update=row["runtime_overrides"])
    gpu = get_gpu(row["gpu"])
    weights = row["weights"]
    dtype = "fp8" if weights == "fp8" else row["dtype"]
    tp = row.get("num_gpus", 1) if spec.tensor_parallel else 1
    workload = Workload(prompt_len=row["prompt_len"], gen_len=row["gen_len"], batch_size=row["batch_size"],
                        concurrency=row["batch_size"], dtype=dtype)
    est = estimate(shape, workload, gpu, runtime=spec, weight_format=weights if weights in QUANT_FORMATS else None,
                   tensor_parallel=tp)
    metric = row["metric"]
    if metric == "ttft_ms":
        return est.prefill_ms
    if metric == "tpot_ms":
        return est.tpot_ms
    if metric == "request_tokens_per_s":
        return row["gen_len"] / (est.request_ms / 1e3)
    if metric in ("throughput_tokens_per_s", "decode_tokens_per_s"):
        return est.tokens_per_s if metric.startswith("throughput") else 1e3 / est.tpot_ms
    raise ValueError(f"row {row['id']}: unknown metric {metric!r}")


def error(predicted: float, published: float) -> float:
    return predicted / published - 1.0


def summarise(errors: list[float]) -> str:
    if not errors:
        return "no rows"
    abs_errors = [abs(e) for e in errors]
    return (f"{len(errors)} rows, median |error| {statistics.median(abs_errors):.0%}, "
            f"max |error| {max(abs_errors):.0%}")


# -- fitting ------------------------------------------------------------------------------------------------------

FIT_PARAMS = {  # runtime -> figures searched (dotted paths into the profile; kernels.N = the Nth kernel entry)
    "hf-eager": ["host_ms_per_layer", "step_ms", "efficiency.default.memory", "efficiency.default.compute",
                 "kernels.1.host_factor", "kernels.2.host_factor"],
    "hf-compile": ["step_ms", "efficiency.default.memory", "efficiency.default.compute", "kernels.1.efficiency",
                   "kernels.2.efficiency"],
    "vllm": ["step_ms", "request_ms", "efficiency.default.memory", "efficiency.default.compute",
             "kernels.1.efficiency", "kernels.2.efficiency"],
    "tensorrt-llm": ["step_ms", "request_ms", "efficiency.default.memory", "efficiency.default.compute",
                     "efficiency.default.compute_fp8"],
}
# plausible ranges: a fit that leaves them is explaining a row by something the model does not contain
BOUNDS = {"efficiency": (0.3, 0.95), "step_ms": (0.05, 10.0), "request_ms": (0.0, 20.0), "host_factor": (0.5, 2.0),
          "host_ms_per_layer": (0.05, 3.0)}


def _in_bounds(path: str, value: float) -> bool:
    for key, (low, high) in BOUNDS.items():
        if key in path:
            return low <= value <= high
    return True


def _get(spec, path: str) -> float:
    obj = spec
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return float(obj)


def _set(spec, path: str, value: float):
    data = spec.model_dump()
    obj = data
    parts = path.split(".")
    for part in parts[:-1]:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if isinstance(obj, list):
        obj[int(parts[-1])] = value
    else:
        obj[parts[-1]] = value
    return type(spec).model_validate(data)


def fit_runtime(name: str, rows: list[dict], shapes: dict) -> tuple[object, dict[str, float]]:
    """Coordinate descent on mean + max of |log(predicted / published)| over the runtime's fit rows (the max term
    keeps one family of rows from being fitted at the expense of another)."""
    spec = get_runtime(name)
    mine = [r for r in rows if r["runtime"] == name and r["model"] in FIT_MODELS]

    def loss(s) -> float:
        errors = [abs(math.log(project(r, shapes[r["model"]], s) / r["value"])) for r in mine]
        return statistics.fmean(errors) + max(errors)

    best = loss(spec)
    for step in (1.5, 1.2, 1.07, 1.02):
        improved = True
        while improved:
            improved = False
            for path in FIT_PARAMS[name]:
                for factor in (step, 1 / step):
                    value = _get(spec, path) * factor
                    if not _in_bounds(path, value):
                        continue
                    trial = _set(spec, path, value)
                    trial_loss = loss(trial)
                    if trial_loss < best - 1e-6:
                        spec, best, improved = trial, trial_loss, True
    return spec, {p: round(_get(spec, p), 4) for p in FIT_PARAMS[name]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="search the runtime figures on the fit rows and show them")
    parser.add_argument("--json", metavar="FILE", help="write every row's projection to FILE")
    args = parser.parse_args(argv)
    rows, shapes = load_rows()
    fitted = {}
    if args.fit:
        for name in sorted({r["runtime"] for r in rows}):
            spec, values = fit_runtime(name, rows, shapes)
            fitted[name] = spec
            print(f"fitted {name}: {values}")
    out = []
    print(f"{'row':58} {'split':8} {'published':>10} {'predicted':>10} {'error':>7}")
    for row in rows:
        shape = shapes[row["model"]]
        predicted = project(row, shape, fitted.get(row["runtime"]))
        split = "fit" if row["model"] in FIT_MODELS else "held-out"
        err = error(predicted, row["value"])
        out.append(dict(id=row["id"], runtime=row["runtime"], gpu=row["gpu"], metric=row["metric"], split=split,
                        published=row["value"], predicted=predicted, error=err, source=row["source"]))
        print(f"{row['id'][:58]:58} {split:8} {row['value']:>10.4g} {predicted:>10.4g} {err:>+7.0%}")
    for split in ("fit", "held-out"):
        print(f"{split:9}: {summarise([r['error'] for r in out if r['split'] == split])}")
    for name in sorted({r["runtime"] for r in out}):
        held = [r["error"] for r in out if r["runtime"] == name and r["split"] == "held-out"]
        print(f"  {name:13} held-out: {summarise(held)}")
    print(f"all      : {summarise([r['error'] for r in out])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
