"""`plan run --load`: Poisson traffic against the model served in-process, dense and candidate in alternating windows.

    server = BatchServer(model, max_batch=1, gen_len=16)        # a thread: static batches, hf-eager's policy
    with server:                                               # started here, always stopped and joined on exit
        window = send_window(server, prompt, offsets_s, time_limit_s=300)

The server is a thread that runs `generate()` on the loaded HF model: it takes up to `max_batch` waiting requests
(first come, first served), prefills and decodes them together to the end, and returns them all (the static batching
of the hf-eager profile; planner.perf.traffic projects the same policy). The load generator sends requests at seeded
Poisson arrival times, a bounded number per window, under a time limit, and times each request from its arrival to
its last token (its first token timestamped by a streamer).

Windows: for each rate, every variant is served the same arrival offsets (common random numbers), and the variants
take turns window by window (A B, B A, ...) so a slow drift of the machine lands on both. Each window starts from an
idle server and ends when its last request returns. "auto" rates are a low rate, 70% and 95% of the dense model's
measured capacity: the request rate a saturated server completes (a burst of requests sent at once).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from planner.errors import InputError

AUTO_FRACTIONS = (0.25, 0.7, 0.95)  # of the dense model's measured capacity
DEFAULT_REQUESTS = 24  # per variant and rate, over all its windows
DEFAULT_WINDOWS = 2  # per variant and rate
DEFAULT_TIME_LIMIT_S = 900.0  # per rate, all variants and windows together
BURST_ROUNDS = 3  # a capacity burst sends max_batch x this many requests at once


def parse_rates(text: str | None) -> list[float] | str | None:
    """'auto' or a comma-separated list of request rates > 0; bad input names the value."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    rates = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise InputError(f"--load {text!r}: {part.strip()!r} is not a request rate; accepted: 'auto' or rates > 0 "
                             "in requests/s separated by commas, e.g. 0.1,0.2,0.3")
        rates.append(value)
    return rates


