"""The VoxtralEndpoint API: the single source of truth for the CRD schema and for validation.

Field descriptions become `kubectl explain` text; `x-kubernetes-validations` entries are CEL
rules the API server enforces, mirrored here by model validators so `voxtral-operator render`
refuses the same inputs a cluster would.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from voxtral_operator.api import catalog, flags

GROUP = "voxtral.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VoxtralEndpoint"
PLURAL = "voxtralendpoints"
SINGULAR = "voxtralendpoint"
SHORT_NAMES = ["vxe"]

# Extra vLLM flags are read as vLLM's own parser reads them (api/flags.py): this CEL rule refuses the
# spellings of operator-owned flags at `kubectl apply`; the model validator below is the full check.
# The patterns hold no backslash escapes but \t \n \r \f \v, which CEL and RE2 read alike.
_EXTRA_ARGS_RULE = (
    f"self.all(a, !a.matches('{flags.cel_refused_pattern()}') || a.matches('{flags.cel_exempt_pattern()}'))"
)

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # a Service's name
# What the API server checks inside the children (apimachinery's validation), so the CRD and
# `render` refuse up front what would otherwise fail the child's apply. `[.]`, not `\.`: CEL
# string literals reject `\.`, and these patterns appear in CEL rules too.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + LABEL_NAME + "$"
LABEL_VALUE = r"^(" + LABEL_NAME + ")?$"
LABEL_KEY_MAX = 253 + 1 + 63
CONFIG_MAP_KEY = r"^[-._a-zA-Z0-9]+$"
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
# apimachinery's suffixes: decimal kilo is "k" ("K" is refused), binary "Ki".
_QUANTITY_SUFFIX = r"(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?" + _QUANTITY_SUFFIX
# A PersistentVolumeClaim's size must be more than zero: a non-zero digit before or after the point.
POSITIVE_QUANTITY = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)" + _QUANTITY_SUFFIX


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def label_key_problem(key: str) -> str | None:
    """Why the API server would refuse `key` as a label key (or node selector key); None when it would not."""
    prefix, _, name = key.rpartition("/")
    if not re.fullmatch(LABEL_KEY, key) or len(prefix) > 253 or len(name) > 63:
        return (
            f"{key!r} is not a valid label key: an optional DNS subdomain prefix and '/', then up to 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


# The gateway is on unless the spec says enabled: false (the API server fills the default in first).
_GATEWAY_ON = "(!has(self.gateway) || !has(self.gateway.enabled) || self.gateway.enabled)"
_GATEWAY_REPLICAS = 2  # gateway pods by default


def _label_map_rule(what: str) -> dict[str, Any]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, k.matches('{LABEL_KEY}'))",
                "message": f"{what} keys must be valid label keys ([prefix/]name, name up to 63 characters)",
            }
        ]
    }


def _label_keys(value: dict[str, str]) -> dict[str, str]:
    problems = [p for p in map(label_key_problem, value) if p]
    if problems:
        raise ValueError("; ".join(problems))
    return value


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
LabelKey = Annotated[str, Field(max_length=LABEL_KEY_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )


class GpuSpec(_Model):
    type: Literal[*catalog.GPU_TYPES] = Field(  # type: ignore[valid-type]
        description=(
            "GPU model the endpoint runs on; sets the node selector and the GPU memory the fit check "
            "uses. One of: " + ", ".join(catalog.GPU_TYPES) + "."
        ),
    )


class ModelProfileSpec(_Model):
    weights_gb: float = Field(
        alias="weightsGB",
        gt=0,
        le=2000,
        description="Size of the model weights in GB (10^9 bytes); required for models outside the catalog.",
    )
    kv_cache_bytes_per_token: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description=(
            "KV cache bytes per token of context (2 x layers x KV heads x head dim x dtype bytes). "
            "Defaults to the largest catalog model's value."
        ),
    )


class WeightsSource(enum.StrEnum):
    HUB = "hub"
    PRELOADED = "preloaded"


class AutoscalingMode(enum.StrEnum):
    OPERATOR = "operator"
    KEDA = "keda"


class AutoscalingPolicy(enum.StrEnum):
    REQUESTS = "requests"
    WORKLOAD = "workload"


# The requests policy's target when the spec sets none, by the cold-start path the next replica takes
# (coldstart.py): what bench/tune_policies.py chose on training seeds for each. A replica that reads its
# weights and compiled kernels from the model cache is ready minutes sooner, so replicas can run fuller.
DEFAULT_TARGET_ACTIVE_REQUESTS = 4  # ColdDownload (from the hub) and LocalCache (the node's disk, compiling)
STAGED_TARGET_ACTIVE_REQUESTS = 5  # SharedCache: weights and compile cache on the model cache volume
REALTIME_TARGET_SESSION_SHARE = 0.6
DEFAULT_SCALE_DOWN_DELAY_SECONDS = {AutoscalingPolicy.REQUESTS: 900, AutoscalingPolicy.WORKLOAD: 300}


class AutoscalingSpec(_Model):
    enabled: bool = Field(default=True, description="Scale replicas between minReplicas and maxReplicas.")
    mode: AutoscalingMode = Field(
        default=AutoscalingMode.OPERATOR,
        description=(
            "operator: the operator scrapes vLLM's queue metrics and writes spec.replicas. "
            "keda: render a KEDA ScaledObject that drives the scale subresource instead."
        ),
    )
    policy: AutoscalingPolicy = Field(
        default=AutoscalingPolicy.REQUESTS,
        description=(
            "mode operator only. requests: hold requests in flight per replica (running or waiting at vLLM, "
            "queued at the gateway) at targetActiveRequests, with HPA's algorithm (10 % tolerance, scale-up by "
            "at most max(4, the replicas there are) every 15 s, scale-down to the highest recommendation of "
            "scaleDownDelaySeconds; up to 3 replicas, a scale-up needs a request waiting or the 5-minute "
            "average above target). workload: a model of KV cache and sequence slots in use with a learned daily "
            "profile (it used more GPU-hours in the simulation; see the README)."
        ),
    )
    target_active_requests: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=(
            "The requests policy: requests in flight per replica it scales to, at most the replica's maxNumSeqs. "
            "Default by the way the next replica gets its weights: 5 when it reads them from a filled "
            "modelCache (coldStart.prestageWeights, weightsSource preloaded, or an earlier replica's download), "
            "whose shorter cold start lets replicas run fuller; else 4; a realtime model: 60 % of the sessions a "
            "replica holds, each session one request for its whole length."
        ),
    )
    target_queue_depth: int = Field(
        default=4,
        ge=1,
        le=1000,
        description=(
            "The workload policy and mode keda: waiting requests per replica the endpoint tolerates before it "
            "scales up."
        ),
    )
    scale_down_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description=(
            "The requests policy scales down to the highest replicas it asked for over this many seconds "
            "(default 900: a GPU node bills about 600 s more after its pod goes, so a replica wanted back "
            "within that saves nothing by leaving); the workload policy removes one replica after this long "
            "of sustained low load (default 300); mode keda: the cooldown (default 300). A person's "
            "spec.replicas is kept this long once ready."
        ),
    )
    max_scale_up_step: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "The workload policy and mode keda: most replicas added by one scale-up decision (the requests "
            "policy adds at most max(4, the replicas there are) every 15 s)."
        ),
    )
    scale_to_zero_after_seconds: int | None = Field(
        default=None,
        ge=10,
        le=7 * 86400,
        description=(
            "With minReplicas 0 and the gateway: after this many seconds without a request the endpoint "
            "goes to zero replicas (its GPUs are freed); the next request is held by the gateway while a "
            "replica starts. Off when unset."
        ),
    )
    reserved_replicas: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "The reserved pool (GPUs paid for whatever happens), with the gateway: while deferrable requests "
            "(service_tier flex) wait or run, the autoscaler keeps up to this many replicas (within "
            "maxReplicas), and scaleDownDelaySeconds after that work ends. Deferrable work is never demand: "
            "it never scales beyond the pool (with 0, the default, it runs only on replicas interactive work "
            "or minReplicas keep); interactive demand scales as always. A pool not lent to other work: set "
            "minReplicas to the same number to keep it up all day."
        ),
    )

    @property
    def scale_down_delay(self) -> int:
        """scaleDownDelaySeconds, or its policy's default when unset (mode keda: HPA's own, 300)."""
        if self.scale_down_delay_seconds is not None:
            return self.scale_down_delay_seconds
        if self.mode == AutoscalingMode.KEDA:
            return DEFAULT_SCALE_DOWN_DELAY_SECONDS[AutoscalingPolicy.WORKLOAD]
        return DEFAULT_SCALE_DOWN_DELAY_SECONDS[self.policy]


class Toleration(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.key) && self.key != '' || (has(self.operator) && self.operator == 'Exists')",
                    "message": "a toleration without a key must have operator Exists (it then tolerates every taint)",
                },
                {
                    "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "message": "value must be empty when operator is Exists",
                },
                {
                    "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds needs effect NoExecute",
                },
            ]
        }
    )

    key: str | None = Field(
        default=None, max_length=LABEL_KEY_MAX, pattern=LABEL_KEY, description="Taint key the toleration applies to."
    )
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE, description="Taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> Toleration:
        if self.key:
            problem = label_key_problem(self.key)
            if problem:
                raise ValueError(problem)
        elif self.operator != "Exists":
            raise ValueError("a toleration without a key must have operator Exists (it then tolerates every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class _PoolPlacement(_Model):
    """What places a pool's pods besides its node labels."""

    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations for the pool's taints, within the namespace's policy in the operator config.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PriorityClass of the pool's vLLM pods: one the namespace's policy allows (never system-*).",
    )


