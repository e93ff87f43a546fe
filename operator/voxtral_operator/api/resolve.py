"""From a raw VoxtralEndpoint to a validated plan: every derived number, or a clear refusal.

Pure: no I/O. The renderer takes a Plan and never re-checks anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from voxtral_operator.api import catalog, flags, models
from voxtral_operator.api.typos import unknown_key
from voxtral_operator.config import ANY, NamespacePolicy, OperatorConfig

# A VoxtralEndpoint is a few levels deep; anything far deeper is refused before it is walked.
MAX_DEPTH = 32
# Children append suffixes (e.g. "-cache") and Service names are DNS labels (63).
MAX_NAME_LENGTH = 52
# Node labels the operator's own GPU placement uses; an endpoint's node selector may not set them.
GPU_PRODUCT_LABELS = ("nvidia.com/gpu.product",)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class InvalidSpec(ValueError):
    """The endpoint cannot be rendered; each problem names the field at fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RealtimePlan:
    """A realtime model's sessions: how many one replica holds, and how long one may last."""

    sessions_per_replica: int
    max_session_seconds: int


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    uid: str | None
    spec: models.VoxtralEndpointSpec
    model: catalog.ModelProfile
    gpu: catalog.GpuProfile
    tensor_parallel_size: int
    served_model_name: str
    image: str
    cpu_request: str
    memory_request: str
    realtime: RealtimePlan | None = None
    # The overflow pool's GPU (spec.nodePool.overflow), None without one.
    overflow_gpu: catalog.GpuProfile | None = None


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def gpu_catalog(config: OperatorConfig) -> dict[str, catalog.GpuProfile]:
    gpus = dict(catalog.GPUS)
    for gpu_type, override in config.gpu_overrides.items():
        if gpu_type not in gpus:
            continue  # the CRD's enum admits only catalog types; an override cannot add one
        base = gpus[gpu_type]
        gpus[gpu_type] = replace(
            base,
            product_label=override.product_label or base.product_label,
            memory_bytes=int(override.memory_gb * catalog.GB) if override.memory_gb else base.memory_bytes,
        )
    return gpus


def model_profile(spec: models.VoxtralEndpointSpec) -> catalog.ModelProfile:
    if spec.model_profile is not None:
        weights = int(spec.model_profile.weights_gb * catalog.GB)
        return catalog.ModelProfile(
            weights_bytes=weights,
            kv_cache_bytes_per_token=(
                spec.model_profile.kv_cache_bytes_per_token or catalog.DEFAULT_KV_CACHE_BYTES_PER_TOKEN
            ),
            startup_budget_seconds=catalog.startup_budget_for_unknown(weights),
        )
    return catalog.MODELS[spec.model]


def _gb(n: int) -> str:
    return f"{n / catalog.GB:.1f} GB"


def _fitting_alternatives(
    model: catalog.ModelProfile,
    gpus: dict[str, catalog.GpuProfile],
    engine: models.EngineSpec,
) -> list[str]:
    options = []
    for gpu_type, gpu in gpus.items():
        for tp in catalog.TENSOR_PARALLEL_SIZES:
            fit = catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len)
            if fit.fits:
                options.append(f"tensorParallelSize {tp} on {gpu_type}")
                break
    return options


def _choose_tensor_parallel_size(
    spec: models.VoxtralEndpointSpec,
    model: catalog.ModelProfile,
    gpu: catalog.GpuProfile,
    gpus: dict[str, catalog.GpuProfile],
) -> int:
    engine = spec.engine
    sizes = [spec.tensor_parallel_size] if spec.tensor_parallel_size else list(catalog.TENSOR_PARALLEL_SIZES)
    for tp in sizes:
        if model.attention_heads % tp:
            continue
        if catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len).fits:
            return tp
    tp = sizes[-1]
    fit = catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len)
    alternatives = _fitting_alternatives(model, gpus, engine)
    field = "spec.tensorParallelSize" if spec.tensor_parallel_size else "spec.gpu.type"
    message = (
        f"{field}: {spec.model} ({_gb(model.weights_bytes)} of weights) does not fit on "
        f"{tp} x {spec.gpu.type} at gpuMemoryUtilization {engine.gpu_memory_utilization} "
        f"({_gb(fit.usable_bytes)} usable, {_gb(max(fit.kv_cache_available_bytes, 0))} left for KV cache, "
        f"{_gb(fit.kv_cache_needed_bytes)} needed for maxModelLen {engine.max_model_len})"
    )
    if alternatives:
        message += "; it fits with " + ", or ".join(alternatives)
    else:
        message += "; no GPU type in the catalog fits it: lower engine.maxModelLen"
    raise InvalidSpec([message])


