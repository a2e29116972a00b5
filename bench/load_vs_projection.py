"""Latency under traffic: measured on this CPU by the load generator, beside the queueing projection for `--gpu cpu`.

    python bench/load_vs_projection.py --threads 1                     # dense vs layers-10, rates: auto
    python bench/load_vs_projection.py --threads 1 --rates 0.1,0.3,0.4 --requests 24

The embedded model (dense) and a copy with `--drop-layers` decoder layers removed (planner's layer pruning, block
influence, no recovery: latency does not depend on it) are served in-process by planner.run.load (hf-eager's static
batches of `--batch-size`), under seeded Poisson arrivals at three rates: by default a low one, 70% and 95% of the
dense model's measured capacity (requests/s a saturated server completes). Windows of requests alternate between the
variants (A B, B A), each variant receiving the same arrival times.

The projection is what `plan --gpu cpu` computes: this host's profile (its measured peaks, efficiencies and per-layer
host time, profiled again first) gives each variant's per-step times through the serving model, calibrated on the
dense model's sequential requests as `plan run` does (a factor per phase; see _calibrated), and planner.perf.traffic
simulates the same scheduler over (a) the very arrival times the load generator sent, window by window ("same
arrivals"), and (b) a long seeded Poisson stream at the rate ("steady state", what a plan reports).
Every figure printed says whether it was measured or projected. A last column checks the queueing model alone: the
same simulation with the step times scaled to the service times measured in those windows (on a shared machine whose
speed drifts between the calibration and the load, the first projection moves with the drift; this one does not).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1, help="static batch of the server (hf-eager)")
    ap.add_argument("--drop-layers", type=int, default=10)
    ap.add_argument("--rates", default="auto", help="'auto' or three rates, req/s, comma-separated")
    ap.add_argument("--requests", type=int, default=12, help="per variant and rate (2 windows)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cached-profile", action="store_true",
                    help="use this host's cached profile instead of profiling again first")
    ap.add_argument("--calibration-requests", type=int, default=3,
                    help="sequential dense requests that calibrate this host's per-step time (as `plan run` does)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from planner.data import calibration_text, token_blocks
    from planner.gpus import get_gpu
    from planner.models import load_model
    from planner.perf.runtimes import for_target, get_runtime
    from planner.perf.traffic import Request, StepModel, p95_at, policy_for, saturation_rps, simulate
    from planner.profile import load_or_run_profile
    from planner.prune import apply_pruning
    from planner.prune.specs import LayerPruning
    from planner.run.load import parse_rates, run_load
    from planner.run.results import LoadResults
    from planner.workload import Workload

    cpu = get_gpu("cpu")
    workload = for_target(Workload(prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size), cpu)
    started = time.perf_counter()
    # measured now, under the same conditions as the load (a profile cached on a busier or quieter machine would not be)
    profile = load_or_run_profile(None, cpu, workload, threads=args.threads, refresh=not args.cached_profile)
    shape = profile.model.shape
    pruned_name = f"layers-{args.drop_layers}"
    shapes = {"dense": shape, pruned_name: shape.model_copy(update={"num_layers": shape.num_layers - args.drop_layers})}

    loaded = load_model(None, dtype="fp32")
    dense = loaded.model
    pruned = copy.deepcopy(dense)
    calib = token_blocks(loaded.tokenizer, calibration_text(), 8, 128)
    apply_pruning(pruned, LayerPruning(num_layers=args.drop_layers), calib)
    print(f"profile: {profile.projected.label}", flush=True)
    project_for, calibration = _calibrated(profile, dense, loaded.tokenizer, workload, cpu, args)
    print(f"calibration: {calibration}", flush=True)

    fields = run_load({"dense": dense, pruned_name: pruned}, loaded.tokenizer, rates=parse_rates(args.rates),
                      prompt_len=args.prompt_len, gen_len=args.gen_len, max_batch=args.batch_size,
                      requests=args.requests, time_limit_s=args.time_limit, seed=args.seed,
                      measured_on=f"CPU, {args.threads} thread(s)")
    load = LoadResults.model_validate(fields)

    runtime = get_runtime(workload.runtime)
    policy = policy_for(runtime, workload)
    steps = {name: StepModel(project_for(s), workload) for name, s in shapes.items()}
    print()
    print(f"server: {policy.text}; {args.prompt_len}+{args.gen_len} tokens per request")
    print(f"{'variant':<12} {'alone ms (measured)':>20} {'alone ms (projected)':>21} {'capacity req/s (measured)':>26}"
          f" {'saturation req/s (projected)':>29}")
    rows = {"isolated": {}, "points": []}
    for name, st in steps.items():
        sat = saturation_rps(st, policy)
        rows["isolated"][name] = {"measured_ms": load.isolated_ms[name], "projected_ms": st.isolated_ms(),
                                  "capacity_measured_rps": load.capacity_rps[name], "saturation_projected_rps": sat}
        print(f"{name:<12} {load.isolated_ms[name]:>20,.0f} {st.isolated_ms():>21,.0f} "
              f"{load.capacity_rps[name]:>26.3f} {sat:>29.3f}")
    print()
    print("p95 end-to-end latency: measured on this CPU (hf-eager, in-process server) vs projected for --gpu cpu")
    head = (f"{'rate req/s':>10} {'variant':<12} {'n':>3} {'measured p95':>13} {'projected p95':>14} {'error':>7} "
            f"{'steady-state p95':>17} {'measured p50':>13} {'projected p50':>14} {'queue model p95':>16} {'error':>7}")
    print(head)
    print("-" * len(head))
    within = True
    order = {}
    for p in load.points:
        st = steps[p.variant]
        replay = [simulate([Request(t, args.prompt_len, args.gen_len) for t in w], st, policy) for w in p.windows]
        same = _pooled(replay)
        steady = p95_at(p.rate, st, policy, requests=2000).p95_ms
        # the queueing model alone: the same simulation with the step times scaled to the service times measured in
        # these very windows (a machine whose speed drifts between calibration and load moves the projection above)
        service = statistics.median(p.service_samples_ms) if p.service_samples_ms else None
        scale = service / st.isolated_ms() if service else 1.0
        served = StepModel(lambda wl, st=st, k=scale: _Scaled(_Raw(st, wl), k, k), workload)
        queue_only = _pooled([simulate([Request(t, args.prompt_len, args.gen_len) for t in w], served, policy)
                              for w in p.windows])
        err = same["p95"] / p.p95_ms - 1 if p.p95_ms else None
        within &= err is not None and abs(err) <= 0.30
        order.setdefault(p.rate, {})[p.variant] = (p.p95_ms, same["p95"])
        rows["points"].append({"rate": p.rate, "variant": p.variant, "requests": len(p.e2e_samples_ms),
                               "measured_p95_ms": p.p95_ms, "projected_p95_ms_same_arrivals": same["p95"],
                               "projected_p95_ms_steady_state": steady, "measured_p50_ms": p.p50_ms,
                               "projected_p50_ms_same_arrivals": same["p50"], "error": err, "complete": p.complete,
                               "measured_service_ms_median": service,
                               "queue_model_p95_ms_on_measured_service": queue_only["p95"]})
        print(f"{p.rate:>10.3f} {p.variant:<12} {len(p.e2e_samples_ms):>3} {p.p95_ms:>13,.0f} {same['p95']:>14,.0f} "
              f"{err:>+7.0%} {steady:>17,.0f} {p.p50_ms:>13,.0f} {same['p50']:>14,.0f} {queue_only['p95']:>16,.0f} "
              f"{queue_only['p95'] / p.p95_ms - 1:>+7.0%}"
              + ("" if p.complete else "  (stopped by the time limit)"))
    same_order = all((v["dense"][0] > v[pruned_name][0]) == (v["dense"][1] > v[pruned_name][1])
                     for v in order.values())
    print()
    print(f"all measured vs projected p95 within +-30%: {'yes' if within else 'NO'}; dense vs {pruned_name} in the "
          f"same order (measured and projected) at every rate: {'yes' if same_order else 'NO'}")
    print(f"took {time.perf_counter() - started:,.0f} s")
    if args.json:
        rows.update(within_30pct=within, same_order=same_order, load=load.model_dump(mode="json"))
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


class _Raw:
    """A StepModel's own step times at one workload, as an estimate-like object."""

    def __init__(self, steps, wl):
        self.prefill_ms = steps.prefill_ms(wl.batch_size, wl.prompt_len)
        self.decode_ms_per_token = steps.decode_ms(wl.batch_size)