class OverflowPoolSpec(_PoolPlacement):
    """Where replicas go while the reserved pool is full (on-demand or spot nodes, paid by the second)."""

    node_selector: dict[LabelKey, LabelValue] = Field(
        min_length=1,
        max_length=32,
        description=(
            "Labels of the overflow nodes, added to the GPU product selector (which it cannot override), "
            "within the namespace's policy in the operator config. Must differ from the reserved pool's."
        ),
        json_schema_extra=_label_map_rule("overflow nodeSelector"),
    )
    gpu: GpuSpec | None = Field(
        default=None,
        description=(
            "Another GPU type for overflow replicas; the fit check must accept it at the endpoint's "
            "tensor-parallel size (replicas behind one gateway are interchangeable). Default: spec.gpu."
        ),
    )
    max_replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Most overflow replicas at once (a cap on on-demand spend). Default: up to the desired count.",
    )

    _node_selector_keys = field_validator("node_selector")(_label_keys)


class NodePoolSpec(_PoolPlacement):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.overflow) || !has(self.nodeSelector)"
                    " || self.overflow.nodeSelector != self.nodeSelector",
                    "message": "overflow.nodeSelector must name other nodes than the reserved pool's nodeSelector",
                    "fieldPath": ".overflow.nodeSelector",
                }
            ]
        }
    )

    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description=(
            "Labels of the reserved GPU nodes, added to the GPU product selector (which it cannot override), "
            "within the namespace's policy in the operator config."
        ),
        json_schema_extra=_label_map_rule("nodeSelector"),
    )
    overflow: OverflowPoolSpec | None = Field(
        default=None,
        description=(
            "A second pool used only while this one is full: replicas the scheduler finds no room for here "
            "run there, and move back (make-before-break) when room frees up. Unset: they wait."
        ),
    )

    _node_selector_keys = field_validator("node_selector")(_label_keys)

    @model_validator(mode="after")
    def _overflow_elsewhere(self) -> NodePoolSpec:
        if self.overflow is not None and self.overflow.node_selector == self.node_selector:
            raise ValueError("overflow.nodeSelector must name other nodes than the reserved pool's nodeSelector")
        return self


