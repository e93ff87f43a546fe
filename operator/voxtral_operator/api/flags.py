"""vLLM's `vllm serve` command line, read as vLLM 0.33 reads it: which destination each flag sets.

Ownership of a flag is decided by the argparse destination it reaches, never by its spelling:
`-tp 2`, `--tensor_parallel_size 2`, `--tensor-parallel 2` (an unambiguous prefix) and
`--tensor-parallel-size=2` all set `tensor_parallel_size`. The table of option strings
(`vllm_flags.json`, beside this module) is generated from vLLM 0.33.0's own parser by
scripts/gen_vllm_flags.py, and a test checks it against that parser whenever vLLM imports.

`parse` mirrors the two stages vLLM applies to `vllm serve` arguments:

1. `FlexibleArgumentParser.parse_args` rewrites the arguments first: `_` becomes `-` in every
   token starting with `--` (up to its first `.`), `-O3` becomes `--optimization-level 3`, and
   every token starting with `-` that contains a `.` is vLLM's dotted JSON form
   (`--limit-mm-per-prompt.audio 100`): it takes the next token as its value and is folded into
   one `--limit-mm-per-prompt '{"audio": 100}'` appended at the end.
2. argparse then matches each option: exactly, before an `=`, as the only option an
   abbreviation is a prefix of (long options, and single-dash ones too), or as a one-letter
   option with its value attached (`-qfp8`).

Where argparse's answer could depend on details this module does not model, it answers with
every destination the token could reach, so a check for owned destinations errs on the side of
refusing. Whitespace around an option's name is ignored for the same reason.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclass(frozen=True)
class Table:
    version: str
    # option string -> (destination, nargs as argparse has it: None, 0, N, "?", "*" or "+")
    options: dict[str, tuple[str, int | str | None]]
    # destination -> the flag vLLM documents for it
    canonical: dict[str, str]

    def flag(self, dest: str) -> str:
        return self.canonical.get(dest, "--" + dest.replace("_", "-"))


@functools.cache
def table() -> Table:
    data: dict[str, Any] = json.loads(resources.files(__package__).joinpath("vllm_flags.json").read_text())
    options = {name: (entry["dest"], entry["nargs"]) for name, entry in data["options"].items()}
    return Table(version=data["vllm"], options=options, canonical=dict(data["canonical"]))


@dataclass(frozen=True)
class Option:
    """One option on the command line and where argparse puts it."""

    index: int  # position of the token in the arguments given to `parse`
    token: str  # as written
    dests: frozenset[str]  # one when resolved; more when argparse could read it several ways
    values: tuple[str, ...] = ()


@dataclass
class Parsed:
    options: list[Option] = field(default_factory=list)
    positionals: list[tuple[int, str]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (token index, what is wrong)

    def dests(self) -> set[str]:
        return {d for option in self.options for d in option.dests}


def _candidates(name: str, options: dict[str, tuple[str, int | str | None]]) -> tuple[list[str], str | None]:
    """The option strings argparse could match `name` (no `=` part) to, and an attached value if any."""
    if name in options:
        return [name], None
    if name.startswith("--"):
        return [o for o in options if o.startswith(name)], None
    # Single dash: an abbreviation of a single-dash option, or a one-letter option with its value attached.
    found = [o for o in options if o.startswith(name) and not o.startswith("--")]
    attached = None
    if len(name) > 2 and name[:2] in options:
        found.append(name[:2])
        attached = name[2:]
    # Argparse versions differ on single-dash abbreviations; any option the name starts with counts too.
    found += [o for o in options if not o.startswith("--") and name.startswith(o) and o not in found]
    return found, attached


def _vllm_rewrite(args: Sequence[str]) -> list[tuple[int, str]]:
    """Stage 1: FlexibleArgumentParser.parse_args' rewriting, each token tagged with its source index."""
    rewritten: list[tuple[int, str]] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, sep, value = arg.partition("=")
            head, dot, tail = key[2:].partition(".")
            rewritten.append((i, "--" + head.replace("_", "-") + dot + tail + sep + value))
        elif arg.startswith("-O") and arg != "-O":
            level = arg[3:] if arg[2:3] == "=" else arg[2:]
            rewritten += [(i, "--optimization-level"), (i, level)]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            rewritten.append((i, "--optimization-level"))
        else:
            rewritten.append((i, arg))
    out: list[tuple[int, str]] = []
    dotted: dict[str, int] = {}
    skip = False
    for position, (i, arg) in enumerate(rewritten):
        if skip:
            skip = False
            continue
        if arg.startswith("-") and "." in arg:
            key, sep, _ = arg.partition("=")
            if sep and "." not in key:
                out.append((i, arg))  # the dot was in the value
                continue
            if not sep:
                skip = True  # the next token is the value, whatever it looks like
                if position + 1 >= len(rewritten):
                    out.append((i, arg))  # vLLM itself fails here (IndexError); report the option
                    skip = False
                    continue
            dotted.setdefault(key.split(".", 1)[0].removesuffix("+"), i)
            continue
        out.append((i, arg))
    for key, i in dotted.items():
        out += [(i, key), (i, "{}")]
    return out


