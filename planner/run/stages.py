"""The stages of a run, each a function of the run's shared inputs that returns a typed output:

    run_teacher  -> TeacherOutput   the dense model's size and greedy continuation of every prompt
    run_quality  -> Quality         held-out perplexity, user-text perplexity, agreement with the teacher per slice
    run_prune    -> PruneOutput     the pruned checkpoint, what was removed, its size
    run_recover  -> RecoverOutput   the recovered checkpoint (the pruned one when recovery is "none"), the recovery
    run_latency  -> LatencyOutput   every variant timed in the real runtime, interleaved

An output is what the stage record in the run folder holds (`output.model_dump(mode="json")`), and it loads back
with `model_validate` when a resume skips the stage. The source model is never written to: the teacher is loaded
once and only read; each student is a deep copy or a reload of an exported checkpoint. A model that does not fit
(`RunOptions.max_memory`, else the RAM available) is never held whole: prune and quality go one decoder layer at a
time from its files (planner.layered; `RunInputs.memory` says which and why).
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, RootModel

from planner.errors import InputError, did_you_mean
from planner.evaluate.perplexity import HELDOUT_TOKENS
from planner.run.folder import RunFolder
from planner.run.results import Latency, PruningInfo, Quality, QuantizationInfo, RecoveryInfo, Size
from planner.run.results import LmEvalScores

RUN_MINIMUMS = {"ppl_seq_len": 2, "ppl_max_tokens": 1, "threads": 1}  # beside the benchmark's own bounds


@dataclass
class RunOptions:
    """What to evaluate and how to time it. Every field but `progress`, `report` and `threads` must match on resume."""

    eval_text: list[str] = field(default_factory=list)  # user text files for perplexity
    eval_prompts: list[str] = field(default_factory=list)  # user JSONL prompt files, a regression slice
    slices: list[str] | None = None  # bundled capability slices (default: all)
    ppl_seq_len: int = 512
    ppl_max_tokens: int = HELDOUT_TOKENS
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
    load: str | None = None  # `--load`: "auto" or comma-separated request rates (planner.run.load)
    load_requests: int = 24  # per variant and rate
    load_time_limit: float = 900.0  # seconds per rate
    report: bool = True
    progress: bool = True
    request_rate: float | None = None  # --runtime vllm: requests/s (default: all at once)
    concurrency: int | None = None  # --runtime vllm: requests in flight (default: the plan's workload)
    lm_eval_tasks: list[str] | None = None  # --lm-eval-tasks: lm-evaluation-harness tasks (planner.evaluate.lmeval)
    lm_eval_limit: int | None = None  # documents per task (default: all)
    lm_eval_include: list[str] = field(default_factory=list)  # the user's task folders
    # --max-memory: bytes the model may take here; a model that does not fit is pruned and evaluated layer by layer
    max_memory: int | None = None

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("report", "progress", "threads"):  # change how a run looks or how fast, not what it measures
            data.pop(name)
        for name in ("request_rate", "concurrency"):  # unset: the fingerprint of a run made before they existed
            if data[name] is None:
                data.pop(name)
        for name in ("lm_eval_tasks", "lm_eval_limit", "lm_eval_include"):  # unset: as before lm-eval existed
            if not data[name]:
                data.pop(name)
        if data["max_memory"] is None:  # no --max-memory: as before it existed
            data.pop("max_memory")
        if data["load"] is None:  # no --load: the fingerprint of a run made before it existed
            for name in ("load", "load_requests", "load_time_limit"):
                data.pop(name)
        return data

    def check(self) -> RunOptions:
        """Bad values are InputErrors, raised before any work. The benchmark's bounds are the latency module's."""
        from planner.evaluate.prompts import SLICES
        from planner.latency import check_bench_settings

        for name, minimum in RUN_MINIMUMS.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise InputError(f"{_option(name)} must be >= {minimum}, got {value}")
        check_bench_settings({**vars(self), "dtype": self.bench_dtype}, label=_option)
        if self.max_memory is not None and self.max_memory < 1:
            raise InputError(f"--max-memory must be > 0 bytes, got {self.max_memory}")
        if self.concurrency is not None and self.concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise InputError(f"--request-rate must be > 0 requests/s, got {self.request_rate}")
        if self.runtime == "vllm":  # refused now, not after hours of pruning and recovery
            from planner.latency import vllm_unavailable_reason

            missing = vllm_unavailable_reason()
            if missing:
                raise InputError(f"--runtime vllm is not available here: {missing}; use --runtime hf-eager or "
                                 "hf-compile")
        for s in self.slices or ():
            if s not in SLICES:
                raise InputError(did_you_mean(s, SLICES, "capability slice"))
        if self.lm_eval_limit is not None and self.lm_eval_limit < 1:
            raise InputError(f"--lm-eval-limit must be >= 1 document per task, got {self.lm_eval_limit}")
        if (self.lm_eval_limit is not None or self.lm_eval_include) and not self.lm_eval_tasks:
            raise InputError("--lm-eval-limit and --lm-eval-include need --lm-eval-tasks TASKS")
        if self.lm_eval_tasks:  # unknown task or no lm-eval: refused before any work
            from planner.evaluate.lmeval import resolve_tasks

            resolve_tasks(self.lm_eval_tasks, self.lm_eval_include)
        if self.load is not None:
            from planner.run.load import DEFAULT_WINDOWS, parse_rates

            parse_rates(self.load)
            if self.load_requests < DEFAULT_WINDOWS:
                raise InputError(f"--load-requests must be >= {DEFAULT_WINDOWS}, got {self.load_requests}")
            if not self.load_time_limit > 0:
                raise InputError(f"--load-time-limit must be > 0 seconds, got {self.load_time_limit}")
        return self


def _option(name: str) -> str:
    return name.replace("_", "-")


# -- stage outputs ----------------------------------------------------------------------------------------------


class StageOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherOutput(StageOutput):
    dense_size: Size
    traces: dict[str, list[dict[str, Any]]]  # prompt set -> the teacher's continuations (evaluate.agreement)


class PruneOutput(StageOutput):
    checkpoint: str  # the pruned checkpoint, relative to the run folder
    pruning: PruningInfo
    ppl_before: float | None = None  # held-out perplexity right after pruning, when a recovery follows
    size: Size


class RecoverOutput(StageOutput):
    checkpoint: str  # the recovered checkpoint (the pruned one when recovery is "none"), relative to the run folder
    recovery: RecoveryInfo | None  # ppl_after is filled in from the quality stage that follows
    size: Size


class QuantizeOutput(StageOutput):
    checkpoint: str  # the quantized checkpoint, relative to the run folder
    quantization: QuantizationInfo
    size: Size


class LatencyOutput(RootModel[dict[str, Latency]]):
    """Variant name -> its timed requests (a variant a runtime skipped is absent)."""


# -- what the stages share --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """Whether the run holds whole models or goes layer by layer (planner.layered), and why."""

    budget: int  # bytes the run's process may hold: --max-memory, else the RAM available when the run looked
    where: str  # "--max-memory 2.00 GB" or "the 20.1 GB of RAM available"
    weight_bytes: int  # the dense model's weights in fp32, the dtype the in-memory stages hold
    layered: bool
    layer_need: int | None = None  # layered: the interpreter plus what one step holds (planner.layered.memory)

    @property
    def why(self) -> str:
        from planner.layered.memory import fmt_bytes

        return (f"the dense model's fp32 weights ({fmt_bytes(self.weight_bytes)}) held twice (teacher and student) "
                f"beside the interpreter exceed {self.where}: pruned and evaluated one decoder layer at a time "
                f"(about {fmt_bytes(self.layer_need or 0)} at once, interpreter included)")

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` of tensors fit beside the interpreter (planner.perf.footprint.PROCESS_BASE_BYTES)."""
        from planner.perf.footprint import PROCESS_BASE_BYTES

        return PROCESS_BASE_BYTES + nbytes <= self.budget