class AudioLimitsSpec(_Model):
    max_duration_seconds: int = Field(
        default=2400,
        ge=1,
        le=14400,
        description="Longest audio accepted (default 40 min: the model's audio-understanding limit).",
    )
    max_file_size_mb: int = Field(
        alias="maxFileSizeMB", default=200, ge=1, le=4096, description="Largest uploaded audio file in MB."
    )


class EngineSpec(_Model):
    max_model_len: int = Field(
        default=32768,
        ge=1024,
        le=catalog.MAX_CONTEXT_TOKENS,
        description="Context length in tokens (--max-model-len), up to the model's own (32768; the realtime "
        "model's 131072).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        ge=0.5,
        le=0.98,
        description="Fraction of each GPU vLLM may use (--gpu-memory-utilization).",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096, description="Most sequences batched at once (--max-num-seqs)."
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Requests queued beyond this are refused with HTTP 503 (--max-num-queued-reqs).",
    )
    shutdown_timeout_seconds: int = Field(
        default=120,
        ge=0,
        le=3600,
        description="Seconds running requests may drain on shutdown (--shutdown-timeout).",
    )
    audio: AudioLimitsSpec = Field(default_factory=AudioLimitsSpec, description="Audio size limits vLLM enforces.")
    allowed_media_domains: list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Domains callers' audio URLs may be fetched from (--allowed-media-domains), within the operator "
            "config's allowedMediaDomains. Empty: vLLM fetches no URL (audio must be sent inline)."
        ),
    )
    extra_args: list[Annotated[str, Field(max_length=256, pattern=r"^[^\x00]*$")]] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Additional vLLM flags, within what the operator config allows. Flags the operator sets from "
            "the spec are refused in every spelling vLLM accepts (aliases, _ for -, prefixes, --flag=value, "
            "the dotted JSON form)."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _EXTRA_ARGS_RULE,
                    "message": "extraArgs may not set flags the operator owns "
                    "(model, parallelism, limits, auth, ports); use the spec fields",
                }
            ]
        },
    )

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, args: list[str]) -> list[str]:
        problems = flags.extra_arg_problems(args)
        if problems:
            raise ValueError("; ".join(problems))
        return args

    @field_validator("allowed_media_domains")
    @classmethod
    def _public_domains(cls, domains: list[str]) -> list[str]:
        # A NetworkPolicy does not govern the pod's loopback, and a name without a dot resolves
        # through the cluster's search domains to a Service: neither is a media domain.
        for domain in domains:
            if _is_ip_address(domain) or domain == "localhost" or domain.endswith(".localhost") or "." not in domain:
                raise ValueError(f"{domain!r} is not a public domain name (no IP addresses, localhost or bare names)")
        return domains


