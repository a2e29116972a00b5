"""lm-evaluation-harness as an optional quality stage: task scores with their standard errors, dense and pruned.

    tasks = resolve_tasks(["planner_next_line", "planner_last_word"], include=[])   # InputError if unknown
    scores = evaluate_model(model, tokenizer, tasks, limit=20, device="cpu")        # an LmEvalScores document

lm-eval (the `lmeval` extra, package `lm_eval`) is imported here only, inside these functions: `import planner`
never loads it. Tasks come from the bundled folder `lm_eval_tasks/` (two small tasks on the held-out text, usable
with no dataset hub), from the user's `--lm-eval-include DIR` folders (their own YAMLs over cached or local data),
and from lm-eval's built-in catalogue (whose datasets must already be in the local Hugging Face cache). Hubs are
never contacted: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set while the stage runs.

The in-memory model runs through lm-eval's HF backend (`HFLM(pretrained=<model object>)`), so a pruned model is
scored exactly as the run holds it. With `--runtime vllm` on a CUDA machine with vLLM, the exported checkpoint
folder is scored through lm-eval's vLLM backend instead.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from planner.errors import InputError, did_you_mean

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
BUNDLED_TASKS = ("planner_next_line", "planner_last_word")
# the figure a task is judged by, in order of preference (the first one the task reports)
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu", "word_perplexity")
LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def unavailable_reason() -> str | None:
    """Why lm-eval cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        return "lm-eval is not installed (pip install 'planner[lmeval]', or lm_eval itself)"
    return None


@contextlib.contextmanager
def offline():
    """Hubs off while lm-eval runs: a task whose data is not local fails instead of downloading."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    patched = []
    try:
        import datasets.config as dconf  # read its flags at import: set them too

        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(dconf, name):
                patched.append((dconf, name, getattr(dconf, name)))
                setattr(dconf, name, True)
    except ImportError:
        pass
    try:
        yield
    finally:
        for module, name, value in patched:
            setattr(module, name, value)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_manager(include: list[str] | None = None, *, defaults: bool = True):
    """lm-eval's TaskManager over the bundled tasks, the user's folders and (with `defaults`) its own catalogue;
    built once per process for a set of folders (indexing lm-eval's catalogue takes seconds)."""
    return _task_manager(tuple(str(Path(p).resolve()) for p in include or ()), defaults)


@functools.lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=[str(TASKS_DIR), *include], include_defaults=defaults)


def check_include(include: list[str]) -> None:
    for folder in include:
        path = Path(folder)
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise InputError(f"--lm-eval-include {folder!r} {what} (accepted: a folder of lm-eval task YAML files)")


def resolve_tasks(tasks: list[str], include: list[str] | None = None) -> list[str]:
    """Check that lm-eval is installed and every task name is known; returns the names. InputError otherwise."""
    missing = unavailable_reason()
    if missing:
        raise InputError(f"--lm-eval-tasks needs {missing}")
    include = list(include or ())
    check_include(include)
    if not tasks:
        raise InputError("--lm-eval-tasks is empty (accepted: comma-separated task names, e.g. "
                         f"{','.join(BUNDLED_TASKS)})")
    local = sorted(task_manager(include, defaults=False).all_tasks)  # bundled and user tasks: a fast index
    for name in tasks:
        if name not in local and difflib.get_close_matches(name, local, n=1, cutoff=0.85):
            raise InputError(did_you_mean(name, local, "lm-eval task"))  # a typo of a local task
    if not set(tasks) <= set(local):
        known = set(task_manager(include, defaults=True).all_tasks)  # lm-eval's own catalogue too
        for name in tasks:
            if name not in known:
                close = did_you_mean(name, known, "lm-eval task").split(" (accepted")[0]
                raise InputError(f"{close} (bundled and --lm-eval-include tasks: {', '.join(local)}; or any task "
                                 "of lm-eval's catalogue whose data is in the local cache: `lm-eval ls tasks`)")
    return list(tasks)