class RunInputs:
    """The dense teacher, its tokenizer, the prompt sets and the tokenized text, loaded on first use (a resumed run
    may not need them), and the teacher's logits along its continuations, shared by every student.

    Layered mode (`memory.layered`: the dense model held twice, teacher and student, does not fit --max-memory or
    the available RAM): `dense.model` and `load_checkpoint` give planner.layered.LayeredModel handles, checkpoints on
    disk that the prune and quality stages run one decoder layer at a time; agreement generates through accelerate's
    disk offload; latency skips a variant whose weights do not fit, saying why."""

    def __init__(self, plan, folder: RunFolder, options: RunOptions, device: str, model_spec: str | None):
        self.plan = plan
        self.folder = folder
        self.opt = options
        self.device = device
        self.model_spec = model_spec
        self._dense = None
        self._prompt_sets = None
        self._tokens: dict[str, list[int]] = {}
        self.teacher_logits: dict = {}
        self._memory: MemoryPlan | None = None
        if options.max_memory is not None:
            self.memory  # noqa: B018  (a --max-memory below one decoder layer fails now, before any work)

    @property
    def memory(self) -> MemoryPlan:
        if self._memory is None:
            self._memory = _plan_memory(self)
        return self._memory

    @property
    def layered(self) -> bool:
        return self.memory.layered

    @property
    def dense(self):
        if self._dense is None:
            if self.layered:
                from planner.layered import LayeredModel
                from planner.models import LoadedModel, load_tokenizer, resolve_source

                source = resolve_source(self.model_spec)
                self._dense = LoadedModel(LayeredModel(source.path, self.device), load_tokenizer(source), source)
            else:
                from planner.models import load_model

                self._dense = load_model(self.model_spec, dtype="fp32", device=self.device)
        return self._dense

    def whole_dense(self):
        """The dense model whole in fp32, also in layered mode (a recovery that fits needs its teacher whole)."""
        if not self.layered:
            return self.dense.model
        from planner.models import load_model

        return load_model(self.model_spec, dtype="fp32", device=self.device, with_tokenizer=False).model

    def check_candidate(self, cand) -> None:
        """Refuse, before any work on it, what this run cannot do to `cand` within its memory: in layered mode a
        pruning step that needs the whole model, or a quantization; with --max-memory (or in layered mode) a
        recovery whose estimated need exceeds the budget (proposing LoRA on a GPU, with the figures)."""
        if self.opt.max_memory is None and not self.layered:
            return
        if self.layered:
            from planner.layered import check_layered

            if cand.prune is not None:
                check_layered(cand.prune)
            if cand.quantize is not None:
                raise InputError(f"candidate {cand.rank} ({cand.label}) quantizes the whole model in memory, and "
                                 f"{self.memory.why}; give more memory (--max-memory) or run it where the model "
                                 "fits")
        if cand.recovery.method != "none":
            _check_recovery(self, cand)

    def latency_skip_reason(self, folder) -> str | None:
        """Why the latency stage does not time the checkpoint `folder` (its weights in the benchmark's dtype do not
        fit the run's memory: timed offloaded it would measure disk reads, not the model), or None."""
        if not self.layered:
            return None
        import torch

        from planner.layered import LayeredModel, fmt_bytes
        from planner.models import TORCH_DTYPES

        dtype = self.bench_dtype()
        weights = LayeredModel(folder, self.device).weight_bytes(getattr(torch, TORCH_DTYPES[dtype]).itemsize)
        if self.memory.fits(weights):
            return None
        return (f"latency not measured: the weights ({fmt_bytes(weights)} in {dtype}) beside the interpreter exceed "
                f"{self.memory.where}; timed with disk offload it would measure disk reads, not the model")

    def bench_dtype(self) -> str:
        """The dtype the latency stage times in: --bench-dtype, else fp32 on a CPU and the plan's serving dtype (or
        bf16) on CUDA."""
        from planner.latency import BENCH_DTYPES

        serving = self.plan.workload.dtype
        return self.opt.bench_dtype or ("fp32" if self.device == "cpu" else
                                        (serving if serving in BENCH_DTYPES else "bf16"))

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

    def tokens(self, key: str) -> list[int]:
        """Token ids of the held-out text ("heldout") or the user's text ("user"), tokenized once per run."""
        if key not in self._tokens:
            from planner.data import heldout_text, read_text_files

            text = heldout_text() if key == "heldout" else read_text_files(self.opt.eval_text)
            self._tokens[key] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._tokens[key]

    def ppl(self, model, key: str = "heldout") -> dict[str, Any]:
        from planner.evaluate.perplexity import perplexity_of_tokens

        measure = perplexity_of_tokens
        if _is_layered(model):
            from planner.layered import layered_perplexity_of_tokens as measure
        return measure(model, self.tokens(key), seq_len=self.seq_len(model), max_tokens=self.opt.ppl_max_tokens,
                       progress=self.opt.progress)

    def bench_lengths(self) -> tuple[int, int]:
        """Prompt and generation lengths the latency stage times: the plan's workload unless overridden."""
        workload = self.plan.workload
        return self.opt.prompt_len or workload.prompt_len, self.opt.gen_len or workload.gen_len

    def cand_dir(self, cand) -> Path:
        return self.folder.root / f"{cand.rank}-{_slug(cand.name)}"

    def load_checkpoint(self, folder: str | Path):
        """An exported checkpoint of this run: whole in fp32 on the run's device, or in layered mode a LayeredModel."""
        if self.layered:
            from planner.layered import LayeredModel

            try:
                return LayeredModel(folder, self.device)
            except (OSError, ValueError, InputError) as exc:
                raise self._unreadable(folder, exc) from None
        return self.load_whole(folder)

    def load_whole(self, folder: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        except Exception as exc:  # a truncated or deleted checkpoint of an earlier, killed run
            raise self._unreadable(folder, exc) from None
        return model.eval().to(self.device)

    def _unreadable(self, folder, exc: Exception) -> InputError:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return InputError(f"checkpoint {str(folder)!r} of this run is unreadable ({type(exc).__name__}: {first}); "
                          f"delete the stage files under {str(self.folder.stages)!r} that name it to redo "
                          "those stages, or start a new run with another --out")


# -- the stages -------------------------------------------------------------------------------------------------


def run_teacher(inputs: RunInputs) -> TeacherOutput:
    from planner.evaluate.agreement import teacher_traces

    model = inputs.dense.model
    size = _size(model, None, _weights_bytes_on_disk(inputs.dense.source.path), None)
    sets = inputs.prompt_sets()
    generator = model.offloaded() if _is_layered(model) and sets else model  # layered: accelerate's disk offload
    traces = {ps.name: teacher_traces(generator, inputs.tokenizer, ps, inputs.opt.progress) for ps in sets}
    return TeacherOutput(dense_size=size, traces=traces)


def run_quality(inputs: RunInputs, model, traces: dict[str, Any]) -> Quality:
    """Held-out (and user-text) perplexity and agreement with the teacher. A LayeredModel is measured layer by layer
    and generates through disk offload; its notes say so, and why its latency will not be measured if it will not."""
    from planner.evaluate.agreement import slice_agreement

    held = inputs.ppl(model)
    quality: dict[str, Any] = {"heldout_ppl": held["ppl"], "heldout_nll": held["nll"],
                               "heldout_tokens": held["tokens"], "seq_len": held["seq_len"]}
    if inputs.opt.eval_text:
        user = inputs.ppl(model, "user")
        quality.update(user_text_ppl=user["ppl"], user_text_tokens=user["tokens"])
    student, teacher = model, inputs.dense.model
    if _is_layered(model):
        quality["notes"] = [inputs.memory.why + "; held-out perplexity layer by layer, exact to float rounding"]
        if inputs.prompt_sets():
            teacher = teacher.offloaded()
            student = teacher if model.folder == inputs.dense.model.folder else model.offloaded()
            quality["notes"].append("agreement: teacher and model generate with accelerate disk offload (each "
                                    "decoder layer read from disk for every forward)")
        skipped = inputs.latency_skip_reason(model.folder)
        if skipped:
            quality["notes"].append(skipped)
    quality["slices"] = {ps.name: slice_agreement(student, teacher, inputs.tokenizer, ps, traces[ps.name],
                                                  inputs.opt.progress, inputs.teacher_logits)
                         for ps in inputs.prompt_sets()}
    if _is_layered(model) and model is not inputs.dense.model:
        model.close()
    return Quality.model_validate(quality)


def lm_eval_backend(inputs: RunInputs) -> str:
    """lm-eval's vLLM backend where the run benchmarks with vLLM on CUDA (it scores the exported checkpoint),
    else its HF backend on the in-memory model."""
    return "vllm" if inputs.opt.runtime == "vllm" and inputs.device.startswith("cuda") else "hf"


def run_lm_eval(inputs: RunInputs, model, checkpoint: str | None) -> LmEvalScores:
    """lm-evaluation-harness task scores of one variant (planner.evaluate.lmeval), hubs off."""
    from planner.evaluate.lmeval import evaluate_model

    backend = lm_eval_backend(inputs)
    scores = evaluate_model(model, inputs.tokenizer, inputs.opt.lm_eval_tasks or [],
                            include=inputs.opt.lm_eval_include, limit=inputs.opt.lm_eval_limit, device=inputs.device,
                            checkpoint=checkpoint, backend=backend, progress=inputs.opt.progress)
    return LmEvalScores.model_validate(scores)


def run_prune(inputs: RunInputs, cand) -> PruneOutput:
    inputs.check_candidate(cand)
    if inputs.layered:
        return _run_prune_layered(inputs, cand)
    from planner.data import calibration_text, read_text_files, token_blocks
    from planner.export import export_model, write_compressed
    from planner.kinds import get_kind
    from planner.prune import apply_pruning
    from planner.run.masks import save_masks

    from planner.prune.specs import NoPruning

    spec = cand.prune if cand.prune is not None else NoPruning()  # a quantization-only candidate: a dense copy
    model = copy.deepcopy(inputs.dense.model)  # the teacher stays untouched
    cal = cand.calibration
    text = read_text_files(cal.text_files) if cal.text_files else calibration_text()
    calib = token_blocks(inputs.tokenizer, text, cal.num_samples, min(cal.seq_len, inputs.seq_len(model)))
    result = apply_pruning(model, spec, calib.to(inputs.device))
    out_dir = inputs.cand_dir(cand) / "pruned"
    ppl_before = None
    if cand.recovery.method != "none":
        ppl_before = inputs.ppl(model)["ppl"]
    meta = {"planner_stage": "prune", "prune": spec.model_dump(mode="json"),
            "achieved_sparsity": result.achieved_sparsity, "candidate": cand.name}
    exported = export_model(model, inputs.tokenizer, out_dir, meta, overwrite=True, scratch=inputs.folder.scratch)
    compressed = None
    if get_kind(spec).masked and result.masks:
        save_masks(result.masks, out_dir / "masks.safetensors")
        compressed = write_compressed(model, out_dir)
    pruning = PruningInfo(spec=spec, params_before=result.params_before, params_after=result.params_after,
                          achieved_sparsity=result.achieved_sparsity, details=_jsonable(result.details),
                          seconds=result.seconds)
    return PruneOutput(checkpoint=inputs.folder.relative(out_dir), pruning=pruning, ppl_before=ppl_before,
                       size=_size(model, spec, exported["file_bytes"], result.achieved_sparsity, compressed))


def run_recover(inputs: RunInputs, cand, pruned: PruneOutput) -> RecoverOutput:
    from planner.export import export_model, write_compressed
    from planner.recover import recover
    from planner.run.masks import load_masks

    spec = cand.recovery
    if spec.method == "none":
        return RecoverOutput(checkpoint=pruned.checkpoint, recovery=None, size=pruned.size)
    inputs.check_candidate(cand)  # a recovery that does not fit --max-memory is refused (also on --resume)
    folder = inputs.folder.path(pruned.checkpoint)
    student = inputs.load_whole(folder)  # training needs the whole student, also in layered mode (it fits: checked)
    mask_file = folder / "masks.safetensors"
    masks = load_masks(mask_file) if mask_file.is_file() else None
    result = recover(student, inputs.whole_dense(), inputs.tokenizer, spec, masks=masks, progress=inputs.opt.progress)
    out_dir = inputs.cand_dir(cand) / "model"
    sparsity = pruned.size.achieved_sparsity
    meta = {"planner_stage": "recover", "prune": cand.prune.model_dump(mode="json") if cand.prune else None,
            "recovery": spec.model_dump(mode="json"), "candidate": cand.name, "achieved_sparsity": sparsity}
    exported = export_model(student, inputs.tokenizer, out_dir, meta, overwrite=True, scratch=inputs.folder.scratch)
    compressed = write_compressed(student, out_dir) if masks else None
    info = RecoveryInfo(spec=spec, steps=result.steps, tokens=result.tokens,
                        loss_curve=[{"step": int(s), "loss": float(v)} for s, v in result.loss_curve],
                        ppl_before=pruned.ppl_before, seconds=result.seconds, stopped_by=result.stopped_by)
    return RecoverOutput(checkpoint=inputs.folder.relative(out_dir), recovery=info,
                         size=_size(student, cand.prune, exported["file_bytes"], sparsity, compressed))


def run_quantize(inputs: RunInputs, cand, recovered: RecoverOutput) -> QuantizeOutput:
    """Quantize the (pruned, recovered) model with the candidate's scheme (torchao) and export it."""
    from planner.quant.engine import export_quantized, quantize_model

    inputs.check_candidate(cand)  # layered mode: refused (quantization holds the whole model)
    model = inputs.load_checkpoint(inputs.folder.path(recovered.checkpoint))
    result = quantize_model(model, cand.quantize, device=inputs.device)
    out_dir = inputs.cand_dir(cand) / "quantized"
    meta = {"planner_stage": "quantize", "candidate": cand.name}
    exported = export_quantized(model, inputs.tokenizer, out_dir, cand.quantize, overwrite=True, metadata=meta)
    info = QuantizationInfo(spec=cand.quantize, backend=result.backend, linears_quantized=result.linears_quantized,
                            params_quantized=result.params_quantized, dense_bytes=result.dense_bytes,
                            quantized_bytes=result.quantized_bytes, seconds=result.seconds, notes=result.notes)
    size = recovered.size.model_copy(update={"file_bytes": exported["file_bytes"], "pattern": cand.quantize.scheme})
    return QuantizeOutput(checkpoint=inputs.folder.relative(out_dir), quantization=info, size=size)




def run_latency(inputs: RunInputs, checkpoints: dict[str, str], measured_on: str) -> LatencyOutput:
    import torch
    from transformers import AutoModelForCausalLM

    from planner.console import say
    from planner.latency import BenchConfig, Subject, benchmark
    from planner.models import TORCH_DTYPES

    opt, workload = inputs.opt, inputs.plan.workload
    dtype = inputs.bench_dtype()
    prompt_len, gen_len = inputs.bench_lengths()
    config = BenchConfig(prompt_len=prompt_len, gen_len=gen_len, batch_size=opt.batch_size or workload.batch_size,
                         requests=opt.requests, warmup=opt.warmup, runtime=opt.runtime, dtype=dtype,
                         device=inputs.device, measure_memory=opt.measure_memory, request_rate=opt.request_rate,
                         concurrency=opt.concurrency or workload.concurrency,
                         out_dir=str(inputs.folder.root / "vllm-bench"))
    from planner.quant.engine import is_quantized_checkpoint

    subjects = []
    for name, folder in checkpoints.items():
        skipped = inputs.latency_skip_reason(folder)  # absent from the output; its quality notes say why
        if skipped:
            say(f"[yellow]{name}[/]: {skipped}", opt.progress)
            continue
        model = None
        if opt.runtime != "vllm" and is_quantized_checkpoint(folder):
            from planner.quant.engine import load_quantized

            model = load_quantized(folder, dtype=dtype, device=inputs.device).model.eval()
        elif opt.runtime != "vllm":
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, TORCH_DTYPES[dtype]))
            model = model.eval().to(inputs.device)
        subjects.append(Subject(name, model, folder, sparse_2to4=_is_2to4(folder)))
    if not subjects:
        return LatencyOutput.model_validate({})
    return LatencyOutput.model_validate(benchmark(subjects, inputs.tokenizer, config, measured_on, opt.progress))


