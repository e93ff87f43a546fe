"""From a raw VoxtralEndpoint to a validated plan: every derived number, or a clear refusal.

Pure: no I/O. The renderer takes a Plan and never re-checks anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from voxtral_operator.api import catalog, models
from voxtral_operator.config import OperatorConfig


class InvalidSpec(ValueError):
    """The endpoint cannot be rendered; each problem names the field at fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def resolve(endpoint: dict[str, Any], config: OperatorConfig) -> Plan:
    """Validate a VoxtralEndpoint object (as the API returns it) and derive everything rendering needs."""
    metadata = endpoint.get("metadata") or {}
    name = metadata.get("name")
    namespace = metadata.get("namespace") or "default"
    problems: list[str] = []
    if not name:
        problems.append("metadata.name: required")
    elif len(name) > 52:
        # Children append suffixes (e.g. "-cache") and Service names are DNS labels (63).
        problems.append(f"metadata.name: {name!r} is longer than 52 characters")
    if endpoint.get("apiVersion", models.API_VERSION) != models.API_VERSION:
        problems.append(f"apiVersion: expected {models.API_VERSION}, got {endpoint.get('apiVersion')!r}")
    if endpoint.get("kind", models.KIND) != models.KIND:
        problems.append(f"kind: expected {models.KIND}, got {endpoint.get('kind')!r}")
    raw_spec = endpoint.get("spec")
    if not isinstance(raw_spec, dict):
        problems.append("spec: required, and must be an object")
        raise InvalidSpec(problems)
    try:
        spec = models.parse_spec(raw_spec)
    except ValidationError as exc:
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{_field_path(error['loc'])}: {message}")
        raise InvalidSpec(problems) from None
    problems += spec.cross_field_problems()
    if problems or not name:
        raise InvalidSpec(problems)

    gpus = gpu_catalog(config)
    gpu = gpus[spec.gpu.type]
    model = model_profile(spec)
    tp = _choose_tensor_parallel_size(spec, model, gpu, gpus)
    return Plan(
        name=name,
        namespace=namespace,
        uid=metadata.get("uid"),
        spec=spec,
        model=model,
        gpu=gpu,
        tensor_parallel_size=tp,
        served_model_name=spec.served_model_name or spec.model,
        image=spec.image or config.vllm_image,
        cpu_request=spec.resources.cpu or str(4 * tp),
        memory_request=spec.resources.memory or _default_memory(model),
    )
