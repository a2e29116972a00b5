"""The `plan` console script.

`plan --goal p95-latency --gpu a100` is the main job (profile, decide, write plan.json); every stage also has its
own subcommand. Each subcommand lives in its own module in this package, exposing `register(subparsers)`; those
modules import torch and friends only inside their handlers, so `plan --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from planner import __version__
from planner.errors import OS_INPUT_ERRORS, GateFailed, InputError, RunIncomplete

# subcommand name -> module in planner.cli
SUBCOMMANDS = {
    "profile": "profile_cmd",
    "run": "run_cmd",
    "report": "report_cmd",
    "gate": "gate_cmd",
    "gpus": "gpus_cmd",
    "rules": "rules_cmd",
    "model": "model_cmd",
    "calibrate": "calibrate_cmd",
}

EPILOG = """\
examples:
  plan --goal p95-latency --gpu a100            profile the embedded SmolLM2-135M, decide, write plan.json
  plan --goal ttft --gpu h100 --model ./my-ckpt --prompt-len 2048 --gen-len 128
  plan model --model ./llama-7b-config-only     shapes and parameters from config.json alone
  plan gpus                                     the GPU catalog
  plan profile --gpu l4                         measured + projected profile, writes profile.json
  plan run plan.json                            prune, recover, evaluate, benchmark -> results.json
  plan report results.json -o report.html
  plan gate results.json --policy gate.yaml     exit 0 pass, 1 fail, 2 bad input
"""


_JSON_ERRORS = False  # set by main() when --json is on the command line: argparse's errors come as JSON too


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors also exit 2, with our prefix
        if _JSON_ERRORS:
            from planner.cli._out import print_error

            print_error(message, 2, as_json=True)
            self.exit(2)
        self.print_usage(sys.stderr)
        self.exit(2, f"plan: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plan",
        description="Decide whether and how to prune a transformer LM for a deployment goal, then prove it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"planner {__version__}")
    from planner.cli import plan_cmd

    plan_cmd.add_main_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"planner.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    global _JSON_ERRORS
    _JSON_ERRORS = "--json" in (sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from planner.cli._out import err_console, print_error
    from planner.documents import bounded, show

    as_json = bool(getattr(args, "json", False))
    try:
        from planner import gpus

        gpus.use_gpu_dirs(getattr(args, "gpu_dirs", None))
        if args.command is None:
            from planner.cli import plan_cmd

            return int(plan_cmd.run_main(args) or 0)
        return int(args.func(args) or 0)
    except (InputError, RunIncomplete) as exc:
        print_error(bounded(str(exc)), exc.exit_code, as_json=as_json)
        return exc.exit_code
    except GateFailed as exc:
        if str(exc):
            print_error(bounded(str(exc)), exc.exit_code, as_json=as_json, prefix="gate failed")
        return exc.exit_code
    except BrokenPipeError:  # `plan rules | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # a destination or source the OS refuses (permissions, a full disk, a read-only file system) is bad input
        # to fix, not a crash; exit 1 would read as "gate failed" to CI
        if exc.errno is None or exc.errno not in OS_INPUT_ERRORS:
            raise
        where = f" {show(str(exc.filename))}" if exc.filename else ""
        print_error(f"cannot use{where}: {OS_INPUT_ERRORS[exc.errno]} (accepted: a readable source and a "
                    "writable destination)", InputError.exit_code, as_json=as_json)
        return InputError.exit_code
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