def _default_memory(model: catalog.ModelProfile) -> str:
    # Weights pass through host memory while loading (safetensors are mmapped), plus
    # the audio decoder and the HTTP server: 1.5 x weights + 16 GiB has headroom for both.
    return f"{math.ceil(model.weights_bytes * 1.5 / 2**30) + 16}Gi"


def _shape_problems(endpoint: Any) -> list[str]:
    """What no VoxtralEndpoint can be, checked without recursion: too deep, non-string keys,
    strings that are not Unicode text (lone surrogates cannot be written as YAML or UTF-8)."""
    if not isinstance(endpoint, dict):
        return [f"the endpoint must be an object, not {type(endpoint).__name__}"]
    problems: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", endpoint, 0)]
    while stack and len(problems) < 10:
        path, node, depth = stack.pop()
        if depth > MAX_DEPTH:
            problems.append(f"{path.lstrip('.')}: nested deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    problems.append(f"{path.lstrip('.') or 'the endpoint'}: key {key!r} is not a string")
                    continue
                stack.append((f"{path}.{key}", value, depth + 1))
        elif isinstance(node, list | tuple):
            stack += [(f"{path}[{i}]", value, depth + 1) for i, value in enumerate(node)]
        elif isinstance(node, str) and re.search("[\ud800-\udfff]", node):
            problems.append(f"{path.lstrip('.')}: not valid Unicode text (a lone surrogate)")
    return problems


def _metadata_problems(endpoint: dict[str, Any]) -> tuple[str, str, str | None, list[str]]:
    metadata = endpoint.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return "", "", None, ["metadata: must be an object"]
    problems = []
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    uid = metadata.get("uid")
    if not name:
        problems.append("metadata.name: required")
    elif not isinstance(name, str):
        problems.append(f"metadata.name: must be a string, not {type(name).__name__}")
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(f"metadata.name: {name!r} is longer than {MAX_NAME_LENGTH} characters")
    elif not re.fullmatch(models.DNS_1035_LABEL, name):
        # The endpoint's Services take its name, and a Service name must start with a letter (DNS-1035);
        # the API server takes "1ep" for the endpoint itself but would refuse every Service made for it.
        problems.append(
            f"metadata.name: {name!r} must be lowercase letters, digits and '-', starting with a letter and "
            "ending with a letter or digit (its Services are named after it)"
        )
    if namespace is None or namespace == "":
        namespace = "default"
    elif not isinstance(namespace, str):
        problems.append(f"metadata.namespace: must be a string, not {type(namespace).__name__}")
    elif len(namespace) > 63 or not re.fullmatch(models.DNS_LABEL, namespace):
        problems.append(f"metadata.namespace: {namespace!r} is not a namespace name (a DNS label)")
    if uid is not None and not isinstance(uid, str):
        problems.append(f"metadata.uid: must be a string, not {type(uid).__name__}")
    for field in ("apiVersion", "kind"):
        value, expected = endpoint.get(field), models.API_VERSION if field == "apiVersion" else models.KIND
        if value is not None and value != expected:
            problems.append(f"{field}: expected {expected}, got {value!r}")
    if problems:
        return "", "", None, problems
    return str(name), str(namespace), uid, []


def _policy(
    config: OperatorConfig, namespace: str, namespace_labels: Mapping[str, str] | None
) -> tuple[NamespacePolicy | None, list[str]]:
    """The first namespace policy matching the namespace, or the default; fails closed when a policy
    selects by labels and the labels are not known."""
    known = {NAMESPACE_NAME_LABEL: namespace}
    for policy in config.namespace_policies:
        if namespace in policy.namespaces:
            return policy, []
        wanted = policy.namespace_labels
        if not wanted:
            continue
        if namespace_labels is None and wanted.keys() - known.keys():
            return None, [
                f"metadata.namespace: the operator config selects namespace policies by labels "
                f"({', '.join(sorted(wanted))}) and the labels of namespace {namespace!r} are not known"
            ]
        if wanted.items() <= {**known, **(namespace_labels or {})}.items():
            return policy, []
    return config.default_policy, []


def _allowed(value: str, allowed: list[str]) -> bool:
    return ANY in allowed or value in allowed


def _toleration_allowed(toleration: models.Toleration, policy: NamespacePolicy) -> bool:
    if not toleration.key:
        return policy.tolerate_all_taints
    for entry in policy.tolerations:
        if entry.key not in (ANY, toleration.key):
            continue
        if entry.value == ANY or (toleration.operator != "Exists" and entry.value == (toleration.value or "")):
            return True
    return False


def platform_problems(
    spec: models.VoxtralEndpointSpec,
    namespace: str,
    config: OperatorConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> list[str]:
    """What the platform team's limits (the operator config) refuse in this endpoint."""
    policy, problems = _policy(config, namespace, namespace_labels)
    where = f"in namespace {namespace!r}"
    if spec.image is not None and not config.image_allowed(spec.image):
        allowed = ", ".join(config.allowed_images or [config.vllm_image])
        problems.append(f"spec.image: {spec.image!r} is not an image the platform allows (allowedImages: {allowed})")
    allowed_dests = config.allowed_extra_dests()
    for option in flags.parse(spec.engine.extra_args).options:
        for dest in sorted(option.dests - allowed_dests):
            problems.append(
                f"spec.engine.extraArgs[{option.index}]: {flags.shown(option.token)} ({flags.table().flag(dest)}) "
                "is not allowed by the platform (operator config allowedExtraArgs)"
            )
    for index, domain in enumerate(spec.engine.allowed_media_domains):
        if not config.media_domain_allowed(domain):
            problems.append(
                f"spec.engine.allowedMediaDomains[{index}]: {domain!r} is not a domain the platform allows "
                f"(operator config allowedMediaDomains: {', '.join(config.allowed_media_domains) or 'none'})"
            )
    pool = spec.node_pool
    pools: list[tuple[str, models.NodePoolSpec | models.OverflowPoolSpec, str]] = [
        ("spec.nodePool", pool, spec.gpu.type)
    ]
    if pool.overflow is not None:
        overflow_gpu = pool.overflow.gpu.type if pool.overflow.gpu else spec.gpu.type
        pools.append(("spec.nodePool.overflow", pool.overflow, overflow_gpu))
    for path, placement, gpu_type in pools:
        problems += _placement_problems(path, placement, gpu_type, config, policy, where)
    return problems


def _placement_problems(
    path: str,
    pool: models.NodePoolSpec | models.OverflowPoolSpec,
    gpu_type: str,
    config: OperatorConfig,
    policy: NamespacePolicy | None,
    where: str,
) -> list[str]:
    """A pool's selector, tolerations, priority class and GPU type against the platform's limits."""
    problems = []
    gpu_field = "spec.gpu.type" if path == "spec.nodePool" else f"{path}.gpu.type"
    for key in pool.node_selector:
        if key in (config.gpu_node_label, *GPU_PRODUCT_LABELS):
            problems.append(
                f"{path}.nodeSelector: {key!r} is the operator's GPU product selector (from {gpu_field}); "
                "it cannot be overridden"
            )
    if pool.priority_class_name and pool.priority_class_name.startswith("system-"):
        problems.append(
            f"{path}.priorityClassName: {pool.priority_class_name!r}: system-* priority classes are "
            "for cluster components"
        )
    if policy is None:
        return problems
    if not _allowed(gpu_type, policy.gpu_types):
        problems.append(f"{gpu_field}: {gpu_type} is not allowed {where} (allowed: {', '.join(policy.gpu_types)})")
    if (
        pool.priority_class_name
        and not pool.priority_class_name.startswith("system-")
        and pool.priority_class_name not in policy.priority_class_names
    ):
        problems.append(
            f"{path}.priorityClassName: {pool.priority_class_name!r} is not allowed {where} "
            f"(allowed: {', '.join(policy.priority_class_names) or 'none'})"
        )
    for key, value in pool.node_selector.items():
        if key in (config.gpu_node_label, *GPU_PRODUCT_LABELS):
            continue
        values = policy.node_selector.get(key, policy.node_selector.get(ANY))
        if values is None or not _allowed(value, values):
            problems.append(f"{path}.nodeSelector: {key}={value!r} is not allowed {where}")
    for index, toleration in enumerate(pool.tolerations):
        if not _toleration_allowed(toleration, policy):
            shown = toleration.model_dump(by_alias=True, exclude_none=True)
            what = "tolerates every taint" if not toleration.key else "is not allowed"
            problems.append(f"{path}.tolerations[{index}]: {shown} {what} {where}")
    return problems


def _overflow_gpu(
    spec: models.VoxtralEndpointSpec,
    model: catalog.ModelProfile,
    gpus: dict[str, catalog.GpuProfile],
    tp: int,
    realtime: RealtimePlan | None,
) -> tuple[catalog.GpuProfile | None, list[str]]:
    """The overflow pool's GPU, accepted by the same fit check at the endpoint's tensor-parallel size:
    an overflow replica must serve what a reserved one does (same flags, same sessions)."""
    overflow = spec.node_pool.overflow
    if overflow is None:
        return None, []
    if overflow.gpu is None:
        return gpus[spec.gpu.type], []
    gpu_type = overflow.gpu.type
    gpu = gpus[gpu_type]
    engine = spec.engine
    fit = catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len)
    if not fit.fits:
        return None, [
            f"spec.nodePool.overflow.gpu.type: {spec.model} does not fit on {tp} x {gpu_type} at "
            f"gpuMemoryUtilization {engine.gpu_memory_utilization} and maxModelLen {engine.max_model_len} "
            f"({_gb(max(fit.kv_cache_available_bytes, 0))} left for KV cache, {_gb(fit.kv_cache_needed_bytes)} "
            f"needed); overflow replicas run at the endpoint's tensorParallelSize {tp}"
        ]
    if realtime is not None and session_capacity(spec, model, gpu, tp) < realtime.sessions_per_replica:
        return None, [
            f"spec.nodePool.overflow.gpu.type: {tp} x {gpu_type} holds fewer than the "
            f"{realtime.sessions_per_replica} realtime sessions a reserved replica serves"
        ]
    return gpu, []


def resolve(
    endpoint: dict[str, Any],
    config: OperatorConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> Plan:
    """Validate a VoxtralEndpoint object (as the API returns it) and derive everything rendering needs.

    `namespace_labels` are the labels of the endpoint's namespace, for namespace policies that select
    by label; None when unknown (a policy that needs them then refuses the endpoint).
    """
    problems = _shape_problems(endpoint)
    if problems:
        raise InvalidSpec(problems)
    name, namespace, uid, problems = _metadata_problems(endpoint)
    raw_spec = endpoint.get("spec")
    if not isinstance(raw_spec, dict):
        problems.append("spec: required, and must be an object")
        raise InvalidSpec(problems)
    try:
        spec = models.parse_spec(raw_spec)
    except ValidationError as exc:
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = unknown_key(models.VoxtralEndpointSpec, error["loc"])
            problems.append(f"{_field_path(error['loc'])}: {message}")
        raise InvalidSpec(problems) from None
    problems += spec.cross_field_problems()
    if problems:
        raise InvalidSpec(problems)
    problems = platform_problems(spec, namespace, config, namespace_labels)

    gpus = gpu_catalog(config)
    gpu = gpus[spec.gpu.type]
    model = model_profile(spec)
    try:
        tp = _choose_tensor_parallel_size(spec, model, gpu, gpus)
    except InvalidSpec as exc:
        raise InvalidSpec(problems + exc.problems) from None
    policy, _ = _policy(config, namespace, namespace_labels)
    if policy is not None and tp * spec.max_replicas > policy.max_gpus_per_endpoint:
        problems.append(
            f"spec.maxReplicas: {spec.max_replicas} replicas x {tp} GPUs is {tp * spec.max_replicas} GPUs; "
            f"the platform allows at most {policy.max_gpus_per_endpoint} per endpoint in namespace {namespace!r}"
        )
    realtime = None
    if model.realtime:
        realtime, found = _realtime_plan(spec, model, gpu, tp)
        problems += found
    overflow_gpu, found = _overflow_gpu(spec, model, gpus, tp, realtime)
    problems += found
    if problems:
        raise InvalidSpec(problems)
    return Plan(
        name=name,
        namespace=namespace,
        uid=uid,
        spec=spec,
        model=model,
        gpu=gpu,
        tensor_parallel_size=tp,
        served_model_name=spec.served_model_name or spec.model,
        image=spec.image or config.vllm_image,
        cpu_request=spec.resources.cpu or str(4 * tp),
        memory_request=spec.resources.memory or _default_memory(model),
        realtime=realtime,
        overflow_gpu=overflow_gpu,
    )


def session_capacity(
    spec: models.VoxtralEndpointSpec, model: catalog.ModelProfile, gpu: catalog.GpuProfile, tp: int
) -> int:
    """Realtime sessions one replica's memory holds at the spec's engine settings."""
    engine = spec.engine
    fit = catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len)
    return catalog.sessions_per_replica(fit.kv_cache_available_bytes, model, engine.max_model_len)


def sessions_per_replica(
    spec: models.VoxtralEndpointSpec, model: catalog.ModelProfile, gpu: catalog.GpuProfile, tp: int
) -> int:
    """The sessions a replica serves (its --max-num-seqs): the spec's cap, else what its memory holds."""
    return spec.realtime.max_sessions_per_replica or session_capacity(spec, model, gpu, tp)


def _realtime_plan(
    spec: models.VoxtralEndpointSpec, model: catalog.ModelProfile, gpu: catalog.GpuProfile, tp: int
) -> tuple[RealtimePlan, list[str]]:
    """Sessions per replica from the memory figures (or the spec, within them) and the session length."""
    engine = spec.engine
    fit = catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len)
    capacity = session_capacity(spec, model, gpu, tp)
    wanted = spec.realtime.max_sessions_per_replica
    problems = []
    if wanted is not None and wanted > capacity:
        problems.append(
            f"spec.realtime.maxSessionsPerReplica: {wanted} sessions do not fit one replica: {tp} x {spec.gpu.type} "
            f"leaves {_gb(max(fit.kv_cache_available_bytes, 0))} for sessions of "
            f"{_gb(model.sequence_bytes(engine.max_model_len))} each (at most {capacity})"
        )
    length = spec.realtime.max_session_seconds or catalog.max_session_seconds(engine.max_model_len)
    plan = RealtimePlan(sessions_per_replica=sessions_per_replica(spec, model, gpu, tp), max_session_seconds=length)
    pods = spec.gateway.replicas
    if spec.gateway.enabled and not problems and 0 < plan.sessions_per_replica < pods:
        # Each gateway pod admits its share of a replica's sessions: with none for some pod, two would
        # share one sequence and a session would stall behind another for its whole length.
        problems.append(
            f"spec.gateway.replicas: {pods} gateway pods, but a replica serves {plan.sessions_per_replica} realtime "
            "session(s) at a time, and each pod needs its share of at least one; run fewer gateway pods, or give "
            "each replica more memory for sessions (GPU, tensorParallelSize, maxModelLen)"
        )
    return plan, problems
