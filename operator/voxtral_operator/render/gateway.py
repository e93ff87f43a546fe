"""The gateway's children: a pure function of the plan and the operator config.

The Deployment is a template (what a platform engineer reads); the ServiceAccount, Role,
RoleBinding and backend-key Secret are small fixed shapes built as dicts, where a template would
add nothing to read.

The gateway reads its Secrets (caller keys, backend key, certificate) as Secret volumes that the
kubelet mounts and refreshes: its Role grants no access to Secrets, so the operator, which may only
grant what it holds, needs no read of Secrets either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from voxtral_operator.api import catalog, flags, models
from voxtral_operator.api.catalog import DEFAULT_MAX_NUM_SEQS
from voxtral_operator.api.models import KeyLimitsSpec
from voxtral_operator.api.resolve import Plan
from voxtral_operator.config import OperatorConfig
from voxtral_operator.gateway import SECRETS_DIR
from voxtral_operator.gateway.lanes import DEFERRABLE_PRIORITY, TAKE_BACK_READ_SECONDS
from voxtral_operator.render import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    render_template,
    selector_labels,
    standard_labels,
)

GATEWAY_APP_NAME = "voxtral-gateway"
GATEWAY_COMPONENT = "gateway"
BACKEND_KEY = "api-key"
# The drain of a gateway pod: in-flight requests may stream a long transcription.
GATEWAY_GRACE_SECONDS = 120
# The gateway runs as this user and group; its Secret files are readable by the group only.
GATEWAY_UID = 1000
SECRET_FILE_MODE = 0o440


def gateway_name(name: str) -> str:
    return f"{name}-gateway"


def backend_service_name(name: str) -> str:
    return f"{name}-vllm"


def backend_key_secret_name(name: str) -> str:
    return f"{name}-backend-key"


def gateway_selector(name: str) -> dict[str, str]:

    return {LABEL_NAME: GATEWAY_APP_NAME, LABEL_INSTANCE: name}


def gateway_labels(name: str) -> dict[str, str]:

    return {**gateway_selector(name), LABEL_COMPONENT: GATEWAY_COMPONENT, LABEL_MANAGED_BY: MANAGED_BY}


def tls_secret_name(plan: Plan) -> str:
    """The Secret named in the spec, or the one the endpoint's Certificate has cert-manager keep."""
    tls = plan.spec.gateway.tls
    assert tls is not None
    return tls.secret_name or f"{plan.name}-gateway-tls"


