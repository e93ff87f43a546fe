"""Rendering: golden output for the examples, schema-valid objects, and every bad input refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from voxtral_operator.api import flags
from voxtral_operator.api.resolve import InvalidSpec, resolve
from voxtral_operator.config import OperatorConfig
from voxtral_operator.gateway.app import Settings
from voxtral_operator.gateway.connections import PER_CONNECTION_BYTES, Limits
from voxtral_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
# The platform lets every namespace use the priority classes the examples and variants name.
PLATFORM = {"defaultPolicy": {"priorityClassNames": ["gpu-inference", "gpu", "high"]}}
CONFIG = OperatorConfig.model_validate(PLATFORM)


def _endpoint(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}}
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "ep", "namespace": "team-a", "uid": "0f7c1a52-0000-4000-8000-000000000001"},
        "spec": {**base, **spec},
    }


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The vLLM side's children by kind (the gateway's are named NAME-gateway)."""
    gateway_side = {"ep-gateway", "ep-vllm", "ep-backend-key"}
    return {obj["kind"]: obj for obj in objects if obj["metadata"]["name"] not in gateway_side}


def _vllm_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployments = [obj for obj in objects if obj["kind"] == "Deployment"]
    containers = [c for d in deployments for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
    (container,) = containers
    return container


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_match_golden_output(example: Path) -> None:
    rendered = yaml.safe_dump_all(render(yaml.safe_load(example.read_text()), CONFIG), sort_keys=False)
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{golden.name} differs; rerun with UPDATE_GOLDEN=1 if intended"


SPEC_VARIANTS = [
    pytest.param({}, id="minimal"),
    pytest.param({"model": "mistralai/Voxtral-Small-24B-2507", "gpu": {"type": "L4-24GB"}}, id="small-tp4-l4"),
    pytest.param(
        {
            "model": "acme/other-audio-model",
            "modelProfile": {"weightsGB": 20},
            "gpu": {"type": "A100-40GB"},
            "modelCache": {"size": "50Gi", "accessMode": "ReadWriteOnce"},
            "nodePool": {
                "nodeSelector": {"pool": "a"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "priorityClassName": "high",
            },
            "engine": {"maxNumSeqs": 8, "maxQueuedRequests": 100, "extraArgs": ["--enforce-eager"]},
            "auth": {"apiKeySecretRef": {"name": "key"}},
            "access": {"fromNamespaces": ["callers", "team-a"], "fromPodLabels": {"role": "client"}},
            "resources": {"cpu": "6", "memory": "40Gi"},
        },
        id="everything-set",
    ),
]


@pytest.mark.parametrize("spec", SPEC_VARIANTS)
def test_rendered_objects_validate_against_kubernetes_1_34(spec: dict[str, Any]) -> None:
    objects = render(_endpoint(**spec), CONFIG)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34", strict=True)


@pytest.mark.parametrize("spec", SPEC_VARIANTS)
def test_every_child_is_labelled_and_owned(spec: dict[str, Any]) -> None:
    for obj in render(_endpoint(**spec), CONFIG):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] in ("voxtral-endpoint", "voxtral-gateway")
        assert labels["app.kubernetes.io/instance"] == "ep"
        assert labels["app.kubernetes.io/managed-by"] == "voxtral-operator"
        assert "app.kubernetes.io/component" in labels
        assert obj["metadata"]["namespace"] == "team-a"
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == "0f7c1a52-0000-4000-8000-000000000001"
        assert owner["kind"] == "VoxtralEndpoint"
        assert owner["controller"] is True


def test_deployment_runs_vllm_as_the_model_card_says() -> None:
    objects = render(_endpoint(model="mistralai/Voxtral-Small-24B-2507", gpu={"type": "A100-40GB"}), CONFIG)
    container = _vllm_container(objects)
    args = container["args"]
    assert args[0] == "mistralai/Voxtral-Small-24B-2507"
    for flag in ("--tokenizer-mode", "--config-format", "--load-format", "--tool-call-parser"):
        assert _flag(args, flag) == "mistral"
    assert "--enable-auto-tool-choice" in args
    assert _flag(args, "--tensor-parallel-size") == "2"  # the smallest TP that fits a 40 GB card
    assert _flag(args, "--limit-mm-per-prompt") == '{"audio":5}'
    assert _flag(args, "--max-model-len") == "32768"
    assert _flag(args, "--served-model-name") == "mistralai/Voxtral-Small-24B-2507"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["VLLM_MAX_AUDIO_DECODE_DURATION_S"]) >= 40 * 60
    assert int(env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"]) > 25
    assert int(env["VLLM_MAX_AUDIO_DECODE_BYTES"]) > 256 * 2**20


def assert_vllm_reads_the_command_line(args: list[str]) -> None:
    """vLLM's parser (through the generated table) knows every flag and sees each destination once."""
    parsed = flags.parse(args)
    assert parsed.problems == [], parsed.problems
    assert [token for _, token in parsed.positionals] == [args[0]], "only the model is positional"
    dests = [d for option in parsed.options for d in option.dests]
    assert all(len(option.dests) == 1 for option in parsed.options)
    assert len(dests) == len(set(dests)), sorted(d for d in dests if dests.count(d) > 1)


@pytest.mark.parametrize("spec", SPEC_VARIANTS)
def test_rendered_command_line_reads_cleanly_in_vllms_parser(spec: dict[str, Any]) -> None:
    assert_vllm_reads_the_command_line(_vllm_container(render(_endpoint(**spec), CONFIG))["args"])


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_command_lines_read_cleanly_in_vllms_parser(example: Path) -> None:
    assert_vllm_reads_the_command_line(_vllm_container(render(yaml.safe_load(example.read_text()), CONFIG))["args"])


def test_startup_budget_grows_with_model_size() -> None:
    def budget(model: str, gpu: str) -> int:
        probe = _vllm_container(render(_endpoint(model=model, gpu={"type": gpu}), CONFIG))["startupProbe"]
        return int(probe["periodSeconds"] * probe["failureThreshold"])

    mini = budget("mistralai/Voxtral-Mini-3B-2507", "H100-80GB")
    small = budget("mistralai/Voxtral-Small-24B-2507", "H100-80GB")
    assert mini >= 300
    assert small >= 20 * 60 > mini


def test_api_key_comes_from_the_secret_never_inline() -> None:
    objects = render(
        _endpoint(auth={"apiKeySecretRef": {"name": "k", "key": "token"}}, gateway={"enabled": False}), CONFIG
    )
    container = _vllm_container(objects)
    (key_env,) = [e for e in container["env"] if e["name"] == "VLLM_API_KEY"]
    assert key_env == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "token"}}}
    assert not any(a.startswith("--api-key") for a in container["args"])