@contextlib.contextmanager
def _quiet():
    """lm-eval logs every task it builds at INFO/WARNING; the run prints its own progress."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _data_unavailable(exc: BaseException) -> bool:
    """A dataset that would need a download (hubs are off) or a local file that is missing."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    text = str(exc).lower()
    return (isinstance(exc, (ConnectionError, FileNotFoundError))
            or bool(names & {"DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                             "ConnectionError", "FileNotFoundError", "DataFilesNotFoundError"})
            or "offline" in text or "couldn't reach" in text)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def scores_from_results(raw: dict, tasks: list[str]) -> dict[str, dict]:
    """lm-eval's `results` block -> {task: {metrics: {name: {value, stderr}}, primary, higher_is_better, samples}}.

    lm-eval keys metrics as "<metric>,<filter>" with the standard error under "<metric>_stderr,<filter>";
    "N/A" (no stderr, e.g. with bootstrap off) is recorded as null.
    """
    out: dict[str, dict] = {}
    results = raw.get("results", {})
    higher = raw.get("higher_is_better", {})
    n_samples = raw.get("n-samples", {})
    versions = raw.get("versions", {})
    for task in sorted(results):
        block = results[task]
        metrics: dict[str, dict] = {}
        for key, value in block.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            number = _number(value)
            if number is None:
                continue
            name = metric if filt in ("none", "") else f"{metric},{filt}"
            metrics[name] = {"value": number, "stderr": _number(block.get(f"{metric}_stderr,{filt}"))}
        if not metrics:
            continue
        bare = {m.split(",")[0]: m for m in metrics}
        primary = next((bare[m] for m in PRIMARY_METRICS if m in bare), sorted(metrics)[0])
        hib = higher.get(task, {}).get(primary.split(",")[0])
        if hib is None:
            hib = primary.split(",")[0] not in LOWER_IS_BETTER
        samples = n_samples.get(task, {})
        out[task] = {"metrics": metrics, "primary": primary, "higher_is_better": bool(hib),
                     "samples": int(samples.get("effective", samples.get("original", 0)) or 0),
                     "version": str(versions.get(task)) if versions.get(task) is not None else None}
    return out


def evaluate_model(model, tokenizer, tasks: list[str], *, include: list[str] | None = None, limit: int | None = None,
                   device: str = "cpu", batch_size: int = 8, checkpoint: str | None = None,
                   backend: str = "hf", progress: bool = False) -> dict:
    """Score `model` on lm-eval `tasks`; a dict that validates as `planner.run.results.LmEvalScores`.

    backend "hf": the in-memory model through HFLM; "vllm": the exported `checkpoint` folder through lm-eval's
    vLLM backend (CUDA and vLLM needed).
    """
    import lm_eval
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    with offline(), (contextlib.nullcontext() if progress else _quiet()):
        if backend == "vllm":
            from lm_eval.models.vllm_causallms import VLLM

            if checkpoint is None:
                raise InputError("lm-eval's vLLM backend needs the exported checkpoint folder")
            lm = VLLM(pretrained=str(checkpoint), dtype="auto", batch_size="auto")
        else:
            from lm_eval.models.huggingface import HFLM

            lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size)
        try:
            raw = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager(include),
                                  log_samples=False, bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
        except Exception as exc:
            if _data_unavailable(exc):
                first = (str(exc).splitlines() or [""])[0][:300]
                raise InputError(f"lm-eval task data is not available offline ({type(exc).__name__}: {first}); "
                                 "the stage never downloads: use a task whose dataset is in the local Hugging Face "
                                 "cache, or a task YAML of your own over local files (--lm-eval-include DIR)") from None
            raise
    if raw is None:  # a non-zero rank under torch.distributed: nothing to record
        raise InputError("lm-eval returned no results (distributed rank > 0?)")
    scores = scores_from_results(raw, list(tasks))
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise InputError(f"lm-eval reported no numeric metric for task(s) {', '.join(missing)}; check their "
                         "metric_list")
    return {"lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "backend": backend, "limit": limit,
            "num_fewshot": 0, "tasks": scores, "seconds": time.perf_counter() - start}
