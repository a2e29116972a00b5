"""`plan gpus`: the GPU catalog, one GPU in detail, or either as JSON."""

from __future__ import annotations

import argparse

from planner.cli.common import add_gpu_catalog_argument

EPILOG = """\
examples:
  plan gpus                      every GPU: memory, bandwidth, dense peaks, 2:4 support, ridge point, example price
  plan gpus --dtype fp16         the ridge-point column for fp16 (T4 and V100 have no bf16)
  plan gpus a100                 one GPU in detail, with the datasheet behind each figure;
                                 says which variant a short name picked (a100 -> a100-80gb-sxm)
  plan gpus h100 --json          the same as JSON
  plan gpus --json               the whole catalog as JSON

Figures are datasheet peaks for dense math (never the with-sparsity figure). Ridge point = peak FLOP/s divided by
memory bandwidth: kernels below it (decode GEMVs, most of inference at small batch) are memory-bound.

Your own GPUs: write <id>.yaml like profiles/gpus/h200.yaml (a source for every figure) in a folder of your own,
  plan gpus --check my-gpus/     validate it (exit 0 ok, 2 naming the file and the field)
  plan gpus --gpus my-gpus/      the catalog with your GPUs added (a file whose id is a built-in GPU's replaces it)
  plan --goal ttft --gpu b300 --gpus my-gpus/    plan for it; PLANNER_GPUS=my-gpus/ does the same for every command
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gpus",
        help="the GPU catalog: peaks, bandwidth, 2:4 sparsity support, sources",
        description="List the GPU catalog, or show one GPU (by id or alias) with the source of every figure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="a GPU id or alias (a100, h100, 4090, ...); omit to list all")
    p.add_argument("--dtype", default="bf16",
                   help="dtype of the ridge-point column: fp32, tf32, bf16, fp16, fp8, int8 (default: bf16)")
    p.add_argument("--check", metavar="DIR", help="validate the GPU files in DIR against the catalog (exit 0 ok, 2 "
                                                 "naming the file and the field)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_gpu_catalog_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from planner import gpus

    gpus.check_dtype(args.dtype)
    if args.check:
        return _check(gpus, args)
    catalog = gpus.catalog()
    if args.name:
        return _show_one(gpus, catalog, args)
    return _show_all(gpus, catalog, args)


def _check(gpus, args) -> int:
    """Validate a folder of GPU files the way `--gpus DIR` loads them: each file alone, then with the catalog."""
    from pathlib import Path

    from planner.cli._out import console, escape, print_json
    from planner.errors import InputError

    files = gpus.gpu_files(args.check)
    if not files:
        raise InputError(f"GPU folder {args.check!r} holds no GPU file (accepted: <id>.yaml files like "
                         f"{gpus.gpus_dir() / 'h200.yaml'})")
    specs = [gpus.load_gpu_file(path) for path in files]  # InputError names the file and the field
    merged = gpus.load_catalog([*gpus.user_gpu_dirs(), Path(args.check)], override=True)
    builtin = gpus.load_catalog()
    rows = [{"id": s.id, "file": str(s.file), "replaces_builtin": s.id in builtin} for s in specs]
    if args.json:
        print_json({"version": 1, "ok": True, "folder": args.check, "gpus": rows, "catalog_size": len(merged)})
        return 0
    out = console()
    for row in rows:
        what = "replaces the built-in GPU of that id" if row["replaces_builtin"] else "adds a GPU"
        out.print(f"[green]ok[/]: {escape(row['file'])}: {escape(row['id'])} ({what})")
    out.print(f"use them with `--gpus {escape(args.check)}` or PLANNER_GPUS={escape(args.check)}")
    return 0


def _num(value: float | None, digits: int | None = None) -> str:
    """80 -> '80', 19.5 -> '19.5', 2039 -> '2,039'; None -> '—'."""
    if value is None:
        return "—"
    if digits is None:
        digits = 0 if value >= 100 or float(value).is_integer() else 1
    return f"{value:,.{digits}f}"


def _sparse(spec) -> str:
    return "yes" if spec.sparse_2to4.dtypes else "no"


def _derived(spec) -> dict:
    from planner.gpus import GPU_DTYPES

    return {
        "ridge_point_flop_per_byte": {d: spec.ridge_point(d) for d in GPU_DTYPES},
        "peak_flops": {d: spec.peak_flops(d) for d in GPU_DTYPES},
        "bandwidth_bytes_per_s": spec.bandwidth_bytes_per_s,
        "memory_bytes": spec.memory_bytes,
    }


def _show_all(gpus, catalog, args) -> int:
    from planner.cli._out import console, escape, print_json

    specs = sorted(catalog.values(), key=lambda s: (s.measured_local, s.id))
    if args.json:
        print_json({"gpus": [s.model_dump(mode="json") for s in specs], "aliases": gpus.alias_map(catalog)})
        return 0

    from rich import box
    from rich.table import Table

    out = console()
    wide = out.width >= 120  # narrow terminals: names go (see `plan gpus NAME`), aliases go under the id
    table = Table(title="GPU catalog: dense datasheet peaks", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id" if wide else "id / aliases", no_wrap=wide, overflow="fold")
    if wide:
        table.add_column("name (architecture)")
    # numbers never wrap or truncate
    for header in ("mem\nGB", "GB/s", "bf16\nTF", "fp8\nTF", "2:4", f"ridge\n{args.dtype}", "$/h*"):
        table.add_column(header, justify="right", no_wrap=True)
    if wide:
        table.add_column("aliases")
    for s in specs:
        aliases = ", ".join(s.aliases)
        if s.measured_local:
            figures = ["—"] * 7
        else:
            figures = [
                _num(s.memory_gb), _num(s.bandwidth_gb_s), _num(s.peak_tflops.bf16), _num(s.peak_tflops.fp8),
                _sparse(s), _num(s.ridge_point(args.dtype)), f"{s.price.usd_per_hour:.2f}" if s.price else "—",
            ]
        figures = [escape(f) for f in figures]
        if wide:
            name = f"{s.name} ({s.architecture})" if s.architecture else s.name
            table.add_row(escape(s.id), escape(name), *figures, escape(aliases))
        else:
            label = escape(s.id) + (f"\n[dim]{escape(aliases)}[/]" if aliases else "")
            table.add_row(label, *figures)
    out.print(table)
    mine = [s.id for s in specs if gpus.is_user_gpu(s)]
    if mine:
        out.print(f"from your GPU folders ({escape(', '.join(str(d) for d in gpus.user_gpu_dirs()))}): "
                  f"{escape(', '.join(mine))}")
    out.print(f"TF = TFLOPS (dense). ridge = {args.dtype} peak / bandwidth, FLOP/byte. 2:4 = sparse tensor cores "
              "speed up 2:4-pruned matmuls. * = example on-demand price per GPU-hour, a dated list price.\n"
              "`plan gpus NAME` shows which dtypes 2:4 covers, the price's date and the source of every figure. "
              "cpu: figures measured at run time by the profiler.")
    return 0


def _show_one(gpus, catalog, args) -> int:
    from planner.cli._out import console, escape, print_json

    spec = gpus.get_gpu(args.name, catalog)
    note = gpus.resolution_note(args.name, catalog)
    if args.json:
        print_json({
            "query": args.name,
            "resolved_id": spec.id,
            "resolution_note": note,
            "gpu": spec.model_dump(mode="json"),
            "derived": _derived(spec),
        })
        return 0

    from rich.table import Table

    out = console()
    if note:
        out.print(f"[bold]{escape(note)}[/]")
    out.print(f"[bold]{escape(spec.name)}[/]  id {spec.id}  ({spec.vendor}"
              + (f", {spec.architecture}" if spec.architecture else "")
              + (f", compute capability {spec.compute_capability}" if spec.compute_capability else "") + ")")
    if spec.aliases:
        out.print(f"aliases: {escape(', '.join(spec.aliases))}")
    if spec.measured_local:
        out.print("Figures of this device are measured at run time by the profiler (`plan profile`); "
                  "the catalog holds none.")
        return 0

    peaks = Table(title="dense peaks (datasheet; 2:4 sparsity doubles them at best)", title_justify="left")
    for header in ("dtype", "TFLOPS (int8: TOPS)", "ridge FLOP/B", "2:4 sparse"):
        peaks.add_column(header, justify="left" if header == "dtype" else "right")
    for dtype in gpus.GPU_DTYPES:
        value = getattr(spec.peak_tflops, dtype)
        sparse = "yes" if spec.sparse_2to4_for(dtype) else "no"
        peaks.add_row(dtype, _num(value, 1), _num(spec.ridge_point(dtype), 1), sparse if value else "—")
    out.print(peaks)
    if spec.sparse_2to4.note:
        out.print(f"2:4: {escape(spec.sparse_2to4.note)}")

    facts = Table(show_header=False, box=None, pad_edge=False)
    facts.add_column(style="bold")
    facts.add_column()
    for label, value in [
        ("memory", f"{_num(spec.memory_gb)} GB {spec.memory_type or ''}".strip() if spec.memory_gb else "—"),
        ("bandwidth", f"{_num(spec.bandwidth_gb_s)} GB/s" if spec.bandwidth_gb_s else "—"),
        ("L2", f"{_num(spec.l2_mb)} MB" if spec.l2_mb else "—"),
        ("SMs / CUs", str(spec.sm_count) if spec.sm_count else "—"),
        ("TDP", f"{_num(spec.tdp_w)} W" if spec.tdp_w else "—"),
        ("example price", f"${spec.price.usd_per_hour:.4g} per GPU-hour, {spec.price.offering}, as of "
                          f"{spec.price.as_of} (a list price, not a quote)" if spec.price else "—"),
    ]:
        facts.add_row(label, escape(value))
    out.print(facts)
    if spec.notes:
        out.print(f"notes: {escape(spec.notes)}")
    if spec.sources:
        out.print("[bold]sources[/]")
        by_citation: dict[str, list[str]] = {}
        for field, citation in spec.sources.items():
            by_citation.setdefault(citation, []).append(field)
        for citation, fields in by_citation.items():
            out.print(f"  [bold]{escape(', '.join(fields))}[/]: {escape(citation)}")
    if spec.file:
        out.print(f"file: {escape(str(spec.file))}" + (" (your GPU folder)" if gpus.is_user_gpu(spec) else ""))
    return 0
