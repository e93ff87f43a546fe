"""Dockerfiles: lint clean with hadolint, and everything they COPY exists in their build context."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voxtral_operator.config import DEFAULT_VLLM_IMAGE

ROOT = Path(__file__).resolve().parents[2]
# Each image and the build context its Dockerfile documents.
IMAGES = {
    "operator": ROOT,
    "vllm-sim": ROOT,
    "vllm-voxtral": ROOT / "images" / "vllm-voxtral",
}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_lints_clean(image: str) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (make lint installs it)")
    result = subprocess.run([hadolint, str(ROOT / "images" / image / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copied_file_exists(image: str) -> None:
    dockerfile = (ROOT / "images" / image / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        *sources, _destination = line.split()[1:]
        for source in sources:
            assert (IMAGES[image] / source).exists(), f"{image}: COPY {source} does not exist"


def test_vllm_image_pins_the_release_the_operator_renders_for() -> None:
    dockerfile = (ROOT / "images" / "vllm-voxtral" / "Dockerfile").read_text()
    pinned = re.search(r"ARG VLLM_VERSION=v([0-9.]+)", dockerfile)
    assert pinned is not None
    assert DEFAULT_VLLM_IMAGE.endswith(":" + pinned.group(1))
    assert "vllm[audio]" in dockerfile


def test_simulator_image_answers_the_operators_command_line() -> None:
    shim = ROOT / "images" / "vllm-sim" / "vllm"
    assert shim.stat().st_mode & 0o111
    result = subprocess.run(["sh", "-n", str(shim)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
