"""Tail latency under traffic: a seeded discrete-event simulation over the serving model's per-step times.

The serving model (planner.perf.serving) projects one prefill and one decode step at a given batch. Under traffic the
batch is whatever the scheduler forms from the requests waiting, so this module asks the step model for the time of
a prefill of k requests and a decode step of n sequences, at every k and n the traffic produces, and runs the queue:

    steps = StepModel(project, workload)          # project(workload) -> RooflineEstimate (the plan's estimator)
    policy = policy_for(runtime, workload)        # continuous batching (vllm, tensorrt-llm) or static batches (hf)
    result = simulate(poisson_arrivals(rate, n, seed), steps, policy)
    result.p95_ms, result.ttft_p95_ms, result.mean_decode_batch, result.tokens_per_s

What it assumes (stated in every projection made with it):

- **static batches** (hf-eager, hf-compile: one `generate()` at a time): the server takes up to `batch_size` waiting
  requests, first come first served, prefills them together and decodes until the longest is done; all of them
  return at the end of the call. At batch 1 this is an M/D/1 queue (Poisson arrivals, one deterministic server).
- **continuous batching** (vllm, tensorrt-llm: iteration-level scheduling, Orca / vLLM v0 default): between decode
  steps newly arrived requests are admitted up to the runtime's `max_num_seqs`; their prefill runs as one step of
  its own while the running sequences wait (prefill first, no chunked prefill), then every running sequence decodes
  one token per step; a sequence leaves as soon as its last token is out.
- a request is one sequence of `prompt_len` tokens that generates `gen_len` tokens; its first token comes out of
  the prefill, its TPOT is (finish - first token) / gen_len, as in the isolated projection (prefill + gen_len steps).
- a step's time depends only on its batch (decode at the workload's mean context); memory is not a limit (the
  plan's fit rules judge that); time outside the model (`non_model_ms`) is added to every request after the queue.

Arrivals are seeded: the same seed gives the same requests, and every rate scales the same unit-rate gaps (common
random numbers), so p95 rises monotonically with the rate and the capacity bisection is stable.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from planner.perf.arrivals import DEFAULT_SEED, Request, load_trace, poisson_arrivals
from planner.stats import percentile

DEFAULT_REQUESTS = 1000  # simulated requests per open-loop projection
CAPACITY_REQUESTS = 400  # per bisection step
DEFAULT_TARGET_FACTOR = 2.0  # capacity target when none is given: p95 at most twice the isolated request
BATCH_GRID = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Policy:
    """How the runtime forms batches (from its profile YAML): continuous (iteration-level) or static."""

    continuous: bool
    max_batch: int
    runtime: str = ""

    @property
    def text(self) -> str:
        if self.continuous:
            return (f"{self.runtime}: continuous batching, up to {self.max_batch} sequences per step (max_num_seqs), "
                    "prefill of newly admitted requests as its own step, then one decode step for all")
        return (f"{self.runtime}: static batches of up to {self.max_batch} request(s), first come first served, "
                "each batch prefilled and decoded to its end before the next starts")


def policy_for(runtime_spec, workload) -> Policy:
    """The runtime profile's scheduler: continuous batching up to max_num_seqs, else static batches of batch_size."""
    if runtime_spec is not None and runtime_spec.continuous_batching:
        seqs = getattr(runtime_spec, "max_num_seqs", None) or 256
        return Policy(True, max(seqs, workload.batch_size), runtime_spec.id)
    return Policy(False, workload.batch_size, runtime_spec.id if runtime_spec is not None else "roofline")


