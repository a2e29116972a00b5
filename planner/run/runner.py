"""The runner: plan.json -> prune -> recover -> export -> evaluate -> benchmark -> results.json (+ report.html).

A run lives in one folder (default `runs/<plan-stem>-<hash>/`):

    manifest.json             inputs and their hashes, options, packages, device: what a resume must match
    plan.json                 the plan as it was run
    stages/<stage>.json       one per finished stage, written atomically and last: its presence marks the stage done
    <rank>-<name>/pruned/     the pruned checkpoint (+ masks.safetensors for masked kinds)
    <rank>-<name>/model/      the recovered checkpoint (the pruned one when recovery is "none")
    results.json, report.html

Stages: teacher (the dense model's greedy continuations of every prompt set), quality:dense, then per candidate
prune:<rank>, recover:<rank>, quality:<rank>, and finally latency (all variants interleaved). `resume=True` skips
every stage whose marker exists; the pruned and recovered models come back from their exported checkpoints.
Every write is atomic (temporary name + rename), so Ctrl-C or a kill leaves only finished stages behind.

The source model is never written to: the teacher is loaded once and only read; each student is a deep copy or
a reload of an exported checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from planner.errors import InputError, RunIncomplete, did_you_mean
from planner.run.results import (CandidateSummary, PlanSummary, Provenance, Quality, RecoveryInfo, Results, Size,
                                 StageTiming, Variant, save_results, write_atomic)

RUN_KIND = "planner.run"
RUN_VERSION = 1
BENCH_DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class RunOptions:
    """What to evaluate and how to time it. Every field but `progress` and `report` must match on resume."""

    eval_text: list[str] = field(default_factory=list)  # user text files for perplexity
    eval_prompts: list[str] = field(default_factory=list)  # user JSONL prompt files, a regression slice
    slices: list[str] | None = None  # bundled capability slices (default: all)
    ppl_seq_len: int = 512
    ppl_max_tokens: int = 16_384
    requests: int = 10  # timed requests per variant
    warmup: int = 2
    runtime: str = "hf-eager"
    bench_dtype: str | None = None  # default: fp32 on CPU, the plan's serving dtype on CUDA
    prompt_len: int | None = None  # override the plan's workload for the benchmark
    gen_len: int | None = None
    batch_size: int | None = None
    device: str | None = None  # default: cuda when available, else cpu
    threads: int | None = None  # torch CPU threads (default: torch's choice); recorded with the device
    measure_memory: bool = True
    report: bool = True
    progress: bool = True

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("report", "progress", "threads"):  # change how a run looks or how fast, not what it measures
            data.pop(name)
        return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "candidate"


def _jsonable(value: Any) -> Any:
    """PruneResult.details may hold tensors or tuples: turn them into JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _say(message: str, enabled: bool = True) -> None:
    if enabled:
        from planner.cli._out import err_console

        err_console().print(message)


# -- selecting candidates ---------------------------------------------------------------------------------------


def select_candidates(plan, candidate: int | None, all_top: int | None) -> list:
    if not plan.candidates:
        raise InputError(f"the plan has no candidates to run (verdict: {plan.verdict.text}); nothing to prune")
    ranks = [c.rank for c in plan.candidates]
    if candidate is not None and all_top is not None:
        raise InputError("pass either --candidate N or --all K, not both")
    if all_top is not None:
        if all_top < 1:
            raise InputError(f"--all takes the number of top candidates to run (>= 1), got {all_top}")
        return list(plan.candidates[:all_top])
    rank = 1 if candidate is None else candidate
    for c in plan.candidates:
        if c.rank == rank:
            return [c]
    raise InputError(f"the plan has no candidate of rank {rank} (accepted: {', '.join(map(str, ranks))})")


# -- the run folder ---------------------------------------------------------------------------------------------


SCRATCH = ".planner-partial"  # the run's own temporaries, and nothing else: the only place a resume cleans


