"""`voxtral-operator demo`: render the bundled examples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from voxtral_operator.config import OperatorConfig
from voxtral_operator.render import render


def run_demo(args: argparse.Namespace) -> int:
    config = OperatorConfig()
    for path in sorted(Path(args.examples).glob("*.yaml")):
        endpoint = yaml.safe_load(path.read_text())
        objects = render(endpoint, config)
        print(f"# {path.name}: {len(objects)} objects")
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=120))
        print("---")
    return 0
