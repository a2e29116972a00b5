"""Workload and goal: what the deployment serves and what it must get better at."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InputError, did_you_mean


class Goal(str, Enum):
    """The deployment goals a plan can target (see DESIGN.md)."""

    P50_LATENCY = "p50-latency"
    P95_LATENCY = "p95-latency"
    P99_LATENCY = "p99-latency"
    TTFT = "ttft"  # time to first token
    TPOT = "tpot"  # time per output token
    THROUGHPUT = "throughput"
    PEAK_MEMORY = "peak-memory"  # also "fit on a smaller GPU" with --fit-gpu
    CHECKPOINT_SIZE = "checkpoint-size"
    KV_CAPACITY = "kv-capacity"
    COST_PER_TOKEN = "cost-per-token"

    @property
    def is_latency(self) -> bool:
        return self in (Goal.P50_LATENCY, Goal.P95_LATENCY, Goal.P99_LATENCY, Goal.TTFT, Goal.TPOT)


GOAL_ALIASES = {
    "latency": Goal.P95_LATENCY,
    "p50": Goal.P50_LATENCY,
    "p95": Goal.P95_LATENCY,
    "p99": Goal.P99_LATENCY,
    "time-to-first-token": Goal.TTFT,
    "time-per-output-token": Goal.TPOT,
    "memory": Goal.PEAK_MEMORY,
    "fit": Goal.PEAK_MEMORY,
    "size": Goal.CHECKPOINT_SIZE,
    "cost": Goal.COST_PER_TOKEN,
    "kv-cache-capacity": Goal.KV_CAPACITY,
}


def parse_goal(value: str) -> Goal:
    key = value.strip().lower().replace("_", "-")
    for goal in Goal:
        if goal.value == key:
            return goal
    if key in GOAL_ALIASES:
        return GOAL_ALIASES[key]
    raise InputError(did_you_mean(value, [g.value for g in Goal] + list(GOAL_ALIASES), "goal"))


DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}


class Workload(BaseModel):
    """What one deployment serves. Times of work outside the model are per request, in milliseconds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or inf would be written as null
    version: int = 1
    prompt_len: int = Field(512, ge=1, le=1_048_576, description="prompt tokens per request")
    gen_len: int = Field(128, ge=1, le=1_048_576, description="generated tokens per request")
    batch_size: int = Field(1, ge=1, le=65_536)
    concurrency: int = Field(1, ge=1, le=65_536, description="requests in flight")
    dtype: str = Field("bf16", description="serving dtype on the target GPU: " + ", ".join(DTYPES))
    # outside-the-model time per request; when these dominate, pruning the model cannot meet a latency goal
    queueing_ms: float = Field(0.0, ge=0)
    tokenization_ms: float = Field(0.0, ge=0)
    network_ms: float = Field(0.0, ge=0)
    runtime: str | None = Field(None, description="serving runtime (profiles/runtimes/); None: the target's default")
    # traffic (planner.perf.traffic): Poisson arrivals at request_rate, or a trace file of arrival times and lengths
    request_rate: float | None = Field(None, description="requests per second, Poisson arrivals")
    trace: str | None = Field(None, description="file of arrival_s[,prompt_len[,gen_len]] per request")
    p95_target_ms: float | None = Field(None, description="p95 latency target under the traffic, ms (capacity)")

    def model_post_init(self, __context) -> None:
        if self.dtype not in DTYPES:
            raise InputError(did_you_mean(self.dtype, DTYPES, "dtype"))
        if self.runtime is not None:
            from planner.perf.runtimes import get_runtime

            self.runtime = get_runtime(self.runtime).id  # an alias becomes the id; unknown names are bad input
        if self.request_rate is not None or self.trace is not None or self.p95_target_ms is not None:
            self._check_traffic()

    def _check_traffic(self) -> None:
        from planner.perf.arrivals import check_rate, load_trace

        if self.request_rate is not None:
            check_rate(self.request_rate)
        if self.p95_target_ms is not None:
            check_rate(self.p95_target_ms, "p95 target", "a latency > 0 ms")
        if self.request_rate is not None and self.trace is not None:
            raise InputError("--request-rate and --trace both set; accepted: one of them (a trace has its own "
                             "arrival times)")
        if self.trace is not None:
            load_trace(self.trace, self.prompt_len, self.gen_len)  # unreadable, negative times: bad input now

    @property
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def non_model_ms(self) -> float:
        return self.queueing_ms + self.tokenization_ms + self.network_ms


class QualityBudget(BaseModel):
    """How much quality the user will trade."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or inf would be written as null
    max_ppl_increase: float = Field(0.10, ge=0, description="relative held-out perplexity increase, 0.10 = +10%")
    max_kl: float | None = Field(None, ge=0)


def require_positions(prompt_len: int, gen_len: int, max_positions: int | None, fix: str) -> None:
    """A request the model cannot hold (prompt + generated tokens over its positions) is bad input; `fix` says
    which option to change. Models that do not state a limit pass."""
    if max_positions and prompt_len + gen_len > max_positions:
        raise InputError(f"prompt_len {prompt_len} + gen_len {gen_len} exceeds the model's max_position_embeddings "
                         f"{max_positions}; {fix}")
