"""The gateway's children: what callers reach, what vLLM admits, what the gateway may read."""

from __future__ import annotations

import itertools
from typing import Any

import kubernetes_validate
import pytest

from voxtral_operator import hardware, status
from voxtral_operator.api import catalog
from voxtral_operator.api.resolve import InvalidSpec
from voxtral_operator.config import OperatorConfig
from voxtral_operator.render import render

CONFIG = OperatorConfig.model_validate({"metricsScrapers": [{"namespaceLabels": {"team": "monitoring"}}]})


def _endpoint(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}}
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "ep", "namespace": "team-a", "uid": "0f7c1a52-0000-4000-8000-000000000001"},
        "spec": {**base, **spec},
    }


def _objects(**spec: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(_endpoint(**spec), CONFIG)}


GATEWAY = {"gateway": {"enabled": True}}


def test_the_gateway_is_there_unless_the_endpoint_opts_out() -> None:
    assert ("Deployment", "ep-gateway") in _objects()
    assert _objects() == _objects(**GATEWAY)


def test_without_a_gateway_the_service_fronts_the_vllm_pods_as_before() -> None:
    objects = _objects(gateway={"enabled": False})
    assert not [key for key in objects if key[1].startswith("ep-")]
    assert objects[("Service", "ep")]["spec"]["selector"]["app.kubernetes.io/name"] == "voxtral-endpoint"


def test_every_gateway_child_is_schema_valid_and_owned() -> None:
    objects = _objects(**GATEWAY, auth={"apiKeysSecretName": "callers"})
    assert set(objects) == {
        ("Deployment", "ep"),
        ("Service", "ep"),
        ("PodDisruptionBudget", "ep"),
        ("NetworkPolicy", "ep"),
        ("NetworkPolicy", "ep-gateway"),
        ("Secret", "ep-backend-key"),
        ("ServiceAccount", "ep-gateway"),
        ("Role", "ep-gateway"),
        ("RoleBinding", "ep-gateway"),
        ("Deployment", "ep-gateway"),
        ("PodDisruptionBudget", "ep-gateway"),
        ("Service", "ep-vllm"),
    }
    for obj in objects.values():
        kubernetes_validate.validate(obj, "1.34", strict=True)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "0f7c1a52-0000-4000-8000-000000000001"
        # Every child carries the labels the operator's watches select on.
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "ep"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voxtral-operator"


def test_callers_reach_the_gateway_and_vllm_admits_only_the_gateway_and_the_operator() -> None:
    objects = _objects(**GATEWAY, access={"fromNamespaces": ["apps"]})
    gateway_pods = objects[("Deployment", "ep-gateway")]["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "ep")]["spec"]
    assert service["selector"].items() <= gateway_pods.items()
    vllm_pods = objects[("Deployment", "ep")]["spec"]["template"]["metadata"]["labels"]
    assert not service["selector"].items() <= vllm_pods.items()
    assert objects[("Service", "ep-vllm")]["spec"]["clusterIP"] == "None"
    assert objects[("Service", "ep-vllm")]["spec"]["selector"].items() <= vllm_pods.items()

    vllm_policy = objects[("NetworkPolicy", "ep")]["spec"]
    admitted = vllm_policy["ingress"][0]["from"]
    assert admitted[0] == {"podSelector": {"matchLabels": objects[("Service", "ep")]["spec"]["selector"]}}
    assert [peer["namespaceSelector"]["matchLabels"] for peer in admitted[1:]] == [
        {"kubernetes.io/metadata.name": "voxtral-system"}
    ]
    gateway_policy = objects[("NetworkPolicy", "ep-gateway")]["spec"]
    api, metrics = gateway_policy["ingress"]
    assert api["ports"] == [{"protocol": "TCP", "port": 8000}]
    callers = [p.get("namespaceSelector", {}).get("matchLabels") for p in api["from"]]
    assert callers == [None, {"kubernetes.io/metadata.name": "apps"}, {"kubernetes.io/metadata.name": "voxtral-system"}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9091}]
    assert {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}, "podSelector": {"matchLabels": {}}} in (
        metrics["from"]
    )


