"""Write the table of `vllm serve` options from vLLM's own parser: operator/voxtral_operator/api/vllm_flags.json.

The operator never imports vLLM; it decides which destination an `engine.extraArgs` flag sets from
this table (voxtral_operator.api.flags). The table is built here from the real parser:
`vllm.entrypoints.common.cli_args.make_arg_parser` on a `FlexibleArgumentParser`, mounted as the
`serve` subcommand exactly as `vllm serve` mounts it, with `VLLM_TARGET_DEVICE=cpu` so the device
probe (which needs a GPU) does not stop the import. Every option string argparse has registered
(`_option_string_actions`, which also holds the hidden `--no-enable-x` spellings) is written with
its destination and nargs.

Needs an interpreter where `vllm==0.33.0` imports (with its own dependencies, torch included:
about 9 GB; `pip install 'vllm==0.33.0'` into a separate virtualenv is enough):

    /path/to/vllm-env/bin/python scripts/gen_vllm_flags.py            # rewrite the table
    /path/to/vllm-env/bin/python scripts/gen_vllm_flags.py --check    # exit 1 when it differs
    /path/to/vllm-env/bin/python scripts/gen_vllm_flags.py --parse    # JSON lines of token lists on
        stdin -> the destinations vLLM's parser sets for each (or its error), one JSON line each

tests/unit/test_vllm_flags.py runs --check and --parse with `VLLM_PYTHON` (or in-process when
vllm imports there).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

VLLM_VERSION = "0.33.0"
TABLE = Path(__file__).resolve().parents[1] / "operator" / "voxtral_operator" / "api" / "vllm_flags.json"
MODEL = "mistralai/Voxtral-Mini-3B-2507"


def serve_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level `vllm` parser with its `serve` subcommand, as vllm.entrypoints.cli.main builds them."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import vllm
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if vllm.__version__ != VLLM_VERSION:
        raise SystemExit(f"vllm {vllm.__version__} is installed; the table is for {VLLM_VERSION}")
    top = FlexibleArgumentParser(prog="vllm")
    subparsers = top.add_subparsers(required=False, dest="subparser")
    serve = make_arg_parser(subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]"))
    return top, serve


def _nargs(action: argparse.Action) -> Any:
    return action.nargs if action.nargs is None or isinstance(action.nargs, int | str) else str(action.nargs)


def table() -> dict[str, Any]:
    _, serve = serve_parser()
    options: dict[str, dict[str, Any]] = {}
    canonical: dict[str, str] = {}
    for option, action in serve._option_string_actions.items():
        options[option] = {"dest": action.dest, "nargs": _nargs(action)}
    for action in serve._actions:
        long_names = [o for o in action.option_strings if o.startswith("--")]
        if long_names and action.dest not in canonical:
            canonical[action.dest] = long_names[0]
    for option, entry in options.items():  # a destination reached only through short options
        canonical.setdefault(entry["dest"], option)
    return {
        "vllm": VLLM_VERSION,
        "source": "vllm.entrypoints.common.cli_args.make_arg_parser (vllm serve), via scripts/gen_vllm_flags.py",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "options": dict(sorted(options.items())),
        "canonical": dict(sorted(canonical.items())),
    }


def dump(data: dict[str, Any]) -> str:
    # One option per line: diffs of a regenerated table read like a changelog.
    lines = ["{"]
    for key in ("vllm", "source", "python"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(data[key])},")
    for section in ("options", "canonical"):
        lines.append(f"  {json.dumps(section)}: {{")
        items = list(data[section].items())
        for index, (name, value) in enumerate(items):
            comma = "," if index < len(items) - 1 else ""
            lines.append(f"    {json.dumps(name)}: {json.dumps(value, sort_keys=True)}{comma}")
        lines.append("  }" + ("," if section == "options" else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


_recording: tuple[argparse.ArgumentParser, list[str]] | None = None


def _recording_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The `vllm` parser, its serve actions wrapped to record each destination they set."""
    global _recording
    if _recording is None:
        top, serve = serve_parser()
        seen: list[str] = []
        for action in serve._actions:
            original = type(action).__call__

            def record(self: argparse.Action, *args: Any, _original: Any = original, **kwargs: Any) -> None:
                seen.append(self.dest)
                _original(self, *args, **kwargs)

            action.__class__ = type(f"Recording{type(action).__name__}", (type(action),), {"__call__": record})
        _recording = (top, seen)
    return _recording


def parse(tokens: list[str]) -> dict[str, Any]:
    """The destinations vLLM's parser sets from `vllm serve MODEL <tokens>`, or the error it exits with."""
    top, seen = _recording_parser()
    seen.clear()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            top.parse_args(["serve", MODEL, *tokens])
    except SystemExit:
        return {"error": stderr.getvalue().strip().splitlines()[-1:] or ["exit"]}
    except Exception as exc:  # vLLM's own pre-parse checks raise ValueError and friends
        return {"error": [f"{type(exc).__name__}: {exc}"]}
    return {"dests": sorted(set(seen) - {"model_tag"})}


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--check", action="store_true", help="exit 1 when the committed table differs")
    cli.add_argument("--parse", action="store_true", help="parse JSON token lists from stdin")
    args = cli.parse_args()
    if args.parse:
        for line in sys.stdin:
            print(json.dumps(parse(json.loads(line))), flush=True)
        return 0
    text = dump(table())
    if args.check:
        if TABLE.read_text() != text:
            print(f"{TABLE} differs from vLLM {VLLM_VERSION}'s parser: rerun scripts/gen_vllm_flags.py")
            return 1
        print(f"{TABLE.name} matches vLLM {VLLM_VERSION}'s parser")
        return 0
    TABLE.write_text(text)
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
