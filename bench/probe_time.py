"""How long the sensitivity probe takes on the embedded model for the steps the main job considers, and how far its
short-slice figures are from the 16k-token evaluation `plan run` does.

    python bench/probe_time.py                               # 1 thread, the probe's default settings
    python bench/probe_time.py --tokens 1024 --seq-len 128   # another slice
    python bench/probe_time.py --noise-check                 # + two steps at plan run's settings (~9 min more)
    python bench/probe_time.py --kinds mlp_channels,layers,heads,quantize   # a subset of the steps

The steps mirror rules/candidates.yaml and rules/quantization.yaml: MLP channels 12.5/25/37.5/50% (activation,
round_to 64), layers 10/20/30/50% (block influence), heads by KV group 25/50% and per group 34%, unstructured Wanda
30/50%, 2:4 Wanda, int8 weight-only and int4 weight-only (g128). The probe writes to an empty cache (a temporary
PLANNER_CACHE), then runs once more to time the cached path. Everything is measured in this one run, on this CPU.

Measured on this project's 2-core VM, 1 thread, another job on the other core (defaults: 1,024 held-out tokens in
windows of 256, 8 x 256 calibration tokens): all 16 steps 227 s (Wanda steps ~29 s each, a shared scoring pass
~14 s, an evaluation ~5-8 s), 139 s without the three Wanda steps, 1.2 s when cached. Against plan run's
settings (16,384 tokens, seq_len 512, 32 x 512 calibration): MLP -25% +54.9% vs +51.2%, layers -3 +42.8% vs +49.2%.
With 2 threads on the busy VM the probe took 478 s: the threads stall on each other.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main_job_steps(num_layers: int):
    from planner.prune.specs import (HeadPruning, LayerPruning, MlpChannelPruning, SemiStructuredPruning,
                                     UnstructuredPruning)
    from planner.quant.specs import QuantSpec

    steps = [(MlpChannelPruning(ratio=r, criterion="activation", round_to=64), None)
             for r in (0.125, 0.25, 0.375, 0.5)]
    steps += [(LayerPruning(num_layers=max(1, round(r * num_layers))), None) for r in (0.1, 0.2, 0.3, 0.5)]
    steps += [(HeadPruning(ratio=r, mode="kv_group"), None) for r in (0.25, 0.5)]
    steps += [(HeadPruning(ratio=0.34, mode="per_group"), None)]
    steps += [(UnstructuredPruning(sparsity=s, criterion="wanda"), None) for s in (0.3, 0.5)]
    steps += [(SemiStructuredPruning(n=2, m=4, criterion="wanda"), None)]
    steps += [(None, QuantSpec(scheme="int8-weight-only")),
              (None, QuantSpec(scheme="int4-weight-only", group_size=128))]
    return steps


def label(prune, quantize, shape) -> str:
    from planner.kinds import get_kind

    parts = []
    if prune is not None:
        kind = get_kind(prune)
        parts.append(f"{kind.label} {kind.ratio_text(prune, shape)}".strip())
    if quantize is not None:
        parts.append(quantize.label)
    return " + ".join(parts) or "dense"


def print_report(report, shape, title: str) -> None:
    print(f"\n{title}: dense ppl {report.ppl_dense:.3f} over {report.tokens} positions (seq_len {report.seq_len}, "
          f"calibration {report.calibration.num_samples} x {report.calibration.seq_len})")
    print(f"  {'step':<44} {'ppl':>9} {'increase':>9} {'top-1':>7} {'seconds':>8}")
    for s in report.steps:
        name = label(s.prune, s.quantize, shape)
        if s.error:
            print(f"  {name:<44} not probed: {s.error[:110]}")
            continue
        print(f"  {name:<44} {s.ppl:>9.3f} {s.ppl_increase:>+9.1%} {s.top1_agreement:>7.3f} {s.seconds:>8.1f}"
              f"{' (cached)' if s.cached else ''}")
    print(f"  total {report.seconds:.1f} s")


def time_copies(model) -> tuple[float, float]:
    """(deep copy seconds, in-place restore seconds) of the loaded model."""
    import torch

    start = time.perf_counter()
    work = copy.deepcopy(model)
    deep = time.perf_counter() - start
    pristine = model.state_dict()
    start = time.perf_counter()
    with torch.no_grad():
        for name, tensor in work.state_dict().items():
            tensor.copy_(pristine[name])
    return deep, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--tokens", type=int, default=None, help="held-out tokens per measurement (default: the probe's)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the probe's)")
    p.add_argument("--calib-samples", type=int, default=None, help="calibration blocks (default: the probe's)")
    p.add_argument("--calib-seq-len", type=int, default=None, help="calibration block length (default: the probe's)")
    p.add_argument("--kinds", default=None,
                   help="only these steps, comma-separated: pruning kinds (mlp_channels, layers, heads, unstructured, "
                        "nm) and/or quantize (default: all)")
    p.add_argument("--noise-check", action="store_true",
                   help="also probe MLP -25%% and layers -3 at plan run's settings (16,384 tokens, seq_len 512, "
                        "32 x 512 calibration) and compare the increases")
    args = p.parse_args(argv)

    import torch

    from planner.arch import get_adapter
    from planner.models import load_model
    from planner.probe import probe
    from planner.probe.sensitivity import DEFAULT_CALIBRATION, DEFAULT_SEQ_LEN, DEFAULT_TOKENS
    from planner.prune.specs import CalibrationSpec, LayerPruning, MlpChannelPruning

    torch.set_num_threads(args.threads)
    device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    start = time.perf_counter()
    loaded = load_model(None, dtype="fp32")
    load_seconds = time.perf_counter() - start
    # the probe's records go to an empty cache, so every step is measured (the model stays where it was converted)
    os.environ["PLANNER_CACHE"] = tempfile.mkdtemp(prefix="probe-bench-")
    shape = get_adapter(loaded.model.config).shape(loaded.model.config)
    print(f"measured on {device}; model loaded in {load_seconds:.1f} s", flush=True)
    deep, restore = time_copies(loaded.model)
    print(f"fresh copy of the model: deep copy {deep:.2f} s, in-place restore of the weights {restore:.2f} s")

    calibration = DEFAULT_CALIBRATION.model_copy(update={
        k: v for k, v in (("num_samples", args.calib_samples), ("seq_len", args.calib_seq_len)) if v})
    settings = dict(tokens=args.tokens or DEFAULT_TOKENS, seq_len=args.seq_len or DEFAULT_SEQ_LEN,
                    calibration=calibration)
    steps = main_job_steps(shape.num_layers)
    if args.kinds:
        wanted = set(args.kinds.split(","))
        steps = [(p_, q) for p_, q in steps if (p_.kind if p_ is not None else "quantize") in wanted]
    report = probe(loaded, steps, **settings, progress=True)
    print_report(report, shape, f"Probe of {len(steps)} steps, empty cache")
    again = probe(loaded, steps, **settings)
    print(f"\nsame probe again, every step cached: {again.seconds:.2f} s")

    if args.noise_check:
        pair = [(MlpChannelPruning(ratio=0.25, criterion="activation", round_to=64), None),
                (LayerPruning(num_layers=3), None)]
        full = probe(loaded, pair, tokens=16_384, seq_len=512, calibration=CalibrationSpec(), progress=True)
        print_report(full, shape, "Noise check at plan run's settings (16,384 tokens, seq_len 512, 32 x 512 "
                                  "calibration)")
        print(f"\n  {'step':<44} {'probe':>9} {'16k':>9} {'ratio':>7}")
        for prune, _ in pair:
            short, long = report.step(prune).ppl_increase, full.step(prune).ppl_increase
            print(f"  {label(prune, None, shape):<44} {short:>+9.1%} {long:>+9.1%} {short / long:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