class RunFolder:
    def __init__(self, root: Path):
        self.root = root
        self.stages = root / "stages"
        self.scratch = root / SCRATCH

    def relative(self, path: Path) -> str:
        """Stage outputs name files relative to the run folder, so a moved folder still resumes."""
        return Path(path).relative_to(self.root).as_posix()

    def path(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    def marker(self, stage: str) -> Path:
        return self.stages / f"{stage.replace(':', '-')}.json"

    def done(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def read(self, stage: str) -> dict[str, Any]:
        from planner.documents import parse_json, read_text

        marker = self.marker(stage)
        fix = f"; delete {str(marker)!r} to redo that stage"
        try:
            record = parse_json(read_text(marker, "stage output"), f"stage output {str(marker)!r}")
        except InputError as exc:
            raise InputError(f"{exc}{fix}") from None
        if not isinstance(record, dict) or not isinstance(record.get("output"), dict):
            raise InputError(f"stage output {str(marker)!r} is not a finished stage record{fix}")
        return record

    def write(self, stage: str, seconds: float, output: dict[str, Any]) -> None:
        record = {"stage": stage, "seconds": seconds, "finished_at": _now(), "output": output}
        self.write_text(self.marker(stage), json.dumps(record, indent=1, default=str))

    def write_text(self, path: Path, text: str) -> Path:
        return write_atomic(path, text, what="run file", scratch=self.scratch)

    def finished_stages(self) -> list[Path]:
        return sorted(self.stages.glob("*.json")) if self.stages.is_dir() else []

    def clean_partial(self) -> None:
        """Remove the temporaries a hard kill (not Ctrl-C) may have left. The tool writes every temporary of a run
        under its own scratch folder, so nothing else in the run folder (or below it) is ever deleted."""
        if self.scratch.is_dir() and not self.scratch.is_symlink():
            shutil.rmtree(self.scratch, ignore_errors=True)


def default_run_dir(plan_path: Path, plan_sha: str, ranks: list[int]) -> Path:
    key = hashlib.sha256(f"{plan_sha}|{','.join(map(str, ranks))}".encode()).hexdigest()[:8]
    return Path("runs") / f"{plan_path.stem}-{key}"


# -- the runner -------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, plan, plan_path: Path, folder: RunFolder, candidates: list, options: RunOptions,
                 manifest: dict[str, Any], device: str):
        self.plan = plan
        self.plan_path = plan_path
        self.folder = folder
        self.candidates = candidates
        self.opt = options
        self.manifest = manifest
        self.device = device
        self.timings: list[StageTiming] = []
        self._dense = None
        self._prompt_sets = None
        self._tokens: dict[str, list[int]] = {}
        self._teacher_logits: dict = {}  # the teacher's logits along its continuations, shared by every student
        self.model_spec = plan_model_spec(plan)

    # -- shared inputs, loaded on first use (a resumed run may not need them) --

    @property
    def dense(self):
        if self._dense is None:
            from planner.models import load_model

            self._dense = load_model(self.model_spec, dtype="fp32", device=self.device)
        return self._dense

    @property
    def tokenizer(self):
        return self.dense.tokenizer

    def prompt_sets(self):
        if self._prompt_sets is None:
            from planner.evaluate.prompts import SLICES, bundled_slices, load_prompt_file

            sets = bundled_slices(self.opt.slices if self.opt.slices is not None else SLICES)
            for path in self.opt.eval_prompts:
                name = "user" if len(self.opt.eval_prompts) == 1 else f"user:{Path(path).stem}"
                sets.append(load_prompt_file(path, name, "user"))
            self._prompt_sets = sets
        return self._prompt_sets

    def seq_len(self, model) -> int:
        from planner.evaluate.agreement import max_positions

        limit = max_positions(model)
        return min(self.opt.ppl_seq_len, limit) if limit else self.opt.ppl_seq_len

    # -- stages --

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], number: int, total: int) -> dict[str, Any]:
        if self.folder.done(name):
            record = self.folder.read(name)
            self.timings.append(StageTiming(name=name, seconds=float(record.get("seconds", 0.0)), status="resumed"))
            _say(f"[dim]stage {number}/{total} {name}: finished earlier, skipped[/]", self.opt.progress)
            return record["output"]
        _say(f"[bold]stage {number}/{total}[/] {name}", self.opt.progress)
        start = time.perf_counter()
        output = fn()
        seconds = time.perf_counter() - start
        self.folder.write(name, seconds, output)
        self.timings.append(StageTiming(name=name, seconds=seconds, status="done"))
        return output

    def cand_dir(self, cand) -> Path:
        return self.folder.root / f"{cand.rank}-{_slug(cand.name)}"

    def tokens(self, key: str) -> list[int]:
        """Token ids of the held-out text ("heldout") or the user's text ("user"), tokenized once per run."""
        if key not in self._tokens:
            from planner.data import heldout_text, read_text_files

            text = heldout_text() if key == "heldout" else read_text_files(self.opt.eval_text)
            self._tokens[key] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._tokens[key]

    def ppl(self, model, key: str = "heldout") -> dict[str, Any]:
        from planner.evaluate.perplexity import perplexity_of_tokens

        return perplexity_of_tokens(model, self.tokens(key), seq_len=self.seq_len(model),
                                    max_tokens=self.opt.ppl_max_tokens, progress=self.opt.progress)

    def run_teacher(self) -> dict[str, Any]:
        from planner.evaluate.agreement import teacher_traces

        model = self.dense.model
        size = _size(model, None, _weights_bytes_on_disk(self.dense.source.path), None)
        return {"dense_size": size, "traces": {ps.name: teacher_traces(model, self.tokenizer, ps, self.opt.progress)
                                               for ps in self.prompt_sets()}}

    def run_quality(self, model, traces: dict[str, Any]) -> dict[str, Any]:
        from planner.evaluate.agreement import slice_agreement

        held = self.ppl(model)
        quality: dict[str, Any] = {"heldout_ppl": held["ppl"], "heldout_nll": held["nll"],
                                   "heldout_tokens": held["tokens"], "seq_len": held["seq_len"]}
        if self.opt.eval_text:
            user = self.ppl(model, "user")
            quality.update(user_text_ppl=user["ppl"], user_text_tokens=user["tokens"])
        quality["slices"] = {ps.name: slice_agreement(model, self.dense.model, self.tokenizer, ps, traces[ps.name],
                                                      self.opt.progress, self._teacher_logits)
                             for ps in self.prompt_sets()}
        return Quality.model_validate(quality).model_dump(mode="json")

    def run_prune(self, cand) -> dict[str, Any]:
        from planner.data import calibration_text, read_text_files, token_blocks
        from planner.export import export_model, write_compressed
        from planner.prune import apply_pruning
        from planner.prune.specs import MASKED_KINDS
        from planner.run.masks import save_masks

        model = copy.deepcopy(self.dense.model)  # the teacher stays untouched
        cal = cand.calibration
        text = read_text_files(cal.text_files) if cal.text_files else calibration_text()
        calib = token_blocks(self.tokenizer, text, cal.num_samples, min(cal.seq_len, self.seq_len(model)))
        result = apply_pruning(model, cand.prune, calib.to(self.device))
        out_dir = self.cand_dir(cand) / "pruned"
        ppl_before = None
        if cand.recovery.method != "none":
            ppl_before = self.ppl(model)["ppl"]
        details = _jsonable(result.details)
        meta = {"planner_stage": "prune", "prune": cand.prune.model_dump(mode="json"),
                "achieved_sparsity": result.achieved_sparsity, "candidate": cand.name}
        exported = export_model(model, self.tokenizer, out_dir, meta, overwrite=True, scratch=self.folder.scratch)
        compressed = None
        if cand.prune.kind in MASKED_KINDS and result.masks:
            save_masks(result.masks, out_dir / "masks.safetensors")
            compressed = write_compressed(model, out_dir)
        info = {"spec": cand.prune.model_dump(mode="json"), "params_before": result.params_before,
                "params_after": result.params_after, "achieved_sparsity": result.achieved_sparsity,
                "details": details, "seconds": result.seconds}
        return {"checkpoint": self.folder.relative(out_dir), "pruning": info, "ppl_before": ppl_before,
                "size": _size(model, cand.prune, exported["file_bytes"], result.achieved_sparsity, compressed)}

    def load_checkpoint(self, folder: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        except Exception as exc:  # a truncated or deleted checkpoint of an earlier, killed run
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise InputError(f"checkpoint {str(folder)!r} of this run is unreadable ({type(exc).__name__}: {first}); "
                             f"delete the stage files under {str(self.folder.stages)!r} that name it to redo "
                             "those stages, or start a new run with another --out") from None
        return model.eval().to(self.device)

    def run_recover(self, cand, pruned: dict[str, Any]) -> dict[str, Any]:
        from planner.export import export_model, write_compressed
        from planner.recover import recover
        from planner.run.masks import load_masks

        spec = cand.recovery
        if spec.method == "none":
            return {"checkpoint": pruned["checkpoint"], "recovery": None, "size": pruned["size"]}
        folder = self.folder.path(pruned["checkpoint"])
        student = self.load_checkpoint(folder)
        mask_file = folder / "masks.safetensors"
        masks = load_masks(mask_file) if mask_file.is_file() else None
        result = recover(student, self.dense.model, self.tokenizer, spec, masks=masks, progress=self.opt.progress)
        out_dir = self.cand_dir(cand) / "model"
        meta = {"planner_stage": "recover", "prune": cand.prune.model_dump(mode="json"),
                "recovery": spec.model_dump(mode="json"), "candidate": cand.name,
                "achieved_sparsity": pruned["size"]["achieved_sparsity"]}
        exported = export_model(student, self.tokenizer, out_dir, meta, overwrite=True,
                                scratch=self.folder.scratch)
        compressed = write_compressed(student, out_dir) if masks else None
        info = {"spec": spec.model_dump(mode="json"), "steps": result.steps, "tokens": result.tokens,
                "loss_curve": [{"step": int(s), "loss": float(v)} for s, v in result.loss_curve],
                "ppl_before": pruned["ppl_before"], "seconds": result.seconds, "stopped_by": result.stopped_by}
        return {"checkpoint": self.folder.relative(out_dir), "recovery": info,
                "size": _size(student, cand.prune, exported["file_bytes"], pruned["size"]["achieved_sparsity"],
                              compressed)}

    def bench_lengths(self) -> tuple[int, int]:
        """Prompt and generation lengths the latency stage times: the plan's workload unless overridden."""
        workload = self.plan.workload
        return self.opt.prompt_len or workload.prompt_len, self.opt.gen_len or workload.gen_len

    def run_latency(self, checkpoints: dict[str, str], measured_on: str) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        from planner.latency import BenchConfig, Subject, benchmark
        from planner.models import TORCH_DTYPES

        workload = self.plan.workload
        dtype = self.opt.bench_dtype or ("fp32" if self.device == "cpu" else
                                         (workload.dtype if workload.dtype in BENCH_DTYPES else "bf16"))
        prompt_len, gen_len = self.bench_lengths()
        config = BenchConfig(prompt_len=prompt_len, gen_len=gen_len,
                             batch_size=self.opt.batch_size or workload.batch_size, requests=self.opt.requests,
                             warmup=self.opt.warmup, runtime=self.opt.runtime, dtype=dtype, device=self.device,
                             measure_memory=self.opt.measure_memory)
        subjects = []
        for name, folder in checkpoints.items():
            model = None
            if self.opt.runtime != "vllm":
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, TORCH_DTYPES[dtype]))
                model = model.eval().to(self.device)
            subjects.append(Subject(name, model, folder))
        return benchmark(subjects, self.tokenizer, config, measured_on, self.opt.progress)


