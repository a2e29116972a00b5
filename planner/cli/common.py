"""Arguments shared by several subcommands."""

from __future__ import annotations


def add_model_arguments(p) -> None:
    p.add_argument("--model", default=None,
                   help="local HF checkpoint folder, cached hub id, .gguf file, or a folder with only config.json "
                        "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint to run (off by default)")


def add_workload_arguments(p) -> None:
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per request (default 512)")
    p.add_argument("--gen-len", type=int, default=None, help="generated tokens per request (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default 1)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 1)")
    p.add_argument("--dtype", default=None, help="serving dtype on the target GPU: fp32, bf16, fp16, fp8, int8")
    p.add_argument("--workload", default=None, help="workload YAML/JSON file (flags override its fields)")
    p.add_argument("--runtime", default=None,
                   help="serving stack the projection is for: vllm, hf-eager, hf-compile, tensorrt-llm "
                        "(default: vllm for a GPU target, hf-eager for --gpu cpu; see profiles/runtimes/)")


def workload_from_args(args):
    """Build a Workload from --workload FILE and the individual flags; errors name the bad value."""
    from planner.api import make_workload
    from planner.workload import Workload

    data: dict = {}
    if getattr(args, "workload", None):
        from planner.documents import load_mapping

        data = load_mapping(args.workload, "workload file", ", ".join(Workload.model_fields))
    for field in ("prompt_len", "gen_len", "batch_size", "concurrency", "dtype", "runtime"):
        value = getattr(args, field, None)
        if value is not None:
            data[field] = value
    return make_workload(data)


def add_gpu_catalog_argument(p) -> None:
    p.add_argument("--gpus", action="append", default=None, metavar="DIR", dest="gpu_dirs",
                   help="a folder of your own GPU files (<id>.yaml, like profiles/gpus/): adds GPUs or replaces "
                        "built-in ones by id; repeatable; also $PLANNER_GPUS (check one with `plan gpus --check DIR`)")