# -- helpers ----------------------------------------------------------------------------------------------------


def _is_2to4(folder) -> bool:
    """The checkpoint was pruned to 2:4 (its planner.json says so): the benchmark serves it on sparse kernels."""
    from planner.export import read_metadata

    try:
        prune = read_metadata(folder).get("prune") or {}
    except (OSError, ValueError):
        return False
    return prune.get("kind") == "nm" and (prune.get("n"), prune.get("m")) == (2, 4)




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


def _size(model, spec, file_bytes: int | None, achieved_sparsity: float | None,
          compressed_file_bytes: int | None = None) -> Size:
    if _is_layered(model):
        params, nonzero = model.count_nonzero()
    else:
        seen: set[int] = set()
        params = nonzero = 0
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            nonzero += int((p != 0).sum())
    return _size_of(params, nonzero, model.config, spec, file_bytes, achieved_sparsity, compressed_file_bytes)


def _size_of(params: int, nonzero: int, config, spec, file_bytes: int | None, achieved_sparsity: float | None,
             compressed_file_bytes: int | None = None) -> Size:
    from planner.arch import get_adapter
    from planner.kinds import get_kind

    shape = get_adapter(config).shape(config)
    pattern = "dense" if spec is None else get_kind(spec).size_pattern(spec)
    return Size(parameters=params, nonzero_parameters=nonzero, file_bytes=file_bytes,
                compressed_file_bytes=compressed_file_bytes,
                achieved_sparsity=achieved_sparsity, pattern=pattern,
                shape={"num_layers": shape.num_layers, "intermediate_size": shape.intermediate_size,
                       "num_heads": shape.num_heads, "num_kv_heads": shape.num_kv_heads})