def _size(model, spec, file_bytes: int | None, achieved_sparsity: float | None,
          compressed_file_bytes: int | None = None) -> dict[str, Any]:
    from planner.arch import get_adapter

    seen: set[int] = set()
    params = nonzero = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nonzero += int((p != 0).sum())
    shape = get_adapter(model.config).shape(model.config)
    pattern = "dense" if spec is None or spec.kind == "none" else (
        f"{spec.n}:{spec.m}" if spec.kind == "nm" else spec.kind)
    return Size(parameters=params, nonzero_parameters=nonzero, file_bytes=file_bytes,
                compressed_file_bytes=compressed_file_bytes,
                achieved_sparsity=achieved_sparsity, pattern=pattern,
                shape={"num_layers": shape.num_layers, "intermediate_size": shape.intermediate_size,
                       "num_heads": shape.num_heads, "num_kv_heads": shape.num_kv_heads}).model_dump(mode="json")


def _weights_bytes_on_disk(folder: Path) -> int | None:
    files = list(folder.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


# -- entry point -------------------------------------------------------------------------------------------------


def _options(options: RunOptions | None, kwargs: dict[str, Any]) -> RunOptions:
    names = {f.name for f in fields(RunOptions)}
    for key in kwargs:
        if key not in names:
            raise TypeError(did_you_mean(key, names, "run option"))
    opt = replace(options, **kwargs) if options else RunOptions(**kwargs)
    if opt.bench_dtype is not None and opt.bench_dtype not in BENCH_DTYPES:
        raise InputError(did_you_mean(opt.bench_dtype, BENCH_DTYPES, "benchmark dtype"))
    if opt.ppl_seq_len < 2:
        raise InputError(f"ppl-seq-len must be >= 2, got {opt.ppl_seq_len}")
    for name in ("ppl_max_tokens", "requests"):
        if getattr(opt, name) < 1:
            raise InputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(opt, name)}")
    if opt.warmup < 0:
        raise InputError(f"warmup must be >= 0, got {opt.warmup}")
    if opt.threads is not None and opt.threads < 1:
        raise InputError(f"threads must be >= 1, got {opt.threads}")
    for name in ("prompt_len", "gen_len", "batch_size"):
        value = getattr(opt, name)
        if value is not None and value < 1:
            raise InputError(f"{name.replace('_', '-')} must be >= 1, got {value}")
    if opt.slices is not None:
        from planner.evaluate.prompts import SLICES

        for s in opt.slices:
            if s not in SLICES:
                raise InputError(did_you_mean(s, SLICES, "capability slice"))
    from planner.latency import RUNTIMES

    if opt.runtime not in RUNTIMES:
        raise InputError(did_you_mean(opt.runtime, RUNTIMES, "runtime"))
    return opt


