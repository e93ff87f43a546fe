"""Pieces of the local control plane's node agent that need no cluster: image entrypoints, names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from voxtral_testbed.cluster_dns import hosts_text, write_in_place
from voxtral_testbed.node_agent import _at_mounted_paths, load_nodes

ROOT = Path(__file__).resolve().parents[2]


def test_the_node_agent_runs_each_image_with_its_dockerfiles_entrypoint() -> None:
    _nodes, images = load_nodes(ROOT / "e2e" / "cluster" / "nodes.yaml")
    assert images
    for image, entrypoint in images.items():
        if not image.startswith("ghcr.io/voxtral-dev/"):
            continue  # a public image the project does not build (the pre-pull DaemonSet's pause container)
        name = image.rsplit("/", 1)[1].split(":")[0]
        dockerfile = (ROOT / "images" / name.removeprefix("voxtral-") / "Dockerfile").read_text()
        (declared,) = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
        assert json.loads(declared) == entrypoint, image


def test_mount_paths_in_the_command_line_point_at_the_volumes_files() -> None:
    mounts = {"/etc/voxtral-operator": "/state/pods/ns_pod/volumes/config", "/tmp": "/state/pods/ns_pod/volumes/tmp"}
    argv = ["run", "--config=/etc/voxtral-operator/config.yaml", "--liveness=http://0.0.0.0:8080/healthz", "/tmpx"]
    assert _at_mounted_paths(argv, mounts) == [
        "run",
        "--config=/state/pods/ns_pod/volumes/config/config.yaml",
        "--liveness=http://0.0.0.0:8080/healthz",
        "/tmpx",
    ]


def _service(name: str, namespace: str, cluster_ip: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"clusterIP": cluster_ip}}


def test_services_resolve_by_their_cluster_names_and_headless_ones_are_left_out() -> None:
    text = hosts_text(
        [_service("voxtral-small", "speech", "10.96.0.20"), _service("voxtral-small-vllm", "speech", "None")],
        "cluster.local",
    )
    assert "10.96.0.20 voxtral-small.speech.svc.cluster.local voxtral-small.speech.svc voxtral-small.speech\n" in text
    assert "voxtral-small-vllm" not in text
    assert text.startswith("127.0.0.1 localhost\n")


def test_the_hosts_file_is_rewritten_in_place_and_never_shortened(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    write_in_place(hosts, "127.0.0.1 localhost\n10.96.0.20 a.b.svc.cluster.local a.b.svc a.b\n")
    inode = hosts.stat().st_ino
    write_in_place(hosts, "127.0.0.1 localhost\n")
    assert hosts.stat().st_ino == inode  # the bind mounts of the file still see it
    lines = hosts.read_text().splitlines()
    assert lines[0] == "127.0.0.1 localhost"
    assert all(not line.strip() for line in lines[1:])  # the old entry is blanked, not left behind
