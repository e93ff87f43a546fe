"""The README documents what a platform engineer configures and runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from voxtral_operator import cli
from voxtral_operator.config import OperatorConfig

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("key", [field.alias or name for name, field in OperatorConfig.model_fields.items()])
def test_every_config_key_is_in_the_configuration_table(key: str) -> None:
    assert f"| `{key}` |" in section("Operator configuration")


def test_every_command_is_described() -> None:
    (commands,) = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = section("The command line")
    for name in commands.choices:
        assert f"`{name}" in text, name


def test_the_install_section_covers_prerequisites_images_and_the_crd_upgrade() -> None:
    text = section("Install on a cluster")
    for needed in (
        "nvidia.com/gpu.product",  # node labels
        "kubectl taint node",
        "kubectl create priorityclass gpu-inference",
        "filestore-rwx",  # the StorageClass the example names
        "docker push",
        "--set image.repository=",
        "operatorConfig.vllmImage=",
        "kubectl apply --server-side --force-conflicts -f charts/voxtral-operator/crds/",
    ):
        assert needed in text, needed