def _input_hashes(plan_sha: str, model_sha: str, opt: RunOptions) -> dict[str, str]:
    from planner.documents import check_file
    from planner.run.provenance import sha256_file

    hashes = {"plan": plan_sha, "model": model_sha}
    for role, paths in (("eval_text", opt.eval_text), ("eval_prompts", opt.eval_prompts)):
        for p in paths:
            check_file(p, f"--{role.replace('_', '-')} file")
            hashes[f"{role}:{p}"] = sha256_file(p)
    return hashes


def _check_resume(manifest: dict[str, Any], old: dict[str, Any], root: Path) -> None:
    for key, what in (("input_hashes", "inputs"), ("candidates", "candidates"), ("options", "options")):
        if old.get(key) != manifest[key]:
            a, b = old.get(key) or {}, manifest[key]
            if isinstance(a, dict) and isinstance(b, dict):
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                detail = ", ".join(changed)
            else:
                detail = f"{a} -> {b}"
            raise InputError(f"cannot resume {str(root)!r}: its {what} changed since it started ({detail}); "
                             "run again without --resume into a new --out folder")


def run_plan(plan_path: str | Path, out_dir: str | Path | None = None, candidate: int | None = None,
             all_top: int | None = None, resume: bool = False, options: RunOptions | None = None,
             **kwargs) -> Results:
    """Run the plan's chosen candidate (rank `candidate`, default 1; or the top `all_top`) against the dense
    model and write results.json (and report.html) into the run folder. Returns the Results document.

    The run folder is new, empty, or a run of this tool; a folder of other files is refused, and nothing but the
    run's own scratch folder is ever deleted. A run that fails its input checks before its first stage leaves no
    trace, so the same --out can be used again."""
    from planner import __version__
    from planner.decide.plan import load_plan
    from planner.models import resolve_source
    from planner.profile.device import pick_device
    from planner.run.provenance import device_info, model_hash, package_versions, sha256_file

    opt = _options(options, kwargs)
    plan_path = Path(plan_path)
    plan = load_plan(plan_path)
    plan_sha = sha256_file(plan_path)
    cands = select_candidates(plan, candidate, all_top)
    ranks = [c.rank for c in cands]
    root = Path(out_dir) if out_dir else default_run_dir(plan_path, plan_sha, ranks)
    folder = RunFolder(root)
    old = _check_run_folder(folder, resume)

    if opt.threads is not None:
        import torch

        torch.set_num_threads(opt.threads)  # on a shared CPU, fewer threads than cores avoids spin-wait contention
    device = pick_device(opt.device)
    runner = Runner(plan, plan_path, folder, cands, opt, {}, device)
    runner.prompt_sets()  # a bad prompt file fails now, before any work
    source = resolve_source(runner.model_spec)
    if not source.has_weights:
        raise InputError(f"the plan's model {plan.model!r} has no weights (config only); `plan run` needs weights")
    _check_positions(runner, source)
    _say(f"hashing inputs (model at {source.path})", opt.progress)
    hashes = _input_hashes(plan_sha, model_hash(source.path), opt)
    devinfo = device_info(device)
    manifest = {"version": RUN_VERSION, "kind": RUN_KIND, "planner_version": __version__, "plan": str(plan_path),
                "model": {"spec": plan.model, "name": source.name, "path": str(source.path)},
                "input_hashes": hashes, "candidates": ranks, "options": opt.fingerprint(),
                "packages": package_versions(), "device": devinfo.model_dump(mode="json"), "started_at": _now()}
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from planner.documents import write_error

        raise write_error(exc, "run folder", root) from None
    if resume:
        _check_resume(manifest, old, root)
        manifest["started_at"] = old.get("started_at", manifest["started_at"])
        folder.clean_partial()
    else:
        folder.clean_partial()  # a fresh start over a run that never finished a stage
        folder.write_text(root / "plan.json", plan_path.read_text(encoding="utf-8"))
        _copy_profile(plan, folder)
        folder.write_text(root / "manifest.json", json.dumps(manifest, indent=2))

    runner.manifest = manifest
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the stages report their own progress; weight-loading bars are noise
    try:
        results = _run_stages(runner, source, devinfo)
    except KeyboardInterrupt:
        _say(f"[yellow]interrupted[/]: finished stages are kept in {root}; continue with --resume", True)
        raise
    except InputError:
        if not resume and not folder.finished_stages():
            _undo_fresh_run(folder, created)  # nothing was run: leave the --out folder as it was
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    path = save_results(results, root / "results.json", scratch=folder.scratch)
    _say(f"[green]results[/] {path}", opt.progress)
    problem = _write_report(results, root / "report.html", plan, opt.progress) if opt.report else None
    folder.clean_partial()
    if problem:
        error = RunIncomplete(f"results.json was written to {str(path)!r}, but report.html was not ({problem}); "
                              f"rebuild it with `plan report {path}`")
        error.results = results
        raise error
    return results


