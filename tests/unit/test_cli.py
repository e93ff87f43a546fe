"""The `voxtral-operator` command as a user runs it: a subprocess of the installed entry point.

A user's mistake ends in a message and a non-zero exit, never a traceback; input is read as
kubectl reads it (several documents, lists, `kind: List`, directories, repeated -f).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from voxtral_operator import cli

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "examples" / "mini-on-l4.yaml"
SMALL = ROOT / "examples" / "small-on-h100.yaml"
# The console script pip installed beside this interpreter: what a user runs.
COMMAND = Path(sys.executable).with_name("voxtral-operator")
# A hang (an alias bomb expanded, a retry loop) fails the test instead of stalling the suite.
TIMEOUT = 60


def run(
    *args: str, stdin: bytes | str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run(
        [str(COMMAND), *args], input=data, capture_output=True, check=False, timeout=TIMEOUT, env=env
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A refusal: non-zero, nothing on stdout, `error:` lines naming the fragments, no traceback."""
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def endpoint(name: str, namespace: str = "speech") -> dict[str, Any]:
    body = yaml.safe_load(MINI.read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    return body


def deployments(stdout: str) -> list[str]:
    """The vLLM Deployments (each endpoint's gateway has its own, NAME-gateway)."""
    return [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(stdout)
        if doc["kind"] == "Deployment" and not doc["metadata"]["name"].endswith("-gateway")
    ]


# --- the config file ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["render", "run"])
def test_a_missing_config_file_is_one_message(command: str) -> None:
    args = ["-f", str(MINI)] if command == "render" else []
    refused(
        run(command, "--config", "/nonexistent/voxtral.yaml", *args), "config /nonexistent/voxtral.yaml: no such file"
    )


CONFIG_MISTAKES = [
    pytest.param(
        "scrapeIntervalSecond: 5\n",
        "scrapeIntervalSecond: unknown key (did you mean scrapeIntervalSeconds?)",
        id="typo",
    ),
    pytest.param(
        "gpuOverrides: {L4-24GB: {memoryGb: 22}}\n",
        "gpuOverrides.L4-24GB.memoryGb: unknown key (did you mean memoryGB?)",
        id="nested-typo",
    ),
    pytest.param("vllmPort: eighty\n", "vllmPort: Input should be a valid integer", id="bad-value"),
    pytest.param("- vllmImage: x\n", "expected a mapping of settings, found a list", id="not-a-mapping"),
    pytest.param("vllmImage: [unclosed\n", "line 2, column 1", id="bad-yaml"),
    pytest.param("vllmPort: 1\nvllmPort: 2\n", "line 2, column 1: duplicate key 'vllmPort'", id="duplicate-key"),
    pytest.param(
        "gpuHourlyPrices: {L4-24GB: 1e308}\n",
        "gpuHourlyPrices.L4-24GB: Input should be less than or equal to 10000",
        id="price-json-cannot-total",
    ),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_MISTAKES)
@pytest.mark.parametrize("command", ["render", "run"])
def test_config_mistakes_name_the_key(tmp_path: Path, command: str, text: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    args = ["-f", str(MINI)] if command == "render" else []
    refused(run(command, "--config", str(config), *args), f"config {config}: {message}")


def test_run_without_a_kubeconfig_is_one_line_and_exits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(tmp_path / "missing-kubeconfig"), HOME=str(tmp_path))
    result = run("run", "--liveness", "", "--metrics-port", "0", env=env)
    assert result.returncode == cli.EXIT_FAILED
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: no Kubernetes credentials: kubeconfig ")
    assert "KUBECONFIG" in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--metrics-port", "99999"), "99999 is not a port (0-65535)"),
        (("--metrics-port", "-1"), "-1 is not a port (0-65535)"),
        (("--liveness", "notaurl"), "expected http://HOST:PORT/PATH"),
        (("--liveness", "http://127.0.0.1:70000/healthz"), "its port is not a port"),
        (("--liveness", "http://127.0.0.1:9090/healthz"), "port 9090 is also --metrics-port"),
    ],
)
def test_run_refuses_ports_it_could_not_serve_on_before_anything_starts(
    tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    # Checked before the credentials: a newcomer's typo is named, not an internal error from kopf.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(tmp_path / "missing-kubeconfig"), HOME=str(tmp_path))
    result = run("run", *options, env=env)
    assert result.returncode == cli.EXIT_USAGE, (result.returncode, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr


KUBECONFIG_NOWHERE = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize("which", ["liveness", "metrics"])
def test_run_names_a_port_already_taken_and_exits(tmp_path: Path, which: str) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG_NOWHERE)  # credentials that load; never reached
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(tmp_path / "kubeconfig"), HOME=str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        if which == "liveness":
            options = ("--liveness", f"http://127.0.0.1:{port}/healthz", "--metrics-port", "0")
        else:
            options = ("--liveness", "", "--metrics-port", str(port))
        result = run("run", *options, env=env)
    assert result.returncode == cli.EXIT_FAILED, (result.returncode, result.stderr)
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"{port}" in error, error
    assert error.endswith("cannot listen there (Address already in use)"), error
    assert "Traceback" not in result.stderr, result.stderr


# --- empty input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "# only a comment\n",
        "---\n---\n",
        "--- # a comment\n...\n",
        "null\n",
        "[]\n",
        "{kind: List, items: []}\n",
    ],
    ids=["empty", "blank", "comment", "two-empty-documents", "end-markers", "null", "empty-list", "empty-List"],
)
def test_empty_input_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    refused(run("render", "-f", str(path)), f"{path}: no objects in it")
    refused(run("render", "-f", "-", stdin=text), "<stdin>: no objects in it")


