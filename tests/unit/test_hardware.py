"""`voxtral-operator hardware`: the fit arithmetic as tables, and the command as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import refused, run
from voxtral_operator.api import catalog
from voxtral_operator.api.resolve import gpu_catalog, resolve
from voxtral_operator.config import GpuOverride, OperatorConfig
from voxtral_operator.hardware import TOKENS_PER_STREAM, Option, options

MINI = "mistralai/Voxtral-Mini-3B-2507"
SMALL = "mistralai/Voxtral-Small-24B-2507"


def rows(model: str, *, max_model_len: int = 32768, config: OperatorConfig | None = None) -> list[Option]:
    config = config or OperatorConfig()
    return options(
        catalog.MODELS[model],
        gpu_catalog(config),
        max_model_len=max_model_len,
        gpu_memory_utilization=0.9,
        prices=dict(config.gpu_hourly_prices),
    )


def row(found: list[Option], gpu: str, tp: int) -> Option:
    (match,) = [r for r in found if (r.gpu_type, r.tensor_parallel_size) == (gpu, tp)]
    return match


def test_a_30_minute_audio_is_22500_tokens() -> None:
    assert TOKENS_PER_STREAM == 22_500  # 30 min x 60 s x 12.5 tokens/s


# Worked by hand: usable = TP x memory x 0.9; KV cache = usable - weights - 2 GB per GPU;
# tokens = KV cache // (2 x layers x 8 KV heads x 128 x 2 bytes): 122,880 B (Mini), 163,840 B (Small).
FIT_TABLE = [
    # model, gpu, tp, fits, KV cache bytes, KV tokens, 30-minute streams
    (MINI, "L4-24GB", 1, True, 10_100_000_000, 82_194, 3),
    (MINI, "H100-80GB", 1, True, 60_500_000_000, 492_350, 21),
    (SMALL, "L4-24GB", 1, False, -35_400_000_000, 0, 0),
    (SMALL, "L4-24GB", 2, False, -15_800_000_000, 0, 0),
    (SMALL, "L4-24GB", 4, True, 23_400_000_000, 142_822, 6),
    (SMALL, "A100-40GB", 2, True, 13_000_000_000, 79_345, 3),
    (SMALL, "H100-80GB", 1, True, 15_000_000_000, 91_552, 4),
    (SMALL, "H200-141GB", 1, True, 69_900_000_000, 426_635, 18),
]


@pytest.mark.parametrize(("model", "gpu", "tp", "fits", "kv_bytes", "tokens", "streams"), FIT_TABLE)
def test_fit_and_capacity(model: str, gpu: str, tp: int, fits: bool, kv_bytes: int, tokens: int, streams: int) -> None:
    found = row(rows(model), gpu, tp)
    assert found.fits is fits
    assert found.kv_cache_bytes == pytest.approx(kv_bytes, abs=1)
    assert found.kv_cache_tokens == tokens
    assert found.concurrent_audio_streams == streams
    assert found.headroom_bytes == found.kv_cache_bytes - 32768 * catalog.MODELS[model].kv_cache_bytes_per_token


@pytest.mark.parametrize("model", catalog.KNOWN_MODELS)
@pytest.mark.parametrize("gpu", catalog.GPU_TYPES)
def test_the_default_size_is_the_one_the_operator_picks(model: str, gpu: str) -> None:
    endpoint = {"metadata": {"name": "ep"}, "spec": {"model": model, "gpu": {"type": gpu}}}
    plan = resolve(endpoint, OperatorConfig())
    (default,) = [r for r in rows(model) if r.gpu_type == gpu and r.default_choice]
    assert default.tensor_parallel_size == plan.tensor_parallel_size


def test_a_context_shorter_than_30_minutes_of_audio_holds_no_stream() -> None:
    found = row(rows(MINI, max_model_len=16384), "H100-80GB", 1)
    assert found.kv_cache_tokens > TOKENS_PER_STREAM
    assert found.concurrent_audio_streams == 0


def test_prices_are_per_replica_and_memory_overrides_count() -> None:
    config = OperatorConfig(gpu_hourly_prices={"L4-24GB": 0.8}, gpu_overrides={"A10-24GB": GpuOverride(memory_gb=48)})
    found = rows(SMALL, config=config)
    assert row(found, "L4-24GB", 4).hourly_price == pytest.approx(3.2)
    assert row(found, "H100-80GB", 1).hourly_price is None
    assert row(found, "A10-24GB", 2).fits  # 48 GB cards hold Small at TP 2


def test_unknown_gpu_types_in_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown GPU type T4"):
        OperatorConfig.model_validate({"gpuHourlyPrices": {"T4": 0.3}})


# --- the command --------------------------------------------------------------------------


def test_hardware_prints_a_table_of_what_fits() -> None:
    result = run("hardware", "--model", SMALL)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1].split()
    assert header[:3] == ["GPU", "TP", "FITS"]
    body = [line.split() for line in result.stdout.splitlines()[2:]]
    assert body[0][:3] == ["L4-24GB", "4", "yes"]  # only what fits, smallest size first
    assert all(line[2] == "yes" for line in body)


def test_hardware_json_with_prices_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gpuHourlyPrices: {H100-80GB: 2.5}\ncurrency: EUR\n")
    result = run("hardware", "--model", "voxtral-small-24b-2507", "--config", str(config), "-o", "json", "--all")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == SMALL
    assert report["currency"] == "EUR"
    h100 = [o for o in report["options"] if o["gpuType"] == "H100-80GB"]
    assert [(o["tensorParallelSize"], o["hourlyPrice"], o["defaultChoice"]) for o in h100] == [
        (1, 2.5, True),
        (2, 5.0, False),
        (4, 10.0, False),
        (8, 20.0, False),
    ]
    assert any(not o["fits"] for o in report["options"])  # --all lists what does not fit too


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "acme/whisper"], "--model: 'acme/whisper' is not in the catalog"),
        (
            ["--model", SMALL, "--max-model-len", "100"],
            "--max-model-len: Input should be greater than or equal to 1024",
        ),
        (["--model", SMALL, "--gpu-memory-utilization", "2"], "--gpu-memory-utilization: Input should be less than"),
    ],
    ids=["unknown-model", "short-context", "utilization"],
)
def test_hardware_refuses_bad_flags(args: list[str], message: str) -> None:
    refused(run("hardware", *args), message)