class StepModel:
    """Per-step times (ms) from the serving model at any batch: exact on BATCH_GRID, linear in between.

    `project(workload)` returns the RooflineEstimate of the model for that workload (the planner's estimator bound to
    the shape, kernels and rates being judged); it is asked with concurrency 1, so the batch is exactly the one given.
    """

    def __init__(self, project: Callable, workload):
        self.project = project
        self.workload = workload
        self._prefill: dict[tuple[int, int], float] = {}
        self._decode: dict[int, float] = {}

    def _estimate(self, batch: int, prompt_len: int):
        wl = self.workload.model_copy(update={"batch_size": batch, "concurrency": 1, "prompt_len": prompt_len})
        return self.project(wl)

    def _fill(self, batch: int, prompt_len: int) -> None:
        est = self._estimate(batch, prompt_len)
        self._prefill[(batch, prompt_len)] = float(est.prefill_ms)
        if prompt_len == self.workload.prompt_len:
            self._decode[batch] = float(est.decode_ms_per_token)

    def _grid_value(self, batch: int, table: Callable[[int], float]) -> float:
        if batch in BATCH_GRID or batch > BATCH_GRID[-1]:
            return table(batch)
        i = bisect.bisect_left(BATCH_GRID, batch)
        lo, hi = BATCH_GRID[i - 1], BATCH_GRID[i]
        a, b = table(lo), table(hi)
        return a + (b - a) * (batch - lo) / (hi - lo)

    def prefill_ms(self, batch: int, prompt_len: int | None = None) -> float:
        p = prompt_len or self.workload.prompt_len

        def at(b: int) -> float:
            if (b, p) not in self._prefill:
                self._fill(b, p)
            return self._prefill[(b, p)]

        return self._grid_value(batch, at)

    def decode_ms(self, batch: int) -> float:
        p = self.workload.prompt_len

        def at(b: int) -> float:
            if b not in self._decode:
                self._fill(b, p)
            return self._decode[b]

        return self._grid_value(batch, at)

    def isolated_ms(self, prompt_len: int | None = None, gen_len: int | None = None) -> float:
        """One request alone: prefill at batch 1 plus gen_len decode steps at batch 1."""
        return self.prefill_ms(1, prompt_len) + (gen_len or self.workload.gen_len) * self.decode_ms(1)


@dataclass
class SimResult:
    """Per-request times of one simulation (ms) and what the server did."""

    e2e_ms: list[float]
    ttft_ms: list[float]
    tpot_ms: list[float]
    span_s: float  # first arrival to last completion
    busy_s: float  # time the server was running a step
    generated_tokens: int
    decode_steps: int
    decode_sequence_steps: int  # sum over decode steps of the sequences in the step
    max_batch_seen: int
    extra_ms: float = 0.0  # outside the model, added to every e2e percentile

    def percentile(self, q: float) -> float | None:
        value = percentile(self.e2e_ms, q)
        return None if value is None else value + self.extra_ms

    @property
    def p50_ms(self) -> float | None:
        return self.percentile(50)

    @property
    def p95_ms(self) -> float | None:
        return self.percentile(95)

    @property
    def p99_ms(self) -> float | None:
        return self.percentile(99)

    @property
    def ttft_p50_ms(self) -> float | None:
        return percentile(self.ttft_ms, 50)

    @property
    def ttft_p95_ms(self) -> float | None:
        return percentile(self.ttft_ms, 95)

    @property
    def tpot_p50_ms(self) -> float | None:
        return percentile(self.tpot_ms, 50)

    @property
    def tpot_p95_ms(self) -> float | None:
        return percentile(self.tpot_ms, 95)

    @property
    def tokens_per_s(self) -> float | None:
        return self.generated_tokens / self.span_s if self.span_s > 0 else None

    @property
    def requests_per_s(self) -> float | None:
        return len(self.e2e_ms) / self.span_s if self.span_s > 0 else None

    @property
    def mean_decode_batch(self) -> float | None:
        """Sequences per decode step, averaged over the steps: the batch the traffic produces."""
        return self.decode_sequence_steps / self.decode_steps if self.decode_steps else None

    @property
    def utilization(self) -> float | None:
        return self.busy_s / self.span_s if self.span_s > 0 else None


# -- the simulation ------------------------------------------------------------------------------------------------


@dataclass
class _Clock:
    t: float = 0.0
    busy: float = 0.0
    steps: int = 0
    seq_steps: int = 0
    max_batch: int = 0
    done: list = field(default_factory=list)  # (request, first token s, finish s)


