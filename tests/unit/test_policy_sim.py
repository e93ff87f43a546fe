"""The autoscaling simulation (bench/policy_sim.py): its output, its determinism, and its engine's physics."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("policy_sim", ROOT / "bench" / "policy_sim.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_sim"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def morning(sim: Any) -> list[tuple[float, float, int]]:
    """Two hours of a built-in day's morning (07:30-09:30), starting at 0."""
    rows = sim.call_centre_day(3, sim.SCENARIOS["small-h100"].peak_rate, day=0)
    return [(t - 27000, audio, output) for t, audio, output in rows if 27000 <= t < 34200]


def run_main(sim: Any, *argv: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert sim.main(list(argv)) == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def test_quick_json_names_every_policy_with_gpu_hours_and_p95(sim: Any) -> None:
    result = run_main(sim, "--quick", "--json", "--no-plot")
    assert result["new"] == "new"
    assert set(result["policies"]) == {spec.name for spec in sim.POLICIES}
    for name, figures in result["policies"].items():
        assert figures["gpu_hours"] > 0, name
        assert figures["p95_wait_s"] >= 0, name
    assert set(result["by_routing"]) == {"service", "gateway"}


def test_more_replicas_never_raise_the_wait(sim: Any, morning: list[tuple[float, float, int]]) -> None:
    base = sim.SCENARIOS["small-h100"]
    for routing in ("service", "gateway"):
        outcomes = []
        for replicas in (3, 5, 8, 12):
            scenario = replace(base, min_replicas=replicas, max_replicas=replicas)
            outcomes.append(sim.simulate(morning, scenario, routing, sim.Static(replicas), 5, 0.0, 7200.0))
        waits = [(o.p95_wait_s, o.p99_wait_s) for o in outcomes]
        assert waits == sorted(waits, reverse=True), (routing, waits)
        assert waits[0] > waits[-1], routing  # the scenario is tight enough for it to matter
        hours = [o.gpu_hours for o in outcomes]
        assert hours == [r * 2.0 for r in (3, 5, 8, 12)]  # static replicas bill exactly their hours


def test_a_trace_replays_deterministically(sim: Any, morning: list[tuple[float, float, int]], tmp_path: Path) -> None:
    trace = tmp_path / "calls.csv"
    sim.write_trace(trace, morning)
    rows = sim.read_trace(trace)
    assert [round(t, 3) for t, _, _ in rows] == sorted(round(t, 3) for t, _, _ in morning)
    assert sum(o for _, _, o in rows) == sum(o for _, _, o in morning)
    assert sum(a for _, a, _ in rows) == pytest.approx(sum(a for _, a, _ in morning), abs=0.01 * len(rows))
    setup = sim.Setup(sim.SCENARIOS["small-h100"], (1,), 0.0, 0.0, trace)
    policies = [sim.POLICY_BY_NAME["new"], sim.POLICY_BY_NAME["hpa-kv"]]
    first = sim.sweep(setup, ["service"], policies, workers=1, quick=True)
    again = sim.sweep(setup, ["service"], policies, workers=1, quick=True)
    assert first == again
    assert {p.policy for p in first["service"]} == {"new", "hpa-kv"}
    assert all(p.requests == len(morning) for p in first["service"])


def test_the_same_seed_gives_the_same_day_and_another_seed_another(sim: Any) -> None:
    peak = sim.SCENARIOS["small-h100"].peak_rate
    one = sim.call_centre_day(11, peak, day=2)
    assert one == sim.call_centre_day(11, peak, day=2)
    assert one != sim.call_centre_day(12, peak, day=2)
    long_files = [r for r in one if r[1] >= 1500]
    assert 0.02 < len(long_files) / len(one) < 0.06  # a few percent of requests are 25-40 minute files
    prompt = [r[1] * sim.AUDIO_TOKENS_PER_SECOND + r[2] for r in one]
    share = sum(p for p, r in zip(prompt, one, strict=True) if r[1] >= 1500) / sum(prompt)
    assert share > 0.4  # and the largest part of the tokens


def test_the_engine_takes_its_kv_cache_from_the_catalogs_fit_check(sim: Any) -> None:
    engine = sim.Engine.of(sim.SCENARIOS["small-h100"])
    # 80 GB x 0.9 - 55 GB of weights - 2 GB activation reserve, 163,840 bytes per token
    assert engine.kv_tokens == (72_000_000_000 - 55_000_000_000 - 2_000_000_000) // 163_840
    assert engine.cold_start_s == 1500  # the catalog's startup budget for Voxtral Small


def test_baselines_are_matched_at_their_cheapest_setting_no_worse_than_the_new_policy(sim: Any) -> None:
    def point(policy: str, value: float, hours: float, p95: float) -> Any:
        return sim.Point(policy, value, hours, 0.0, p95, p95, 1, 1, 0)

    new_default = sim.POLICY_BY_NAME["new"].default
    points = [
        point("new", new_default, 100.0, 20.0),
        point("hpa-kv", 0.3, 150.0, 0.0),
        point("hpa-kv", 0.4, 120.0, 20.0),
        point("hpa-kv", 0.5, 90.0, 60.0),
        point("kubeai", 2, 130.0, 25.0),
        point("kubeai", 3, 110.0, 80.0),
    ]
    new, chosen = sim.match(points)
    assert new.gpu_hours == 100.0
    assert (chosen["hpa-kv"].point.value, chosen["hpa-kv"].matched) == (0.4, True)
    assert (chosen["kubeai"].point.value, chosen["kubeai"].matched) == (2, False)  # the lowest p95 it reached
