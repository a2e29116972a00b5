"""`plan profile`: measure the model on this machine, project it onto a target GPU, write profile.json."""

from __future__ import annotations

from planner.cli.common import add_model_arguments, add_workload_arguments

EPILOG = """\
examples:
  plan profile                                   the embedded SmolLM2-135M at prompt 512 / gen 128 on a100
  plan profile --gpu h100 --prompt-len 2048 --batch-size 8
  plan profile --model ./llama-2-7b-config/ --gpu a100   config-only: projection alone, no weights needed
  plan profile --no-measure --json               projection only, as JSON on stdout
  plan profile --threads 1 -o /tmp/p.json        measure with one CPU thread, write elsewhere

Measured figures come from torch.profiler on this machine (CPU, or CUDA when present) and say "measured on";
projected figures come from a roofline model of the target GPU's datasheet peaks and say "projected to". They
are lower bounds: real kernels reach a fraction of peak. The main `plan` command reuses a profile made for the
same model, workload and GPU (cached under ~/.cache/planner/profiles/).
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "profile",
        help="measured breakdown on this machine + roofline projection to a GPU; writes profile.json",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--gpu", default="a100", help="target GPU, id or alias (default: a100); see `plan gpus`")
    add_workload_arguments(p)
    p.add_argument("--no-measure", action="store_true",
                   help="skip the local measurement: projection only (automatic for config-only models)")
    p.add_argument("--decode-steps", type=int, default=None, help="decode steps to time (default min(16, gen-len))")
    p.add_argument("--repeats", type=int, default=3, help="prefill repeats; medians are reported (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: one per core)")
    p.add_argument("--device", default=None, help="measure on cpu or cuda (default: cuda when present)")
    p.add_argument("--cached", action="store_true",
                   help="reuse a cached profile made for the same inputs instead of measuring again")
    p.add_argument("-o", "--output", default="profile.json", help="where to write the profile (default profile.json)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON instead of a summary")
    from planner.cli.common import add_gpu_catalog_argument

    add_gpu_catalog_argument(p)
    p.set_defaults(func=run)


def check_output(path) -> None:
    """Refuse to overwrite anything but an earlier planner profile."""
    import json
    from pathlib import Path

    from planner.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {str(path)!r} is a folder; pass a file name such as {str(path / 'profile.json')!r}")
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        data = None
    if not (isinstance(data, dict) and data.get("document") == "planner-profile"):
        raise InputError(f"refusing to overwrite {str(path)!r}: it is not a planner profile; pass another -o")


def run(args) -> int:
    from planner import gpus
    from planner.cli._out import console, err_console, escape, print_json
    from planner.cli.common import workload_from_args
    from planner.profile import load_or_run_profile, save_profile

    workload = workload_from_args(args)
    gpu = gpus.get_gpu(args.gpu)
    check_output(args.output)
    err = err_console()
    note = gpus.resolution_note(args.gpu)
    if note and not args.json:
        err.print(escape(note))
    with err.status("profiling") as status:
        profile = load_or_run_profile(
            args.model, gpu, workload, measure=not args.no_measure, decode_steps=args.decode_steps,
            repeats=args.repeats, trust_remote_code=args.trust_remote_code, device=args.device, threads=args.threads,
            refresh=not args.cached, on_step=lambda message: status.update(escape(message)),
        )
    save_profile(profile, args.output)
    if args.json:
        print_json(profile)
        return 0
    out = console()
    print_summary(profile, out)
    out.print(f"wrote {escape(str(args.output))}")
    return 0


# -- the summary ------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def print_summary(profile, out) -> None:
    from rich.table import Table

    from planner.cli._out import escape
    from planner.profile.schema import MEASURED_CATEGORIES

    s, w, proj, mem = profile.model.shape, profile.workload, profile.projected, profile.memory
    out.print(f"[bold]{escape(profile.model.name)}[/]  ({s.family}, {s.num_layers} layers, hidden {s.hidden_size}, "
              f"MLP {s.intermediate_size}, {s.num_heads} heads / {s.num_kv_heads} KV heads, "
              f"{profile.model.parameters / 1e6:,.1f} M parameters)")
    out.print(f"workload: prompt {w.prompt_len}, generate {w.gen_len}, batch {w.batch_size}, "
              f"concurrency {w.concurrency}, {w.dtype}; target {profile.target_gpu} ({escape(profile.target_gpu_name)})")
    out.print(f"local device: {escape(profile.labels['local_device'])}")
    m = profile.measured
    if m is None:
        out.print(f"[bold]projected to {profile.target_gpu} only[/]: {escape(profile.measured_note or '')}")
    else:
        out.print(f"[bold]measured on {escape(profile.local.label)}; projected to {profile.target_gpu}[/]")
        _print_measured(profile, out, Table, escape, MEASURED_CATEGORIES)

    t = Table(title=f"{escape(proj.label)}; ridge point {proj.ridge_point:,.0f} FLOP/byte", title_justify="left")
    for header in ("phase", "ms", "FLOPs", "bytes", "FLOP/B", "bound", "MLP FLOPs"):
        t.add_column(header, justify="left" if header in ("phase", "bound") else "right")
    for phase, label in ((proj.prefill, f"prefill {w.batch_size}x{w.prompt_len}"),
                         (proj.decode, f"decode step {w.batch_size}x1 (ctx {proj.decode.context_len:g})")):
        t.add_row(label, _ms(phase.time_ms), _si(phase.flops, "FLOP"), _si(phase.bytes, "B"),
                  f"{phase.intensity:,.1f}", phase.bound,
                  _pct(phase.flop_share["mlp"]))
    out.print(t)
    out.print(f"projected to {profile.target_gpu}: request {_ms(proj.request_ms)} ms (TTFT {_ms(proj.ttft_ms)} ms + "
              f"{w.gen_len} x TPOT {_ms(proj.tpot_ms)} ms), {proj.tokens_per_s:,.0f} tokens/s; "
              f"dominant phase: {proj.dominant_phase}")

    shares = Table(title=f"share by category: projected to {profile.target_gpu} (whole request)"
                         + (f" vs measured on {escape(profile.local.label)} (per phase)" if m else ""),
                   title_justify="left")
    shares.add_column("category")
    shares.add_column("time, projected", justify="right")
    shares.add_column("FLOPs, projected", justify="right")
    if m:
        shares.add_column("prefill, measured", justify="right")
        shares.add_column("decode, measured", justify="right")
    for category in ("mlp", "attn_proj", "attn_core", "lm_head", "other"):
        row = [category, _pct(proj.time_share[category]), _pct(proj.flop_share[category])]
        if m:
            row += [_pct(m.prefill.part_share.get(category, 0.0)), _pct(m.decode.part_share.get(category, 0.0))]
        shares.add_row(*row)
    out.print(shares)

    mt = Table(title=escape(mem.label), title_justify="left", show_header=False)
    mt.add_column(style="bold")
    mt.add_column(justify="right")
    for label, value in (("weights", _si(mem.weight_bytes, "B")),
                         ("KV cache per token", _si(mem.kv_cache_bytes_per_token, "B")),
                         ("KV cache at the workload", _si(mem.kv_cache_bytes, "B")),
                         ("activations (prefill peak, estimate)", _si(mem.activation_peak_bytes, "B")),
                         ("total", _si(mem.total_bytes, "B")),
                         (f"{profile.target_gpu} memory", _si(mem.gpu_memory_bytes, "B")),
                         ("headroom", f"{_pct(mem.headroom_frac)} ({'fits' if mem.fits else 'does NOT fit'})")):
        mt.add_row(label, value)
    out.print(mt)
    f = profile.facts
    out.print(f"facts (projected to {profile.target_gpu}): prefill {f['prefill_bound']}-bound "
              f"({f['prefill_intensity']:,.0f} FLOP/byte), decode {f['decode_bound']}-bound "
              f"({f['decode_intensity']:.2f} FLOP/byte), ridge {f['ridge_point']:,.0f}; MLP {_pct(f['mlp_flop_share'])} "
              f"of FLOPs and {_pct(f['mlp_time_share'])} of time; GQA {'yes' if f['gqa'] else 'no'}")


def _print_measured(profile, out, Table, escape, categories) -> None:
    m = profile.measured
    where = escape(m.label)
    t = Table(title=f"{where} ({m.dtype}); local roofline from measured peaks "
                    f"{_si(m.peaks.flops, 'FLOP/s')}, {_si(m.peaks.bandwidth, 'B/s')}", title_justify="left")
    for header in ("phase", "median ms", "profiled ms", "profiler overhead", "roofline ms", "efficiency",
                   "categorised"):
        t.add_column(header, justify="left" if header == "phase" else "right")
    for phase, label in ((m.prefill, f"prefill {m.prefill.batch_size}x{m.prefill.new_tokens}"),
                         (m.decode, f"decode step (ctx ~{m.decode.context_len:g})")):
        t.add_row(label, _ms(phase.median_ms), _ms(phase.total_ms), _pct(phase.profiler_overhead),
                  _ms(phase.local_lower_bound_ms), _pct(phase.efficiency), _pct(phase.coverage))
    out.print(t)
    for note in m.notes:
        out.print(f"[yellow]note:[/] {escape(note)}")

    b = Table(title=f"breakdown of the median repeat, {where}", title_justify="left")
    b.add_column("category")
    for header in ("prefill ms", "prefill %", "decode ms/token", "decode %"):
        b.add_column(header, justify="right")
    order = sorted(categories, key=lambda c: -(m.prefill.by_category.get(c, 0.0) + m.decode.by_category.get(c, 0.0)))
    for category in order:
        pre, dec = m.prefill.by_category.get(category), m.decode.by_category.get(category)
        if pre is None and dec is None:
            continue
        b.add_row(escape(categories[category]), _ms(pre), _pct(m.prefill.category_share.get(category)),
                  _ms(dec), _pct(m.decode.category_share.get(category)))
    out.print(b)

    ops = Table(title=f"top ops of the prefill, {where}", title_justify="left")
    for header in ("op", "category", "calls", "self ms"):
        ops.add_column(header, justify="right" if header in ("calls", "self ms") else "left")
    merged: dict[tuple[str, str], list] = {}  # the same op in several modules: one row per op and category
    for op in m.prefill.ops:
        row = merged.setdefault((op.name, op.category), [0, 0.0])
        row[0] += op.calls
        row[1] += op.self_ms
    for (name, category), (calls, self_ms) in sorted(merged.items(), key=lambda kv: -kv[1][1])[:8]:
        ops.add_row(escape(name), category, str(calls), _ms(self_ms))
    out.print(ops)
