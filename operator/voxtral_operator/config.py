"""Operator-wide settings: one YAML file (the Helm chart's ConfigMap), every field defaulted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from voxtral_operator.api.catalog import GPU_TYPES

# The one place the default images are named; the chart's values override them.
DEFAULT_VLLM_IMAGE = "ghcr.io/voxtral-dev/vllm-voxtral:0.33.0"
DEFAULT_OPERATOR_IMAGE = "ghcr.io/voxtral-dev/voxtral-operator:0.1.0"


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GpuOverride(_Config):
    product_label: str | None = Field(default=None, description="Node label value for this GPU type.")
    memory_gb: float | None = Field(default=None, alias="memoryGB", gt=0)


class OperatorConfig(_Config):
    vllm_image: str = DEFAULT_VLLM_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # The label that tells GPU nodes apart; GPU feature discovery sets this one.
    gpu_node_label: str = "nvidia.com/gpu.product"
    gpu_overrides: dict[str, GpuOverride] = Field(default_factory=dict)
    vllm_port: int = 8000
    cluster_domain: str = "cluster.local"
    # The operator's own pods, admitted by every endpoint's NetworkPolicy to scrape /metrics.
    operator_namespace: str = "voxtral-system"
    operator_pod_labels: dict[str, str] = Field(default_factory=lambda: {"app.kubernetes.io/name": "voxtral-operator"})
    scrape_interval_seconds: float = Field(default=2.0, gt=0)
    scrape_timeout_seconds: float = Field(default=1.0, gt=0)
    # How often each ready endpoint is checked end to end through its Service (0: never).
    serving_check_seconds: float = Field(default=10.0, ge=0)
    watched_namespaces: list[str] = Field(default_factory=list)
    # Where KEDA's Prometheus trigger reads vLLM's metrics (autoscaling.mode: keda).
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    # vLLM images run as this user; the official image works as any uid with a writable HOME.
    vllm_run_as_user: int = 1000
    shm_size: str = "8Gi"
    # What one GPU of each type costs an hour, shown by `voxtral-operator hardware` (no unit conversion).
    gpu_hourly_prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    currency: str = "USD"

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