def test_rollout_and_shutdown_never_need_a_spare_gpu_or_cut_requests() -> None:
    objects = render(_endpoint(engine={"shutdownTimeoutSeconds": 300}), CONFIG)
    deployment = _by_kind(objects)["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert _flag(pod["containers"][0]["args"], "--shutdown-timeout") == "300"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 300
    assert pod["securityContext"]["runAsNonRoot"] is True
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_node_pool_pinning() -> None:
    objects = render(
        _endpoint(
            gpu={"type": "H100-80GB"},
            nodePool={
                "nodeSelector": {"pool": "reserved"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}],
                "priorityClassName": "gpu",
            },
        ),
        CONFIG,
    )
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "reserved"}
    assert {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "gpu"


def test_network_policy_admits_only_allowed_callers_and_the_operator() -> None:
    objects = render(_endpoint(access={"fromNamespaces": ["callers"]}, gateway={"enabled": False}), CONFIG)
    policy = _by_kind(objects)["NetworkPolicy"]["spec"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    namespaces = [p.get("namespaceSelector", {}).get("matchLabels", {}) for p in rule["from"]]
    assert {} in namespaces  # same namespace: a bare podSelector
    assert {"kubernetes.io/metadata.name": "callers"} in namespaces
    assert {"kubernetes.io/metadata.name": CONFIG.operator_namespace} in namespaces
    assert len(rule["from"]) == 3


def test_cache_pvc_only_when_requested() -> None:
    without = _by_kind(render(_endpoint(), CONFIG))
    assert "PersistentVolumeClaim" not in without
    with_cache = _by_kind(render(_endpoint(modelCache={"size": "80Gi", "storageClassName": "rwx"}), CONFIG))
    pvc = with_cache["PersistentVolumeClaim"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "80Gi"
    volumes = with_cache["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in volumes


def test_spec_values_cannot_inject_yaml_structure() -> None:
    hostile = 'x"}, injected: true, {"- --api-key=stolen'
    objects = render(_endpoint(servedModelName=hostile), CONFIG)
    args = _vllm_container(objects)["args"]
    assert _flag(args, "--served-model-name") == hostile
    assert "injected" not in objects[0]["spec"]


def test_operator_config_overrides_gpu_labels_and_image() -> None:
    config = OperatorConfig.model_validate(
        {
            "vllmImage": "registry.local/vllm:pinned",
            "gpuNodeLabel": "cloud.google.com/gke-accelerator",
            "gpuOverrides": {"L4-24GB": {"productLabel": "nvidia-l4"}},
        }
    )
    pod = _by_kind(render(_endpoint(), config))["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["containers"][0]["image"] == "registry.local/vllm:pinned"


BAD_INPUTS = [
    pytest.param({"model": "acme/unknown"}, "spec.model", "modelProfile.weightsGB", id="unknown-model"),
    pytest.param({"gpu": {"type": "T4-16GB"}}, "spec.gpu.type", "L4-24GB", id="unknown-gpu"),
    pytest.param({"tensorParallelSize": 3}, "spec.tensorParallelSize", "1, 2, 4 or 8", id="tp-3"),
    pytest.param(
        {"model": "mistralai/Voxtral-Small-24B-2507", "tensorParallelSize": 1},
        "spec.tensorParallelSize",
        "fits with tensorParallelSize 4 on L4-24GB",
        id="small-on-one-l4",
    ),
    pytest.param({"minReplicas": 3, "maxReplicas": 2}, "spec.minReplicas", "maxReplicas", id="min-gt-max"),
    pytest.param({"replicas": 5, "maxReplicas": 3}, "spec.replicas", "[minReplicas 1, maxReplicas 3]", id="replicas"),
    pytest.param({"gpus": 2}, "spec.gpus", "unknown key (did you mean gpu?)", id="unknown-field"),
    pytest.param({"colour": "red"}, "spec.colour", "unknown key (known keys: model, ", id="unknown-key-lists-known"),
    pytest.param(
        {"autoscaling": {"scaleDownDelaySecond": 60}},
        "spec.autoscaling.scaleDownDelaySecond",
        "unknown key (did you mean scaleDownDelaySeconds?)",
        id="typo",
    ),
    pytest.param(
        {"engine": {"extraArgs": ["--enforce-eager", "--tensor-parallel-size=2"]}},
        "spec.engine.extraArgs",
        "'--tensor-parallel-size=...' sets --tensor-parallel-size",
        id="owned-flag",
    ),
    pytest.param(
        {
            "engine": {"maxModelLen": 32768, "gpuMemoryUtilization": 0.5},
            "model": "mistralai/Voxtral-Small-24B-2507",
            "gpu": {"type": "H100-80GB"},
            "tensorParallelSize": 1,
        },
        "spec.tensorParallelSize",
        "tensorParallelSize 2 on H100-80GB",
        id="low-utilization",
    ),
]


@pytest.mark.parametrize(("spec", "field", "hint"), BAD_INPUTS)
def test_bad_input_is_refused_naming_the_field(spec: dict[str, Any], field: str, hint: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        resolve(_endpoint(**spec), CONFIG)
    assert any(p.startswith(field + ":") and hint in p for p in caught.value.problems), caught.value.problems


@pytest.fixture(scope="module")
def platform_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(PLATFORM))
    return path


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxtral_operator.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(("spec", "field", "hint"), BAD_INPUTS)
def test_cli_render_exits_2_with_the_message_and_prints_nothing(spec: dict[str, Any], field: str, hint: str) -> None:
    result = _cli("render", "-f", "-", stdin=yaml.safe_dump(_endpoint(**spec)))
    assert result.returncode == 2
    assert result.stdout == ""
    assert field in result.stderr
    assert hint in result.stderr


def test_cli_render_prints_every_object_of_the_example(platform_config: Path) -> None:
    result = _cli("render", "--config", str(platform_config), "-f", str(ROOT / "examples" / "small-on-h100.yaml"))
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout)]
    vllm = ["PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    gateway = ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Secret", "ServiceAccount", "Role"]
    assert sorted(kinds) == sorted([*vllm, *gateway, "RoleBinding"])


def test_cli_crd_prints_the_committed_crd() -> None:
    result = _cli("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "voxtralendpoints.voxtral.dev.yaml").read_text()


def test_keda_mode_renders_a_scaled_object_on_the_scale_subresource() -> None:
    objects = _by_kind(
        render(_endpoint(minReplicas=1, maxReplicas=5, autoscaling={"mode": "keda", "targetQueueDepth": 3}), CONFIG)
    )
    scaled = objects["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "voxtral.dev/v1alpha1", "kind": "VoxtralEndpoint", "name": "ep"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 5)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "3"
    query = trigger["metadata"]["query"]
    selected = re.fullmatch(r'sum\(vllm:num_requests_waiting\{namespace="team-a",pod=~"([^"]+)"\}\)', query)
    assert selected, query
    # PromQL anchors the pattern, as fullmatch does: the pool's and the overflow's replicas, no other pods.
    pods = {
        "ep-7d9f8b6c5d-x2k4q": True,
        "ep-overflow-6b8c9d7f4-p9z8w": True,
        "ep-gateway-5f6d7c8b9-q1w2e": False,
        "ep-2-7d9f8b6c5d-x2k4q": False,
        "other-7d9f8b6c5d-x2k4q": False,
    }
    assert {pod: bool(re.fullmatch(selected.group(1), pod)) for pod in pods} == pods
    assert "ScaledObject" not in _by_kind(render(_endpoint(), CONFIG))
    assert "ScaledObject" not in _by_kind(render(_endpoint(autoscaling={"mode": "keda", "enabled": False}), CONFIG))


def test_the_gateways_memory_limit_holds_its_budgets_and_every_connections_buffer() -> None:
    objects = render(_endpoint(), CONFIG)
    (gateway,) = [obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ep-gateway"]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi"), limit
    args = container["args"]
    for flag in ("--max-connections", "--json-buffer-mb", "--resend-buffer-mb"):
        assert flag not in args, f"{flag} is rendered: the budget below assumes its default"
    settings, idle = Settings(), 70 * 2**20
    # JSON bodies read whole peak at about twice their budget; kept bodies once theirs.
    needed = (
        idle
        + 2 * settings.json_buffer_bytes
        + settings.resend_buffer_bytes
        + Limits().max_connections * PER_CONNECTION_BYTES
    )
    assert needed <= int(limit[:-2]) * 2**30, f"{needed / 2**20:.0f} MiB needed, limit {limit}"
