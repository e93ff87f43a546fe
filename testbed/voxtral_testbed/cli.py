"""`voxtral-testbed`: demo, simulate-vllm."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_simulate(args: argparse.Namespace) -> int:
    from voxtral_testbed.simulator import run_simulator

    return run_simulator(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from voxtral_testbed.demo import run_demo

    result: int = run_demo(args)
    return result


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="voxtral-testbed", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate-vllm", help="serve a stand-in for a vLLM Voxtral replica (tests, demos)")
    from voxtral_testbed.simulator import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="reconcile the bundled examples against a local API emulator")
    p.add_argument("--examples", default="examples", help="folder of VoxtralEndpoint YAML files")
    p.set_defaults(func=_cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args, unknown = top.parse_known_args(argv)
    if unknown and args.command != "simulate-vllm":
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    # simulate-vllm takes `vllm serve`'s whole command line and ignores what it does not simulate.
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
