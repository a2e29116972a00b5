"""results.json: what `plan run` measured, dense and pruned side by side, with where every figure came from.

The document is versioned and strict (`extra="forbid"`): a mistyped or hand-added key fails at load time, naming it.
Recorded samples are the one source of truth for latency; the percentiles (`p95_ms`, `ttft_p50_ms`, ...) and the
measured speedups are computed from them and written beside them for readers of the JSON. On load they are
recomputed and checked, so a hand-edited percentile is an error instead of a silent lie.

    results = load_results("runs/plan-1a2b3c/results.json")
    dense, pruned = results.variant("dense"), results.variants[1]
    pruned.latency.p95_ms / dense.latency.p95_ms      # measured on results.provenance.device.label
    pruned.quality.heldout_ppl, pruned.quality.slices["code"].kl
    results.speedups[0].predicted, results.speedups[0].measured
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from planner.documents import write_atomic
from planner.decide.plan import QualityEstimate, ShardSpec
from planner.prune.specs import PruneSpec
from planner.quant.specs import QuantSpec
from planner.recover.specs import RecoverySpec
from planner.stats import percentile  # noqa: F401  (results.percentile: the name callers use)
from planner.workload import Workload

SCHEMA_VERSION = 1

def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, floats within rounding."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _check_derived(cls, data: Any, handler):
        # derived figures are written for readers; on load they are recomputed and must agree with the samples
        given: dict[str, Any] = {}
        if isinstance(data, dict):
            derived = set(cls.model_computed_fields)
            given = {k: v for k, v in data.items() if k in derived}
            data = {k: v for k, v in data.items() if k not in derived}
        obj = handler(data)
        for key, value in given.items():
            computed = getattr(obj, key)
            if not _same(value, computed):
                raise ValueError(f"{key} = {value!r} does not match the value computed from the recorded data "
                                 f"({computed!r}); was the file edited by hand?")
        return obj


# -- provenance ------------------------------------------------------------------------------------------------


class DeviceInfo(_Doc):
    """The machine the figures were measured on."""

    kind: Literal["cpu", "cuda"]
    name: str  # CPU model name, or CUDA device name
    cpu_name: str | None = None
    cpu_cores: int | None = None
    torch_threads: int | None = None
    memory_bytes: int | None = None  # host RAM, or GPU memory for cuda
    cuda_version: str | None = None
    driver_version: str | None = None
    compute_capability: str | None = None
    nvml: dict[str, Any] = Field(default_factory=dict)  # clocks, power limit, ... where NVML answers
    os: str = ""
    python: str = ""

    @computed_field
    @property
    def label(self) -> str:
        """'measured on <label>'."""
        if self.kind == "cuda":
            return self.name
        threads = f", {self.torch_threads} threads" if self.torch_threads else ""
        return f"CPU {self.name}{threads}"


class Provenance(_Doc):
    planner_version: str
    packages: dict[str, str] = Field(default_factory=dict)  # torch, transformers, ... -> version
    device: DeviceInfo
    input_hashes: dict[str, str] = Field(default_factory=dict)  # plan, model, eval_text, eval_prompts -> sha256
    started_at: str  # ISO 8601, UTC
    finished_at: str | None = None
    run_dir: str
    command: str | None = None


# -- the plan that was run ---------------------------------------------------------------------------------


class CandidateSummary(_Doc):
    """One candidate of the plan as it was run; predictions are *projected to* `projected_to`."""

    rank: int  # position in the plan, 1 = top
    name: str
    label: str = ""
    prune: PruneSpec | None
    quantize: QuantSpec | None = None
    shard: ShardSpec | None = None
    recovery: RecoverySpec | None = None
    projected_to: str  # target GPU id of the plan's roofline model
    goal_metric: str | None = None  # the plan's name of the goal figure
    predicted_goal: float | None = None  # the goal figure, projected to `projected_to`
    predicted_speedup: float | None = None  # of the goal metric, x times better than dense
    predicted: dict[str, float | None] = Field(default_factory=dict)  # other predicted metrics, by name
    quality: QualityEstimate | None = None  # the plan's probe: one-shot measured, after recovery predicted


class PlanSummary(_Doc):
    path: str
    goal: str
    gpu: str  # target GPU id
    model: str  # what --model named ("" = the embedded default) and its display name
    workload: Workload
    candidates: list[CandidateSummary] = Field(default_factory=list)
    dense_predicted: dict[str, float | None] = Field(default_factory=dict)  # the plan's dense projection
    dense_rates: dict[str, Any] | None = None  # the serving model's rates behind it (planner.perf.serving.Rates)
    max_ppl_increase: float | None = None  # the plan's quality budget


# -- one variant: dense or pruned ---------------------------------------------------------------------------


class Size(_Doc):
    parameters: int
    nonzero_parameters: int | None = None
    file_bytes: int | None = None  # safetensors bytes of the (exported) checkpoint
    compressed_file_bytes: int | None = None  # masked kinds: bytes of the lossless bitmask copy (compressed/)
    achieved_sparsity: float | None = None  # masked kinds: zeros / weights over the pruned linears
    pattern: str = "dense"  # "dense", "unstructured", "2:4", "mlp_channels", "heads", "layers"
    shape: dict[str, int] = Field(default_factory=dict)  # num_layers, intermediate_size, num_heads, num_kv_heads

    @property
    def checkpoint_bytes(self) -> int | None:
        """What the checkpoint-size goal is judged on: the smallest lossless copy the run wrote."""
        return self.compressed_file_bytes if self.compressed_file_bytes is not None else self.file_bytes


class PruningInfo(_Doc):
    spec: PruneSpec
    params_before: int
    params_after: int
    achieved_sparsity: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class QuantizationInfo(_Doc):
    """What `plan run` quantized: the scheme, the library and configuration that did it, how many weights."""

    spec: QuantSpec
    backend: str  # e.g. "torchao 0.18.0 Int8WeightOnlyConfig (AffineQuantizedTensor)"
    linears_quantized: int
    params_quantized: int
    dense_bytes: int  # the quantized layers' weights before, in memory
    quantized_bytes: int  # and after (scales included)
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)


class LossPoint(_Doc):
    step: int
    loss: float


class RecoveryInfo(_Doc):
    spec: RecoverySpec
    steps: int = 0
    tokens: int = 0
    loss_curve: list[LossPoint] = Field(default_factory=list)
    ppl_before: float | None = None  # held-out perplexity right after pruning
    ppl_after: float | None = None
    seconds: float = 0.0
    stopped_by: str | None = None  # "max_steps", "max_tokens", "max_minutes", "guard_minutes"

    @property
    def cut_short(self) -> bool:
        """A time limit stopped the run before the steps the plan asked for: not the plan's recovered model."""
        return self.stopped_by in ("guard_minutes", "max_minutes") and self.steps < self.spec.max_steps