@dataclass
class Pending:
    """One request in flight: when it arrived, and when its first and last tokens came out (perf_counter s)."""

    ids: Any
    arrival: float
    start: float | None = None  # its batch began (service time = finish - start)
    first: float | None = None
    finish: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _BatchClock:
    """generate() streamer for a batch: the first put is the prompt, the second the first token of every row."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class BatchServer:
    """A thread serving a queue of requests with static batches; a context manager that always stops and joins it."""

    def __init__(self, model, *, max_batch: int, gen_len: int, pad_token_id: int):
        self.model = model
        self.max_batch = max_batch
        self.gen_len = gen_len
        self.pad = pad_token_id
        self.inbox: queue.Queue[Pending] = queue.Queue()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        import torch

        self.threads = torch.get_num_threads()  # OpenMP's setting is per thread: the server inherits the caller's
        self.thread = threading.Thread(target=self._serve, name="planner-load-server", daemon=True)

    def __enter__(self) -> "BatchServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop taking requests and join the thread (it finishes the batch it is running, then exits)."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()

    def submit(self, ids) -> Pending:
        item = Pending(ids=ids, arrival=time.perf_counter())
        self.inbox.put(item)
        return item

    def _serve(self) -> None:
        try:
            import torch

            torch.set_num_threads(self.threads)
            while not self.stop_event.is_set():
                try:
                    first = self.inbox.get(timeout=0.02)
                except queue.Empty:
                    continue
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                self._run(batch)
        except BaseException as exc:  # surfaced by the load generator; the thread ends either way
            self.error = exc
            self.stop_event.set()

    def _run(self, batch: list[Pending]) -> None:
        import torch

        ids = torch.cat([p.ids for p in batch], dim=0)
        clock = _BatchClock()
        begin = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.gen_len,
                                      min_new_tokens=self.gen_len, do_sample=False, num_beams=1, streamer=clock,
                                      pad_token_id=self.pad, temperature=None, top_p=None, top_k=None)
        end = time.perf_counter()
        if out.shape[1] - ids.shape[1] != self.gen_len:
            raise RuntimeError(f"generate produced {out.shape[1] - ids.shape[1]} tokens, expected {self.gen_len}")
        first = clock.times[1] if len(clock.times) > 1 else end
        for p in batch:
            p.start, p.first, p.finish = begin, first, end
            p.done.set()


@dataclass
class Window:
    """What one window measured: per-request times (ms) and whether it finished inside its time limit."""

    offsets_s: list[float]
    e2e_ms: list[float]
    ttft_ms: list[float]
    tpot_ms: list[float]
    service_ms: list[float]
    span_s: float
    complete: bool
    note: str = ""


def send_window(server: BatchServer, prompt, offsets_s: list[float], *, gen_len: int, deadline: float) -> Window:
    """Send one request at each offset (s after the window starts), wait for all of them; stop at `deadline`
    (perf_counter s), keeping what finished."""
    start = time.perf_counter()
    sent: list[Pending] = []
    complete, note = True, ""
    for offset in offsets_s:
        when = start + offset
        if when > deadline:
            complete, note = False, "time limit reached while sending"
            break
        delay = when - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if server.error is not None:
            break
        sent.append(server.submit(prompt))
    for p in sent:
        while complete and not p.done.wait(timeout=0.1):
            _raise(server)
            if time.perf_counter() > deadline:
                complete, note = False, "time limit reached while waiting for responses"
        if not complete:
            break
    _raise(server)
    done = [p for p in sent if p.done.is_set()]
    e2e = [(p.finish - p.arrival) * 1e3 for p in done]
    ttft = [(p.first - p.arrival) * 1e3 for p in done]
    tpot = [(p.finish - p.first) * 1e3 / gen_len for p in done]
    service = [(p.finish - p.start) * 1e3 for p in done]
    span = (max((p.finish for p in done), default=start) - start)
    return Window(offsets_s=list(offsets_s[:len(sent)]), e2e_ms=e2e, ttft_ms=ttft, tpot_ms=tpot, service_ms=service, span_s=span,
                  complete=complete and len(done) == len(offsets_s), note=note)


def measure_capacity(model, prompt, *, max_batch: int, gen_len: int, pad: int) -> tuple[float, float]:
    """(requests/s a saturated server completes, ms of one request alone), measured: one request alone, then
    max_batch x BURST_ROUNDS requests sent at once."""
    with BatchServer(model, max_batch=max_batch, gen_len=gen_len, pad_token_id=pad) as server:
        alone = server.submit(prompt)
        alone.done.wait()
        _raise(server)
        isolated_ms = (alone.finish - alone.arrival) * 1e3
        start = time.perf_counter()
        burst = [server.submit(prompt) for _ in range(max_batch * BURST_ROUNDS)]
        for p in burst:
            while not p.done.wait(timeout=0.1):
                _raise(server)
        _raise(server)
        makespan = max(p.finish for p in burst) - start
    return len(burst) / makespan, isolated_ms


def _raise(server: BatchServer) -> None:
    if server.error is not None:
        raise RuntimeError(f"the load server failed: {type(server.error).__name__}: {server.error}")


def window_offsets(rate: float, n: int, seed: int) -> list[float]:
    """n seeded Poisson arrival offsets (s) at `rate`, the first one at 0 (the window starts with a request)."""
    from planner.perf.arrivals import unit_gaps

    t, out = 0.0, []
    for i, gap in enumerate(unit_gaps(n, seed)):
        t += 0.0 if i == 0 else gap / rate
        out.append(t)
    return out


def run_load(subjects: dict[str, Any], tokenizer, *, rates, prompt_len: int, gen_len: int, max_batch: int = 1,
             requests: int = DEFAULT_REQUESTS, windows: int = DEFAULT_WINDOWS,
             time_limit_s: float = DEFAULT_TIME_LIMIT_S, seed: int = 0, measured_on: str = "", dtype: str = "fp32",
             progress: bool = True) -> dict:
    """Measure every variant (name -> loaded model; the first is the baseline) at every rate; returns the fields of
    planner.run.results.LoadResults."""
    from planner.latency import pad_id, prompt_ids
    from planner.console import say

    if requests < windows or windows < 1:
        raise InputError(f"--load-requests {requests} must be at least the number of windows ({windows})")
    names = list(subjects)
    vocab = min(getattr(m.config, "vocab_size", 1 << 30) for m in subjects.values())
    prompt = prompt_ids(tokenizer, prompt_len, 1, vocab)
    capacity, isolated = {}, {}
    for name, model in subjects.items():
        time_one(model, prompt, gen_len, pad_id(model))  # warm-up, untimed
        capacity[name], isolated[name] = measure_capacity(model, prompt, max_batch=max_batch, gen_len=gen_len,
                                                          pad=pad_id(model))
        say(f"  load: {name} alone {isolated[name]:,.0f} ms, capacity {capacity[name]:.3g} req/s "
            f"(measured, burst of {max_batch * BURST_ROUNDS})", progress)
    base = names[0]
    if rates == "auto":
        rates = [round(f * capacity[base], 4) for f in AUTO_FRACTIONS]
    too_fast = [r for r in rates if r >= capacity[base]]
    if too_fast:
        raise InputError(f"--load rate {too_fast[0]:g} req/s is more than this machine sustains for {base}: its "
                         f"measured capacity is {capacity[base]:.3g} req/s (a request alone takes "
                         f"{isolated[base]:,.0f} ms), so the queue would grow for the whole window; accepted: rates "
                         f"below {capacity[base]:.3g} req/s, or 'auto'")
    per_window = max(1, requests // windows)
    points = []
    for ri, rate in enumerate(rates):
        deadline = time.perf_counter() + time_limit_s
        by_variant: dict[str, list[Window]] = {n: [] for n in names}
        stopped = ""
        for w in range(windows):
            offsets = window_offsets(rate, per_window, seed + 1000 * ri + w)
            for name in (names if w % 2 == 0 else names[::-1]):
                model = subjects[name]
                with BatchServer(model, max_batch=max_batch, gen_len=gen_len, pad_token_id=pad_id(model)) as server:
                    window = send_window(server, prompt, offsets, gen_len=gen_len, deadline=deadline)
                by_variant[name].append(window)
                if not window.complete:
                    stopped = (f"rate {rate:g} req/s stopped by the time limit ({time_limit_s:g} s): {window.note}; "
                               "the figures hold the requests that finished")
                    break
            if stopped:
                break
        for name in names:
            ws = by_variant[name]
            points.append(dict(rate=rate, variant=name, windows=[w.offsets_s for w in ws],
                               e2e_samples_ms=[x for w in ws for x in w.e2e_ms],
                               ttft_samples_ms=[x for w in ws for x in w.ttft_ms],
                               tpot_samples_ms=[x for w in ws for x in w.tpot_ms],
                               service_samples_ms=[x for w in ws for x in w.service_ms],
                               busy_s=sum(w.span_s for w in ws), complete=not stopped and len(ws) == windows,
                               note=stopped))
        for point in points[-len(names):]:
            from planner.run.results import percentile

            say(f"  load {rate:g} req/s: {point['variant']} p95 {percentile(point['e2e_samples_ms'], 95) or 0:,.0f} ms "
                f"over {len(point['e2e_samples_ms'])} requests (measured)", progress)
    return dict(measured_on=measured_on, runtime="hf-eager", dtype=dtype, prompt_len=prompt_len, gen_len=gen_len,
                max_batch=max_batch, seed=seed, requests_per_window=per_window, windows_per_rate=windows,
                time_limit_s=time_limit_s, capacity_rps=capacity, isolated_ms=isolated, rates=list(rates),
                points=points)


def time_one(model, prompt, gen_len: int, pad: int) -> None:
    with BatchServer(model, max_batch=1, gen_len=gen_len, pad_token_id=pad) as server:
        p = server.submit(prompt)
        while not p.done.wait(timeout=0.1):
            _raise(server)
        _raise(server)


def run_load_stage(inputs, checkpoints: dict[str, str], measured_on: str):
    """The `load` stage of `plan run`: every variant's checkpoint served in-process under --load rates."""
    import torch
    from transformers import AutoModelForCausalLM

    from planner.latency import BENCH_DTYPES
    from planner.models import TORCH_DTYPES
    from planner.run.results import LoadResults
    from planner.quant.engine import is_quantized_checkpoint

    opt, workload = inputs.opt, inputs.plan.workload
    if opt.runtime not in ("hf-eager",):
        raise InputError(f"--load serves the model in-process with hf-eager's static batches; --runtime {opt.runtime} "
                         "is not supported by the load mode (accepted: hf-eager)")
    dtype = opt.bench_dtype or ("fp32" if inputs.device == "cpu" else
                                (workload.dtype if workload.dtype in BENCH_DTYPES else "bf16"))
    subjects = {}
    for name, folder in checkpoints.items():
        if is_quantized_checkpoint(folder):
            from planner.quant.engine import load_quantized

            model = load_quantized(folder, dtype=dtype, device=inputs.device).model.eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, TORCH_DTYPES[dtype]))
            model = model.eval().to(inputs.device)
        subjects[name] = model
    prompt_len, gen_len = inputs.bench_lengths()
    fields = run_load(subjects, inputs.tokenizer, rates=parse_rates(opt.load), prompt_len=prompt_len,
                      gen_len=gen_len, max_batch=opt.batch_size or workload.batch_size, requests=opt.load_requests,
                      time_limit_s=opt.load_time_limit, measured_on=measured_on, dtype=dtype, progress=opt.progress)
    return LoadResults.model_validate(fields)