def _is_layered(model) -> bool:
    from planner.layered import LayeredModel

    return isinstance(model, LayeredModel)


def _run_prune_layered(inputs: RunInputs, cand) -> PruneOutput:
    """run_prune for a model that does not fit: pruned one decoder layer at a time from the source checkpoint, each
    layer written out as it is done (planner.layered), the same weights as the in-memory engines."""
    from planner.data import calibration_text, read_text_files, token_blocks
    from planner.kinds import get_kind
    from planner.layered import LayeredModel, prune_layered
    from planner.prune.specs import NoPruning

    spec = cand.prune if cand.prune is not None else NoPruning()
    source = inputs.dense.model
    cal = cand.calibration
    text = read_text_files(cal.text_files) if cal.text_files else calibration_text()
    calib = token_blocks(inputs.tokenizer, text, cal.num_samples, min(cal.seq_len, inputs.seq_len(source)))
    out_dir = inputs.cand_dir(cand) / "pruned"
    masked = get_kind(spec).masked

    def metadata(result):
        return {"planner_stage": "prune", "prune": spec.model_dump(mode="json"),
                "achieved_sparsity": result.achieved_sparsity, "candidate": cand.name}

    pruned = prune_layered(source, spec, calib, out_dir, inputs.tokenizer, metadata, scratch=inputs.folder.scratch,
                           progress=inputs.opt.progress, compressed=masked)
    result, exported = pruned.result, pruned.exported  # masked kinds: out_dir/masks.safetensors written too
    student = LayeredModel(out_dir, inputs.device)
    ppl_before = inputs.ppl(student)["ppl"] if cand.recovery.method != "none" else None
    pruning = PruningInfo(spec=spec, params_before=result.params_before, params_after=result.params_after,
                          achieved_sparsity=result.achieved_sparsity, details=_jsonable(result.details),
                          seconds=result.seconds)
    size = _size_of(exported["parameters"], pruned.nonzero, student.config, spec, exported["file_bytes"],
                    result.achieved_sparsity, exported.get("compressed_file_bytes"))
    return PruneOutput(checkpoint=inputs.folder.relative(out_dir), pruning=pruning, ppl_before=ppl_before, size=size)


