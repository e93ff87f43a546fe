"""`voxtral-operator hardware`: where a model fits before an endpoint is created.

For every GPU type and tensor-parallel size: does the model start (the operator's own fit
check), how much KV cache is left, how many tokens and concurrent 30-minute audio streams that
holds (for a realtime model: concurrent realtime sessions, each holding its sliding window of KV
cache), and what it costs an hour when the operator config gives prices. Pure arithmetic over
the catalog (api/catalog.py) and the fit check the operator applies to every endpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from voxtral_operator.api import catalog, models
from voxtral_operator.api.resolve import gpu_catalog
from voxtral_operator.config import OperatorConfig
from voxtral_operator.inputs import InputError, validation_problems

AUDIO_TOKENS_PER_SECOND = catalog.AUDIO_TOKENS_PER_SECOND
STREAM_MINUTES = 30
TOKENS_PER_STREAM = int(STREAM_MINUTES * 60 * AUDIO_TOKENS_PER_SECOND)  # 22,500


@dataclass(frozen=True)
class Option:
    """One GPU type at one tensor-parallel size, for one model and engine settings."""

    gpu_type: str
    tensor_parallel_size: int
    fits: bool
    # The size the operator picks when the spec leaves tensorParallelSize out: the smallest that fits.
    default_choice: bool
    nvlink: bool
    gpu_memory_bytes: int
    usable_bytes: int  # tensorParallelSize x memory x gpuMemoryUtilization
    weights_bytes: int
    activation_reserve_bytes: int
    kv_cache_bytes: int  # what the weights and the activation reserve leave (negative: does not fit)
    # KV cache beyond one full-length sequence, the least vLLM starts with (negative: does not fit).
    headroom_bytes: int
    kv_cache_tokens: int
    # Sequences of the full context length the KV cache holds at once: 1 is the least vLLM starts with.
    full_length_sequences: float
    concurrent_audio_streams: int  # 30-minute audio requests (audio tokens only) held at once
    # A realtime model's sessions one replica holds at once (0 for other models).
    realtime_sessions: int
    hourly_price: float | None  # the replica: tensorParallelSize GPUs


def options(
    model: catalog.ModelProfile,
    gpus: dict[str, catalog.GpuProfile],
    *,
    max_model_len: int,
    gpu_memory_utilization: float,
    prices: dict[str, float],
) -> list[Option]:
    """Every GPU type x tensor-parallel size the model's attention heads allow, in catalog order."""
    found: list[Option] = []
    for gpu_type, gpu in gpus.items():
        chosen = False
        for tp in catalog.TENSOR_PARALLEL_SIZES:
            if model.attention_heads % tp:
                continue  # vLLM splits attention heads evenly across GPUs
            fit = catalog.check_fit(model, gpu, tp, gpu_memory_utilization, max_model_len)
            tokens = max(fit.kv_cache_available_bytes, 0) // model.kv_cache_bytes_per_token
            streams = tokens // TOKENS_PER_STREAM if max_model_len >= TOKENS_PER_STREAM else 0
            sessions = catalog.sessions_per_replica(fit.kv_cache_available_bytes, model, max_model_len)
            price = prices.get(gpu_type)
            found.append(
                Option(
                    gpu_type=gpu_type,
                    tensor_parallel_size=tp,
                    fits=fit.fits,
                    default_choice=fit.fits and not chosen,
                    nvlink=gpu.nvlink,
                    gpu_memory_bytes=gpu.memory_bytes,
                    usable_bytes=fit.usable_bytes,
                    weights_bytes=model.weights_bytes,
                    activation_reserve_bytes=tp * catalog.ACTIVATION_RESERVE_BYTES_PER_GPU,
                    kv_cache_bytes=fit.kv_cache_available_bytes,
                    headroom_bytes=fit.kv_cache_available_bytes - fit.kv_cache_needed_bytes,
                    kv_cache_tokens=tokens,
                    full_length_sequences=round(tokens / max_model_len, 1),
                    concurrent_audio_streams=streams if fit.fits and not model.realtime else 0,
                    realtime_sessions=sessions if fit.fits and model.realtime else 0,
                    hourly_price=None if price is None else round(price * tp, 4),
                )
            )
            chosen = chosen or fit.fits
    return found


def _gb(n: int) -> str:
    return f"{n / catalog.GB:.1f} GB"