class SliceAgreement(_Doc):
    """Agreement with the dense teacher on one prompt set, along the teacher's greedy continuation."""

    name: str
    source: Literal["bundled", "user"] = "bundled"
    prompts: int  # prompts compared
    skipped: int = 0  # prompts too long for the model's positions
    positions: int  # next-token distributions compared
    kl: float | None  # mean KL(teacher || model) per position, nats; None when no position was compared
    top1_agreement: float | None  # fraction of positions where the argmax tokens agree
    gold_prompts: int = 0  # prompts with a gold answer
    gold_correct: int = 0  # of those, how many this model answers correctly
    teacher_correct: int = 0  # of those, how many the dense teacher answers correctly
    exact_match_hits: int = 0  # of the teacher-correct ones, how many this model also gets right

    @computed_field
    @property
    def exact_match(self) -> float | None:
        """Exact match on the gold prompts the dense model gets right (None when there are none)."""
        return self.exact_match_hits / self.teacher_correct if self.teacher_correct else None


class Quality(_Doc):
    heldout_ppl: float = Field(gt=0)  # exp(mean NLL): positive by definition
    heldout_nll: float
    heldout_tokens: int = Field(ge=0)
    seq_len: int = Field(ge=1)
    user_text_ppl: float | None = Field(None, gt=0)
    user_text_tokens: int | None = Field(None, ge=0)
    slices: dict[str, SliceAgreement] = Field(default_factory=dict)
    # how this variant was evaluated when it did not fit in memory (--max-memory), and what was left out and why
    notes: list[str] = Field(default_factory=list)