def test_dev_null_is_refused() -> None:
    refused(run("render", "-f", "/dev/null"), "/dev/null: no objects in it")


def test_a_directory_without_manifests_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a manifest")
    refused(run("render", "-f", str(tmp_path)), f"{tmp_path}: no manifest files in this directory")


def test_a_missing_file_is_one_message() -> None:
    refused(run("render", "-f", "/nonexistent/endpoint.yaml"), "/nonexistent/endpoint.yaml: no such file")


# --- documents, lists, directories --------------------------------------------------------


def test_every_document_of_a_multi_document_file_is_rendered(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("# two endpoints\n---\n" + yaml.safe_dump_all([endpoint("a"), endpoint("b")]) + "---\n")
    result = run("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["a", "b"]


def test_a_yaml_list_of_endpoints_is_rendered(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([endpoint("a"), endpoint("b")]))
    result = run("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["a", "b"]


@pytest.mark.parametrize("kind", ["List", "VoxtralEndpointList"])
def test_a_kind_list_is_rendered(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": kind, "items": [endpoint("a"), endpoint("b")]}))
    result = run("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["a", "b"]


def test_a_directory_renders_its_manifests_sorted_by_name(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(yaml.safe_dump(endpoint("from-b-yml")))
    (tmp_path / "a.json").write_text(json.dumps(endpoint("from-a-json"), indent="\t"))  # tabs: JSON, not YAML
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(endpoint("from-c-yaml")))
    (tmp_path / "README.md").write_text("# not a manifest: skipped, as kubectl skips it\n")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "d.yaml").write_text(yaml.safe_dump(endpoint("not-read")))  # not recursive
    result = run("render", "-f", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["from-a-json", "from-b-yml", "from-c-yaml"]


def test_filename_can_be_repeated_and_mixed_with_stdin(tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump(endpoint("one")))
    two.write_text(yaml.safe_dump(endpoint("two")))
    result = run("render", "-f", str(one), "-f", "-", "--filename", str(two), stdin=yaml.safe_dump(endpoint("stdin")))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["one", "stdin", "two"]


def test_a_refusal_names_the_file_and_document(tmp_path: Path) -> None:
    bad = endpoint("bad")
    bad["spec"]["gpu"]["type"] = "T4-16GB"
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump_all([endpoint("good"), bad]))
    refused(run("render", "-f", str(path)), f"error: {path}, document 2: VoxtralEndpoint bad: spec.gpu.type")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just a string\n", "expected a Kubernetes object, found a string"),
        ("- 1\n- 2\n", "item 1: expected an object, found a number"),
        ("kind: List\nitems: nope\n", "a List needs `items`"),
    ],
    ids=["scalar", "list-of-numbers", "List-without-items"],
)
def test_documents_that_are_not_objects_are_refused(text: str, message: str) -> None:
    refused(run("render", "-f", "-", stdin=text), message)


# --- hostile input ------------------------------------------------------------------------


def test_non_utf8_input_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINI.read_text().replace("# Voxtral Mini", "# Voxtral Mini (café)").encode("latin-1"))
    refused(
        run("render", "-f", str(path)), f"{path}: line 1: not UTF-8 text (byte 0xe9 at offset", "save the file as UTF-8"
    )


def test_utf16_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "utf16.yaml"
    path.write_bytes(MINI.read_text().encode("utf-16"))
    result = run("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert deployments(result.stdout) == ["voxtral-mini"]


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_yaml_alias_bomb_is_refused() -> None:
    refused(run("render", "-f", "-", stdin=BILLION_LAUGHS), "more than 250000 values (after expanding YAML aliases)")


def test_a_recursive_alias_is_refused() -> None:
    refused(run("render", "-f", "-", stdin="spec: &s {engine: {extraArgs: *s}}\n"), "nested more than 64 levels deep")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 200 + "]" * 200, "nested more than 64 levels deep"),
        ("[" * 100_000, "nested"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested"),
        ("".join(f"{'  ' * i}k:\n" for i in range(500)), "nested more than 64 levels deep"),
    ],
    ids=["flow-200", "flow-100000-unclosed", "json-100000", "block-500"],
)
def test_deep_nesting_is_refused(text: str, message: str) -> None:
    refused(run("render", "-f", "-", stdin=text), message)