def test_vllm_keeps_a_key_only_the_gateway_knows() -> None:
    objects = _objects(**GATEWAY, auth={"apiKeySecretRef": {"name": "callers", "key": "k"}})
    (vllm,) = objects[("Deployment", "ep")]["spec"]["template"]["spec"]["containers"]
    key_env = [e for e in vllm["env"] if e["name"] == "VLLM_API_KEY"]
    assert key_env == [
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ep-backend-key", "key": "api-key"}}}
    ]
    assert "data" not in objects[("Secret", "ep-backend-key")]  # generated once, at creation, by the reconciler


def test_the_gateway_reads_exactly_the_secrets_it_needs() -> None:
    spec = {
        **GATEWAY,
        "auth": {"apiKeySecretRef": {"name": "old-key"}, "apiKeysSecretName": "callers"},
    }
    spec["gateway"] = {"enabled": True, "tls": {"secretName": "ep-tls"}}
    objects = _objects(**spec)
    # Its Role grants no Secret: the kubelet reads them for it, into optional Secret volumes.
    rules = objects[("Role", "ep-gateway")]["rules"]
    assert rules == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["voxtral.dev"],
            "resources": ["voxtralendpoints"],
            "resourceNames": ["ep"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    pod = objects[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]
    by_volume = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert sorted(s["secretName"] for s in by_volume.values()) == ["callers", "ep-backend-key", "ep-tls", "old-key"]
    assert all(s["optional"] is True and s["defaultMode"] == 0o440 for s in by_volume.values())
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    (container,) = pod["containers"]
    secret_mounts = [m for m in container["volumeMounts"] if m["name"] in by_volume]
    mounts = {m["mountPath"]: by_volume[m["name"]]["secretName"] for m in secret_mounts}
    assert all(m["readOnly"] for m in secret_mounts)
    assert mounts == {f"/var/run/voxtral/secrets/{name}": name for name in mounts.values()}
    # The root is read-only; Python's ssl loads a certificate only from files, which the gateway writes to
    # tempfile's directory: /tmp where no TMPDIR is set, a small memory-backed volume here.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not [e for e in container.get("env") or [] if e["name"] in ("TMPDIR", "TEMP", "TMP")]
    (scratch,) = [m for m in container["volumeMounts"] if m["name"] not in by_volume]
    assert (scratch["mountPath"], scratch.get("readOnly", False)) == ("/tmp", False)
    (scratch_volume,) = [v for v in pod["volumes"] if v["name"] == scratch["name"]]
    assert scratch_volume["emptyDir"]["medium"] == "Memory"
    plain = _objects(**GATEWAY)[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]
    assert all("emptyDir" not in v for v in plain["volumes"]), "no writable volume a gateway without TLS needs"
    args = container["args"]
    assert args[args.index("--secrets-dir") + 1] == "/var/run/voxtral/secrets"
    pairs = list(itertools.pairwise(args))
    assert ("--caller-keys-secret", "old-key:api-key") in pairs
    assert ("--caller-keys-secret", "callers") in pairs
    assert ("--tls-secret", "ep-tls") in pairs
    assert ("--backend-key-secret", "ep-backend-key:api-key") in pairs
    assert container["command"] == ["voxtral-operator", "gateway"]
    assert objects[("RoleBinding", "ep-gateway")]["subjects"][0]["name"] == "ep-gateway"
    pod = objects[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ep-gateway"
    assert "nvidia.com/gpu" not in str(pod)  # CPU pods, never on the GPU pool


def test_hold_timeout_defaults_to_the_models_startup_budget() -> None:
    (container,) = _objects(**GATEWAY)[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert int(args[args.index("--hold-timeout-seconds") + 1]) >= 600


def test_suspending_or_changing_the_hold_leaves_the_gateway_pods_alone() -> None:
    """The gateway reads spec.suspended and spec.gateway.holdTimeoutSeconds from its endpoint: its pod
    template does not change with them, so the Deployment does not roll."""
    serving = _objects(minReplicas=0, autoscaling={"scaleToZeroAfterSeconds": 600})
    for changed in (
        _objects(minReplicas=0, autoscaling={"scaleToZeroAfterSeconds": 600}, suspended=True),
        _objects(minReplicas=0, autoscaling={"scaleToZeroAfterSeconds": 60}),
        _objects(minReplicas=1, replicas=1),
        _objects(minReplicas=0, gateway={"holdTimeoutSeconds": 30}),
    ):
        assert changed[("Deployment", "ep-gateway")] == serving[("Deployment", "ep-gateway")]
    suspended = _objects(suspended=True, minReplicas=1, replicas=1)
    assert suspended[("Deployment", "ep")]["spec"]["replicas"] == 0
    assert suspended[("Deployment", "ep-gateway")]["spec"]["replicas"] == 2
    (own,) = [r for r in serving[("Role", "ep-gateway")]["rules"] if r["resources"] == ["voxtralendpoints"]]
    assert own == {
        "apiGroups": ["voxtral.dev"],
        "resources": ["voxtralendpoints"],
        "resourceNames": ["ep"],
        "verbs": ["get", "list", "watch"],
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"minReplicas": 0, "gateway": {"enabled": False}}, "spec.minReplicas"),
        ({"auth": {"apiKeysSecretName": "callers"}, "gateway": {"enabled": False}}, "spec.auth.apiKeysSecretName"),
        (
            {"autoscaling": {"scaleToZeroAfterSeconds": 600}},
            "spec.autoscaling.scaleToZeroAfterSeconds",
        ),
    ],
)
def test_what_needs_the_gateway_is_refused_without_it(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        render(_endpoint(**spec), CONFIG)
    assert any(problem.startswith(field) for problem in caught.value.problems), caught.value.problems


def test_scale_to_zero_is_accepted_with_the_gateway() -> None:
    objects = _objects(gateway={"enabled": True}, minReplicas=0, autoscaling={"scaleToZeroAfterSeconds": 600})
    assert objects[("Deployment", "ep")]["spec"]["replicas"] == 0


def _status(**kwargs: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "generation": 1,
        "desired_replicas": 0,
        "deployment": {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}},
        "pods": [],
        "previous": {},
        "url": "http://ep/v1",
        "selector": "x=y",
        "tensor_parallel_size": 1,
        "now": "2026-11-25T00:00:00Z",
    }
    return status.compute_status(**{**defaults, **kwargs})


