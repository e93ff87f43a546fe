"""The Helm chart, checked with the real Helm 4 binary: lint, templates valid for Kubernetes 1.34, schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

import voxtral_operator.autoscale.loop  # registers the autoscaler's metrics
import voxtral_operator.metrics  # noqa: F401 - registers the operator's metrics
from voxtral_operator import config as operator_config
from voxtral_operator import rbac
from voxtral_operator.config import OperatorConfig
from voxtral_operator.gateway import metrics as gateway_metrics
from voxtral_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "voxtral-operator"
HELM = os.environ.get("HELM") or str(ROOT / ".tools" / "helm")
# Kinds that are not part of Kubernetes itself: their own CRDs define them.
NOT_BUILT_IN = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "KopfPeering", "ClusterKopfPeering"}

pytestmark = pytest.mark.skipif(
    not Path(HELM).exists() and shutil.which("helm") is None, reason="helm not installed (make test installs it)"
)


def mini_endpoint(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "mini", "namespace": "speech"},
        "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, **spec},
    }


def render_network_policy(config: OperatorConfig) -> dict[str, Any]:
    """The NetworkPolicy the operator renders for an endpoint without a gateway (callers meet vLLM)."""
    endpoint = mini_endpoint(gateway={"enabled": False})
    (policy,) = [obj for obj in render(endpoint, config) if obj["kind"] == "NetworkPolicy"]
    return policy


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def template(*args: str) -> list[dict[str, Any]]:
    result = helm("template", "vx", str(CHART), "--namespace", "voxtral-system", "--kube-version", "1.34.0", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def operator_config_of(objects: list[dict[str, Any]]) -> OperatorConfig:
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")]
    return OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))


NON_DEFAULT = [
    "--set",
    "replicaCount=2",
    "--set",
    "peering.enabled=true",
    "--set",
    "watchNamespaces={speech,call-center}",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.podMonitor.enabled=true",
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.prometheusRule.labels.release=kube-prometheus-stack",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
    "--set",
    "operatorConfig.gpuOverrides.L4-24GB.productLabel=nvidia-l4",
    "--set",
    "priorityClassName=system-cluster-critical",
]


def test_helm_lint_is_clean() -> None:
    result = helm("lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["defaults", "non-default"])
def test_templates_validate_against_kubernetes_1_34(values: list[str]) -> None:
    objects = template(*values)
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ConfigMap"} <= kinds
    for obj in objects:
        if obj["kind"] not in NOT_BUILT_IN:
            kubernetes_validate.validate(obj, "1.34", strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "voxtral-operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_non_default_values_take_effect() -> None:
    rendered = template(*NON_DEFAULT)
    objects = by_kind(rendered)
    args = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=voxtral-operator" in args
    assert {"--namespace=speech", "--namespace=call-center"} <= set(args)
    assert objects["Deployment"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "KopfPeering"} <= objects.keys()
    assert objects["PrometheusRule"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    config = operator_config_of(rendered)
    assert config.gpu_overrides["L4-24GB"].product_label == "nvidia-l4"
    assert config.watched_namespaces == ["speech", "call-center"]


def notes(*args: str) -> str:
    """The install notes, as `helm install` prints them (client-side: no cluster, so no Prometheus CRDs)."""
    result = helm("install", "vx", str(CHART), "--dry-run=client", "--namespace", "voxtral-system", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_more_than_one_replica_needs_peering() -> None:
    result = helm("template", "vx", str(CHART), "--set", "replicaCount=2")
    assert result.returncode != 0
    assert "replicaCount is 2 but peering.enabled is false" in result.stderr
    assert "Set peering.enabled=true" in result.stderr
    assert (
        by_kind(template("--set", "replicaCount=2", "--set", "peering.enabled=true"))["Deployment"]["spec"]["replicas"]
        == 2
    )


def test_one_port_for_both_liveness_and_metrics_is_refused() -> None:
    result = helm("template", "t", str(CHART), "--set", "liveness.port=9090")
    assert result.returncode != 0
    assert "liveness.port and metrics.port are both 9090" in result.stderr


@pytest.mark.parametrize(
    ("monitor", "said"),
    [
        ("serviceMonitor", "no ServiceMonitor was created"),
        ("podMonitor", "no PodMonitor was created"),
        ("prometheusRule", "PrometheusRule (the Prometheus Operator CRDs): no alerts were created"),
    ],
)
def test_notes_say_when_a_monitor_was_skipped_for_want_of_its_crd(monitor: str, said: str) -> None:
    assert said in notes("--set", f"metrics.{monitor}.enabled=true")
    assert "Skipped" not in notes()


def test_notes_warn_when_the_pod_monitor_has_no_scrapers_admitted() -> None:
    assert "metrics.scrapers is empty" in notes("--set", "metrics.podMonitor.enabled=true")
    admitted = notes(
        "--set", "metrics.podMonitor.enabled=true", "--set-json", 'metrics.scrapers=[{"namespaceLabels": {"a": "b"}}]'
    )
    assert "metrics.scrapers is empty" not in admitted


def test_scrapers_reach_the_operator_config_and_every_endpoints_network_policy() -> None:
    scraper = {"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}, "podLabels": {"app": "prometheus"}}
    config = operator_config_of(template("--set-json", f"metrics.scrapers=[{json.dumps(scraper)}]"))
    assert [s.peer() for s in config.metrics_scrapers] == [
        {
            "namespaceSelector": {"matchLabels": scraper["namespaceLabels"]},
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        }
    ]
    policy = render_network_policy(config)
    admitted = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert config.metrics_scrapers[0].peer() in admitted
    assert all(port["port"] == config.vllm_port for rule in policy["spec"]["ingress"] for port in rule["ports"])
    kubernetes_validate.validate(policy, "1.34", strict=True)


def test_without_scrapers_the_network_policy_admits_callers_and_the_operator_only() -> None:
    policy = render_network_policy(operator_config_of(template()))
    (rule,) = policy["spec"]["ingress"]
    namespaces = [peer.get("namespaceSelector") for peer in rule["from"]]
    assert namespaces == [None, {"matchLabels": {"kubernetes.io/metadata.name": "voxtral-system"}}]


def test_single_replica_recreates_and_monitors_need_their_crds() -> None:
    objects = by_kind(template("--set", "metrics.serviceMonitor.enabled=true"))
    assert objects["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    assert "ServiceMonitor" not in objects  # the Prometheus Operator CRDs are not there


def test_operator_pod_is_locked_down() -> None:
    pod = by_kind(template())["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    # The image's user (images/operator/Dockerfile) is the pod's user.
    dockerfile = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile


def test_operator_config_from_the_chart_is_valid_and_images_are_named_once() -> None:
    rendered = template()
    objects = by_kind(rendered)
    config = operator_config_of(rendered)
    assert config.vllm_image == operator_config.DEFAULT_VLLM_IMAGE
    assert config.operator_namespace == "voxtral-system"
    image = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == operator_config.DEFAULT_OPERATOR_IMAGE
    # The operator's pods are the ones every endpoint's NetworkPolicy admits for scraping.
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert config.operator_pod_labels.items() <= pod_labels.items()


def test_clusterrole_is_generated_from_the_code_and_has_no_wildcards() -> None:
    committed = (CHART / "templates" / "clusterrole.yaml").read_text()
    assert committed == rbac.clusterrole_template(), "ClusterRole drifted from rbac.py: run `make crds`"
    role = by_kind(template())["ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_the_operator_can_create_secrets_but_read_none_in_either_mode() -> None:
    """Cluster-wide and namespaced: `create` for the gateway's backend key, and no get, list or watch
    (which would read every Secret's data), nor patch or delete."""
    for args in ((), ("--set", "watchNamespaces={team-a}")):
        objects = template(*args)
        roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
        granted = {(g, r, v) for role in roles for g, r, v in _grants(role["rules"]) if r.startswith("secrets")}
        assert granted == {("", "secrets", "create")}, f"{args or 'all namespaces'}: {sorted(granted)}"
    assert not any(rbac.allowed("", "secrets", verb) for verb in ("get", "list", "watch", "patch", "update", "delete"))


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_namespaced_mode_grants_roles_in_the_watched_namespaces_only() -> None:
    objects = template("--set", "watchNamespaces={team-a,team-b}")
    cluster_role = by_kind(objects)["ClusterRole"]
    cluster_wide = _grants(cluster_role["rules"])
    # Cluster-wide: only what kopf needs to start (resolving resources, the namespaces it watches).
    assert cluster_wide == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        granted = _grants(role["rules"])
        assert ("apps", "deployments", "create") in granted
        assert ("voxtral.dev", "voxtralendpoints/finalizers", "update") in granted
        assert ("kopf.dev", "kopfpeerings", "patch") in granted
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert bindings[namespace]["subjects"][0]["namespace"] == "voxtral-system"
    # Everything the operator may do somewhere is granted in one of the two modes' objects, but each mode's
    # peering only in its own: cluster-wide, other kopf operators' KopfPeerings in their namespaces are not
    # this operator's to patch.
    peerings = ("get", "list", "watch", "patch")
    all_namespaces = _grants(by_kind(template())["ClusterRole"]["rules"])
    assert all_namespaces == (
        cluster_wide
        | {grant for grant in _grants(roles["team-a"]["rules"]) if grant[1] != "kopfpeerings"}
        | {("kopf.dev", "clusterkopfpeerings", verb) for verb in peerings}
    )
    assert not [grant for grant in all_namespaces if grant[1] == "kopfpeerings"], "KopfPeerings in every namespace"


BAD_VALUES = [
    pytest.param(["--set", "replicaCount=-1"], "replicaCount", id="negative-replicas"),
    pytest.param(["--set", "image.pullPolicy=Sometimes"], "pullPolicy", id="bad-pull-policy"),
    pytest.param(["--set", "operatorConfig.vllmPort=70000"], "vllmPort", id="port-out-of-range"),
    pytest.param(["--set", "operatorConfig.gpuOverrides.T4.productLabel=x"], "L4-24GB", id="unknown-gpu"),
    pytest.param(["--set", "unknownKey=1"], "unknownKey", id="unknown-key"),
    pytest.param(["--set", "watchNamespaces={Bad_Name}"], "watchNamespaces", id="bad-namespace"),
    pytest.param(
        ["--set-json", 'metrics.scrapers=[{"podLabels": {"a": "b"}}]'], "namespaceLabels", id="scraper-any-ns"
    ),
    pytest.param(["--set", "operatorConfig.logFormat=xml"], "logFormat", id="bad-log-format"),
    pytest.param(["--set", "operatorConfig.gpuHourlyPrices.T4=1"], "L4-24GB", id="price-of-unknown-gpu"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES)
def test_bad_values_are_refused_by_the_schema(values: list[str], field: str) -> None:
    result = helm("template", "vx", str(CHART), *values)
    assert result.returncode != 0
    assert field in result.stderr


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [leaf for leaf in leaves(values) if f"`{leaf}`" not in readme]
    assert not missing, missing


def test_dashboard_is_valid_json_with_the_promised_panels() -> None:
    dashboard = json.loads((CHART / "dashboards" / "voxtral-endpoints.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for series in (
        "vllm:num_requests_waiting",
        "voxtral_operator_scale_decisions_total",
        "vllm:time_to_first_token_seconds_bucket",
        "voxtral_operator_replicas_short",
    ):
        assert series in exprs


# A value other than the default for every operator-config key set under `operatorConfig`.
OPERATOR_CONFIG_SAMPLES: dict[str, Any] = {
    "vllmImage": "registry.example.com/ml/vllm-voxtral:0.33.0",
    "imagePullPolicy": "Always",
    "gpuNodeLabel": "example.com/gpu",
    "gpuOverrides": {"L4-24GB": {"productLabel": "nvidia-l4", "memoryGB": 23}},
    "vllmPort": 8001,
    "gatewayImage": "registry.example.com/ml/voxtral-operator:0.1.0",
    "gatewayMetricsPort": 9191,
    "clusterDomain": "cluster.example",
    "scrapeIntervalSeconds": 3,
    "scrapeTimeoutSeconds": 0.5,
    "autoscalerStateSaveSeconds": 60,
    "servingCheckSeconds": 0,
    "resyncSeconds": 30,
    "prometheusUrl": "http://prometheus.example:9090",
    "vllmRunAsUser": 2000,
    "shmSize": "16Gi",
    "allowedExtraArgs": ["--enforce-eager"],
    "allowedImages": ["registry.example.com/ml/*"],
    "allowedMediaDomains": ["media.example.com"],
    "namespacePolicies": [{"namespaces": ["speech"], "priorityClassNames": ["gpu-inference"]}],
    "defaultPolicy": {"gpuTypes": ["L4-24GB"], "maxGpusPerEndpoint": 4},
    "egress": {"enabled": False},
    "logFormat": "json",
    "gpuHourlyPrices": {"L4-24GB": 0.8},
    "currency": "EUR",
}
# Keys the chart derives from its own values: (how to set that value, the key's value then).
CHART_OWNED_CONFIG: dict[str, tuple[list[str], Any]] = {
    "operatorNamespace": (["--namespace", "speech-platform"], "speech-platform"),
    "operatorPodLabels": ([], {"app.kubernetes.io/name": "voxtral-operator", "app.kubernetes.io/instance": "vx"}),
    "watchedNamespaces": (["--set", "watchNamespaces={speech}"], ["speech"]),
    "metricsScrapers": (
        ["--set-json", 'metrics.scrapers=[{"namespaceLabels": {"team": "monitoring"}}]'],
        [{"namespaceLabels": {"team": "monitoring"}}],
    ),
}


def test_every_operator_config_key_is_settable_through_the_chart() -> None:
    keys = {field.alias or name for name, field in OperatorConfig.model_fields.items()}
    assert keys == OPERATOR_CONFIG_SAMPLES.keys() | CHART_OWNED_CONFIG.keys(), "a config key the chart does not cover"
    values = ["--set-json", f"operatorConfig={json.dumps(OPERATOR_CONFIG_SAMPLES)}"]
    rendered = operator_config_of(template(*values))
    wanted = OperatorConfig.model_validate(OPERATOR_CONFIG_SAMPLES)
    for key in OPERATOR_CONFIG_SAMPLES:
        name = next(n for n, f in OperatorConfig.model_fields.items() if (f.alias or n) == key)
        assert getattr(rendered, name) == getattr(wanted, name) != getattr(OperatorConfig(), name), key
    for key, (chart_values, expected) in CHART_OWNED_CONFIG.items():
        result = helm("template", "vx", str(CHART), "--kube-version", "1.34.0", *chart_values)
        assert result.returncode == 0, result.stderr
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
        assert yaml.safe_load(config_map["data"]["config.yaml"])[key] == expected, key
        refused = helm("template", "vx", str(CHART), "--set-json", f"operatorConfig.{key}={json.dumps(expected)}")
        assert refused.returncode != 0, key
        assert f"operatorConfig.{key} is set by the chart" in refused.stderr, refused.stderr


def test_the_gateway_image_defaults_to_the_charts_operator_image() -> None:
    config = operator_config_of(template("--set", "image.repository=registry.example.com/ml/voxtral-operator"))
    assert config.gateway_image == "registry.example.com/ml/voxtral-operator:0.1.0"


def test_notes_endpoint_is_a_valid_endpoint_and_the_notes_have_no_placeholders() -> None:
    text = notes()
    assert "<" not in text.replace("<<EOF", ""), text
    manifest = text.split("<<EOF\n", 1)[1].split("     EOF\n", 1)[0]
    endpoint = yaml.safe_load(textwrap.dedent(manifest))
    kinds = {obj["kind"] for obj in render(endpoint, OperatorConfig())}
    assert {"Deployment", "Service", "NetworkPolicy"} <= kinds


def test_namespaced_mode_refuses_endpoints_outside_the_watched_namespaces() -> None:
    assert not [o for o in template() if o["kind"].startswith("ValidatingAdmissionPolicy")]
    objects = template("--set", "watchNamespaces={team-a,team-b}")
    policy = by_kind(objects)["ValidatingAdmissionPolicy"]
    binding = by_kind(objects)["ValidatingAdmissionPolicyBinding"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"]) == (["voxtral.dev"], ["voxtralendpoints"])
    (validation,) = policy["spec"]["validations"]
    # The rule as the API server evaluates it, for a request in each namespace.
    for namespace, allowed in (("team-a", True), ("team-b", True), ("speech", False)):
        assert cel.evaluate(validation["expression"], {"request": {"namespace": namespace}}) is allowed
    assert "only in the namespaces team-a, team-b (chart value watchNamespaces)" in validation["message"]
    opted_out = template("--set", "watchNamespaces={team-a}", "--set", "refuseUnwatchedNamespaces=false")
    assert not [o for o in opted_out if o["kind"].startswith("ValidatingAdmissionPolicy")]


def exported_metric_names() -> set[str]:
    """Every series name the operator and the gateways export (a labelled family with no child yet
    included), as PromQL names them."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}
    names |= {
        value for value in vars(gateway_metrics).values() if isinstance(value, str) and value.startswith("voxtral_")
    }
    return names


def promql_checked(expr: str, known: set[str]) -> list[str]:
    """The expression parsed by a PromQL parser (raises on a syntax error); the voxtral_ names it uses
    that nothing exports."""
    promql_parser.parse(expr)
    return [name for name in re.findall(r"\bvoxtral_[a-z_]+\b", expr) if name not in known]


def test_alerts_and_dashboard_queries_parse_and_name_only_metrics_that_exist() -> None:
    known = exported_metric_names()
    assert {"voxtral_operator_replicas_short", "voxtral_gateway_requests_total"} <= known
    (rule,) = [o for o in template(*NON_DEFAULT) if o["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "VoxtralOperatorDown",
        "VoxtralEndpointScalingLimited",
        "VoxtralEndpointsFailed",
        "VoxtralGatewaySecretMissing",
        "VoxtralGatewayErrors",
    }
    for name, alert in alerts.items():
        assert not promql_checked(alert["expr"], known), name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
    # The operator's own alert names the job of the chart's ServiceMonitor: the metrics Service.
    service = next(o for o in template(*NON_DEFAULT) if o["kind"] == "Service")
    assert f'job="{service["metadata"]["name"]}"' in alerts["VoxtralOperatorDown"]["expr"]
    assert "VoxtralOperatorDown" not in str(
        template(
            "--set", "metrics.prometheusRule.enabled=true", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"
        )
    )
    dashboard = json.loads((CHART / "dashboards" / "voxtral-endpoints.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert not promql_checked(target["expr"], known), panel["title"]


def test_pod_monitors_select_the_pods_and_ports_the_operator_renders() -> None:
    monitors = {o["metadata"]["name"]: o for o in template(*NON_DEFAULT) if o["kind"] == "PodMonitor"}
    pods = [o["spec"]["template"] for o in render(mini_endpoint(), OperatorConfig()) if o["kind"] == "Deployment"]
    scraped = {}
    for name, monitor in monitors.items():
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (port,) = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
        (pod,) = [p for p in pods if wanted.items() <= p["metadata"]["labels"].items()]
        assert port in {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}, name
        assert monitor["spec"]["podTargetLabels"][0] in pod["metadata"]["labels"], name
        scraped[pod["metadata"]["labels"]["app.kubernetes.io/component"]] = port
    # vLLM's /metrics on its API port; the gateway's on its metrics port, never its API port.
    assert scraped == {"inference-server": "http", "gateway": "metrics"}