def _looks_like_option(token: str) -> bool:
    return len(token) > 1 and token.startswith("-") and not _NEGATIVE_NUMBER.match(token)


def parse(args: Sequence[str], known: Table | None = None) -> Parsed:
    """Read `vllm serve` arguments (everything after `vllm serve`) as vLLM 0.33's parser would."""
    options = (known or table()).options
    parsed = Parsed()
    tokens = _vllm_rewrite(args)
    position = 0
    while position < len(tokens):
        index, token = tokens[position]
        position += 1
        if token == "--":
            parsed.problems.append((index, "'--' ends the options: every later argument becomes positional"))
            continue
        if not _looks_like_option(token):
            parsed.positionals.append((index, token))
            continue
        name, sep, explicit = token.partition("=")
        name = name.strip()
        matches, attached = _candidates(name, options)
        if not matches:
            if any(c.isspace() for c in token):
                parsed.positionals.append((index, token))  # argparse reads it as a positional
            else:
                parsed.problems.append((index, f"{shown(args[index])} is not a vllm serve {table().version} flag"))
            continue
        dests = frozenset(options[m][0] for m in matches)
        if len(dests) > 1:
            if position < len(tokens) and not _looks_like_option(tokens[position][1]):
                position += 1  # its value, whichever option argparse would pick
            parsed.options.append(Option(index, args[index], dests))
            could_be = ", ".join(sorted(matches)[:6])
            ambiguous = f"{shown(args[index])} is ambiguous in vLLM's parser: it could be {could_be}"
            parsed.problems.append((index, ambiguous))
            continue
        nargs = options[matches[0]][1]
        values: list[str] = []
        if sep or attached:
            values.append(explicit if sep else attached or "")
            if nargs == 0:
                parsed.problems.append((index, f"{shown(args[index])} takes no value"))
        elif nargs is None or nargs == "+" or (isinstance(nargs, int) and nargs > 0):
            wanted = 1 if nargs in (None, "+") else int(nargs)
            while len(values) < wanted and position < len(tokens) and not _looks_like_option(tokens[position][1]):
                values.append(tokens[position][1])
                position += 1
            if len(values) < wanted:
                parsed.problems.append((index, f"{shown(args[index])} needs a value"))
        if nargs in ("*", "+") or (nargs == "?" and not values):
            while position < len(tokens) and not _looks_like_option(tokens[position][1]):
                values.append(tokens[position][1])
                position += 1
                if nargs == "?":
                    break
        parsed.options.append(Option(index, args[index], dests, tuple(values)))
    return parsed


# Destinations the operator sets from the spec (or its config): an extra argument reaching one would
# silently fight the spec, the probes or the fit check. The value says what to do instead.
OWNED: dict[str, str] = {
    "model": "use spec.model",
    "host": "the pod listens on all addresses",
    "port": "the probes, the Service and the NetworkPolicy use the operator config's vllmPort",
    "served_model_name": "use spec.servedModelName",
    "tokenizer_mode": "the model card's loading flags are fixed",
    "config_format": "the model card's loading flags are fixed",
    "load_format": "the model card's loading flags are fixed",
    "tensor_parallel_size": "use spec.tensorParallelSize",
    "tool_call_parser": "the model card's tool-calling flags are fixed",
    "enable_auto_tool_choice": "the model card's tool-calling flags are fixed",
    "limit_mm_per_prompt": "five audios per prompt is the model's own cap",
    "max_model_len": "use spec.engine.maxModelLen",
    "gpu_memory_utilization": "use spec.engine.gpuMemoryUtilization",
    "max_num_seqs": "use spec.engine.maxNumSeqs",
    "max_num_queued_reqs": "use spec.engine.maxQueuedRequests",
    "api_key": "use spec.auth.apiKeySecretRef",
    "shutdown_timeout": "use spec.engine.shutdownTimeoutSeconds",
    "download_dir": "use spec.modelCache",
    "enable_server_load_tracking": "the autoscaler relies on it",
    "allowed_media_domains": "use spec.engine.allowedMediaDomains",
}
# Destinations no endpoint may set at all: each undoes something the operator relies on.
RESERVED: dict[str, str] = {
    "config": "it reads more flags from a file, past these checks",
    "uds": "it moves the server off the port the probes and the Service use",
    "headless": "it starts no API server",
    "grpc": "it replaces the HTTP server the probes and callers use",
    "grpc_port": "it opens a listener the NetworkPolicy does not describe",
    "help": "it prints help and exits",
    "disable_log_stats": "it removes the queue and KV cache gauges from /metrics, which the autoscaler, KEDA's "
    "query and the gateway's take-back read",
}