def certificate(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    """A cert-manager Certificate for the Service's names, when the endpoint asks an issuer for one."""
    tls = plan.spec.gateway.tls
    if tls is None or tls.issuer_ref is None:
        return None
    service = f"{plan.name}.{plan.namespace}.svc"
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(plan, f"{plan.name}-gateway"),
        "spec": {
            "secretName": tls_secret_name(plan),
            "dnsNames": [plan.name, f"{plan.name}.{plan.namespace}", service, f"{service}.{config.cluster_domain}"],
            "issuerRef": {"group": "cert-manager.io", "kind": tls.issuer_ref.kind, "name": tls.issuer_ref.name},
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def priority_scheduling(extra_args: Sequence[str]) -> bool:
    """Whether vLLM's extra arguments select `--scheduling-policy priority`, read as vLLM's parser reads
    them (any spelling it accepts: `--scheduling_policy`, a prefix, `=`; the last one given wins). A
    spelling missed here would leave vLLM ordering by priority while the gateway neither orders its
    deferrable work behind interactive work nor refuses a caller's own priority."""
    chosen = [o.values[-1] for o in flags.parse(extra_args).options if o.dests == {"scheduling_policy"} and o.values]
    return bool(chosen) and chosen[-1] == "priority"


def kv_cache_tokens_per_gateway_pod(plan: Plan) -> int:
    """A replica's KV cache in tokens, by the fit check (the smaller of the primary and overflow GPUs'),
    split across the gateway pods as the in-flight slots are."""
    engine = plan.spec.engine
    tokens = []
    for gpu in (plan.gpu, plan.overflow_gpu):
        if gpu is not None:
            fit = catalog.check_fit(
                plan.model, gpu, plan.tensor_parallel_size, engine.gpu_memory_utilization, engine.max_model_len
            )
            tokens.append(max(fit.kv_cache_available_bytes, 0) // plan.model.kv_cache_bytes_per_token)
    return max(1, min(tokens) // plan.spec.gateway.replicas)


def gateway_args(plan: Plan, config: OperatorConfig) -> list[str]:
    spec = plan.spec
    args = [
        "--namespace",
        plan.namespace,
        "--endpoint",
        plan.name,
        "--backend-service",
        backend_service_name(plan.name),
        "--backend-key-secret",
        f"{backend_key_secret_name(plan.name)}:{BACKEND_KEY}",
        "--host",
        "0.0.0.0",
        "--port",
        str(config.vllm_port),
        "--metrics-port",
        str(config.gateway_metrics_port),
        # Each gateway pod dispatches on its own: together they never exceed a replica's maxNumSeqs (rounded
        # down; the spec is refused where a pod's share would be none).
        "--max-inflight-per-replica",
        str(max(1, (spec.engine.max_num_seqs or DEFAULT_MAX_NUM_SEQS) // spec.gateway.replicas)),
        "--max-queue",
        str(spec.gateway.max_queue),
        "--queue-timeout-seconds",
        str(spec.gateway.queue_timeout_seconds),
        # A request sent at zero replicas waits as long as a replica may take to start, unless
        # spec.gateway.holdTimeoutSeconds says otherwise: the gateway reads that (and spec.suspended)
        # from the endpoint itself, so changing them does not roll its pods.
        "--hold-timeout-seconds",
        str(plan.model.startup_budget_seconds),
        "--max-deferrable-queue",
        str(spec.gateway.deferrable.max_queue),
        "--deferrable-timeout-seconds",
        str(spec.gateway.deferrable.timeout_seconds),
        # Deferrable work stays within this share of a replica's KV cache (gateway/lanes.py).
        "--kv-cache-tokens-per-replica",
        str(kv_cache_tokens_per_gateway_pod(plan)),
        # Deferrable work an interactive request waits behind in vLLM's queue is taken back on reads of the
        # replica's waiting count, not by the pod's count when the request is sent (gateway/lanes.py).
        "--take-back-read-seconds",
        str(TAKE_BACK_READ_SECONDS),
        "--max-upload-mb",
        str(spec.engine.audio.max_file_size_mb),
        "--log-format",
        config.log_format,
        "--secrets-dir",
        SECRETS_DIR,
    ]
    key_ref = spec.auth.api_key_secret_ref
    if key_ref is not None:
        args += ["--caller-keys-secret", f"{key_ref.name}:{key_ref.key}"]
    if spec.auth.api_keys_secret_name:
        args += ["--caller-keys-secret", spec.auth.api_keys_secret_name]
    if spec.gateway.tls is not None:
        args += ["--tls-secret", tls_secret_name(plan)]
    if priority_scheduling(spec.engine.extra_args):
        # vLLM orders its waiting requests by priority: deferrable chat/completions go after interactive ones.
        args += ["--deferrable-priority", str(DEFERRABLE_PRIORITY)]
    return args + realtime_args(plan) + key_limit_args(plan)


def realtime_args(plan: Plan) -> list[str]:
    """A realtime model's sessions: each gateway pod admits its share of a replica's sessions."""
    if plan.realtime is None:
        return []
    realtime = plan.spec.realtime
    return [
        "--realtime-sessions-per-replica",  # rounded down, as the in-flight slots are
        str(max(1, plan.realtime.sessions_per_replica // plan.spec.gateway.replicas)),
        "--realtime-max-session-seconds",
        str(plan.realtime.max_session_seconds),
        "--realtime-idle-seconds",
        str(realtime.idle_timeout_seconds),
        "--realtime-max-frame-bytes",
        str(realtime.max_frame_kb * 1024),
        "--realtime-messages-per-second",
        str(realtime.max_messages_per_second),
        # A replica that leaves keeps its sessions as long as vLLM drains its running requests.
        "--realtime-drain-seconds",
        str(plan.spec.engine.shutdown_timeout_seconds),
    ]


def _shares(limits: KeyLimitsSpec, pods: int) -> list[tuple[str, str]]:
    """(setting, one pod's share) of each limit set: the rates divided, concurrency rounded up."""
    shares = []
    for setting, rate in (
        ("requests-per-minute", limits.requests_per_minute),
        ("audio-seconds-per-minute", limits.audio_seconds_per_minute),
    ):
        if rate is not None:
            shares.append((setting, f"{rate / pods:.6g}"))
    if limits.concurrent_requests is not None:
        shares.append(("concurrent-requests", str(-(-limits.concurrent_requests // pods))))
    return shares


def key_limit_args(plan: Plan) -> list[str]:
    """Per-key weights and limits, each gateway pod enforcing its share (as the in-flight slots are split)."""
    gateway = plan.spec.gateway
    args: list[str] = []
    for setting, share in _shares(gateway.key_limits, gateway.replicas):
        args += [f"--key-{setting}", share]
    for key in gateway.keys:
        settings = [f"weight={key.weight}", *(f"{s}={share}" for s, share in _shares(key, gateway.replicas))]
        # One token: a key may be named "-k" (a Secret data key), which as a separate value the gateway's
        # argument parser would read as an option, and the gateway would not start.
        args.append(f"--key-override={key.name}:{','.join(settings)}")
    return args


def secrets_read(plan: Plan) -> list[str]:
    """The Secrets the gateway reads: each mounted as a volume in its pod."""
    spec = plan.spec
    names = [backend_key_secret_name(plan.name)]
    if spec.auth.api_key_secret_ref is not None:
        names.append(spec.auth.api_key_secret_ref.name)
    if spec.auth.api_keys_secret_name:
        names.append(spec.auth.api_keys_secret_name)
    if spec.gateway.tls is not None:
        names.append(tls_secret_name(plan))
    return sorted(set(names))


def secret_volumes(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volume mounts): each Secret at SECRETS_DIR/NAME. Optional, so a missing Secret never
    keeps the gateway from starting: it reports the missing Secret instead (log, metric, a 503 that
    names no data) and the kubelet fills the files in once the Secret exists."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, name in enumerate(secrets_read(plan)):
        volume = f"secret-{index}"  # Secret names can be longer than a volume name may be
        volumes.append(
            {"name": volume, "secret": {"secretName": name, "optional": True, "defaultMode": SECRET_FILE_MODE}}
        )
        mounts.append({"name": volume, "mountPath": f"{SECRETS_DIR}/{name}", "readOnly": True})
    return volumes, mounts


def _meta(plan: Plan, name: str) -> dict[str, Any]:

    return {"name": name, "namespace": plan.namespace, "labels": standard_labels(plan.name)}


# Python's ssl loads a certificate only from files: the gateway writes the pair it read from the TLS
# Secret to a temporary directory, which a read-only root has none of. Memory-backed: the key stays off disk.
TLS_SCRATCH_DIR = "/tmp"


def gateway_deployment(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    volumes, mounts = secret_volumes(plan)
    if plan.spec.gateway.tls is not None:
        volumes.append({"name": "tls-scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
        mounts.append({"name": "tls-scratch", "mountPath": TLS_SCRATCH_DIR})
    return render_template(
        "gateway-deployment.yaml.j2",
        {
            "name": gateway_name(plan.name),
            "namespace": plan.namespace,
            "labels": gateway_labels(plan.name),
            "selector": gateway_selector(plan.name),
            "replicas": plan.spec.gateway.replicas,
            "service_account": gateway_name(plan.name),
            "termination_grace_period_seconds": GATEWAY_GRACE_SECONDS,
            "image": config.gateway_image,
            "image_pull_policy": config.image_pull_policy,
            "args": gateway_args(plan, config),
            "port": config.vllm_port,
            "metrics_port": config.gateway_metrics_port,
            "uid": GATEWAY_UID,
            "volumes": volumes,
            "volume_mounts": mounts,
        },
    )


def gateway_pod_disruption_budget(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {**_meta(plan, gateway_name(plan.name)), "labels": gateway_labels(plan.name)},
        "spec": {
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {"matchLabels": gateway_selector(plan.name)},
        },
    }


def backend_service(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    """Headless: only the gateway reads its EndpointSlices (ready vLLM pods); nobody connects through it."""

    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, backend_service_name(plan.name)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(plan.name),
            "publishNotReadyAddresses": False,
            "ports": [{"name": "http", "port": config.vllm_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_account(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(plan, gateway_name(plan.name)),
        "automountServiceAccountToken": False,  # the gateway's pod spec asks for it; nothing else should
    }


def role(plan: Plan) -> dict[str, Any]:
    """EndpointSlices only: the kubelet reads the gateway's Secrets for it (secret_volumes)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(plan, gateway_name(plan.name)),
        "rules": [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {
                # Its own endpoint, for the settings it follows live (suspended, hold timeout).
                "apiGroups": [models.GROUP],
                "resources": [models.PLURAL],
                "resourceNames": [plan.name],
                "verbs": ["get", "list", "watch"],
            },
        ],
    }


def role_binding(plan: Plan) -> dict[str, Any]:
    name = gateway_name(plan.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(plan, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": plan.namespace}],
    }


def backend_key_secret(plan: Plan) -> dict[str, Any]:
    """Without data: the reconciler fills in a random key when it creates the Secret. It only ever
    creates it (the operator cannot read Secrets): see Reconciler._ensure_backend_key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(plan, backend_key_secret_name(plan.name)),
        "type": "Opaque",
    }


def gateway_children(plan: Plan, config: OperatorConfig) -> list[dict[str, Any]]:
    if not plan.spec.gateway.enabled:
        return []
    children = [
        backend_key_secret(plan),
        service_account(plan),
        role(plan),
        role_binding(plan),
        gateway_deployment(plan, config),
        gateway_pod_disruption_budget(plan),
        backend_service(plan, config),
        certificate(plan, config),
    ]
    return [child for child in children if child is not None]