Millis = Annotated[float, Field(ge=0)]  # a measured duration


class SparseKernels(_Doc):
    """How a 2:4 variant was served (planner.prune.masked.runtime.semi_structured_plan): the linears converted to
    semi-structured sparse tensors, the others with why not, and `fallback` when the model ran on dense kernels."""

    format: str = "2:4"
    device: str = ""  # the device or GPU name the decision was made for
    dtype: str = ""
    backend: str | None = None  # "cusparselt" or "cutlass"; None when nothing ran on sparse kernels
    converted: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # layer -> why it stayed dense
    fallback: str | None = None  # why the model ran on dense kernels (None: converted layers used sparse kernels)


class VllmBenchInfo(_Doc):
    """What vLLM's own serving benchmark (`vllm bench serve`) reported for this variant (planner.vllm_bench)."""

    vllm_version: str | None = None
    command: str = ""
    num_prompts: int = Field(ge=0)
    completed: int = Field(ge=0)
    request_rate: float | None = None  # requests/s; None: all at once
    max_concurrency: int | None = None
    duration_s: float = Field(ge=0)
    request_throughput: float = Field(ge=0)  # requests/s
    output_throughput: float = Field(ge=0)  # generated tokens/s
    percentiles: dict[str, dict[str, float]] = Field(default_factory=dict)  # ttft/tpot/itl/e2el -> mean/p50/p95/p99 ms