def simulate(requests: Sequence[Request] | None, steps: StepModel, policy: Policy, *, clients: int = 0,
             total: int = 0, extra_ms: float = 0.0) -> SimResult:
    """Run the queue. Open loop: `requests` (arrival times and lengths). Closed loop (`requests` None): `clients`
    users each send the workload's request, and the next one as soon as theirs returns, until `total` are done."""
    if requests is None:
        if clients < 1 or total < 1:
            raise ValueError("a closed-loop simulation needs clients >= 1 and total >= 1")
        wl = steps.workload
        pending = [(0.0, i, Request(0.0, wl.prompt_len, wl.gen_len)) for i in range(min(clients, total))]
        budget = total - len(pending)
    else:
        pending = [(r.arrival_s, i, r) for i, r in enumerate(requests)]
        budget = 0
    heapq.heapify(pending)
    clock = _Clock()
    counter = [len(pending)]

    def complete(req: Request, first: float, finish: float) -> None:
        nonlocal budget
        clock.done.append((req, first, finish))
        if budget > 0:  # closed loop: this client sends its next request now
            budget -= 1
            counter[0] += 1
            heapq.heappush(pending, (finish, counter[0], Request(finish, req.prompt_len, req.gen_len)))

    run = _continuous if policy.continuous else _static
    run(pending, steps, policy, clock, complete)
    return _result(clock, extra_ms)


def _admit(pending: list, waiting: deque, t: float) -> None:
    while pending and pending[0][0] <= t + 1e-12:
        waiting.append(heapq.heappop(pending)[2])


def _static(pending, steps: StepModel, policy: Policy, clock: _Clock, complete) -> None:
    waiting: deque = deque()
    while pending or waiting:
        if not waiting:
            clock.t = max(clock.t, pending[0][0])
        _admit(pending, waiting, clock.t)
        batch = [waiting.popleft() for _ in range(min(policy.max_batch, len(waiting)))]
        n = len(batch)
        prefill = steps.prefill_ms(n, max(r.prompt_len for r in batch)) / 1e3
        longest = max(r.gen_len for r in batch)
        decode = steps.decode_ms(n) / 1e3
        first = clock.t + prefill
        clock.busy += prefill + longest * decode
        clock.steps += longest
        clock.seq_steps += longest * n
        clock.max_batch = max(clock.max_batch, n)
        clock.t = first + longest * decode
        for r in batch:  # generate() returns the whole batch at once
            complete(r, first, clock.t)


def _continuous(pending, steps: StepModel, policy: Policy, clock: _Clock, complete) -> None:
    waiting: deque = deque()
    running: list = []  # heap of (decode step at which the sequence is done, order, request, first token s)
    done_steps = order = 0
    while pending or waiting or running:
        _admit(pending, waiting, clock.t)
        if waiting and len(running) < policy.max_batch:
            new = [waiting.popleft() for _ in range(min(len(waiting), policy.max_batch - len(running)))]
            prefill = steps.prefill_ms(len(new), max(r.prompt_len for r in new)) / 1e3
            clock.t += prefill
            clock.busy += prefill
            for r in new:
                order += 1
                heapq.heappush(running, (done_steps + r.gen_len, order, r, clock.t))
            continue
        if not running:
            clock.t = max(clock.t, pending[0][0])
            continue
        n = len(running)
        d = steps.decode_ms(n) / 1e3
        k = running[0][0] - done_steps
        if pending and n < policy.max_batch and d > 0:  # stop at the step boundary after the next arrival
            k = min(k, max(1, math.ceil((pending[0][0] - clock.t) / d - 1e-9)))
        clock.t += k * d
        clock.busy += k * d
        clock.steps += k
        clock.seq_steps += k * n
        clock.max_batch = max(clock.max_batch, n)
        done_steps += k
        while running and running[0][0] <= done_steps:
            _, _, r, first = heapq.heappop(running)
            complete(r, first, clock.t)


def _result(clock: _Clock, extra_ms: float) -> SimResult:
    e2e, ttft, tpot = [], [], []
    tokens = 0
    first_arrival = min((r.arrival_s for r, _, _ in clock.done), default=0.0)
    last = max((f for _, _, f in clock.done), default=0.0)
    for r, first, finish in clock.done:
        e2e.append((finish - r.arrival_s) * 1e3)
        ttft.append((first - r.arrival_s) * 1e3)
        tpot.append((finish - first) * 1e3 / r.gen_len)
        tokens += r.gen_len
    return SimResult(e2e_ms=e2e, ttft_ms=ttft, tpot_ms=tpot, span_s=last - first_arrival, busy_s=clock.busy,
                     generated_tokens=tokens, decode_steps=clock.steps, decode_sequence_steps=clock.seq_steps,
                     max_batch_seen=clock.max_batch, extra_ms=extra_ms)


# -- figures for a plan ----------------------------------------------------------------------------------------------