class _Scaled:
    """An estimate's prefill and decode step times times this host's calibration factors (what StepModel reads)."""

    def __init__(self, est, prefill_scale: float, decode_scale: float):
        self.prefill_ms = est.prefill_ms * prefill_scale
        self.decode_ms_per_token = est.decode_ms_per_token * decode_scale


def _calibrated(profile, model, tokenizer, workload, cpu, args):
    """The --gpu cpu serving model, calibrated on this host as `plan run` does: the dense model's measured requests
    (a few, sequential, this workload) against its projection. Here the fit is a factor per phase (prefill: measured
    TTFT / projected; decode: measured (e2e - TTFT) / projected gen_len steps), not an added host time: a profile
    taken under torch.profiler or on a busier machine projects slower steps than generate() then runs, and an
    added time cannot be negative. The candidate and the queueing stay projections."""
    import statistics

    from planner.latency import prompt_ids, time_request
    from planner.profile.roofline import estimate

    ids = prompt_ids(tokenizer, args.prompt_len, 1)
    time_request(model, ids, args.gen_len)  # warm-up
    runs = [time_request(model, ids, args.gen_len) for _ in range(args.calibration_requests)]
    e2e = statistics.median(r[0] for r in runs)
    ttft = statistics.median(r[1] for r in runs)
    rates = profile.projected.serving.rates
    peaks = {"flops": profile.projected.peak_flops, "bandwidth": profile.projected.bandwidth}
    predicted = estimate(profile.model.shape, workload, cpu, peaks=peaks, rates=rates)
    prefill_scale = ttft / predicted.prefill_ms
    decode_scale = (e2e - ttft) / (args.gen_len * predicted.decode_ms_per_token)

    def project_for(shape):
        return lambda wl: _Scaled(estimate(shape, wl, cpu, peaks=peaks, rates=rates), prefill_scale, decode_scale)

    text = (f"dense measured e2e {e2e:,.0f} ms, TTFT {ttft:,.0f} ms (median of {len(runs)}, sequential) against "
            f"projected {predicted.request_ms:,.0f} / {predicted.prefill_ms:,.0f} ms from the profile: prefill x "
            f"{prefill_scale:.2f}, decode x {decode_scale:.2f}")
    return project_for, text


def _pooled(results) -> dict:
    from planner.run.results import percentile

    e2e = [x for r in results for x in r.e2e_ms]
    return {"p95": percentile(e2e, 95), "p50": percentile(e2e, 50)}


if __name__ == "__main__":
    sys.exit(main())