class Latency(_Doc):
    """Timed requests in the real runtime. Percentiles are computed over the recorded samples."""

    measured_on: str  # DeviceInfo.label
    runtime: str  # "hf-eager", "hf-compile", "vllm"
    dtype: str
    prompt_len: int = Field(ge=1)
    gen_len: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    warmup: int = Field(ge=0)
    samples_ms: list[Millis]  # end-to-end per request (one generate call of batch_size sequences)
    ttft_samples_ms: list[Millis] = Field(default_factory=list)  # prefill + first token
    tpot_samples_ms: list[Millis] = Field(default_factory=list)  # (end - first token) / (gen_len - 1)
    peak_memory_bytes: int | None = Field(None, ge=0)
    peak_memory_kind: str | None = None  # "process-peak-rss" (CPU), "cuda-max-allocated"
    sparse_kernels: SparseKernels | None = None  # 2:4 variants: which layers ran on sparse kernels, or why none did
    vllm_bench: VllmBenchInfo | None = None  # --runtime vllm: vLLM's own figures and version

    @computed_field
    @property
    def requests(self) -> int:
        return len(self.samples_ms)

    @computed_field
    @property
    def mean_ms(self) -> float | None:
        return sum(self.samples_ms) / len(self.samples_ms) if self.samples_ms else None

    @computed_field
    @property
    def p50_ms(self) -> float | None:
        return percentile(self.samples_ms, 50)

    @computed_field
    @property
    def p95_ms(self) -> float | None:
        return percentile(self.samples_ms, 95)

    @computed_field
    @property
    def p99_ms(self) -> float | None:
        return percentile(self.samples_ms, 99)

    @computed_field
    @property
    def ttft_p50_ms(self) -> float | None:
        return percentile(self.ttft_samples_ms, 50)

    @computed_field
    @property
    def ttft_p95_ms(self) -> float | None:
        return percentile(self.ttft_samples_ms, 95)

    @computed_field
    @property
    def tpot_p50_ms(self) -> float | None:
        return percentile(self.tpot_samples_ms, 50)

    @computed_field
    @property
    def tpot_p95_ms(self) -> float | None:
        return percentile(self.tpot_samples_ms, 95)

    @computed_field
    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens per second over all timed requests."""
        total_ms = sum(self.samples_ms)
        return self.batch_size * self.gen_len * len(self.samples_ms) / (total_ms / 1000) if total_ms else None


class LoadPoint(_Doc):
    """One variant at one offered request rate (`plan run --load`): every request timed from its arrival."""

    rate: float = Field(gt=0)  # offered, requests/s (Poisson)
    variant: str
    windows: list[list[float]] = Field(default_factory=list)  # each window's arrival offsets, s (same for variants)
    e2e_samples_ms: list[Millis]
    ttft_samples_ms: list[Millis] = Field(default_factory=list)
    tpot_samples_ms: list[Millis] = Field(default_factory=list)
    service_samples_ms: list[Millis] = Field(default_factory=list)  # from its batch's start to its last token
    busy_s: float = Field(ge=0)  # sum over windows of first arrival -> last response
    complete: bool = True  # False: stopped by the time limit (the samples are the requests that finished)
    note: str = ""

    @computed_field
    @property
    def p50_ms(self) -> float | None:
        return percentile(self.e2e_samples_ms, 50)

    @computed_field
    @property
    def p95_ms(self) -> float | None:
        return percentile(self.e2e_samples_ms, 95)

    @computed_field
    @property
    def p99_ms(self) -> float | None:
        return percentile(self.e2e_samples_ms, 99)

    @computed_field
    @property
    def ttft_p95_ms(self) -> float | None:
        return percentile(self.ttft_samples_ms, 95)

    @computed_field
    @property
    def tpot_p50_ms(self) -> float | None:
        return percentile(self.tpot_samples_ms, 50)

    @computed_field
    @property
    def achieved_rps(self) -> float | None:
        """Requests completed per second of window time."""
        return len(self.e2e_samples_ms) / self.busy_s if self.busy_s else None


class LoadResults(_Doc):
    """`plan run --load`: Poisson traffic to the model served in-process (planner.run.load), per variant and rate."""

    measured_on: str
    runtime: str  # the server's batching policy follows this runtime's profile (hf-eager: static batches)
    dtype: str
    prompt_len: int = Field(ge=1)
    gen_len: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    seed: int
    requests_per_window: int = Field(ge=1)
    windows_per_rate: int = Field(ge=1)
    time_limit_s: float = Field(gt=0)
    capacity_rps: dict[str, float]  # measured: requests/s a saturated server completes, per variant
    isolated_ms: dict[str, float]  # measured: one request alone, per variant
    rates: list[float]
    points: list[LoadPoint]


class TaskMetric(_Doc):
    """One lm-eval metric of a task: its value and standard error (None where lm-eval gives none)."""

    value: float
    stderr: float | None = None


class TaskScore(_Doc):
    """One lm-eval task's metrics; `primary` is the one the report and the gate read."""

    metrics: dict[str, TaskMetric]  # "acc", "acc_norm", "exact_match,first_word" (metric,filter) ...
    primary: str
    higher_is_better: bool = True
    samples: int = Field(ge=0)  # documents scored (--lm-eval-limit caps it)
    version: str | None = None  # the task's own version

    @property
    def value(self) -> float:
        return self.metrics[self.primary].value

    @property
    def stderr(self) -> float | None:
        return self.metrics[self.primary].stderr


class LmEvalScores(_Doc):
    """lm-evaluation-harness task scores of one variant (`plan run --lm-eval-tasks`)."""

    lm_eval_version: str
    backend: Literal["hf", "vllm"] = "hf"
    limit: int | None = None
    num_fewshot: int = 0
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    seconds: float = 0.0


class Variant(_Doc):
    name: str  # "dense", "candidate-1", ...
    role: Literal["dense", "pruned"]  # "pruned": any candidate (pruned, quantized, or both), beside the dense baseline
    candidate_rank: int | None = None  # PlanSummary.candidates[...].rank; None for dense
    checkpoint: str | None = None  # folder of the (exported) checkpoint
    size: Size
    pruning: PruningInfo | None = None
    recovery: RecoveryInfo | None = None
    quantization: QuantizationInfo | None = None
    quality: Quality | None = None
    latency: Latency | None = None
    lm_eval: LmEvalScores | None = None  # --lm-eval-tasks: lm-evaluation-harness task scores

    def goal_value(self, metric: str) -> float | None:
        """The measured figure a goal is judged on (planner.goals), None where it was not measured."""
        if metric == "file_bytes":
            return self.size.checkpoint_bytes
        return getattr(self.latency, metric) if self.latency is not None else None