def _check_run_folder(folder: RunFolder, resume: bool) -> dict[str, Any]:
    """Refuse an --out that is a file, a folder of other things, or a finished run without --resume; return the
    earlier manifest of a run folder ({} for a new one)."""
    from planner.documents import parse_json, read_text

    root = folder.root
    shown = str(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"run folder {shown!r} exists and is not a folder (accepted: a new or empty folder, "
                         "or a run folder to --resume)")
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        if resume:
            raise InputError(f"nothing to resume in {shown!r} (no manifest.json); run without --resume")
        if root.is_dir() and any(root.iterdir()):
            raise InputError(f"run folder {shown!r} is not empty and holds no run; planner writes a run only into "
                             "a new or empty folder (accepted: another --out)")
        return {}
    try:
        old = parse_json(read_text(manifest_path, "run manifest"), f"run manifest {str(manifest_path)!r}")
    except InputError as exc:
        raise InputError(f"{exc}; the run in {shown!r} cannot be resumed or reused: start a new run with another "
                         "--out") from None
    if not isinstance(old, dict) or old.get("kind") != RUN_KIND:
        raise InputError(f"{str(manifest_path)!r} is not a planner run manifest; planner writes a run only into a "
                         "new or empty folder (accepted: another --out)")
    if not resume and folder.finished_stages():
        raise InputError(f"run folder {shown!r} already holds a run; pass --resume to continue it, "
                         "or --out NEW_FOLDER for a fresh run")
    return old


