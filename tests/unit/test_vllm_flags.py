"""engine.extraArgs is read as vLLM 0.33's parser reads it: ownership by destination, not spelling.

The table (api/vllm_flags.json) and the reading of it (api/flags.py) are checked against vLLM's own
parser when vLLM imports, in this interpreter or in the one `VLLM_PYTHON` names (vLLM needs torch:
install `.[vllm-parser]` into a separate virtualenv and point VLLM_PYTHON at its python).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cel
import pytest

from voxtral_operator.api import flags
from voxtral_operator.api.models import EngineSpec
from voxtral_operator.config import DEFAULT_ALLOWED_EXTRA_ARGS

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen_vllm_flags.py"


def _vllm_python() -> str | None:
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return os.environ.get("VLLM_PYTHON") or None


needs_vllm = pytest.mark.skipif(
    _vllm_python() is None,
    reason="vLLM 0.33.0 is not importable here (it needs torch, ~9 GB): install .[vllm-parser] in a "
    "virtualenv and set VLLM_PYTHON to its python to check the table against vLLM's parser",
)


def _generator(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    python = _vllm_python()
    assert python is not None
    return subprocess.run(
        [python, str(GENERATOR), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"},
        timeout=600,
    )


@needs_vllm
def test_committed_table_matches_vllms_parser() -> None:
    result = _generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def _spellings(option: str, nargs: Any) -> list[list[str]]:
    """Ways to write one option that vLLM's parser might accept."""
    value = [] if nargs == 0 else ["1"]
    names = {option}
    if option.startswith("--"):
        names.add("--" + option[2:].replace("-", "_"))
        names.update(option[:i] for i in range(3, len(option)))
    else:
        names.update(option[:i] for i in range(2, len(option)))
    cases = [[name, *value] for name in sorted(names)]
    cases += [[f"{option}=1"], [f"{option} ", *value], [f"{option}.audio", "1"], [f"{option}_x", *value]]
    if not option.startswith("--"):
        cases.append([f"{option}1"])
    return cases


def _corpus() -> list[list[str]]:
    table = flags.table()
    refused = flags.refused_dests()
    cases: list[list[str]] = []
    for option, (dest, nargs) in table.options.items():
        if dest in refused:
            cases += _spellings(option, nargs)
    for flag in DEFAULT_ALLOWED_EXTRA_ARGS:
        dest = flags.dest_of_flag(flag)
        nargs = table.options[flag][1]
        cases += [[flag] if nargs == 0 else [flag, "1"], [flag.replace("-", "_").replace("__", "--", 1)]]
    cases += [["-O3"], ["-O", "2"], ["--enforce-eager", "--max-num-batched-tokens=8192"], ["--", "--port", "1"]]
    return cases


@needs_vllm
def test_every_spelling_vllm_reads_as_an_owned_flag_is_refused_and_no_allowed_flag_is() -> None:
    corpus = _corpus()
    result = _generator("--parse", stdin="".join(json.dumps(case) + "\n" for case in corpus))
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(corpus)
    refused = flags.refused_dests().keys()
    missed, wrongly_refused = [], []
    for case, answer in zip(corpus, answers, strict=True):
        if "error" in answer:
            continue  # vLLM would not start with it: refusing it or not changes nothing
        problems = flags.extra_arg_problems(case)
        reached = set(answer["dests"])
        if reached & refused and not problems:
            missed.append((case, sorted(reached)))
        if not reached & refused and problems:
            wrongly_refused.append((case, problems))
        if not problems:
            assert reached <= flags.parse(case).dests(), (case, reached)
    print(f"{len(corpus)} spellings checked against vLLM's parser")
    assert not missed, missed[:20]
    assert not wrongly_refused, wrongly_refused[:20]