def table(rows: list[Option], currency: str, *, realtime: bool = False) -> str:
    """kubectl-style columns: upper-case headers, left-aligned, two spaces apart."""
    streams = "REALTIME SESSIONS" if realtime else "30-MIN STREAMS"
    headers = ["GPU", "TP", "FITS", "USABLE", "KV CACHE", "HEADROOM", "KV TOKENS", "FULL-LENGTH SEQS", streams]
    priced = any(row.hourly_price is not None for row in rows)
    if priced:
        headers.append(f"{currency}/HOUR")
    headers.append("NOTE")
    lines = [headers]
    for row in rows:
        notes = []
        if row.default_choice:
            notes.append("default size")
        if row.tensor_parallel_size > 1 and not row.nvlink:
            notes.append("no NVLink: slower")
        line = [
            row.gpu_type,
            str(row.tensor_parallel_size),
            "yes" if row.fits else "no",
            _gb(row.usable_bytes),
            _gb(max(row.kv_cache_bytes, 0)),
            _gb(row.headroom_bytes),
            f"{row.kv_cache_tokens:,}",
            f"{row.full_length_sequences:g}",
            str(row.realtime_sessions if realtime else row.concurrent_audio_streams),
        ]
        if priced:
            line.append("-" if row.hourly_price is None else f"{row.hourly_price:.2f}")
        line.append(", ".join(notes))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return (
        "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
        )
        + "\n"
    )


def catalog_model(name: str) -> str:
    """The catalog's id for a model; the Hugging Face id without its organisation, in any case, is enough."""
    if name in catalog.MODELS:
        return name
    matches = [key for key in catalog.MODELS if key.lower().split("/")[-1] == name.lower().split("/")[-1]]
    if len(matches) == 1:
        return matches[0]
    raise InputError(f"--model: {name!r} is not in the catalog; known models: {', '.join(catalog.KNOWN_MODELS)}")


def _engine(args: argparse.Namespace) -> models.EngineSpec:
    """The flags, checked by the same bounds the CRD puts on spec.engine."""
    given = {"maxModelLen": args.max_model_len, "gpuMemoryUtilization": args.gpu_memory_utilization}
    try:
        return models.EngineSpec.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        flags = {"maxModelLen": "--max-model-len", "gpuMemoryUtilization": "--gpu-memory-utilization"}
        problems = validation_problems(exc, models.EngineSpec)
        for key, flag in flags.items():
            problems = [p.replace(f"{key}: ", f"{flag}: ", 1) for p in problems]
        raise InputError("\n".join(problems)) from None


def report(args: argparse.Namespace, config: OperatorConfig) -> dict[str, Any]:
    model_name = catalog_model(args.model)
    engine = _engine(args)
    model = catalog.MODELS[model_name]
    rows = options(
        model,
        gpu_catalog(config),
        max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        prices=dict(config.gpu_hourly_prices),
    )
    return {
        "model": model_name,
        "maxModelLen": engine.max_model_len,
        "gpuMemoryUtilization": engine.gpu_memory_utilization,
        "audioTokensPerSecond": AUDIO_TOKENS_PER_SECOND,
        "streamMinutes": STREAM_MINUTES,
        "realtime": model.realtime,
        **(
            {
                "sessionBytes": model.sequence_bytes(engine.max_model_len),
                "maxSessionSeconds": catalog.max_session_seconds(engine.max_model_len),
            }
            if model.realtime
            else {}
        ),
        "currency": config.currency,
        "options": [row for row in rows if row.fits or args.all],
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def run_hardware(args: argparse.Namespace, config: OperatorConfig) -> int:
    result = report(args, config)
    rows: list[Option] = result["options"]
    if args.output == "json":
        result["options"] = [{_camel(k): v for k, v in asdict(row).items()} for row in rows]
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0 if rows else 1
    model = catalog.MODELS[result["model"]]
    head = (
        f"{result['model']}: {_gb(model.weights_bytes)} of weights, "
        f"maxModelLen {result['maxModelLen']}, gpuMemoryUtilization {result['gpuMemoryUtilization']}. "
    )
    if model.realtime:
        minutes = result["maxSessionSeconds"] // 60
        print(
            head + f"A realtime session holds {_gb(result['sessionBytes'])} of GPU memory (its sliding window of "
            f"KV cache and its audio encoder's) and lasts at most {minutes // 60} h {minutes % 60:02d} min."
        )
    else:
        print(
            head
            + f"A {STREAM_MINUTES}-minute audio is {TOKENS_PER_STREAM:,} audio tokens"
            + (
                "."
                if result["maxModelLen"] >= TOKENS_PER_STREAM
                else ", more than maxModelLen: it cannot be sent in one request."
            )
        )
    if not rows:
        print("No GPU type in the catalog fits: lower --max-model-len.")
        return 1
    sys.stdout.write(table(rows, config.currency, realtime=model.realtime))
    return 0