class StageTiming(_Doc):
    name: str  # "load", "prune:candidate-1", "latency", ...
    seconds: float
    status: Literal["done", "resumed"] = "done"  # resumed: read from a finished stage of an earlier run


class CandidateFailure(_Doc):
    """A candidate of a sweep whose stages stopped with an error; the other candidates ran on (`plan run --all K`).
    `plan run --resume` retries it from its first unfinished stage."""

    rank: int  # PlanSummary.candidates[...].rank
    name: str = ""
    label: str = ""
    stage: str  # the stage that raised, e.g. "recover:2"
    error_type: str  # the exception's class, e.g. "RuntimeError", "OutOfMemoryError"
    message: str
    traceback: str = ""  # the end of the traceback, for whoever debugs it (not shown in the report)

    @property
    def error(self) -> str:
        return f"{self.error_type}: {self.message}" if self.message else self.error_type


class SpeedupCheck(_Doc):
    """Predicted (projected to the target GPU) against measured (on this device) for the goal metric."""

    variant: str
    goal: str
    metric: str
    dense_measured: float | None
    pruned_measured: float | None
    predicted: float | None  # x times better, projected to PlanSummary.gpu
    measured: float | None  # x times better, measured on Provenance.device


class Results(_Doc):
    version: int = SCHEMA_VERSION
    provenance: Provenance
    plan: PlanSummary
    variants: list[Variant]
    stages: list[StageTiming] = Field(default_factory=list)
    load: LoadResults | None = None  # `plan run --load`: latency under traffic, per variant and request rate
    failures: list[CandidateFailure] = Field(default_factory=list)  # candidates that stopped with an error

    @model_validator(mode="after")
    def _check(self) -> "Results":
        if self.version != SCHEMA_VERSION:
            raise ValueError(f"results version {self.version} is not supported (accepted: {SCHEMA_VERSION})")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        both = {v.candidate_rank for v in self.variants} & {f.rank for f in self.failures}
        if both:
            raise ValueError(f"candidates {sorted(both)} are recorded both as a variant and as a failure")
        return self

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r} (have: {', '.join(v.name for v in self.variants)})")

    @property
    def dense(self) -> Variant | None:
        return next((v for v in self.variants if v.role == "dense"), None)

    @computed_field
    @property
    def speedups(self) -> list[SpeedupCheck]:
        """One row per pruned variant: the goal metric, predicted against measured."""
        from planner.goals import goal_spec, speedup

        goal = self.plan.goal
        if self.dense is None:
            return []
        spec = goal_spec(goal)
        metric = spec.measured or spec.predicted  # a goal no run measures: rows with the prediction only
        dense_value = self.dense.goal_value(metric) if spec.measured else None
        by_rank = {c.rank: c for c in self.plan.candidates}
        rows = []
        for v in self.variants:
            if v.role != "pruned":
                continue
            value = v.goal_value(metric) if spec.measured else None
            measured = speedup(dense_value, value, metric)
            cand = by_rank.get(v.candidate_rank)
            rows.append(SpeedupCheck(variant=v.name, goal=goal, metric=metric, dense_measured=dense_value,
                                     pruned_measured=value, predicted=cand.predicted_speedup if cand else None,
                                     measured=measured))
        return rows


# -- files ------------------------------------------------------------------------------------------------------


def load_results(path: str | Path) -> Results:
    """Read results.json; a missing, corrupt, hand-edited or unknown-version file is an InputError naming it."""
    from planner.documents import load_validated

    return load_validated(path, Results, "results file", invalid=" is not a valid results document", syntax="json")


def save_results(results: Results, path: str | Path, scratch: str | Path | None = None) -> Path:
    """Write results.json atomically (temporary file + rename)."""
    return write_atomic(path, results.model_dump_json(indent=2), what="results", scratch=scratch)