BYPASSES = [
    pytest.param(["-tp", "2"], "--tensor-parallel-size", id="short-alias"),
    pytest.param(["-t", "2"], "--tensor-parallel-size", id="short-alias-prefix"),
    pytest.param(["--tensor_parallel_size", "2"], "--tensor-parallel-size", id="underscores"),
    pytest.param(["--tensor-parallel", "2"], "--tensor-parallel-size", id="prefix"),
    pytest.param(["--tensor-parallel-size=2"], "--tensor-parallel-size", id="equals"),
    pytest.param(["--api_key", "x"], "--api-key", id="api-key-underscore"),
    pytest.param(["--api-k", "x"], "--api-key", id="api-key-prefix"),
    pytest.param(["--api-key ", "x"], "--api-key", id="trailing-space"),
    pytest.param(["--served-model", "x"], "--served-model-name", id="served-name-prefix"),
    pytest.param(["--por", "9000"], "--port", id="port-prefix"),
    pytest.param(["--limit-mm-per-prompt.audio", "100"], "--limit-mm-per-prompt", id="dotted-json"),
    pytest.param(["--limit_mm_per_prompt.audio=100"], "--limit-mm-per-prompt", id="dotted-json-equals"),
    pytest.param(["--max-model-len", "4096"], "--max-model-len", id="plain"),
    pytest.param(["--no-enable-auto-tool-choice"], "--enable-auto-tool-choice", id="negated"),
    pytest.param(["--disable-auto-tool-choice"], "--enable-auto-tool-choice", id="disable-form"),
    pytest.param(["--device-memory-utilization", "0.99"], "--gpu-memory-utilization", id="alias"),
    pytest.param(["--config", "/etc/vllm.yaml"], "--config", id="config-file"),
    pytest.param(["--uds", "/tmp/s"], "--uds", id="unix-socket"),
    pytest.param(["--disable-log-stats"], "--disable-log-stats", id="metrics-off"),
    pytest.param(["--enforce-eager", "--model=other/model"], "--model", id="model"),
]


@pytest.mark.parametrize(("args", "flag"), BYPASSES)
def test_owned_flags_are_refused_in_every_spelling_naming_the_canonical_flag(args: list[str], flag: str) -> None:
    problems = flags.extra_arg_problems(args)
    assert problems, args
    assert any(f"sets {flag} " in p for p in problems), problems


@pytest.mark.parametrize(("args", "flag"), BYPASSES)
def test_the_crds_cel_rule_refuses_the_same_spellings(args: list[str], flag: str) -> None:
    rule = EngineSpec.model_json_schema()["properties"]["extraArgs"]["x-kubernetes-validations"][0]["rule"]
    assert not cel.evaluate(rule, {"self": args}), args


ACCEPTED = [
    pytest.param(["--enforce-eager"], id="store-true"),
    pytest.param(["--max-num-batched-tokens", "8192"], id="value"),
    pytest.param(["--max_num_batched_tokens=8192"], id="underscore-equals"),
    pytest.param(["--enable-prefix-caching", "--no-enable-prefix-caching"], id="both-forms"),
    pytest.param(["--tokenizer", "mistralai/Voxtral-Mini-3B-2507"], id="prefix-of-an-owned-flag"),
    pytest.param(["-q", "fp8"], id="short-option"),
    pytest.param(["--seed", "-1"], id="negative-value"),
    pytest.param(["-O3"], id="optimization-level"),
]


@pytest.mark.parametrize("args", ACCEPTED)
def test_flags_the_operator_does_not_own_pass_both_checks(args: list[str]) -> None:
    assert flags.extra_arg_problems(args) == []
    rule = EngineSpec.model_json_schema()["properties"]["extraArgs"]["x-kubernetes-validations"][0]["rule"]
    assert cel.evaluate(rule, {"self": args}), args


MALFORMED = [
    pytest.param(["--no-such-flag"], "not a vllm serve 0.33.0 flag", id="unknown"),
    pytest.param(["--enable-p"], "ambiguous", id="ambiguous"),
    pytest.param(["--enforce-eager", "yes"], "neither a flag nor the value", id="stray-value"),
    pytest.param(["--max-num-batched-tokens"], "needs a value", id="missing-value"),
    pytest.param(["--enforce-eager=1"], "takes no value", id="value-on-a-switch"),
    pytest.param(["--", "--port"], "ends the options", id="double-dash"),
]


@pytest.mark.parametrize(("args", "hint"), MALFORMED)
def test_arguments_vllm_would_fail_on_are_refused_up_front(args: list[str], hint: str) -> None:
    problems = flags.extra_arg_problems(args)
    assert any(hint in p for p in problems), problems


def test_table_is_vllm_0_33_and_knows_every_owned_destination() -> None:
    table = flags.table()
    assert table.version == "0.33.0"
    dests = {dest for dest, _ in table.options.values()}
    assert flags.refused_dests().keys() <= dests | {"model"}
    assert table.options["-tp"] == ("tensor_parallel_size", None)
    assert table.flag("tensor_parallel_size") == "--tensor-parallel-size"


def test_default_allowlist_names_real_flags_the_operator_does_not_own() -> None:
    for flag in DEFAULT_ALLOWED_EXTRA_ARGS:
        dest = flags.dest_of_flag(flag)
        assert dest is not None, flag
        assert dest not in flags.refused_dests(), flag
