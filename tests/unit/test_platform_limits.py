"""The platform team sets the limits (operator config), the endpoint author chooses within them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

from voxtral_operator.api.resolve import InvalidSpec, resolve
from voxtral_operator.config import OperatorConfig
from voxtral_operator.render import NO_MEDIA_DOMAIN, render

DEFAULTS = OperatorConfig()


def _endpoint(namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}}
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "ep", "namespace": namespace},
        "spec": {**base, **spec},
    }


def _refused(endpoint: dict[str, Any], config: OperatorConfig, field: str, hint: str, **kwargs: Any) -> None:
    with pytest.raises(InvalidSpec) as caught:
        resolve(endpoint, config, **kwargs)
    assert any(p.startswith(field) and hint in p for p in caught.value.problems), caught.value.problems


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "ep"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


REFUSED_BY_DEFAULT = [
    pytest.param({"engine": {"extraArgs": ["--trust-remote-code"]}}, "spec.engine.extraArgs[0]", "allowedExtraArgs"),
    pytest.param(
        {"engine": {"extraArgs": ["--allowed-local-media-path", "/"]}}, "spec.engine.extraArgs[0]", "allowedExtraArgs"
    ),
    pytest.param({"engine": {"extraArgs": ["--middleware", "x.y"]}}, "spec.engine.extraArgs[0]", "allowedExtraArgs"),
    pytest.param(
        {"engine": {"extraArgs": ["--otlp-traces-endpoint", "http://x"]}},
        "spec.engine.extraArgs[0]",
        "allowedExtraArgs",
    ),
    pytest.param({"engine": {"extraArgs": ["--hf-token", "t"]}}, "spec.engine.extraArgs[0]", "allowedExtraArgs"),
    pytest.param(
        {"engine": {"extraArgs": ["--enforce-eager", "-dp", "4"]}}, "spec.engine.extraArgs[1]", "allowedExtraArgs"
    ),
    pytest.param({"image": "attacker/vllm:latest"}, "spec.image", "allowedImages"),
    pytest.param({"engine": {"allowedMediaDomains": ["example.com"]}}, "spec.engine.allowedMediaDomains[0]", "none"),
    pytest.param(
        {"gpu": {"type": "L4-24GB"}, "nodePool": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"}}},
        "spec.nodePool.nodeSelector",
        "GPU product selector",
    ),
    pytest.param(
        {"nodePool": {"tolerations": [{"operator": "Exists"}]}}, "spec.nodePool.tolerations[0]", "every taint"
    ),
    pytest.param(
        {"nodePool": {"priorityClassName": "system-node-critical"}}, "spec.nodePool.priorityClassName", "system-*"
    ),
    pytest.param({"nodePool": {"priorityClassName": "high"}}, "spec.nodePool.priorityClassName", "allowed: none"),
    pytest.param(
        {"model": "mistralai/Voxtral-Small-24B-2507", "gpu": {"type": "L4-24GB"}, "maxReplicas": 5},
        "spec.maxReplicas",
        "20 GPUs",
    ),
]


@pytest.mark.parametrize(("spec", "field", "hint"), REFUSED_BY_DEFAULT)
def test_the_default_platform_limits_refuse(spec: dict[str, Any], field: str, hint: str) -> None:
    _refused(_endpoint(**spec), DEFAULTS, field, hint)


def test_the_gpu_selector_is_the_operators_even_under_a_configured_label() -> None:
    config = OperatorConfig.model_validate({"gpuNodeLabel": "cloud.google.com/gke-accelerator"})
    for key in ("cloud.google.com/gke-accelerator", "nvidia.com/gpu.product"):
        spec = {"nodePool": {"nodeSelector": {key: "nvidia-h200"}}}
        _refused(_endpoint(**spec), config, "spec.nodePool.nodeSelector", "cannot be overridden")


PLATFORM = OperatorConfig.model_validate(
    {
        "allowedExtraArgs": ["--enforce-eager", "--trust-remote-code"],
        "allowedImages": ["registry.local/vllm:*"],
        "allowedMediaDomains": ["*.example.com"],
        "namespacePolicies": [
            {
                "namespaces": ["speech"],
                "gpuTypes": ["H100-80GB"],
                "maxGpusPerEndpoint": 8,
                "priorityClassNames": ["gpu-inference"],
                "nodeSelector": {"pool": ["h100-reserved"]},
                "tolerations": [{"key": "dedicated", "value": "speech"}],
            },
            {"namespaceLabels": {"tier": "research"}, "tolerateAllTaints": True},
        ],
        "defaultPolicy": {"gpuTypes": ["L4-24GB"], "nodeSelector": {}, "tolerations": []},
    }
)


def test_within_its_namespace_policy_an_endpoint_renders() -> None:
    spec = {
        "gpu": {"type": "H100-80GB"},
        "image": "registry.local/vllm:0.33.0-audio",
        "maxReplicas": 8,
        "nodePool": {
            "nodeSelector": {"pool": "h100-reserved"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "speech", "effect": "NoSchedule"}],
            "priorityClassName": "gpu-inference",
        },
        "engine": {"extraArgs": ["--trust-remote-code"], "allowedMediaDomains": ["audio.example.com"]},
    }
    pod = _pod(render(_endpoint("speech", **spec), PLATFORM))
    assert pod["priorityClassName"] == "gpu-inference"
    assert pod["containers"][0]["image"] == "registry.local/vllm:0.33.0-audio"
    args = pod["containers"][0]["args"]
    assert args[args.index("--allowed-media-domains") + 1] == "audio.example.com"


NAMESPACE_POLICY_REFUSALS = [
    pytest.param("speech", {"gpu": {"type": "L4-24GB"}}, "spec.gpu.type", "allowed: H100-80GB", id="gpu-type"),
    pytest.param(
        "speech",
        {"gpu": {"type": "H100-80GB"}, "maxReplicas": 9},
        "spec.maxReplicas",
        "at most 8 per endpoint",
        id="max-gpus",
    ),
    pytest.param(
        "speech",
        {"gpu": {"type": "H100-80GB"}, "nodePool": {"nodeSelector": {"pool": "other-team"}}},
        "spec.nodePool.nodeSelector",
        "pool='other-team'",
        id="node-selector-value",
    ),
    pytest.param(
        "speech",
        {"gpu": {"type": "H100-80GB"}, "nodePool": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
        "spec.nodePool.tolerations[0]",
        "not allowed",
        id="toleration-any-value",
    ),
    pytest.param(
        "other",
        {"nodePool": {"nodeSelector": {"pool": "h100-reserved"}}},
        "spec.nodePool.nodeSelector",
        "namespace 'other'",
        id="default-policy",
    ),
    pytest.param(
        "other",
        {"nodePool": {"priorityClassName": "gpu-inference"}},
        "spec.nodePool.priorityClassName",
        "not allowed in namespace 'other'",
        id="priority-class-of-another-namespace",
    ),
    pytest.param("other", {"image": "registry.local/other:1"}, "spec.image", "registry.local/vllm:*", id="image"),
    pytest.param(
        "other",
        {"engine": {"allowedMediaDomains": ["example.org"]}},
        "spec.engine.allowedMediaDomains[0]",
        "*.example.com",
        id="media-domain",
    ),
]


@pytest.mark.parametrize(("namespace", "spec", "field", "hint"), NAMESPACE_POLICY_REFUSALS)
def test_namespace_policies_refuse_what_they_do_not_list(
    namespace: str, spec: dict[str, Any], field: str, hint: str
) -> None:
    _refused(_endpoint(namespace, **spec), PLATFORM, field, hint, namespace_labels={})


def test_policies_select_namespaces_by_label_and_fail_closed_without_labels() -> None:
    endpoint = _endpoint("lab", nodePool={"tolerations": [{"operator": "Exists"}]})
    resolve(endpoint, PLATFORM, namespace_labels={"tier": "research"})
    _refused(endpoint, PLATFORM, "spec.nodePool.tolerations[0]", "every taint", namespace_labels={"tier": "prod"})
    _refused(endpoint, PLATFORM, "metadata.namespace", "labels of namespace 'lab' are not known")


CONFIG_REFUSALS = [
    pytest.param({"allowedExtraArgs": ["--api-key"]}, "operator owns it", id="owned-flag"),
    pytest.param({"allowedExtraArgs": ["--config"]}, "no endpoint may set it", id="reserved-flag"),
    pytest.param({"allowedExtraArgs": ["--no-such-flag"]}, "not a vllm serve", id="unknown-flag"),
    pytest.param({"defaultPolicy": {"priorityClassNames": ["system-cluster-critical"]}}, "system-*", id="system"),
    pytest.param({"defaultPolicy": {"gpuTypes": ["T4-16GB"]}}, "unknown GPU types", id="gpu-type"),
    pytest.param({"egress": {"privateCidrs": ["10.0.0.0/33"]}}, "10.0.0.0/33", id="cidr"),
]


@pytest.mark.parametrize(("data", "hint"), CONFIG_REFUSALS)
def test_the_operator_config_refuses_limits_that_cannot_hold(data: dict[str, Any], hint: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"(?s).*" + hint.replace("*", r"\*")):
        OperatorConfig.model_validate(data)


# --- Media fetching and egress ---


def _network_policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "ep"]
    kubernetes_validate.validate(policy, "1.34", strict=True)
    spec: dict[str, Any] = policy["spec"]
    return spec


def test_vllm_fetches_no_media_url_unless_the_endpoint_lists_domains() -> None:
    container = _pod(render(_endpoint(), DEFAULTS))["containers"][0]
    args = container["args"]
    assert args[args.index("--allowed-media-domains") + 1] == NO_MEDIA_DOMAIN
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


def test_egress_while_weights_download_is_dns_and_https_to_public_addresses_only() -> None:
    policy = _network_policy(render(_endpoint(), DEFAULTS))
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    dns, web = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert web["ports"] == [{"port": 443, "protocol": "TCP"}]
    blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"].get("except", []) for peer in web["to"]}
    assert "169.254.0.0/16" in blocks["0.0.0.0/0"]  # the cloud metadata service
    assert "10.0.0.0/8" in blocks["0.0.0.0/0"]


def test_preloaded_weights_get_no_egress_and_run_offline() -> None:
    objects = render(_endpoint(weightsSource="preloaded", modelCache={"size": "50Gi"}), DEFAULTS)
    assert _network_policy(objects)["egress"] == []
    env = {e["name"]: e.get("value") for e in _pod(objects)["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"


def test_listed_media_domains_open_http_and_https_to_public_addresses() -> None:
    config = OperatorConfig.model_validate({"allowedMediaDomains": ["*"]})
    objects = render(_endpoint(weightsSource="preloaded", engine={"allowedMediaDomains": ["cdn.example.com"]}), config)
    _dns, web = _network_policy(objects)["egress"]
    assert {p["port"] for p in web["ports"]} == {80, 443}


def test_egress_policy_can_be_left_to_the_platform() -> None:
    config = OperatorConfig.model_validate({"egress": {"enabled": False}})
    policy = _network_policy(render(_endpoint(), config))
    assert policy["policyTypes"] == ["Ingress"]
    assert "egress" not in policy


def test_the_readmes_admission_policy_example_is_valid_for_kubernetes_1_34() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Endpoint authors", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    documents = list(yaml.safe_load_all(block))
    assert [d["kind"] for d in documents] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for document in documents:
        kubernetes_validate.validate(document, "1.34", strict=True)


@pytest.mark.parametrize(
    "extra_args",
    [
        pytest.param(["--hf-token=hf_TOKEN_VALUE"], id="not-allowed-by-the-platform"),
        pytest.param(["--api-key=hf_TOKEN_VALUE"], id="owned-by-the-operator"),
        pytest.param(["--no-such-token=hf_TOKEN_VALUE"], id="unknown"),
        pytest.param(["--enforce-eager=hf_TOKEN_VALUE"], id="switch-with-a-value"),
        pytest.param(["--enable-p=hf_TOKEN_VALUE"], id="ambiguous"),
        pytest.param(["--enforce-eager", "hf_TOKEN_VALUE"], id="stray-value"),
    ],
)
def test_a_refused_extra_argument_is_named_without_its_value(extra_args: list[str]) -> None:
    """The refusal goes to status, an Event and the operator's log, read by more people than the spec:
    it names the argument by index and flag, never its value (which may be a token)."""
    with pytest.raises(InvalidSpec) as caught:
        resolve(_endpoint(engine={"extraArgs": extra_args}), OperatorConfig())
    problems = caught.value.problems
    assert problems, "refused with no reason"
    assert all(p.startswith("spec.engine.extraArgs") for p in problems), problems
    assert not any("hf_TOKEN_VALUE" in p for p in problems), problems


FENCED = OperatorConfig.model_validate(
    {
        "defaultPolicy": {
            "gpuTypes": ["L4-24GB"],
            "nodeSelector": {"pool": ["l4-shared"]},
            "tolerations": [{"key": "dedicated", "value": "shared"}],
        },
        # Written to grant team-a H100s, and nothing else.
        "namespacePolicies": [{"namespaces": ["team-a"], "gpuTypes": ["H100-80GB"]}],
    }
)
OTHER_TEAMS_POOL = {
    "nodeSelector": {"pool": "h100-team-b"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "team-b", "effect": "NoSchedule"}],
}


@pytest.mark.parametrize("namespace", ["team-a", "other"])
def test_a_namespace_policy_keeps_the_default_policys_fences_it_does_not_restate(namespace: str) -> None:
    endpoint = _endpoint(namespace, nodePool=OTHER_TEAMS_POOL)
    _refused(endpoint, FENCED, "spec.nodePool.nodeSelector", "h100-team-b")
    _refused(endpoint, FENCED, "spec.nodePool.tolerations[0]", "team-b")


def test_a_namespace_policy_grants_what_it_sets() -> None:
    spec = {"gpu": {"type": "H100-80GB"}, "nodePool": {"nodeSelector": {"pool": "l4-shared"}}}
    resolve(_endpoint("team-a", **spec), FENCED)
    _refused(_endpoint("other", **spec), FENCED, "spec.gpu.type", "H100-80GB")