class SecretKeyRef(_Model):
    name: str = Field(max_length=253, pattern=DNS_LABEL, description="Secret in the endpoint's namespace.")
    key: str = Field(
        default="api-key",
        max_length=253,
        pattern=CONFIG_MAP_KEY,
        description="Key in the Secret.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self != '.' && !self.startsWith('..')", "message": "a Secret key cannot be '.' or start '..'"}
            ]
        },
    )

    @field_validator("key")
    @classmethod
    def _secret_key(cls, key: str) -> str:
        if key == "." or key.startswith(".."):
            raise ValueError("a Secret key cannot be '.' or start '..'")
        return key


class AuthSpec(_Model):
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding the API key callers must send as a Bearer token.",
    )
    api_keys_secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL,
        description=(
            "With the gateway: a Secret whose every data entry is an accepted caller key. Rotate with no "
            "downtime by adding the new key, moving callers, then removing the old one; changes take "
            "effect within seconds, without a restart."
        ),
    )


class IssuerRef(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="cert-manager Issuer or ClusterIssuer.")
    kind: Literal["Issuer", "ClusterIssuer"] = Field(default="Issuer", description="Issuer or ClusterIssuer.")


class GatewayTLSSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretName) != has(self.issuerRef)",
                    "message": "set exactly one of secretName and issuerRef",
                }
            ]
        }
    )

    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL,
        description="kubernetes.io/tls Secret (tls.crt, tls.key) the gateway serves HTTPS with; a renewed "
        "certificate is picked up without a restart.",
    )
    issuer_ref: IssuerRef | None = Field(
        default=None,
        description="Ask cert-manager for the certificate: the operator creates a Certificate (Secret "
        "NAME-gateway-tls, the Service's DNS names) and cert-manager keeps it renewed. Needs cert-manager's CRDs.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> GatewayTLSSpec:
        if (self.secret_name is None) == (self.issuer_ref is None):
            raise ValueError("set exactly one of secretName and issuerRef")
        return self


class KeyLimitsSpec(_Model):
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Requests per minute a key may send; beyond: 429 with Retry-After.",
    )
    audio_seconds_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Seconds of audio per minute a key may send (from the upload's header, else its size); "
        "beyond: 429 with Retry-After.",
    )
    concurrent_requests: int | None = Field(
        default=None, ge=1, le=100_000, description="Requests a key may have queued or in flight at once; beyond: 429."
    )


class GatewayKeySpec(KeyLimitsSpec):
    name: str = Field(
        max_length=253,
        pattern=CONFIG_MAP_KEY,
        description="The key's entry in auth.apiKeysSecretName (or auth.apiKeySecretRef's key).",
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=100,
        description="The key's share of dispatch while several keys wait, against the others' weights.",
    )


class DeferrableLaneSpec(_Model):
    max_queue: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        description="Deferrable requests (service_tier flex) a gateway pod queues at most; beyond: 429.",
    )
    timeout_seconds: int = Field(
        default=21600,
        ge=60,
        le=7 * 86400,
        description="Longest a deferrable request waits for spare capacity (held or queued) before 503; the "
        "caller's connection stays open that long.",
    )