def _undo_fresh_run(folder: RunFolder, created: bool) -> None:
    """Remove what a fresh run wrote before its first stage (its own files only)."""
    for name in ("manifest.json", "plan.json", "profile.json"):
        (folder.root / name).unlink(missing_ok=True)
    folder.clean_partial()
    for empty in (folder.stages, folder.root) if created else (folder.stages,):
        try:
            empty.rmdir()
        except OSError:
            pass


def _copy_profile(plan, folder: RunFolder) -> None:
    """The dense profile the plan was decided on, beside results.json, so the run folder (and its report) stays
    whole when the profile cache is cleared. A plan without one (or whose cached file is gone) is not an error."""
    recorded = (plan.profile or {}).get("path")
    if recorded and Path(recorded).is_file():
        try:
            text = Path(recorded).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        folder.write_text(folder.root / "profile.json", text)


def plan_model_spec(plan) -> str | None:
    """What to load for the plan's model: the absolute path it recorded (checked against its fingerprint, so a
    relative path run from another folder, or a changed model, is refused), else --model as given."""
    if plan.model_path:
        from planner.models import check_identity

        check_identity(plan.model_path, plan.model_fingerprint)
        return plan.model_path
    return plan.model or None


def _check_positions(runner: Runner, source) -> None:
    """The latency stage comes last: a workload the model cannot hold fails before any work, not after it."""
    from planner.arch import get_adapter
    from planner.models import load_config
    from planner.workload import require_positions

    config, _ = load_config(str(source.path))
    require_positions(*runner.bench_lengths(), get_adapter(config).shape(config).max_positions,
                      "pass a shorter --prompt-len / --gen-len for the latency benchmark")


