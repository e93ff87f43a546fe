"""Operator-wide settings: one YAML file (the Helm chart's ConfigMap), every field defaulted.

The platform team's limits live here too: which extra vLLM flags, images and media domains
endpoints may use, and per namespace which GPU types, priority classes, node selectors and
tolerations, and how many GPUs one endpoint may hold. The defaults are the safe ones.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from voxtral_operator.api import flags
from voxtral_operator.api.catalog import GPU_TYPES

# The one place the default images are named; the chart's values override them.
DEFAULT_VLLM_IMAGE = "ghcr.io/voxtral-dev/vllm-voxtral:0.33.0"
DEFAULT_OPERATOR_IMAGE = "ghcr.io/voxtral-dev/voxtral-operator:0.1.0"


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GpuOverride(_Config):
    product_label: str | None = Field(default=None, description="Node label value for this GPU type.")
    memory_gb: float | None = Field(default=None, alias="memoryGB", gt=0)


# Extra vLLM flags every endpoint may use unless the platform says otherwise: tuning and logging
# only. Nothing that reads files, loads code, opens listeners, reaches the network, changes how many
# GPUs a replica uses, or logs request contents. A flag stands for its destination, so
# `--enable-prefix-caching` also admits `--no-enable-prefix-caching`.
DEFAULT_ALLOWED_EXTRA_ARGS: tuple[str, ...] = (
    "--enforce-eager",
    "--enable-prefix-caching",
    "--prefix-caching-hash-algo",
    "--enable-chunked-prefill",
    "--max-num-batched-tokens",
    "--max-num-queued-tokens",
    "--long-prefill-token-threshold",
    "--block-size",
    "--kv-cache-dtype",
    "--dtype",
    "--quantization",
    "--seed",
    "--max-log-len",
    "--log-level",
    "--uvicorn-log-level",
    "--disable-uvicorn-access-log",
    "--disable-access-log-for-endpoints",
    "--max-logprobs",
    "--override-generation-config",
    "--response-role",
    "--return-tokens-as-token-ids",
    "--enable-request-id-headers",
    "--enable-prompt-tokens-details",
    "--enable-force-include-usage",
    "--disable-cascade-attn",
    "--async-scheduling",
    "--scheduling-policy",
    "--stream-interval",
    "--sse-keep-alive-interval",
    "--max-cudagraph-capture-size",
    "--optimization-level",
    "--performance-mode",
    "--disable-sliding-window",
    "--skip-mm-profiling",
    "--mm-processor-cache-gb",
    "--disable-fastapi-docs",
    "--disable-custom-all-reduce",
)
# Addresses no endpoint's egress may reach: cluster and cloud-internal ranges (the metadata service).
DEFAULT_PRIVATE_CIDRS: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
)
ANY = "*"


class AllowedToleration(_Config):
    key: str = Field(default=ANY, min_length=1, description="Taint key; * for any key.")
    value: str = Field(default=ANY, description="Taint value; * for any value (and operator Exists).")


class NamespacePolicy(_Config):
    """What the endpoints of some namespaces may ask for. Lists hold exact values or `*` (anything)."""

    # Which namespaces: by name, or by labels (all must match); neither on the default policy.
    namespaces: list[str] = Field(default_factory=list)
    namespace_labels: dict[str, str] = Field(default_factory=dict)
    gpu_types: list[str] = Field(default_factory=lambda: [ANY])
    max_gpus_per_endpoint: int = Field(default=16, ge=1, le=4096)
    # Never `system-*`: those preempt cluster components.
    priority_class_names: list[str] = Field(default_factory=list)
    # Node label key -> allowed values. The GPU product label is the operator's and never allowed.
    node_selector: dict[str, list[str]] = Field(default_factory=lambda: {ANY: [ANY]})
    tolerations: list[AllowedToleration] = Field(default_factory=lambda: [AllowedToleration()])
    # A toleration with no key and operator Exists tolerates every taint, other teams' pools included.
    tolerate_all_taints: bool = False

    @field_validator("gpu_types")
    @classmethod
    def _known_gpu_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t != ANY and t not in GPU_TYPES]
        if unknown:
            raise ValueError(f"unknown GPU types {unknown}; known: {', '.join(GPU_TYPES)}")
        return value

    @field_validator("priority_class_names")
    @classmethod
    def _no_system_priority(cls, value: list[str]) -> list[str]:
        if any(name.startswith("system-") or name == ANY for name in value):
            raise ValueError("system-* priority classes (and *) cannot be allowed: they preempt cluster components")
        return value

    def matches(self, namespace: str, labels: dict[str, str]) -> bool:
        if namespace in self.namespaces:
            return True
        return bool(self.namespace_labels) and self.namespace_labels.items() <= labels.items()


class EgressConfig(_Config):
    """The egress half of every endpoint's NetworkPolicy."""

    enabled: bool = True
    # Where pods resolve names: the cluster DNS pods.
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    # HTTPS to the model hub, and to media domains endpoints list, goes to these ranges less the private ones.
    public_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    private_cidrs: list[str] = Field(default_factory=lambda: list(DEFAULT_PRIVATE_CIDRS))

    @field_validator("public_cidrs", "private_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr)  # raises ValueError naming the bad one
        return value


class MetricsScraper(_Config):
    """Pods that may read vLLM's /metrics on every endpoint (Prometheus): a NetworkPolicy peer.

    vLLM serves /metrics on its API port, so the peer reaches the API too (which the API key guards).
    """

    # Required: an empty namespace selector would admit every namespace.
    namespace_labels: dict[str, str] = Field(min_length=1)
    pod_labels: dict[str, str] = Field(default_factory=dict)  # empty: every pod of those namespaces

    def peer(self) -> dict[str, Any]:
        return {
            "namespaceSelector": {"matchLabels": dict(self.namespace_labels)},
            "podSelector": {"matchLabels": dict(self.pod_labels)},
        }


class OperatorConfig(_Config):
    vllm_image: str = DEFAULT_VLLM_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # The label that tells GPU nodes apart; GPU feature discovery sets this one.
    gpu_node_label: str = "nvidia.com/gpu.product"
    gpu_overrides: dict[str, GpuOverride] = Field(default_factory=dict)
    vllm_port: int = 8000
    # The gateway runs the operator's own image with another command (the chart sets its image here).
    gateway_image: str = DEFAULT_OPERATOR_IMAGE
    gateway_metrics_port: int = 9091
    cluster_domain: str = "cluster.local"
    # The operator's own pods, admitted by every endpoint's NetworkPolicy to scrape /metrics.
    operator_namespace: str = "voxtral-system"
    operator_pod_labels: dict[str, str] = Field(default_factory=lambda: {"app.kubernetes.io/name": "voxtral-operator"})
    scrape_interval_seconds: float = Field(default=2.0, gt=0)
    scrape_timeout_seconds: float = Field(default=1.0, gt=0)
    # How often the autoscaler saves what it learned (capacity, cold start, daily profile) per endpoint.
    autoscaler_state_save_seconds: float = Field(default=900.0, gt=0)
    # How often each ready endpoint is checked end to end through its Service (0: never).
    serving_check_seconds: float = Field(default=10.0, ge=0)
    watched_namespaces: list[str] = Field(default_factory=list)
    # How often the watch caches are checked against a fresh listing (objects deleted in a watch gap).
    resync_seconds: float = Field(default=120.0, gt=0)
    # Where KEDA's Prometheus trigger reads vLLM's metrics (autoscaling.mode: keda).
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    # vLLM images run as this user; the official image works as any uid with a writable HOME.
    vllm_run_as_user: int = 1000
    shm_size: str = "8Gi"
    # Platform limits on what endpoints ask for (see the module docstring).
    allowed_extra_args: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_EXTRA_ARGS))
    # Images endpoints may run: exact references, or prefixes ending in `*`. Empty: vllmImage only.
    allowed_images: list[str] = Field(default_factory=list)
    # Domains endpoints may list in engine.allowedMediaDomains: exact, `*.example.com`, or `*`.
    allowed_media_domains: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # The first policy matching an endpoint's namespace applies; defaultPolicy when none does.
    namespace_policies: list[NamespacePolicy] = Field(default_factory=list)
    default_policy: NamespacePolicy = Field(default_factory=NamespacePolicy)
    egress: EgressConfig = Field(default_factory=EgressConfig)

    @field_validator("allowed_extra_args")
    @classmethod
    def _real_unowned_flags(cls, value: list[str]) -> list[str]:
        refused = flags.refused_dests()
        for flag in value:
            dest = flags.dest_of_flag(flag)
            if dest is None:
                raise ValueError(f"{flag!r} is not a vllm serve {flags.table().version} flag")
            if dest in refused:
                raise ValueError(f"{flag!r} cannot be allowed: {refused[dest]}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _policies_start_from_the_default(cls, data: Any) -> Any:
        """A namespace policy's keys it does not set are defaultPolicy's, not the built-in ones: a policy
        written to grant one namespace H100s must not open, there, the node pools defaultPolicy fences."""
        if not isinstance(data, dict):
            return data
        policies_key = next((k for k in ("namespacePolicies", "namespace_policies") if k in data), None)
        default_raw = next((data[k] for k in ("defaultPolicy", "default_policy") if k in data), None)
        if policies_key is None or default_raw is None or not isinstance(data[policies_key], list):
            return data  # no policy, or a default that is the built-in one
        try:
            default = NamespacePolicy.model_validate(default_raw)
            policies = [NamespacePolicy.model_validate(policy) for policy in data[policies_key]]
        except ValidationError:
            return data  # the fields' own validation says what is wrong, where
        merged = [
            {**default.model_dump(), **{name: getattr(policy, name) for name in policy.model_fields_set}}
            for policy in policies
        ]
        return {**data, policies_key: merged}

    def allowed_extra_dests(self) -> frozenset[str]:
        return frozenset(d for d in map(flags.dest_of_flag, self.allowed_extra_args) if d is not None)

    def image_allowed(self, image: str) -> bool:
        patterns = self.allowed_images or [self.vllm_image]
        return any(image == p or (p.endswith("*") and image.startswith(p[:-1])) for p in patterns)

    def media_domain_allowed(self, domain: str) -> bool:
        return any(p == ANY or fnmatch.fnmatchcase(domain, p) for p in self.allowed_media_domains)

    def policy_for(self, namespace: str, labels: dict[str, str]) -> NamespacePolicy:
        for policy in self.namespace_policies:
            if policy.matches(namespace, labels):
                return policy
        return self.default_policy

    # What one GPU of each type costs an hour, shown by `voxtral-operator hardware` (no unit conversion).
    # A GPU-hour at most 10,000 (of any currency): beyond, costs overflow to inf, which JSON cannot carry.
    gpu_hourly_prices: dict[str, Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    currency: str = "USD"
    # Operator log lines: "text" for people, "json" (one object a line) for log pipelines.
    log_format: Literal["text", "json"] = "text"
    # The monitoring stack every endpoint's NetworkPolicy admits to the vLLM port (the chart's metrics.scrapers).
    metrics_scrapers: list[MetricsScraper] = Field(default_factory=list)

    @field_validator("gpu_hourly_prices")
    @classmethod
    def _known_gpu_types(cls, prices: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(prices) - set(GPU_TYPES))
        if unknown:
            raise ValueError(f"unknown GPU type {', '.join(unknown)} (known: {', '.join(GPU_TYPES)})")
        return prices


def load_config(path: str | Path | None) -> OperatorConfig:
    if path is None:
        return OperatorConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(data)