def shown(token: str) -> str:
    """A flag as an error message may quote it: its name, never its value. Messages about a spec go to
    status, Events and logs, which more people read than the spec, and a value may be a token
    (`--hf-token=...`)."""
    name, sep, _ = token.partition("=")
    return repr(name + ("=..." if sep else ""))


def refused_dests() -> dict[str, str]:
    """Every destination an extra argument may never reach, with the reason."""
    owned = {dest: f"the operator owns it; {hint}" for dest, hint in OWNED.items()}
    return {**owned, **{dest: f"no endpoint may set it: {why}" for dest, why in RESERVED.items()}}


def extra_arg_problems(extra_args: Sequence[str]) -> list[str]:
    """What is wrong with `engine.extraArgs` whatever the platform allows: owned or reserved
    destinations, flags vLLM does not know, stray values."""
    known = table()
    parsed = parse(extra_args, known)
    refused = refused_dests()
    problems: list[str] = []
    for option in parsed.options:
        for dest in sorted(option.dests & refused.keys()):
            problems.append(f"[{option.index}] {shown(option.token)} sets {known.flag(dest)} ({refused[dest]})")
    reported = {option.index for option in parsed.options if option.dests & refused.keys()}
    problems += [f"[{index}] {message}" for index, message in parsed.problems if index not in reported]
    stray = "a value (not shown) is neither a flag nor the value of one"
    problems += [f"[{index}] {stray}" for index, _ in parsed.positionals]
    return problems


def dest_of_flag(flag: str) -> str | None:
    """The destination of a flag named in full (`--enforce-eager`, `-tp`); None when vLLM has no such flag."""
    known = table()
    entry = known.options.get(flag.strip())
    if entry is None and flag.startswith("--"):
        entry = known.options.get("--" + flag.strip()[2:].replace("_", "-"))
    return entry[0] if entry else None


# --- The same refusal as a CEL rule, so `kubectl apply` refuses the common spellings up front ---


def _trie_pattern(names: list[str]) -> str:
    """An RE2 pattern matching every non-empty prefix of the names, `-` also spelled `_`."""
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})

    def emit(node: dict[str, Any]) -> str:
        branches = []
        for char, child in sorted(node.items()):
            atom = "[-_]" if char == "-" else re.escape(char).replace("\\", "")
            branches.append(atom + (f"({emit(child)})?" if child else ""))
        return branches[0] if len(branches) == 1 else "|".join(branches)

    return emit(trie)


# Whitespace spelled with escapes that CEL string literals and RE2 both read (CEL rejects `\s`).
_SPACE = r"[ \t\n\r\f\v]"


def cel_refused_pattern() -> str:
    """Tokens whose option name can only be (a prefix of) a refused flag's option string."""
    known = table()
    refused = refused_dests()
    long_names = sorted(o[2:] for o, (dest, _) in known.options.items() if o.startswith("--") and dest in refused)
    short_names = sorted(o[1:] for o, (dest, _) in known.options.items() if not o.startswith("--") and dest in refused)
    alternatives = [f"--({_trie_pattern(long_names)})?"]
    alternatives += [f"-{name}.*" for name in short_names] + [
        f"-{name[:i]}" for name in short_names for i in range(1, len(name))
    ]
    return f"^{_SPACE}*(" + "|".join(alternatives) + f"){_SPACE}*([=.].*)?$"


def cel_exempt_pattern() -> str:
    """Allowed option strings that are prefixes of refused ones (`--tokenizer` of `--tokenizer-mode`)."""
    known = table()
    refused = refused_dests()
    refused_options = [o for o, (dest, _) in known.options.items() if dest in refused]
    exempt = sorted(
        o
        for o, (dest, _) in known.options.items()
        if dest not in refused and o.startswith("--") and any(r.startswith(o) for r in refused_options)
    )
    names = "|".join(e[2:].replace("-", "[-_]") for e in exempt)
    return f"^{_SPACE}*--(" + names + f"){_SPACE}*([=.].*)?$"