def test_a_suspended_endpoint_says_so_and_is_not_ready() -> None:
    result = _status(suspended=True)
    assert result["phase"] == "Suspended"
    ready = status.condition_of(result, status.READY)
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "Suspended"


@pytest.mark.parametrize(
    ("gateway", "keys", "exposed", "reason", "says"),
    [
        (False, False, "True", "GatewayDisabled", "/invocations, /tokenize"),
        (False, True, "True", "GatewayDisabled", "/metrics"),
        (True, True, "False", "GatewayEnabled", "caller key check"),
        (True, False, "True", "NoCallerKeys", "no key asked"),
    ],
)
def test_the_exposed_condition_says_what_answers_without_a_key(
    gateway: bool, keys: bool, exposed: str, reason: str, says: str
) -> None:
    now = "2026-11-25T00:00:00Z"
    first = status.with_exposure(_status(), previous={}, gateway=gateway, caller_keys=keys, generation=1, now=now)
    condition = status.condition_of(first, status.EXPOSED)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == (exposed, reason)
    assert says in condition["message"]
    again = status.with_exposure(first, previous=first, gateway=gateway, caller_keys=keys, generation=1, now="later")
    assert again == first  # level-triggered: nothing changes, nothing is written


def test_zero_replicas_by_choice_is_scaled_to_zero_not_pending() -> None:
    result = _status()
    assert result["phase"] == "ScaledToZero"
    assert (status.condition_of(result, status.READY) or {})["reason"] == "ScaledToZero"