class GatewaySpec(_Model):
    enabled: bool = Field(
        default=True,
        description=(
            "A gateway in front of the vLLM replicas (the default): it checks callers' keys, forwards only "
            "the OpenAI API routes, queues centrally and dispatches by outstanding work, and holds requests "
            "while the endpoint scales from zero; vLLM is reachable only from it. false: callers reach vLLM "
            "directly, with every route it serves (/invocations, /tokenize, /metrics without a key)."
        ),
    )
    replicas: int = Field(
        default=_GATEWAY_REPLICAS, ge=1, le=20, description="Gateway pods (CPU only), spread across nodes."
    )
    max_queue: int = Field(default=1000, ge=1, le=100000, description="Requests a gateway pod queues at most.")
    queue_timeout_seconds: int = Field(
        default=600, ge=1, le=86400, description="Longest wait in the queue before 503 with Retry-After."
    )
    hold_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7200,
        description="Longest wait for a first replica (scale from zero); default: the model's startup budget.",
    )
    deferrable: DeferrableLaneSpec = Field(
        default_factory=DeferrableLaneSpec,
        description="The deferrable lane: requests marked service_tier flex run only in capacity interactive "
        "work leaves idle, with their own queue bound and timeout.",
    )
    tls: GatewayTLSSpec | None = Field(default=None, description="Serve HTTPS; plain HTTP when unset.")
    key_limits: KeyLimitsSpec = Field(
        default_factory=KeyLimitsSpec,
        description="Limits every caller key gets unless `keys` sets its own (unset: no limit). Each gateway pod "
        "enforces its share: the limit divided by gateway.replicas (concurrency rounded up).",
    )
    keys: list[GatewayKeySpec] = Field(
        default_factory=list,
        max_length=64,
        description="Weight and limits of single keys, by the name of their Secret entry; unset limits are keyLimits'.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.all(k, self.exists_one(j, j.name == k.name))", "message": "key names must be unique"}
            ]
        },
    )

    @field_validator("keys")
    @classmethod
    def _unique_key_names(cls, keys: list[GatewayKeySpec]) -> list[GatewayKeySpec]:
        names = [key.name for key in keys]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"key names must be unique: {', '.join(repeated)} repeated")
        return keys


class AccessMode(enum.StrEnum):
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE = "ReadWriteOnce"


class ModelCacheSpec(_Model):
    size: str = Field(default="100Gi", pattern=POSITIVE_QUANTITY, max_length=32, description="PVC size.")
    storage_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="StorageClass; the cluster default when empty."
    )
    access_mode: AccessMode = Field(
        default=AccessMode.READ_WRITE_MANY,
        description=(
            "ReadWriteMany lets every replica share the cache. ReadWriteOnce only works for a "
            "single replica (maxReplicas 1)."
        ),
    )


class ColdStartSpec(_Model):
    """How a new replica gets its weights, compiled kernels and image before it can serve."""

    prestage_weights: bool = Field(
        default=False,
        description=(
            "Download the weights into the model cache with a cache-warmer Job (no GPU) before the first "
            "replica is created; replicas wait for it (condition WeightsStaged) and then load from the cache. "
            "Needs modelCache and weightsSource hub. A model change keeps the running replicas until the new "
            "weights are staged."
        ),
    )
    share_compile_cache: bool = Field(
        default=True,
        description=(
            "With modelCache: keep vLLM's torch.compile, Inductor and Triton caches on the cache volume, so a "
            "later start of the same model and settings reuses the compiled kernels. false: per replica."
        ),
    )
    prepull_image: bool = Field(
        default=False,
        description=(
            "A DaemonSet on the pool's GPU nodes whose init container is the vLLM image running a no-op, so the "
            "image is on every node of the pool before a replica lands there. Holds no GPU."
        ),
    )


class AccessSpec(_Model):
    from_namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]] = Field(
        default_factory=list,
        max_length=64,
        description="Other namespaces whose pods may call the endpoint (the own namespace always may).",
    )
    from_pod_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="When set, only pods with these labels (in the allowed namespaces) may call it.",
        json_schema_extra=_label_map_rule("fromPodLabels"),
    )

    _pod_label_keys = field_validator("from_pod_labels")(_label_keys)


class ResourcesSpec(_Model):
    cpu: str | None = Field(
        default=None,
        pattern=QUANTITY + "|^[0-9]+m$",
        max_length=16,
        description="CPU request; default 4 cores per GPU.",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY,
        max_length=16,
        description="Memory request and limit; default 1.5 x the weights plus 16Gi.",
    )


class RealtimeSpec(_Model):
    """Sessions on /v1/realtime (realtime models only): the gateway admits them per replica and bounds them."""

    max_session_seconds: int | None = Field(
        default=None,
        ge=10,
        le=14400,
        description="Longest session; the gateway closes it then (1008). Default, and most: what maxModelLen "
        "holds (95% of it as audio at 12.5 tokens per second: 2 h 46 min at 131072).",
    )
    max_sessions_per_replica: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Sessions one replica serves at once (also its --max-num-seqs); default and most: what its "
        "KV cache holds, from the model's per-session memory.",
    )
    idle_timeout_seconds: int = Field(
        default=60, ge=1, le=3600, description="A session that sends nothing for this long is closed (1001)."
    )
    max_frame_kb: int = Field(
        alias="maxFrameKB",
        default=1024,
        ge=16,
        le=16384,
        description="Largest WebSocket message a caller may send (1009 beyond).",
    )
    max_messages_per_second: int = Field(
        default=50, ge=1, le=10000, description="Messages a session may send per second, averaged over 5 s (1008)."
    )


class VoxtralEndpointSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                    # format(), not `+`: the server prices a concatenation of unsized strings far above budget.
                    "messageExpression": "'minReplicas %d must not exceed maxReplicas %d'"
                    ".format([self.minReplicas, self.maxReplicas])",
                    "fieldPath": ".minReplicas",
                },
                {
                    "rule": "!has(self.replicas) || (self.replicas >= self.minReplicas"
                    " && self.replicas <= self.maxReplicas)",
                    "message": "replicas must lie within [minReplicas, maxReplicas]",
                    "messageExpression": "'replicas %d must lie within [minReplicas %d, maxReplicas %d]'"
                    ".format([self.replicas, self.minReplicas, self.maxReplicas])",
                    "fieldPath": ".replicas",
                },
                {
                    "rule": "self.model in " + repr(list(catalog.KNOWN_MODELS)) + " || has(self.modelProfile)",
                    "message": "models outside the catalog ("
                    + ", ".join(catalog.KNOWN_MODELS)
                    + ") need modelProfile.weightsGB",
                    "fieldPath": ".model",
                },
                {
                    "rule": "self.minReplicas > 0 || " + _GATEWAY_ON,
                    "message": "minReplicas 0 needs the gateway to hold requests (gateway.enabled: false turns it off)",
                    "fieldPath": ".minReplicas",
                },
                {
                    "rule": "!has(self.autoscaling) || !has(self.autoscaling.scaleToZeroAfterSeconds)"
                    " || self.minReplicas == 0",
                    "message": "scaleToZeroAfterSeconds needs minReplicas 0",
                    "fieldPath": ".autoscaling.scaleToZeroAfterSeconds",
                },
                {
                    "rule": "!has(self.auth) || !has(self.auth.apiKeysSecretName) || " + _GATEWAY_ON,
                    "message": "auth.apiKeysSecretName is read by the gateway, which gateway.enabled: false turns off",
                    "fieldPath": ".auth.apiKeysSecretName",
                },
                {
                    "rule": "!has(self.modelCache) || self.modelCache.accessMode != 'ReadWriteOnce'"
                    " || self.maxReplicas == 1",
                    "message": "a ReadWriteOnce model cache cannot be shared by more than one replica; "
                    "use ReadWriteMany or maxReplicas 1",
                    "fieldPath": ".modelCache.accessMode",
                },
                {
                    "rule": "!has(self.engine) || !has(self.engine.maxNumSeqs) || !"
                    + _GATEWAY_ON
                    + " || self.engine.maxNumSeqs >= (has(self.gateway) && has(self.gateway.replicas)"
                    " ? self.gateway.replicas : " + str(_GATEWAY_REPLICAS) + ")",
                    "message": "engine.maxNumSeqs must be at least gateway.replicas: each gateway pod sends a "
                    "replica its share of them",
                    "fieldPath": ".engine.maxNumSeqs",
                },
                {
                    "rule": "!has(self.coldStart) || !has(self.coldStart.prestageWeights)"
                    " || !self.coldStart.prestageWeights"
                    " || (has(self.modelCache) && (!has(self.weightsSource) || self.weightsSource == 'hub'))",
                    "message": "coldStart.prestageWeights needs modelCache (the volume it fills) and "
                    "weightsSource hub (preloaded weights need no download)",
                    "fieldPath": ".coldStart.prestageWeights",
                },
            ]
        }
    )

    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Hugging Face model id, e.g. mistralai/Voxtral-Small-24B-2507.",
    )
    model_profile: ModelProfileSpec | None = Field(
        default=None, description="Memory profile for a model outside the catalog."
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=256,
        pattern=NO_CONTROL_CHARACTERS,
        description="Model name callers use in requests; defaults to spec.model. May not begin with '-'.",
        json_schema_extra={
            "x-kubernetes-validations": [
                # vLLM's parser would read a leading '-' as a flag, not as the name.
                {"rule": "!self.startsWith('-')", "message": "servedModelName may not begin with '-'"}
            ]
        },
    )

    @field_validator("served_model_name")
    @classmethod
    def _not_a_flag(cls, name: str | None) -> str | None:
        if name is not None and name.startswith("-"):
            raise ValueError("servedModelName may not begin with '-' (vLLM would read it as a flag)")
        return name

    gpu: GpuSpec = Field(description="GPU the endpoint runs on.")
    tensor_parallel_size: Literal[1, 2, 4, 8] | None = Field(
        default=None,
        description="GPUs per replica; default: the smallest size at which the model fits the GPU type.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Replicas wanted now; the autoscaler and `kubectl scale` write here. Defaults to minReplicas.",
    )
    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 (scale to zero) needs the gateway."
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Scaling on vLLM's queue depth.")
    node_pool: NodePoolSpec = Field(
        default_factory=NodePoolSpec, description="The reserved GPU nodes for this endpoint."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM settings.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Who may call the endpoint.")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="The endpoint's front door.")
    realtime: RealtimeSpec = Field(
        default_factory=RealtimeSpec, description="Realtime sessions (WebSocket /v1/realtime) of a realtime model."
    )
    suspended: bool = Field(
        default=False,
        description=(
            "Stop the endpoint: zero replicas, GPUs freed, the model cache kept; with the gateway, callers "
            "get 503 'endpoint suspended'. false starts it again."
        ),
    )
    access: AccessSpec = Field(
        default_factory=AccessSpec, description="Network access to the endpoint (NetworkPolicy)."
    )
    cold_start: ColdStartSpec = Field(
        default_factory=ColdStartSpec,
        description="Shorter replica starts: weights staged before the first replica, shared compile caches, "
        "the image pulled ahead.",
    )
    model_cache: ModelCacheSpec | None = Field(
        default=None, description="PersistentVolumeClaim for the Hugging Face cache; emptyDir when unset."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="CPU and memory of each replica.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="vLLM image; the operator's default when unset. Others must be allowed by the operator config.",
    )
    weights_source: WeightsSource = Field(
        default=WeightsSource.HUB,
        description=(
            "hub: vLLM downloads the weights from Hugging Face (the pod may reach it over HTTPS). "
            "preloaded: the weights are already in the model cache or the image; vLLM runs offline and "
            "the pod gets no egress for them."
        ),
    )

    def cross_field_problems(self) -> list[str]:
        """The rules of the CEL validations above, for inputs that never meet an API server."""
        problems = []
        if self.min_replicas > self.max_replicas:
            problems.append(f"spec.minReplicas: {self.min_replicas} must not exceed maxReplicas ({self.max_replicas})")
        elif self.replicas is not None and not self.min_replicas <= self.replicas <= self.max_replicas:
            problems.append(
                f"spec.replicas: {self.replicas} must lie within "
                f"[minReplicas {self.min_replicas}, maxReplicas {self.max_replicas}]"
            )
        if self.min_replicas == 0 and not self.gateway.enabled:
            problems.append(
                "spec.minReplicas: 0 needs the gateway to hold requests (gateway.enabled: false turns it off)"
            )
        if self.auth.api_keys_secret_name and not self.gateway.enabled:
            problems.append("spec.auth.apiKeysSecretName: read by the gateway, which gateway.enabled: false turns off")
        if self.autoscaling.scale_to_zero_after_seconds is not None and self.min_replicas > 0:
            problems.append(
                "spec.autoscaling.scaleToZeroAfterSeconds: needs minReplicas 0 (it would never go below "
                f"{self.min_replicas})"
            )
        if self.model not in catalog.MODELS and self.model_profile is None:
            problems.append(
                f"spec.model: {self.model!r} is not in the catalog ({', '.join(catalog.KNOWN_MODELS)}); "
                "set spec.modelProfile.weightsGB so the operator can size it"
            )
        known = catalog.MODELS.get(self.model)
        if known is not None and self.engine.max_model_len > known.context_tokens:
            problems.append(
                f"spec.engine.maxModelLen: {self.engine.max_model_len} is more than {self.model}'s context "
                f"({known.context_tokens} tokens)"
            )
        # Only the settings without a default: the API server writes the others' defaults into every
        # endpoint, realtime or not, and they are ignored where there is no realtime route.
        sized = self.realtime.max_session_seconds is not None or self.realtime.max_sessions_per_replica is not None
        if sized and (known is None or not known.realtime):
            problems.append(
                f"spec.realtime: {self.model} does not serve /v1/realtime (realtime models: "
                f"{', '.join(m for m, p in catalog.MODELS.items() if p.realtime)})"
            )
        session = self.realtime.max_session_seconds
        if known is not None and known.realtime and session is not None:
            most = catalog.max_session_seconds(self.engine.max_model_len)
            if session > most:
                problems.append(
                    f"spec.realtime.maxSessionSeconds: {session}s of audio does not fit maxModelLen "
                    f"{self.engine.max_model_len} (at most {most}s); raise engine.maxModelLen or shorten it"
                )
        if (
            self.model_cache is not None
            and self.model_cache.access_mode == AccessMode.READ_WRITE_ONCE
            and self.max_replicas > 1
        ):
            problems.append(
                "spec.modelCache.accessMode: a ReadWriteOnce cache cannot be shared by more than one "
                "replica; use ReadWriteMany or maxReplicas 1"
            )
        seqs = self.engine.max_num_seqs
        if self.gateway.enabled and seqs is not None and seqs < self.gateway.replicas:
            problems.append(
                f"spec.engine.maxNumSeqs: {seqs} is fewer than gateway.replicas ({self.gateway.replicas}): each "
                "gateway pod sends a replica its share of them; raise it or run fewer gateway pods"
            )
        if self.cold_start.prestage_weights and (self.model_cache is None or self.weights_source != WeightsSource.HUB):
            problems.append(
                "spec.coldStart.prestageWeights: needs modelCache (the volume it fills) and weightsSource hub "
                "(preloaded weights need no download)"
            )
        return problems

    @property
    def desired_replicas(self) -> int:
        if self.suspended:
            return 0
        return self.min_replicas if self.replicas is None else self.replicas


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    type: str = Field(max_length=64, description="Ready, Progressing, Degraded or Serving.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=128, description="CamelCase reason naming the cause.")
    message: str = Field(default="", max_length=4096, description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="Generation of the spec this condition describes."
    )


class Phase(enum.StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    SCALED_TO_ZERO = "ScaledToZero"  # no replica by the autoscaler's choice; the gateway holds requests
    SUSPENDED = "Suspended"  # spec.suspended: stopped by its owner


class ScaleDecision(_Model):
    replicas: int = Field(description="Replicas decided.")
    reason: str = Field(max_length=512, description="Why.")
    time: str = Field(description="When (RFC 3339).")


class ScaleHold(_Model):
    replicas: int = Field(description="Replicas a person asked for; the autoscaler keeps at least these.")
    set_by: str = Field(max_length=160, description="Who wrote spec.replicas (the API server's field manager).")
    set_at: str = Field(description="When (RFC 3339).")
    until: str | None = Field(
        default=None, description="When the floor ends (RFC 3339); unset until all of them are ready."
    )
    message: str = Field(max_length=512, description="What the autoscaler keeps, and until when.")


class GpusByPool(_Model):
    reserved: int = Field(default=0, description="GPUs held on the reserved pool's nodes.")
    overflow: int = Field(default=0, description="GPUs held on the overflow pool's nodes.")


class LaneStatus(_Model):
    queued_requests: int = Field(description="Requests waiting in the gateway pods' queues.")
    queued_audio_seconds: int = Field(description="Audio-seconds in those requests.")
    in_flight_requests: int | None = Field(
        default=None,
        description="Requests on replicas now: the deferrable lane only (the interactive lane's count changes "
        "with every request, so it is in the gateway's metrics, not in status).",
    )


class LanesStatus(_Model):
    interactive: LaneStatus = Field(description="Requests without service_tier flex.")
    deferrable: LaneStatus = Field(description="Requests with service_tier flex.")


class VoxtralEndpointStatus(_Model):
    phase: Phase | None = Field(
        default=None, description="Pending, Loading, Ready, Degraded, Failed, ScaledToZero or Suspended."
    )
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Conditions.")
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas that pass readiness.")
    replica_summary: str | None = Field(default=None, description="ready/desired, for display.")
    desired_replicas: int | None = Field(default=None, description="Replicas the autoscaler wants.")
    queue_depth: int | None = Field(default=None, description="Requests waiting across all replicas.")
    queued_audio_seconds: int | None = Field(
        default=None, description="Audio-seconds of work waiting in the gateway's queue (with the gateway)."
    )
    lanes: LanesStatus | None = Field(
        default=None, description="The gateway's queue per lane: interactive and deferrable (service_tier flex)."
    )
    url: str | None = Field(default=None, description="OpenAI-compatible base URL inside the cluster.")
    observed_generation: int | None = Field(default=None, description="Last spec generation acted on.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    tensor_parallel_size: int | None = Field(default=None, description="Tensor-parallel size in effect.")
    gpus: int | None = Field(
        default=None, description="GPUs held now: pods bound to a node and not finished, x tensor-parallel size."
    )
    gpus_by_pool: GpusByPool | None = Field(
        default=None, description="GPUs held now in the reserved pool and in the overflow pool."
    )
    last_scale_decision: ScaleDecision | None = Field(default=None, description="The autoscaler's last decision.")
    cold_start_seconds: dict[str, int] | None = Field(
        default=None,
        description="The cold start the autoscaler has learned per path (the Loading condition's reasons: "
        "ColdDownload, SharedCache, LocalCache), in seconds from asking for a replica to its being ready.",
    )
    scale_hold: ScaleHold | None = Field(
        default=None,
        description="A person's spec.replicas (kubectl scale, apply) the autoscaler keeps as a floor, while it does.",
    )


def parse_spec(spec: dict[str, Any]) -> VoxtralEndpointSpec:
    """A spec as the API server would take it: its JSON names only (not the models' snake_case) and JSON's
    types as they are ("2" is no integer, "yes" no boolean), so `render` refuses what `kubectl apply` would."""
    return VoxtralEndpointSpec.model_validate_json(json.dumps(spec), strict=True, by_alias=True, by_name=False)