def _run_stages(runner: Runner, source, devinfo) -> Results:
    from planner import __version__

    cands = runner.candidates
    if runner.opt.eval_text and not runner.folder.done("quality:dense"):
        need, have = runner.seq_len(runner.dense.model), len(runner.tokens("user"))
        if have < need:  # fail before hours of work, not in the middle
            raise InputError(f"--eval-text {', '.join(runner.opt.eval_text)} has {have} tokens; perplexity needs "
                             f"at least one window of {need} (use more text or a smaller --ppl-seq-len)")
    total = 3 + 3 * len(cands)
    n = iter(range(1, total + 1))
    teacher_out = runner.stage("teacher", runner.run_teacher, next(n), total)
    teacher = teacher_out["traces"]
    dense_quality = runner.stage("quality:dense", lambda: runner.run_quality(runner.dense.model, teacher), next(n),
                                 total)
    per_cand = []
    for cand in cands:
        pruned = runner.stage(f"prune:{cand.rank}", lambda c=cand: runner.run_prune(c), next(n), total)
        recovered = runner.stage(f"recover:{cand.rank}", lambda c=cand, p=pruned: runner.run_recover(c, p),
                                 next(n), total)

        def quality(folder=runner.folder.path(recovered["checkpoint"])):
            model = runner.load_checkpoint(folder)
            return runner.run_quality(model, teacher)

        per_cand.append((cand, pruned, recovered, runner.stage(f"quality:{cand.rank}", quality, next(n), total)))

    names = _variant_names(cands)
    checkpoints = {"dense": str(source.path)}
    checkpoints.update({names[c.rank]: str(runner.folder.path(rec["checkpoint"])) for c, _, rec, _ in per_cand})
    latency = runner.stage("latency", lambda: runner.run_latency(checkpoints, devinfo.label), next(n), total)

    variants = [Variant(name="dense", role="dense", checkpoint=str(source.path), size=teacher_out["dense_size"],
                        quality=dense_quality, latency=latency.get("dense"))]
    for cand, pruned, recovered, quality in per_cand:
        rec = recovered["recovery"]
        if rec is not None:
            rec = RecoveryInfo.model_validate({**rec, "ppl_after": quality["heldout_ppl"]})
        name = names[cand.rank]
        variants.append(Variant(name=name, role="pruned", candidate_rank=cand.rank,
                                checkpoint=str(runner.folder.path(recovered["checkpoint"])), size=recovered["size"],
                                pruning=pruned["pruning"], recovery=rec, quality=quality,
                                latency=latency.get(name)))
    plan = runner.plan
    summary = PlanSummary(
        path=str(runner.plan_path), goal=plan.goal.value, gpu=plan.gpu,
        model=plan.model or source.name, workload=plan.workload, dense_predicted=plan.dense_predicted,
        dense_rates=plan.dense_rates,
        candidates=[CandidateSummary(rank=c.rank, name=c.name, label=c.label, prune=c.prune, recovery=c.recovery,
                                     projected_to=c.projected_to, goal_metric=c.goal_metric,
                                     predicted_goal=c.predicted_goal, predicted_speedup=c.predicted_speedup,
                                     predicted=c.predicted) for c in cands])
    provenance = Provenance(planner_version=__version__, packages=runner.manifest["packages"], device=devinfo,
                            input_hashes=runner.manifest["input_hashes"], started_at=runner.manifest["started_at"],
                            finished_at=_now(), run_dir=str(runner.folder.root), command=shlex.join(sys.argv))
    return Results(provenance=provenance, plan=summary, variants=variants, stages=runner.timings)


def _variant_names(cands) -> dict[int, str]:
    names: dict[int, str] = {}
    for c in cands:
        name = c.name if c.name not in names.values() and c.name != "dense" else f"{c.name}#{c.rank}"
        names[c.rank] = name
    return names


def _write_report(results: Results, path: Path, plan, progress: bool) -> str | None:
    """Write report.html; return what went wrong instead of raising (results.json is already written, and a
    report problem must not lose the run)."""
    try:
        from planner.report import render_report

        render_report(results, path, plan=plan)
        _say(f"[green]report[/] {path}", progress)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"


__all__ = ["RunOptions", "run_plan", "select_candidates", "RunFolder", "Runner"]
