"""The README's install section, walked as written on a bare local control plane (`e2e/cluster/up
--bare`: nodes and a StorageClass, nothing installed): every shell block of its subsections runs, in
order, as one script that stops at the first failing command, with the node placeholders filled with
this cluster's nodes. Left out, and why: the image builds (there is no Docker engine here; the nodes
run the chart's images from this checkout) and the node label only needed without GPU feature
discovery (these nodes carry it). Afterwards the cluster is set up again as `make cluster` has it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import ROOT, LocalCluster

pytestmark = pytest.mark.e2e
NODES = {"L4_NODE": ["l4-node-1", "l4-node-2"], "H100_NODE": ["h100-node-1"]}
SUBSECTIONS = ("Prerequisites", "Install", "Create an endpoint", "Upgrade")


def _blocks(title: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Install on a cluster\n", 1)[1].split("\n## ", 1)[0]
    subsection = section.split(f"\n### {title}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", subsection, re.S)


def _script(block: str) -> str:
    """The block with each node placeholder's line repeated for every such node of this cluster."""
    lines: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if "GPU_NODE" in line:
            continue  # "only without GPU feature discovery": these nodes carry the label already
        placeholders = [p for p in NODES if p in line]
        lines += [line.replace(placeholders[0], node) for node in NODES[placeholders[0]]] if placeholders else [line]
    return "\n".join(lines)


def _run(script: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{ROOT / '.tools'}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-xc", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_install_section_walks_as_written_on_a_bare_cluster(local: LocalCluster) -> None:
    blocks = [(title, _script(block)) for title in SUBSECTIONS for block in _blocks(title)]
    scripts = "\n".join(script for _, script in blocks)
    for needed in ("helm install", "kubectl apply -f examples/", "logs deploy/voxtral-operator", '"$URL/models"'):
        assert needed in scripts, needed
    bare = _run(f"{ROOT}/e2e/cluster/up --bare", timeout=900)
    assert bare.returncode == 0, bare.stderr[-3000:]
    try:
        outputs = []
        for title, script in blocks:
            result = _run(script)
            outputs.append(result.stdout)
            assert result.returncode == 0, f"README, {title}: a command failed\n{script}\n{result.stderr[-3000:]}"
        everything = "\n".join(outputs)
        # kubectl logs deploy/voxtral-operator: the version, then the process's identity (host/pid)
        assert re.search(r"voxtral-operator 0\.1\.0 \([^)\s]+/\d+\) starting", everything), everything
        assert re.search(r"voxtral-small +mistralai/Voxtral-Small-24B-2507 .* True ", everything), everything
        assert '"id":"voxtral-small"' in everything.replace(" ", "")  # status.url, called with the key
    finally:
        (ROOT / "platform.yaml").unlink(missing_ok=True)
        # The example's namespace goes with the endpoint in it (and whatever a failed step left), then
        # the cluster is set up as `make cluster` has it, for the tests after this one.
        _run("kubectl delete namespace speech call-center --ignore-not-found --timeout=600s", timeout=900)
        restored = _run(f"{ROOT}/e2e/cluster/up", timeout=900)
        assert restored.returncode == 0, restored.stderr[-3000:]
