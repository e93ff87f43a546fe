"""Dockerfiles: lint clean with hadolint, and everything they COPY exists in their build context."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voxtral_operator.config import DEFAULT_VLLM_IMAGE, OperatorConfig
from voxtral_operator.render import CACHE_MOUNT_PATH

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


# --- the vLLM image's weights: where the hub cache is, baked or not ---------------------------

_SUBSTITUTION = re.compile(r"\$\{(\w+)(?::([-+])([^}]*))?\}")


def _expand(text: str, variables: dict[str, str]) -> str:
    """Dockerfile environment replacement: ${VAR}, ${VAR:-word} (word if unset or empty), ${VAR:+word}."""

    def one(match: re.Match[str]) -> str:
        value = variables.get(match.group(1), "")
        if match.group(2) == "-":
            return value or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if value else ""
        return value

    return _SUBSTITUTION.sub(one, text)


def final_stage_env(build_args: dict[str, str]) -> dict[str, str]:
    """The ENV of the default target (the last stage) as `docker build --build-arg ...` would set it."""
    dockerfile = (ROOT / "images" / "vllm-voxtral" / "Dockerfile").read_text().replace("\\\n", " ")
    stage = dockerfile.split("\nFROM ")[-1]
    variables: dict[str, str] = {}
    for line in stage.splitlines():
        words = line.split(maxsplit=1)
        if len(words) < 2 or words[0] not in ("ARG", "ENV"):
            continue
        updates = {}
        for assignment in words[1].split():
            name, _, default = assignment.partition("=")
            if words[0] == "ARG":
                updates[name] = build_args.get(name, default.strip('"'))
            else:  # every reference in one ENV sees the values from before it
                updates[name] = _expand(default, variables)
        variables.update(updates)
    return {name: value for name, value in variables.items() if name.isupper()}


def _pod_hf_home() -> str:
    from voxtral_operator.api.resolve import resolve
    from voxtral_operator.render import vllm_env

    endpoint = {
        "metadata": {"name": "ep"},
        "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}},
    }
    (home,) = [e["value"] for e in vllm_env(resolve(endpoint, OperatorConfig())) if e["name"] == "HF_HOME"]
    return str(home)


def test_without_bake_model_the_hub_cache_is_the_pods_model_cache() -> None:
    env = final_stage_env({})
    assert env["HF_HUB_CACHE"] == f"{_pod_hf_home()}/hub"  # HF_HOME/hub: the model-cache volume
    assert env["HF_HUB_OFFLINE"] == "0"


def test_bake_model_alone_bakes_outside_the_model_cache_mount_and_runs_offline() -> None:
    env = final_stage_env({"BAKE_MODEL": "mistralai/Voxtral-Mini-3B-2507"})
    assert env["BAKED_MODEL"] == "mistralai/Voxtral-Mini-3B-2507"
    assert env["HF_HUB_OFFLINE"] == "1"
    # The pod mounts its model cache here: baked weights below it would be hidden by the mount.
    assert not env["HF_HUB_CACHE"].startswith(CACHE_MOUNT_PATH + "/")
    dockerfile = (ROOT / "images" / "vllm-voxtral" / "Dockerfile").read_text()
    last_stage = dockerfile.split("\nFROM ")[-1]
    assert "snapshot_download" in last_stage  # the default target is the one that downloads
    assert f"chown 1000:1000 {CACHE_MOUNT_PATH} {env['HF_HUB_CACHE']}" in dockerfile  # writable by vLLM's user