def saturation_rps(steps: StepModel, policy: Policy, requests: int = 200) -> float:
    """The most requests per second the server completes: a closed loop that keeps its largest batch full."""
    clients = policy.max_batch if policy.continuous else policy.max_batch * 2
    result = simulate(None, steps, policy, clients=clients, total=max(requests, 4 * clients))
    return result.requests_per_s or 0.0


def p95_at(rate: float, steps: StepModel, policy: Policy, *, requests: int = DEFAULT_REQUESTS,
           seed: int = DEFAULT_SEED, extra_ms: float = 0.0) -> SimResult:
    wl = steps.workload
    return simulate(poisson_arrivals(rate, requests, wl.prompt_len, wl.gen_len, seed), steps, policy,
                    extra_ms=extra_ms)


def capacity_rps(target_ms: float, steps: StepModel, policy: Policy, *, saturation: float | None = None,
                 requests: int = CAPACITY_REQUESTS, seed: int = DEFAULT_SEED, extra_ms: float = 0.0) -> float:
    """The request rate at which the simulated p95 reaches `target_ms` (bisection on the rate; 0 when even a lone
    request misses it)."""
    if steps.isolated_ms() + extra_ms > target_ms:
        return 0.0
    hi = saturation if saturation is not None else saturation_rps(steps, policy)
    lo = 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if p95_at(mid, steps, policy, requests=requests, seed=seed, extra_ms=extra_ms).p95_ms <= target_ms:
            lo = mid
        else:
            hi = mid
    return lo


def has_traffic(workload) -> bool:
    return bool(getattr(workload, "request_rate", None) or getattr(workload, "trace", None)
                or workload.concurrency > 1)


def traffic_figures(project: Callable, workload, runtime_spec) -> tuple[dict, list[str]]:
    """The goal figures under the workload's traffic, and how they were projected.

    With `request_rate` or `trace`: an open loop (Poisson arrivals at the rate, or the trace's arrivals). Without,
    but `concurrency` > 1: a closed loop of that many users, each sending the next request when theirs returns."""
    steps = StepModel(project, workload)
    policy = policy_for(runtime_spec, workload)
    extra = workload.non_model_ms
    isolated_ms = steps.isolated_ms()
    sat = saturation_rps(steps, policy)
    notes = [f"queueing model: seeded discrete-event simulation over the serving model's per-step times; "
             f"{policy.text}"]
    if workload.trace:
        requests = load_trace(workload.trace, workload.prompt_len, workload.gen_len)
        result = simulate(requests, steps, policy, extra_ms=extra)
        notes.append(f"traffic: {len(requests)} requests of trace {workload.trace}")
        rate = len(requests) / max(requests[-1].arrival_s, 1e-9)
    elif workload.request_rate:
        rate = workload.request_rate
        result = p95_at(rate, steps, policy, extra_ms=extra)
        notes.append(f"traffic: Poisson arrivals at {rate:g} req/s, {DEFAULT_REQUESTS} requests, seed {DEFAULT_SEED}")
        if rate >= sat:
            notes.append(f"{rate:g} req/s is at or above the projected saturation ({sat:.3g} req/s): the queue grows "
                         f"without bound, and the percentiles are those of the first {DEFAULT_REQUESTS} requests")
    else:
        rate = None
        result = simulate(None, steps, policy, clients=workload.concurrency,
                          total=max(200, 10 * workload.concurrency), extra_ms=extra)
        notes.append(f"traffic: closed loop of {workload.concurrency} users, each sending its next request when "
                     "the last returns")
    target = getattr(workload, "p95_target_ms", None) or DEFAULT_TARGET_FACTOR * (isolated_ms + extra)
    capacity = capacity_rps(target, steps, policy, saturation=sat, extra_ms=extra)
    out = {
        "p50_ms": result.p50_ms, "p95_ms": result.p95_ms, "p99_ms": result.p99_ms,
        "traffic_ttft_p50_ms": result.ttft_p50_ms, "traffic_ttft_p95_ms": result.ttft_p95_ms,
        "traffic_tpot_p50_ms": result.tpot_p50_ms, "traffic_tpot_p95_ms": result.tpot_p95_ms,
        "tokens_per_s": result.tokens_per_s, "traffic_batch": result.mean_decode_batch,
        "traffic_utilization": result.utilization, "request_rate": rate,
        "saturation_rps": sat, "capacity_rps": capacity, "capacity_target_ms": target,
        "isolated_p50_ms": isolated_ms + extra,
    }
    return out, notes