def test_gateway_pods_split_a_replicas_kv_cache_for_the_deferrable_lane() -> None:
    def kv_tokens(gateways: int) -> int:
        objects = _objects(gateway={"enabled": True, "replicas": gateways})
        args = objects[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["containers"][0]["args"]
        return int(args[args.index("--kv-cache-tokens-per-replica") + 1])

    one = kv_tokens(1)
    options = hardware.options(
        catalog.MODELS["mistralai/Voxtral-Mini-3B-2507"],
        catalog.GPUS,
        max_model_len=32768,
        gpu_memory_utilization=0.9,
        prices={},
    )
    expected = next(o for o in options if o.gpu_type == "L4-24GB" and o.default_choice).kv_cache_tokens
    assert one == expected, (one, expected)
    assert kv_tokens(2) == one // 2
    assert kv_tokens(3) == one // 3


def test_a_certificate_from_cert_manager_when_the_endpoint_names_an_issuer() -> None:
    objects = _objects(gateway={"enabled": True, "tls": {"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}})
    certificate = objects[("Certificate", "ep-gateway")]
    assert certificate["spec"]["secretName"] == "ep-gateway-tls"
    assert "ep.team-a.svc.cluster.local" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "cluster-ca",
    }
    args = objects[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--tls-secret") + 1] == "ep-gateway-tls"
    volumes = objects[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["volumes"]
    assert "ep-gateway-tls" in [v["secret"]["secretName"] for v in volumes if "secret" in v]


@pytest.mark.parametrize("tls", [{}, {"secretName": "a", "issuerRef": {"name": "b"}}])
def test_tls_takes_exactly_one_source(tls: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec) as caught:
        render(_endpoint(gateway={"enabled": True, "tls": tls}), CONFIG)
    assert any("exactly one of secretName and issuerRef" in p for p in caught.value.problems), caught.value.problems


def test_each_gateway_pod_enforces_its_share_of_the_key_limits_and_the_gateway_parses_them() -> None:
    from voxtral_operator.cli import parser
    from voxtral_operator.gateway.limits import KeyLimits
    from voxtral_operator.gateway.main import key_policies_of

    gateway = {
        "enabled": True,
        "replicas": 3,
        "keyLimits": {"requestsPerMinute": 600, "audioSecondsPerMinute": 100, "concurrentRequests": 4},
        # "-legacy": a Secret data key may begin with a dash; the gateway must not read it as an option.
        "keys": [{"name": "batch.jobs", "weight": 4, "concurrentRequests": 30}, {"name": "alice"}, {"name": "-legacy"}],
    }
    deployment = _objects(gateway=gateway)[("Deployment", "ep-gateway")]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # Three pods: a third each; concurrency rounded up (4 -> 2 per pod, 6 in all).
    parsed = parser().parse_args(["gateway", *args])
    policies = key_policies_of(parsed)
    assert policies.default == KeyLimits(1, 200, 33.3333, 2)
    assert policies.overrides == {
        "batch.jobs": KeyLimits(4, 200, 33.3333, 10),
        "alice": KeyLimits(1, 200, 33.3333, 2),
        "-legacy": KeyLimits(1, 200, 33.3333, 2),
    }
    plain = _objects(gateway={"enabled": True})[("Deployment", "ep-gateway")]
    assert not [a for a in plain["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--key-")]


def test_key_names_are_unique() -> None:
    keys = [{"name": "alice"}, {"name": "alice", "weight": 2}]
    with pytest.raises(InvalidSpec, match="alice repeated"):
        _objects(gateway={"enabled": True, "keys": keys})


@pytest.mark.parametrize(
    ("extra_args", "priority"),
    [
        ([], None),
        (["--scheduling-policy", "priority"], "10"),
        (["--scheduling-policy=priority"], "10"),
        (["--scheduling-policy", "fcfs"], None),
        # Every spelling vLLM's parser takes, and the last of several, as it reads them.
        (["--scheduling_policy", "priority"], "10"),
        (["--scheduling-pol", "priority"], "10"),
        (["--scheduling-policy", "priority", "--scheduling-policy", "fcfs"], None),
        (["--scheduling-policy", "fcfs", "--scheduling-policy=priority"], "10"),
    ],
)
def test_deferrable_requests_carry_a_priority_only_where_vllm_schedules_by_it(
    extra_args: list[str], priority: str | None
) -> None:
    spec = {**GATEWAY, "engine": {"extraArgs": extra_args}}
    spec["gateway"] = {"enabled": True, "deferrable": {"maxQueue": 50, "timeoutSeconds": 7200}}
    (container,) = _objects(**spec)[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--max-deferrable-queue") + 1] == "50"
    assert args[args.index("--deferrable-timeout-seconds") + 1] == "7200"
    assert (args[args.index("--deferrable-priority") + 1] if "--deferrable-priority" in args else None) == priority
    (vllm,) = _objects(**spec)[("Deployment", "ep")]["spec"]["template"]["spec"]["containers"]
    assert all(arg in vllm["args"] for arg in extra_args)  # the flag reaches vLLM as the endpoint wrote it


def _gateway_setting(args: list[str], flag: str) -> int:
    return int(args[args.index(flag) + 1])


@pytest.mark.parametrize(
    ("seqs", "pods", "share"), [(None, 2, 128), (64, 2, 32), (5, 2, 2), (7, 3, 2), (1, 1, 1), (2, 2, 1)]
)
def test_the_gateway_pods_together_send_a_replica_no_more_than_its_max_num_seqs(
    seqs: int | None, pods: int, share: int
) -> None:
    engine = {"maxNumSeqs": seqs} if seqs else {}
    gateway = _objects(engine=engine, gateway={"enabled": True, "replicas": pods})[("Deployment", "ep-gateway")]
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _gateway_setting(args, "--max-inflight-per-replica") == share
    assert share * pods <= (seqs or 256)


def test_fewer_sequences_than_gateway_pods_is_refused_with_the_numbers() -> None:
    with pytest.raises(InvalidSpec) as caught:
        _objects(engine={"maxNumSeqs": 1}, gateway={"enabled": True, "replicas": 2})
    assert any(
        p.startswith("spec.engine.maxNumSeqs: 1 is fewer than gateway.replicas (2)") for p in caught.value.problems
    )
    assert ("Deployment", "ep") in _objects(engine={"maxNumSeqs": 1}, gateway={"enabled": False})


REALTIME = {"model": "mistralai/Voxtral-Mini-4B-Realtime-2602"}


def test_each_gateway_pod_admits_its_share_of_a_replicas_realtime_sessions_or_the_spec_is_refused() -> None:
    def sessions_per_pod(sessions: int, pods: int) -> int:
        spec = {**REALTIME, "realtime": {"maxSessionsPerReplica": sessions}, "gateway": {"replicas": pods}}
        args = _objects(**spec)[("Deployment", "ep-gateway")]["spec"]["template"]["spec"]["containers"][0]["args"]
        return _gateway_setting(args, "--realtime-sessions-per-replica")

    assert (sessions_per_pod(5, 2), sessions_per_pod(1, 1), sessions_per_pod(3, 3)) == (2, 1, 1)
    with pytest.raises(InvalidSpec) as caught:
        sessions_per_pod(1, 2)
    assert any(p.startswith("spec.gateway.replicas: 2 gateway pods") for p in caught.value.problems), (
        caught.value.problems
    )
