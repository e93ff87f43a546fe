"""What the operator knows about models and GPUs: the facts the fit check and the renderer use.

Sizes are decimal gigabytes (10^9 bytes), as GPU vendors and model cards quote them.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1_000_000_000
REALTIME_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
# Voxtral's audio encoders emit one token per 80 ms of audio.
AUDIO_TOKENS_PER_SECOND = 12.5
# A realtime session ends before its context does: this share of maxModelLen is audio, the rest is
# left for the transcription delay's tokens and the text the model writes.
REALTIME_AUDIO_SHARE = 0.95

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
    # The longest context the model takes (the most --max-model-len may be).
    context_tokens: int = 32768
    # Realtime models stream over vLLM's WebSocket (/v1/realtime): one session is one running request.
    realtime: bool = False
    # Sliding-window attention keeps only this many tokens of KV cache per sequence (None: the whole context).
    sliding_window_tokens: int | None = None
    # GPU memory each running sequence holds beside its KV cache (a streaming audio encoder's own window).
    encoder_bytes_per_sequence: int = 0

    def kv_tokens_per_sequence(self, max_model_len: int) -> int:
        """Tokens of KV cache one sequence of up to `max_model_len` tokens holds at most."""
        if self.sliding_window_tokens is None:
            return max_model_len
        return min(max_model_len, self.sliding_window_tokens)

    def sequence_bytes(self, max_model_len: int) -> int:
        """GPU memory one running sequence (for a realtime model: one session) holds at most."""
        return self.kv_cache_bytes_per_token * self.kv_tokens_per_sequence(max_model_len) + (
            self.encoder_bytes_per_sequence
        )


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
    # 3.4B Ministral-3-based decoder (26 layers, 8 KV heads, head dim 128, sliding window 8192) and a
    # 0.97B causal audio encoder (32 layers, 32 heads, head dim 64, sliding window 750 frames); bf16.
    # 131,072 tokens of context at one token per 80 ms of audio: about 2 h 55 min.
    REALTIME_MODEL: ModelProfile(
        weights_bytes=8_900_000_000,
        kv_cache_bytes_per_token=2 * 26 * 8 * 128 * 2,
        startup_budget_seconds=600,
        context_tokens=131072,
        realtime=True,
        sliding_window_tokens=8192,
        encoder_bytes_per_sequence=2 * 32 * 32 * 64 * 2 * 750,
    ),
}

# Unknown models are sized by the spec's modelProfile; KV cache per token falls back to
# the larger of the known models, so an unknown model is never judged to fit too easily.
DEFAULT_KV_CACHE_BYTES_PER_TOKEN = max(m.kv_cache_bytes_per_token for m in MODELS.values())
# The longest context any model may be given (--max-model-len's upper bound in the CRD).
MAX_CONTEXT_TOKENS = max(m.context_tokens for m in MODELS.values())


def max_session_seconds(max_model_len: int) -> int:
    """The longest realtime session whose audio fits `max_model_len` tokens, with room for the text."""
    return int(max_model_len * REALTIME_AUDIO_SHARE / AUDIO_TOKENS_PER_SECOND)


def sessions_per_replica(available_bytes: int, model: ModelProfile, max_model_len: int) -> int:
    """Realtime sessions one replica holds at once: the KV cache left over what each session holds."""
    return max(0, available_bytes) // model.sequence_bytes(max_model_len)


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

    vLLM refuses to start when the KV cache cannot hold a single `max_model_len` sequence (for a
    sliding-window model: one window), so that is the least "room for KV cache" that makes a
    deployment useful.
    """
    usable = int(tensor_parallel_size * gpu.memory_bytes * gpu_memory_utilization)
    reserve = tensor_parallel_size * ACTIVATION_RESERVE_BYTES_PER_GPU
    available = usable - model.weights_bytes - reserve
    needed = model.sequence_bytes(max_model_len)
    return Fit(
        fits=available >= needed,
        usable_bytes=usable,
        kv_cache_needed_bytes=needed,
        kv_cache_available_bytes=available,
    )
