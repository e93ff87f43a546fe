"""The realtime model in the catalog: its memory figures, its command line, its session bounds, and
`voxtral-operator hardware` counting concurrent sessions per replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_cli import run
from tests.unit.test_render import CONFIG, _endpoint, _flag, _vllm_container, assert_vllm_reads_the_command_line
from voxtral_operator.api import catalog
from voxtral_operator.api.resolve import InvalidSpec, resolve
from voxtral_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
REALTIME = catalog.REALTIME_MODEL
EXAMPLE = ROOT / "examples" / "realtime-on-l4.yaml"


def _realtime(**spec: Any) -> dict[str, Any]:
    return _endpoint(**{"model": REALTIME, "minReplicas": 0, **spec})


def _gateway_args(objects: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def test_a_session_holds_its_sliding_window_of_kv_cache_and_its_encoders() -> None:
    model = catalog.MODELS[REALTIME]
    # 26 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 106,496 B per token, over an 8192-token window;
    # the encoder: 32 layers x 32 heads x 64 x 2 x 2 bytes over 750 frames.
    assert model.kv_cache_bytes_per_token == 106_496
    assert model.sequence_bytes(131072) == 106_496 * 8192 + 262_144 * 750
    assert model.sequence_bytes(131072) == model.sequence_bytes(8192)  # the window, not the context
    assert model.sequence_bytes(4096) < model.sequence_bytes(8192)
    # Other models hold their whole context.
    mini = catalog.MODELS["mistralai/Voxtral-Mini-3B-2507"]
    assert mini.sequence_bytes(32768) == 32768 * mini.kv_cache_bytes_per_token


def test_the_example_runs_vllms_recipe_and_reads_cleanly_in_vllms_parser() -> None:
    objects = render(yaml.safe_load(EXAMPLE.read_text()), CONFIG)
    container = _vllm_container(objects)
    args = container["args"]
    assert args[0] == REALTIME
    assert _flag(args, "--tokenizer-mode") == "mistral"
    assert json.loads(_flag(args, "--compilation-config")) == {"cudagraph_mode": "PIECEWISE"}
    assert _flag(args, "--max-model-len") == "131072"
    # A transcription-only model: no tool calling, no multi-audio prompts.
    for absent in ("--tool-call-parser", "--enable-auto-tool-choice", "--limit-mm-per-prompt", "--config-format"):
        assert absent not in args
    # The engine runs as many sessions as the memory holds: ten on an L4 at 0.9.
    assert _flag(args, "--max-num-seqs") == "10"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_DISABLE_COMPILE_CACHE"] == "1"
    assert_vllm_reads_the_command_line(args)
    gateway = _gateway_args(objects)
    # Two gateway pods share a replica's ten sessions; a session ends within maxModelLen.
    assert _flag(gateway, "--realtime-sessions-per-replica") == "5"
    assert _flag(gateway, "--realtime-max-session-seconds") == str(int(131072 * 0.95 / 12.5))
    assert int(_flag(gateway, "--realtime-max-session-seconds")) * 12.5 < 131072
    assert _flag(gateway, "--realtime-drain-seconds") == "60"
    assert _flag(gateway, "--realtime-idle-seconds") == "30"


def test_the_gateways_flags_are_ones_the_gateway_reads() -> None:
    from voxtral_operator.cli import parser

    args = _gateway_args(render(yaml.safe_load(EXAMPLE.read_text()), CONFIG))
    parsed = parser().parse_args(["gateway", *args])
    assert parsed.realtime_sessions_per_replica == 5


def test_other_models_get_no_realtime_route() -> None:
    args = _gateway_args(render(_endpoint(), CONFIG))
    assert not [a for a in args if a.startswith("--realtime")]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param(
            {"engine": {"maxModelLen": 65536}, "model": "mistralai/Voxtral-Mini-3B-2507", "minReplicas": 1},
            "spec.engine.maxModelLen: 65536 is more than mistralai/Voxtral-Mini-3B-2507's context (32768 tokens)",
            id="context-beyond-the-models",
        ),
        pytest.param(
            {"realtime": {"maxSessionSeconds": 3000}},  # maxModelLen 32768 holds 2490 s
            "spec.realtime.maxSessionSeconds: 3000s of audio does not fit maxModelLen 32768 (at most 2490s)",
            id="session-beyond-the-context",
        ),
        pytest.param(
            {"realtime": {"maxSessionsPerReplica": 11}},
            "spec.realtime.maxSessionsPerReplica: 11 sessions do not fit one replica",
            id="more-sessions-than-memory",
        ),
        pytest.param(
            {"model": "mistralai/Voxtral-Mini-3B-2507", "minReplicas": 1, "realtime": {"maxSessionsPerReplica": 5}},
            "spec.realtime: mistralai/Voxtral-Mini-3B-2507 does not serve /v1/realtime",
            id="realtime-settings-on-a-file-model",
        ),
    ],
)
def test_session_bounds_beyond_the_model_are_refused(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        resolve(_realtime(**spec), CONFIG)
    assert any(fragment in problem for problem in caught.value.problems), caught.value.problems


def test_a_smaller_session_cap_and_length_are_kept() -> None:
    plan = resolve(_realtime(realtime={"maxSessionsPerReplica": 4, "maxSessionSeconds": 600}), CONFIG)
    assert plan.realtime is not None
    assert (plan.realtime.sessions_per_replica, plan.realtime.max_session_seconds) == (4, 600)
    args = _vllm_container(render(_realtime(realtime={"maxSessionsPerReplica": 4}), CONFIG))["args"]
    assert _flag(args, "--max-num-seqs") == "4"


def test_hardware_counts_realtime_sessions_per_replica() -> None:
    result = run("hardware", "--model", "Voxtral-Mini-4B-Realtime-2602", "--max-model-len", "131072")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "2 h 46 min" in lines[0]
    assert "30-MIN STREAMS" not in lines[1]
    column = lines[1].index("REALTIME SESSIONS")
    assert lines[2].split()[:3] == ["L4-24GB", "1", "yes"]
    assert lines[2][column:].split()[0] == "10"
    report = json.loads(run("hardware", "--model", REALTIME, "--max-model-len", "131072", "-o", "json").stdout)
    assert report["realtime"] is True
    (first,) = [o for o in report["options"] if (o["gpuType"], o["tensorParallelSize"]) == ("L4-24GB", 1)]
    assert first["realtimeSessions"] == 10
    assert first["concurrentAudioStreams"] == 0
    h100 = [o for o in report["options"] if (o["gpuType"], o["tensorParallelSize"]) == ("H100-80GB", 1)]
    assert h100[0]["realtimeSessions"] == 57


def test_the_autoscaler_counts_a_realtime_replica_full_at_its_sessions() -> None:
    from voxtral_operator.api.models import parse_spec
    from voxtral_operator.autoscale.loop import policy_limits

    spec = parse_spec(yaml.safe_load(EXAMPLE.read_text())["spec"])
    # Each running session is one running sequence: ten of them fill an L4 replica.
    assert policy_limits(spec, CONFIG).max_num_seqs == 10
    capped = parse_spec({**yaml.safe_load(EXAMPLE.read_text())["spec"], "realtime": {"maxSessionsPerReplica": 3}})
    assert policy_limits(capped, CONFIG).max_num_seqs == 3


def test_open_sessions_scale_a_realtime_endpoint_up_before_admissions_are_refused() -> None:
    from voxtral_operator.api.models import parse_spec
    from voxtral_operator.autoscale.loop import policy_limits
    from voxtral_operator.autoscale.policy import Observation, PodSample, State, decide
    from voxtral_operator.autoscale.scrape import parse_queue_metrics

    limits = policy_limits(parse_spec(yaml.safe_load(EXAMPLE.read_text())["spec"]), CONFIG)
    # One replica with 7 of its 10 sessions open, 2 of them transcribing right now: no refusal yet.
    page = (
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        "vllm:websocket_connections_active 7.0\n"
    )
    sample = parse_queue_metrics(page)
    assert sample is not None
    seen = Observation(replicas=1, ready=1, pods=[PodSample("pod-0", sample.waiting, sample.running, 0.2)])
    decision = decide(limits, seen, State(), 10 * 86400.0)  # a first look: demand is what it sees
    assert decision.replicas == 2, decision.reason
    # Counted by the two transcribing only, the replica would look far from full.
    fewer = Observation(replicas=1, ready=1, pods=[PodSample("pod-0", 0.0, 2.0, 0.2)])
    assert decide(limits, fewer, State(), 10 * 86400.0).replicas == 1


def test_the_defaults_the_api_server_writes_into_every_endpoint_refuse_no_file_model() -> None:
    """The CRD's defaults for spec.realtime land in every stored endpoint, realtime or not."""
    from voxtral_operator.api import crd

    schema = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    realtime = schema["properties"]["realtime"]
    defaulted = {key: value["default"] for key, value in realtime["properties"].items() if "default" in value}
    assert defaulted  # idleTimeoutSeconds, maxFrameKB, maxMessagesPerSecond
    plan = resolve(_endpoint(realtime={**realtime.get("default", {}), **defaulted}), CONFIG)
    assert plan.realtime is None
