"""`voxtral-operator`: render, crd, rbac, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from voxtral_operator.api.crd import crd_yaml
from voxtral_operator.api.resolve import InvalidSpec
from voxtral_operator.config import load_config
from voxtral_operator.render import render

EXIT_INVALID = 2


def _load_documents(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _cmd_render(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        documents = _load_documents(args.filename)
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {args.filename}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    rendered: list[dict[str, Any]] = []
    failed = False
    for doc in documents:
        name = (doc.get("metadata") or {}).get("name", "<unnamed>") if isinstance(doc, dict) else "<not an object>"
        try:
            if not isinstance(doc, dict):
                raise InvalidSpec(["document: must be a VoxtralEndpoint object"])
            rendered += render(doc, config)
        except InvalidSpec as exc:
            failed = True
            for problem in exc.problems:
                print(f"error: VoxtralEndpoint {name}: {problem}", file=sys.stderr)
    if failed:
        return EXIT_INVALID
    sys.stdout.write(yaml.safe_dump_all(rendered, sort_keys=False, width=120))
    return 0


def _cmd_crd(_: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0


def _cmd_rbac(_: argparse.Namespace) -> int:
    from voxtral_operator.rbac import clusterrole_template

    sys.stdout.write(clusterrole_template())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from voxtral_operator.runner import run_operator

    return run_operator(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="voxtral-operator", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="print the Kubernetes objects an endpoint becomes")
    p.add_argument("-f", "--filename", required=True, help="VoxtralEndpoint YAML file, or - for stdin")
    p.add_argument("--config", help="operator config YAML")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("crd", help="print the VoxtralEndpoint CustomResourceDefinition")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("rbac", help="print the chart's ClusterRole template (the permissions the code uses)")
    p.set_defaults(func=_cmd_rbac)

    p = sub.add_parser("run", help="run the operator")
    p.add_argument("--config", help="operator config YAML")
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch only these namespaces")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL ('' = off)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 = off)")
    p.add_argument("--peering", default=None, help="KopfPeering name: several replicas, one active")
    p.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