def _plan_memory(inputs: RunInputs) -> MemoryPlan:
    """Layered or whole: the dense model held twice (teacher and a student copy, as the in-memory stages do) beside
    the interpreter, against --max-memory (the whole process), else against the RAM available now. Layered with
    --max-memory below what one decoder layer needs, or with a stage that needs whole models (--lm-eval-tasks,
    --load): an InputError before any work."""
    import psutil

    from planner.layered import LayeredModel, compute_dtype, fmt_bytes
    from planner.layered.memory import layered_minimum
    from planner.models import resolve_source
    from planner.perf.footprint import PROCESS_BASE_BYTES

    opt = inputs.opt
    if opt.max_memory is not None:
        budget, where = opt.max_memory, f"--max-memory {fmt_bytes(opt.max_memory)}"
    else:
        budget = psutil.virtual_memory().available
        where = f"the {fmt_bytes(budget)} of RAM available"
    source = resolve_source(inputs.model_spec)
    if not source.has_weights or not any(source.path.glob("*.safetensors")):
        if opt.max_memory is not None and source.has_weights:
            raise InputError(f"--max-memory needs the model's weights as safetensors (the layered path reads them "
                             f"lazily); {str(source.path)!r} has none: convert it with save_pretrained first")
        return MemoryPlan(budget=budget, where=where, weight_bytes=0, layered=False)
    model = LayeredModel(source.path, inputs.device)
    weights = model.weight_bytes(4)
    plan = MemoryPlan(budget=budget, where=where, weight_bytes=weights, layered=False)
    if plan.fits(2 * weights):
        return plan
    cands = inputs.plan.candidates
    calib = max([c.calibration.num_samples * c.calibration.seq_len for c in cands] or [0])
    seq = max([c.calibration.seq_len for c in cands] + [opt.ppl_seq_len])
    need = layered_minimum(model.shape, compute_bytes=compute_dtype(inputs.device).itemsize,
                           calibration_tokens=calib, eval_tokens=opt.ppl_max_tokens, seq_len=seq,
                           hessian=any(getattr(c.prune, "criterion", None) == "sparsegpt" for c in cands),
                           layer_params=model.layer_parameters(), largest_matrix=model.largest_matrix())
    minimum = PROCESS_BASE_BYTES + need.total
    plan = MemoryPlan(budget=budget, where=where, weight_bytes=weights, layered=True, layer_need=int(minimum))
    if opt.max_memory is not None and budget < minimum:
        raise InputError(
            f"--max-memory {fmt_bytes(budget)} is below what this model needs one decoder layer at a time: "
            f"{fmt_bytes(minimum)} (the interpreter {fmt_bytes(PROCESS_BASE_BYTES)}, a layer's weights "
            f"{fmt_bytes(need.layer)}, working copies {fmt_bytes(need.working)}, hidden states of "
            f"{max(calib, opt.ppl_max_tokens):,} tokens {fmt_bytes(need.activations)}, an LM head block "
            f"{fmt_bytes(need.head_block)}); accepted: --max-memory {fmt_bytes(minimum)} or more (fewer --ppl-tokens "
            "or calibration samples need less)")
    for flag, wanted in (("--lm-eval-tasks", opt.lm_eval_tasks), ("--load", opt.load)):
        if wanted:
            raise InputError(f"{flag} runs the whole model in memory, and {plan.why}; drop {flag} or give more "
                             "memory (--max-memory)")
    return plan


