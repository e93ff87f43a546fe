"""What the operator knows about models and GPUs: the facts the fit check and the renderer use.

Sizes are decimal gigabytes (10^9 bytes), as GPU vendors and model cards quote them.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1_000_000_000

# vLLM's profiling run reserves memory for activations, CUDA graphs and the audio encoder
# on each GPU before it sizes the KV cache. 2 GB per GPU is a conservative allowance for
# models of this size; it is what makes "fits" here mean "starts" on a real node.
ACTIVATION_RESERVE_BYTES_PER_GPU = 2 * GB
# vLLM's default --max-num-seqs: the running requests one replica batches when the spec sets none.
DEFAULT_MAX_NUM_SEQS = 256

TENSOR_PARALLEL_SIZES: tuple[int, ...] = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelProfile:
    """How much GPU memory a model needs: its weights, and KV cache per token of context."""

    weights_bytes: int
    # 2 (K and V) x layers x KV heads x head dim x 2 bytes (bf16).
    kv_cache_bytes_per_token: int
    # Cold start budget: pulling weights from the hub into the cache and loading them.
    startup_budget_seconds: int
    attention_heads: int = 32


@dataclass(frozen=True)
class GpuProfile:
    memory_bytes: int
    # Value of the GPU product node label (NVIDIA GPU feature discovery's `nvidia.com/gpu.product`).
    product_label: str
    nvlink: bool


MODELS: dict[str, ModelProfile] = {
    # Ministral-3B text decoder: 30 layers, 8 KV heads, head dim 128.
    "mistralai/Voxtral-Mini-3B-2507": ModelProfile(
        weights_bytes=9_500_000_000,
        kv_cache_bytes_per_token=2 * 30 * 8 * 128 * 2,
        startup_budget_seconds=600,
    ),
    # Mistral-Small-24B text decoder: 40 layers, 8 KV heads, head dim 128.
    "mistralai/Voxtral-Small-24B-2507": ModelProfile(
        weights_bytes=55 * GB,
        kv_cache_bytes_per_token=2 * 40 * 8 * 128 * 2,
        startup_budget_seconds=1500,
    ),
}

# Unknown models are sized by the spec's modelProfile; KV cache per token falls back to
# the larger of the known models, so an unknown model is never judged to fit too easily.
DEFAULT_KV_CACHE_BYTES_PER_TOKEN = max(m.kv_cache_bytes_per_token for m in MODELS.values())

GPUS: dict[str, GpuProfile] = {
    "L4-24GB": GpuProfile(memory_bytes=24 * GB, product_label="NVIDIA-L4", nvlink=False),
    "A10-24GB": GpuProfile(memory_bytes=24 * GB, product_label="NVIDIA-A10", nvlink=False),
    "A100-40GB": GpuProfile(memory_bytes=40 * GB, product_label="NVIDIA-A100-SXM4-40GB", nvlink=True),
    "A100-80GB": GpuProfile(memory_bytes=80 * GB, product_label="NVIDIA-A100-SXM4-80GB", nvlink=True),
    "H100-80GB": GpuProfile(memory_bytes=80 * GB, product_label="NVIDIA-H100-80GB-HBM3", nvlink=True),
    "H200-141GB": GpuProfile(memory_bytes=141 * GB, product_label="NVIDIA-H200", nvlink=True),
}

KNOWN_MODELS: tuple[str, ...] = tuple(MODELS)
GPU_TYPES: tuple[str, ...] = tuple(GPUS)


def startup_budget_for_unknown(weights_bytes: int) -> int:
    """Seconds to allow a model of this size to download and load cold: 10 min + 15 s per GB."""
    return 600 + 15 * (weights_bytes // GB)


@dataclass(frozen=True)
class Fit:
    fits: bool
    usable_bytes: int
    kv_cache_needed_bytes: int
    kv_cache_available_bytes: int


def check_fit(
    model: ModelProfile,
    gpu: GpuProfile,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_len: int,
) -> Fit:
    """Do the weights plus one full-length sequence of KV cache fit the GPUs vLLM may use?

    vLLM refuses to start when the KV cache cannot hold a single `max_model_len` sequence,
    so that is the least "room for KV cache" that makes a deployment useful.
    """
    usable = int(tensor_parallel_size * gpu.memory_bytes * gpu_memory_utilization)
    reserve = tensor_parallel_size * ACTIVATION_RESERVE_BYTES_PER_GPU
    available = usable - model.weights_bytes - reserve
    needed = model.kv_cache_bytes_per_token * max_model_len
    return Fit(
        fits=available >= needed,
        usable_bytes=usable,
        kv_cache_needed_bytes=needed,
        kv_cache_available_bytes=available,
    )
