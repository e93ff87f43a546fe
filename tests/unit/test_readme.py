"""The README documents what a platform engineer configures and runs."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from voxtral_operator import cli
from voxtral_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


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


def test_the_layout_names_every_module_and_folder() -> None:
    layout = section("Layout")
    for package in (ROOT / "operator" / "voxtral_operator", ROOT / "testbed" / "voxtral_testbed"):
        for child in package.iterdir():
            if child.name.startswith("_") or child.suffix not in (".py", ""):
                continue
            assert (f"{child.name}/" if child.is_dir() else child.name) in layout, child.relative_to(ROOT)
    for top in ROOT.iterdir():
        if top.is_dir() and not top.name.startswith(".") and top.name not in ("build", "dist", "__pycache__"):
            assert f"{top.name}/" in layout, top.name


def test_the_get_vxe_sample_shows_the_crds_columns() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "voxtralendpoints.voxtral.dev.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")]
    sample = section("The operator loop").split("\n  NAME ", 1)[1].splitlines()[0]
    assert ["NAME", *columns] == ("NAME " + sample).split()


def test_make_images_prints_the_readmes_image_builds() -> None:
    printed = subprocess.run(
        ["make", "-s", "images", "REGISTRY=$$REGISTRY"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    block = section("Install on a cluster").split("### Images", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    documented = [line for line in block.splitlines() if line.startswith("docker ")]
    assert documented, block
    for line in documented:
        assert line in printed.splitlines(), (line, printed)
