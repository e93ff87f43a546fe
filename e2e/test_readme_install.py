"""The README's install section, followed step by step on the local control plane: its shell blocks
run as written (node placeholders filled with this cluster's nodes), in order. What the local cluster
already has (the chart installed by `make cluster`, the prerequisites applied) must be reported as
already there, not fail; every other step must succeed."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import ROOT, Kubectl, LocalCluster, delete_endpoint

pytestmark = pytest.mark.e2e
# Answers that mean the state a step asks for is already there.
ALREADY = ("already exists", "AlreadyExists", "already has", "a name that is still in use")
NODES = {"L4_NODE": ["l4-node-1", "l4-node-2"], "H100_NODE": ["h100-node-1"]}


def _blocks(title: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def _commands(block: str) -> list[str]:
    commands: list[str] = []
    for line in block.strip().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "GPU_NODE" in line:
            continue  # "only without GPU feature discovery": these nodes carry the label already
        placeholders = [p for p in NODES if p in line]
        if placeholders:
            commands += [line.replace(placeholders[0], node) for node in NODES[placeholders[0]]]
        else:
            commands.append(line)
    return commands


def _run(command: str) -> tuple[bool, str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    return result.returncode == 0 or any(words in output for words in ALREADY), output


def test_install_section_is_followable_step_by_step(local: LocalCluster, kubectl: Kubectl) -> None:
    steps = [
        *(c for b in _blocks("Prerequisites") for c in _commands(b)),
        # The operator runs as a local process here (e2e/cluster/operator): it has no pod to take logs of.
        *(c for b in _blocks("Install")[:1] for c in _commands(b) if " logs " not in c),
        *(c for b in _blocks("Create an endpoint") for c in _commands(b)),
        *(c for b in _blocks("Upgrade") for c in _commands(b)),
    ]
    assert any(c.startswith("helm install") for c in steps), steps
    assert any(c.startswith("kubectl apply -f examples/") for c in steps), steps
    try:
        for command in steps:
            ok, output = _run(command)
            assert ok, f"README step failed: {command}\n{output[-2000:]}"
            if command.startswith("kubectl -n speech get vxe"):
                assert "voxtral-small" in output
                assert "True" in output, output
    finally:
        delete_endpoint(kubectl, "voxtral-small", "speech")
    assert (ROOT / "platform.yaml").exists()  # the render step read the platform's own config
    (ROOT / "platform.yaml").unlink()
