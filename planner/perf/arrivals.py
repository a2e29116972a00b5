"""Arrivals of requests under traffic: a seeded Poisson stream, or a trace file of arrival times and lengths.

Kept apart from the simulation (planner.perf.traffic) because the workload validates `--request-rate` and `--trace`
when it is built, below the performance model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Request:
    arrival_s: float
    prompt_len: int
    gen_len: int



# -- arrival streams ----------------------------------------------------------------------------------------------------


def unit_gaps(n: int, seed: int = DEFAULT_SEED) -> list[float]:
    """n exponential gaps of mean 1 from a seeded generator (scaled by 1/rate for a Poisson stream)."""
    import random

    rng = random.Random(seed)
    return [rng.expovariate(1.0) for _ in range(n)]


def poisson_arrivals(rate: float, n: int, prompt_len: int, gen_len: int, seed: int = DEFAULT_SEED) -> list[Request]:
    """n requests of a Poisson stream at `rate` requests/s; the first arrives after one gap."""
    check_rate(rate)
    t, out = 0.0, []
    for gap in unit_gaps(n, seed):
        t += gap / rate
        out.append(Request(t, prompt_len, gen_len))
    return out


def check_rate(rate, name: str = "--request-rate", accepted: str = "a request rate > 0 (requests per second)") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"{name} {rate!r} is invalid; accepted: {accepted}")
    return float(rate)


def load_trace(path: str | Path, prompt_len: int, gen_len: int) -> list[Request]:
    """A trace file: one request per line, `arrival_s[,prompt_len[,gen_len]]` (CSV, '#' comments and a header line
    allowed), or a JSON list of {"arrival_s", "prompt_len", "gen_len"}. Lengths default to the workload's."""
    import json

    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--trace {str(path)!r} cannot be read ({type(exc).__name__}); accepted: a CSV of "
                         "arrival_s[,prompt_len[,gen_len]] per line, or a JSON list of such objects") from None
    rows: list[tuple] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"--trace {str(path)!r}: not valid JSON ({exc})") from None
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "arrival_s" not in item:
                raise InputError(f"--trace {str(path)!r}: item {i} must be an object with arrival_s")
            rows.append((i + 1, item["arrival_s"], item.get("prompt_len", prompt_len), item.get("gen_len", gen_len)))
    else:
        for i, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [x.strip() for x in line.split(",")]
            try:
                values = [float(parts[0])] + [int(x) for x in parts[1:3]]
            except ValueError:
                if not rows and parts[0].lower().startswith("arrival"):
                    continue  # a header line
                raise InputError(f"--trace {str(path)!r} line {i}: {line!r} is not arrival_s[,prompt_len[,gen_len]]"
                                 ) from None
            values += [prompt_len, gen_len][len(values) - 1:]
            rows.append((i, *values[:3]))
    requests = []
    for where, arrival, p_len, g_len in rows:
        ok_time = isinstance(arrival, (int, float)) and not isinstance(arrival, bool) and math.isfinite(arrival)
        if not ok_time or arrival < 0:
            raise InputError(f"--trace {str(path)!r} line {where}: arrival time {arrival!r} is invalid; accepted: "
                             "seconds >= 0")
        for name, value in (("prompt_len", p_len), ("gen_len", g_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"--trace {str(path)!r} line {where}: {name} {value!r} is invalid; accepted: an "
                                 "integer >= 1")
        requests.append(Request(float(arrival), p_len, g_len))
    if not requests:
        raise InputError(f"--trace {str(path)!r} has no requests; accepted: one arrival_s[,prompt_len[,gen_len]] "
                         "per line")
    return sorted(requests, key=lambda r: r.arrival_s)
