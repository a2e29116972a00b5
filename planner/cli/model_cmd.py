"""`plan model`: architecture, parameters by role, shapes and memory at a dtype, without running the model."""

from __future__ import annotations

from planner.cli.common import add_model_arguments

EPILOG = """\
examples:
  plan model                                  the embedded SmolLM2-135M-Instruct
  plan model --model ./my-checkpoint          a local Hugging Face folder
  plan model --model ./llama-2-7b-config/     a folder with only config.json: shapes from the config, no weights
  plan model --model meta-llama/Llama-2-7b-hf a hub id already in the local cache (never downloaded)
  plan model --dtype fp32 --json
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("model", help="architecture, parameters by role, shapes, memory at a dtype",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--dtype", default="bf16", help="dtype for the memory figure: fp32, bf16, fp16, fp8, int8")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def describe_model(spec: str | None, dtype: str = "bf16", trust_remote_code: bool = False) -> dict:
    """Shapes and parameter counts from a meta-device build (no weights are read)."""
    from planner.arch import get_adapter
    from planner.errors import InputError, did_you_mean
    from planner.models import build_meta_model, load_config, parameters_by_role
    from planner.workload import DTYPE_BYTES

    if dtype not in DTYPE_BYTES:
        raise InputError(did_you_mean(dtype, DTYPE_BYTES, "dtype"))
    config, source = load_config(spec, trust_remote_code)
    adapter = get_adapter(config)
    shape = adapter.shape(config)
    meta = build_meta_model(config)
    roles = parameters_by_role(meta)
    total = sum(roles.values())
    return {
        "version": 1,
        "model": source.name,
        "source": {"kind": source.kind, "path": str(source.path), "weights_present": source.has_weights},
        "family": adapter.family,
        "shape": shape.model_dump(),
        "parameters": total,
        "parameters_by_role": roles,
        "dtype": dtype,
        "weight_bytes": int(total * DTYPE_BYTES[dtype]),
        "kv_cache_bytes_per_token": int(2 * shape.num_layers * shape.kv_dim * DTYPE_BYTES[dtype]),
    }


def run(args) -> int:
    from planner.cli._out import console, escape, print_json

    info = describe_model(args.model, args.dtype, args.trust_remote_code)
    if args.json:
        print_json(info)
        return 0
    from rich.table import Table

    s = info["shape"]
    out = console()
    weights = "weights present" if info["source"]["weights_present"] else "config only: no weights read"
    out.print(f"[bold]{escape(info['model'])}[/]  ({info['family']}, {info['source']['kind']}; {weights})")
    out.print(
        f"{s['num_layers']} layers, hidden {s['hidden_size']}, MLP {s['intermediate_size']}"
        f"{' (gated)' if s['gated_mlp'] else ''}, {s['num_heads']} heads, {s['num_kv_heads']} KV heads, "
        f"head_dim {s['head_dim']}, vocab {s['vocab_size']}"
    )
    table = Table(title="parameters by role")
    table.add_column("role")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for role, n in info["parameters_by_role"].items():
        if n:
            table.add_row(role, f"{n / 1e6:,.2f} M", f"{100 * n / info['parameters']:.1f}%")
    table.add_row("[bold]total[/]", f"[bold]{info['parameters'] / 1e6:,.2f} M[/]", "100%")
    out.print(table)
    out.print(
        f"weights at {info['dtype']}: {info['weight_bytes'] / 2**30:.3f} GiB; KV cache "
        f"{info['kv_cache_bytes_per_token'] / 1024:.1f} KiB per token (computed from shapes, not measured)"
    )
    return 0