def test_input_above_the_size_limit_is_refused() -> None:
    refused(run("render", "-f", "-", stdin="# padding\n" * 500_000), "larger than 4 MiB")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!python/object/apply:os.system [true]\n", "the tag !!python/object/apply:os.system is not allowed"),
        ("metadata: {name: !!pairs [a: 1]}\n", "the tag !!pairs is not allowed"),
        ("metadata: {labels: !!set {a}}\n", "the tag !!set is not allowed"),
        ("spec: !custom {}\n", "the tag !custom is not allowed"),
        ("spec: {replicas: 1}\nspec: {replicas: 2}\n", "line 2, column 1: duplicate key 'spec'"),
        ("? [a, b]\n: c\n", "a mapping key must be a string"),
        ("spec: {replicas: .inf}\n", "JSON has no infinite or NaN numbers"),
        ('{"spec": {"replicas": NaN}}', "NaN is not a JSON number"),
        ("spec: {replicas: " + "9" * 5000 + "}\n", "this number is too large"),
        ('{"metadata": {"name": "\\ud800"}}', "lone surrogate"),
        ("metadata: {name: [unclosed\n", "line 2, column 1"),
    ],
    ids=[
        "python-tag",
        "pairs",
        "set",
        "custom-tag",
        "duplicate-key",
        "complex-key",
        "infinity",
        "json-nan",
        "huge-integer",
        "lone-surrogate",
        "syntax-error",
    ],
)
def test_values_json_cannot_carry_are_refused_with_their_place(text: str, message: str) -> None:
    refused(run("render", "-f", "-", stdin=text), message)


# --- version and help ---------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"voxtral-operator {version('voxtral-operator')}"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_help_lists_every_subcommand_and_flag() -> None:
    result = run("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(_subcommands()) <= listed, result.stdout
    assert "--version" in result.stdout
    for name, subcommand in _subcommands().items():
        assert f"voxtral-operator {name} " in result.stdout
        for action in subcommand._actions:
            assert any(option in result.stdout for option in action.option_strings), (name, action.option_strings)


@pytest.mark.parametrize("subcommand", sorted(_subcommands()))
def test_every_flag_of_every_subcommand_has_help(subcommand: str) -> None:
    result = run(subcommand, "--help")
    assert result.returncode == 0
    for action in _subcommands()[subcommand]._actions:
        assert action.help, f"{subcommand} {action.option_strings}: no help text"
        for option in action.option_strings:
            assert option in result.stdout


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf"])
def test_the_gateway_refuses_a_read_interval_that_is_no_interval(seconds: str) -> None:
    args = ("--namespace", "ns", "--endpoint", "ep", "--backend-service", "ep-vllm")
    result = run("gateway", *args, "--take-back-read-seconds", seconds)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"--take-back-read-seconds must be 0 or more seconds, not {seconds}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--queue-timeout-seconds", "nan", "--queue-timeout-seconds must be a positive number, not nan"),
        ("--max-upload-mb", "nan", "--max-upload-mb must be a positive number, not nan"),
        ("--realtime-max-session-seconds", "inf", "--realtime-max-session-seconds must be a positive number, not inf"),
        ("--json-buffer-mb", "nan", "--json-buffer-mb must be 0 or more, not nan"),
        ("--resend-buffer-mb", "-1", "--resend-buffer-mb must be 0 or more, not -1"),
    ],
)
def test_the_gateway_refuses_numbers_that_bound_nothing(flag: str, value: str, message: str) -> None:
    args = ("--namespace", "ns", "--endpoint", "ep", "--backend-service", "ep-vllm")
    result = run("gateway", *args, flag, value)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr, result.stderr
