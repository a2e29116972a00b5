"""Experiment tracking: `plan run --track mlflow[:URI]` logs a run to MLflow.

    tracker = parse_tracker("mlflow:./mlruns")       # InputError: unknown tracker, MLflow not installed
    run_id = track_run(tracker, results, gate=report).run_id

What one run logs (one MLflow run per `plan run`, in the experiment "planner"):

- params: the plan (goal, GPU, model, workload, the candidates run) and planner's version;
- metrics: every number of results.json, by its path (`variants.dense.quality.heldout_ppl`, lists of samples as a
  metric history with the sample index as step);
- tags: the verdict of the gate when one was checked (`planner.gate`: pass / fail), the run folder, the device;
- artifacts: plan.json, results.json, report.html, and the gate report (gate.json, gate.md) when checked.

MLflow (the `track` extra: mlflow-skinny) is imported only inside these functions. The default store is a local
folder, `./mlruns` (MLflow's file store, which MLflow keeps in maintenance mode; a `sqlite:///...` or `http(s)://`
URI works where full MLflow or a tracking server is at hand).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InputError, did_you_mean

TRACKERS = ("mlflow",)
EXPERIMENT = "planner"
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_REMOTE = ("http://", "https://", "databricks", "sqlite://", "postgresql://", "mysql://", "file:")


@dataclass(frozen=True)
class Tracker:
    kind: str
    uri: str  # the tracking URI
    experiment: str = EXPERIMENT


@dataclass(frozen=True)
class TrackedRun:
    kind: str
    uri: str
    experiment_id: str
    run_id: str

    def __str__(self) -> str:
        return f"{self.kind} run {self.run_id} (experiment {EXPERIMENT!r}, {self.uri})"


def parse_tracker(text: str) -> Tracker:
    """`mlflow` (a local store ./mlruns) or `mlflow:URI` (a folder, file://, sqlite://, http(s)://)."""
    kind, _, uri = text.partition(":")
    if kind not in TRACKERS:
        raise InputError("--track: " + did_you_mean(kind, TRACKERS, "tracker") + "; write mlflow or mlflow:URI")
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise InputError("--track mlflow needs MLflow: pip install 'planner[track]' (mlflow-skinny) or mlflow")
    uri = uri.strip() or "mlruns"
    if not uri.startswith(_REMOTE):
        folder = Path(uri).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--track mlflow:{uri}: {str(folder)!r} is a file, not a folder (accepted: a folder, "
                             "a file:// or http(s):// tracking URI)")
        uri = folder.as_uri()
    return Tracker(kind=kind, uri=uri)


def _allow_file_store(uri: str) -> None:
    import os

    if uri.startswith("file:"):  # MLflow 3 refuses its file store unless told it is wanted
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _key(path: list[str]) -> str:
    return _KEY.sub("_", ".".join(path))[:250]


def figures(results) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Every number of results.json by its path: single figures, and lists of numbers (samples) as histories.

    Variants, stages and speedups are keyed by their name rather than their position in the list."""
    data = results.model_dump(mode="json")
    scalars: dict[str, float] = {}
    series: dict[str, list[float]] = {}

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, bool):
            scalars[_key(path)] = float(value)
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                scalars[_key(path)] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, [*path, str(k)])
        elif isinstance(value, list):
            if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                series[_key(path)] = [float(v) for v in value if math.isfinite(v)]
                return
            for i, item in enumerate(value):
                name = None
                if isinstance(item, dict):
                    name = item.get("name") or item.get("variant")
                    if name is not None and "metric" in item and "variant" in item:
                        name = f"{item['variant']}.{item['metric']}"
                walk(item, [*path, str(name) if name is not None else str(i)])

    walk(data, [])
    return scalars, series


def params(results) -> dict[str, str]:
    plan = results.plan
    out = {"goal": plan.goal, "gpu": plan.gpu, "model": plan.model, "plan": plan.path,
           "planner_version": results.provenance.planner_version,
           "device": results.provenance.device.label if hasattr(results.provenance.device, "label") else "",
           "candidates": ", ".join(f"{c.rank}: {c.label or c.name}" for c in plan.candidates)}
    for key, value in plan.workload.model_dump(mode="json").items():
        out[f"workload.{key}"] = "" if value is None else str(value)
    for v in results.variants:
        if v.lm_eval is not None:
            out["lm_eval.tasks"] = ",".join(sorted(v.lm_eval.tasks))
            out["lm_eval.limit"] = str(v.lm_eval.limit)
            out["lm_eval.version"] = v.lm_eval.lm_eval_version
            break
    return {k: v[:6000] for k, v in out.items()}


def track_run(tracker: Tracker, results, *, gate=None, results_path: str | Path | None = None) -> TrackedRun:
    """Log a finished run (and its gate report, when one was checked) as one MLflow run."""
    _allow_file_store(tracker.uri)
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    experiment = client.get_experiment_by_name(tracker.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracker.experiment)
    run_dir = Path(results.provenance.run_dir)
    tags = {"planner.run_dir": str(run_dir), "planner.goal": results.plan.goal, "planner.gpu": results.plan.gpu}
    if gate is not None:
        tags["planner.gate"] = "pass" if gate.passed else "fail"
    run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        scalars, series = figures(results)
        metrics = [Metric(k, v, now, 0) for k, v in scalars.items()]
        for key, values in series.items():
            metrics += [Metric(key, v, now, step) for step, v in enumerate(values)]
        if gate is not None:
            metrics.append(Metric("gate.passed", float(gate.passed), now, 0))
        param_list = [Param(k, v) for k, v in params(results).items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit: 1000 metrics, 100 params
            client.log_batch(run_id, metrics=metrics[start:start + 1000],
                             params=param_list if start == 0 else [], tags=[])
        _log_files(client, run_id, results, gate, results_path)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrackedRun(kind=tracker.kind, uri=tracker.uri, experiment_id=experiment_id, run_id=run_id)


def _log_files(client, run_id: str, results, gate, results_path) -> None:
    run_dir = Path(results.provenance.run_dir)
    results_file = Path(results_path) if results_path else run_dir / "results.json"
    for path in (Path(results.plan.path), results_file, run_dir / "report.html"):
        if path.is_file():
            client.log_artifact(run_id, str(path))
    if gate is not None:
        from planner.gate import to_markdown

        with tempfile.TemporaryDirectory(prefix="planner-track-") as tmp:
            (Path(tmp) / "gate.json").write_text(gate.model_dump_json(indent=2), encoding="utf-8")
            (Path(tmp) / "gate.md").write_text(to_markdown(gate), encoding="utf-8")
            client.log_artifacts(run_id, tmp, "gate")


def read_back(uri: str, run_id: str) -> dict[str, Any]:
    """The run as MLflow's client reads it: metrics, params, tags and artifact paths (for tests and checks)."""
    _allow_file_store(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    artifacts += [a.path for a in client.list_artifacts(run_id, "gate")] if "gate" in artifacts else []
    return {"metrics": dict(run.data.metrics), "params": dict(run.data.params), "tags": dict(run.data.tags),
            "status": run.info.status, "artifacts": sorted(artifacts)}


def metric_history(uri: str, run_id: str, key: str) -> list[float]:
    """A metric's values in step order (a list of samples logged as a history)."""
    _allow_file_store(uri)
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


__all__ = ["Tracker", "TrackedRun", "parse_tracker", "track_run", "figures", "params", "read_back", "metric_history"]