def _check_recovery(inputs: RunInputs, cand) -> None:
    """A recovery trains the whole student: refuse one whose estimated need (planner.layered.memory.recovery_need)
    exceeds the run's memory, with the figures and what would fit."""
    from planner.arch import get_adapter
    from planner.kinds import get_kind
    from planner.layered import fmt_bytes
    from planner.layered.memory import recovery_need
    from planner.models import load_config

    config, _ = load_config(inputs.model_spec)
    shape = get_adapter(config).shape(config)
    student = get_kind(cand.prune).pruned_shape(shape, cand.prune)[0] if cand.prune is not None else shape
    need = recovery_need(student, shape, cand.recovery)
    if inputs.memory.fits(need.total):
        return
    spec = cand.recovery
    message = (f"candidate {cand.rank} ({cand.label}): recovery cannot run within {inputs.memory.where}: "
               f"{need.described()} (an estimate: fp32 training with AdamW on micro-batches of "
               f"{spec.micro_batch_size or spec.batch_size} x {spec.seq_len} tokens). Recovery trains the whole "
               "student, which cannot go layer by layer")
    if spec.method != "lora":
        lora = recovery_need(student, shape, spec.model_copy(update={"method": "lora"}))
        fits = "fits" if inputs.memory.fits(lora.total) else "does not fit either"
        message += f"; LoRA (recovery method 'lora') would need about {fmt_bytes(lora.total)}, which {fits}"
    message += (f". Run the recovery with LoRA on a GPU, or on a machine with {fmt_bytes(need.total)} of memory "
                "beside the interpreter (--max-memory), or choose a candidate without recovery")
    raise InputError(message)


def _weights_bytes_on_disk(folder: Path) -> int | None:
    files = list(folder.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


__all__ = ["RunOptions", "RunInputs", "TeacherOutput", "PruneOutput", "RecoverOutput", "LatencyOutput", "run_teacher",
           "run_quality", "run_prune", "run_recover", "run_latency"]
