"""The autoscaling simulation (bench/policy_sim.py): its output, its determinism, its days, its engine's
physics (vLLM's block allocation and preemption), its failures, cold starts and billing."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import random
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from voxtral_operator.api.models import (
    DEFAULT_TARGET_ACTIVE_REQUESTS,
    STAGED_TARGET_ACTIVE_REQUESTS,
    AutoscalingSpec,
)
from voxtral_operator.autoscale import policy as operator_policy

ROOT = Path(__file__).resolve().parents[2]
Rows = list[tuple[float, float, int]]


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
def tune(sim: Any) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tune_policies", ROOT / "bench" / "tune_policies.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports policy_sim: the module the `sim` fixture registered
    return module


@pytest.fixture(scope="module")
def morning(sim: Any) -> Rows:
    """Two hours of a built-in Monday's morning (07:30-09:30), starting at 0."""
    rows = sim.call_centre_day(3, sim.SCENARIOS["small-h100"].peak_rate, day=0)
    return [(t - 27000, audio, output) for t, audio, output in rows if 27000 <= t < 34200]


def run_main(sim: Any, *argv: str) -> tuple[str, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert sim.main(list(argv)) == 0
    text = out.getvalue()
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return text, result


def first_day_window(sim: Any, hours: tuple[int, int], **setup: Any) -> Any:
    """Hours of seed 3's first built-in day (a Monday), nothing lived through before them."""
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1)
    window = (hours[0] * 3600, hours[1] * 3600)
    return sim.Setup(scenario, seeds=(3,), days=1, warmup_days=0, window=window, **setup)


def test_quick_json_ends_with_every_policy_and_the_oracle(sim: Any) -> None:
    text, result = run_main(sim, "--quick", "--json")
    assert set(result) == {"policies", "new", "oracle"}, text
    assert result["new"] == "new"
    assert set(result["policies"]) == {spec.name for spec in sim.POLICIES}
    for name, figures in result["policies"].items():
        assert set(figures) == {
            "gpu_hours",
            "p95_wait_s",
            "p99_wait_s",
            "failed",
            "reserved_busy_fraction",
            "batch_done_by_deadline",
        }, name
        assert figures["gpu_hours"] > 0, name
        assert figures["p99_wait_s"] >= figures["p95_wait_s"] >= 0, name
        assert figures["reserved_busy_fraction"] is None, name  # on-demand billing
    assert result["oracle"]["gpu_hours"] > 0
    assert "cold starts: new node" in text
    # new against each other policy and the oracle, day by day: the sign agrees with the pooled figures.
    paired = {
        name: (float(mean), int(cheaper), int(days))
        for name, mean, cheaper, days in re.findall(r"(\S+) ([+-]\d+\.\d) ± \d+\.\d, (\d+)/(\d+)", text)
    }
    assert set(paired) == {spec.name for spec in sim.POLICIES} - {"new"} | {"oracle", "hindsight"}, text
    figures = {**result["policies"], "oracle": result["oracle"]}
    hindsight = re.search(r"hindsight \(the oracle's rule told only the past\) (\d+\.\d) GPU-h", text)
    assert hindsight is not None, text
    figures["hindsight"] = {"gpu_hours": float(hindsight.group(1))}
    for name, (mean, cheaper, days) in paired.items():
        assert 0 <= cheaper <= days, (name, text)
        gap = result["policies"]["new"]["gpu_hours"] - figures[name]["gpu_hours"]
        assert abs(gap) < 0.5 or (gap > 0) == (mean > 0), (name, gap, text)


def test_a_windows_figures_count_only_its_hours_not_the_lead_in_before_it(sim: Any) -> None:
    # --quick scores 07:00-09:00 of one day, the policies started an hour before: GPU-hours, waits and the
    # reserved pool's busy share are those two hours', so a fixed pool bills its replicas x 2 h and a
    # reserved pool is never more than wholly busy.
    _, result = run_main(sim, "--quick", "--json", "--reserved-gpus", "2", "--policies", "new,fixed")
    fixed = sim.settings_for("small-h100", "gateway", sim.load_constants())["fixed"]
    assert result["policies"]["fixed"]["gpu_hours"] == pytest.approx(fixed * 2, abs=0.01), result
    for name, figures in result["policies"].items():
        assert 0 < figures["reserved_busy_fraction"] <= 1, (name, figures)


def test_another_draw_of_chance_is_asked_for_the_comparison_only(sim: Any, capsys: Any) -> None:
    text, result = run_main(sim, "--quick", "--json", "--draw", "1", "--policies", "new")
    assert "draw 1 of them" in text
    assert set(result["policies"]) == {"new"}, text
    for argv in (["--reserved-target", "--draw", "1"], ["--draw", "-1"]):
        with pytest.raises(SystemExit):
            sim.main(argv)
        assert "--draw is a draw number" in capsys.readouterr().err, argv


def test_settings_at_given_values_are_compared_with_their_mean_per_day_tails(sim: Any, capsys: Any) -> None:
    _, result = run_main(sim, "--quick", "--json", "--policies", "new,kubeai")
    out = io.StringIO()
    tuned = sim.settings_for("small-h100", "gateway", sim.load_constants())
    new, kubeai = f"{tuned['new']:g}", f"{tuned['kubeai']:g}"
    with contextlib.redirect_stdout(out):
        assert sim.main(["--quick", "--at", f"new={new},12", "--at", f"kubeai={kubeai}"]) == 0
    lines = [line for line in out.getvalue().splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[1:]]
    cells = {(r[0], r[1]): r[2:] for r in rows}
    settings = [
        ("new", f"targetActiveRequests {new}"),
        ("new", "targetActiveRequests 12"),
        ("kubeai", f"targetRequests {kubeai}"),
    ]
    assert list(cells) == settings, out.getvalue()
    # At the tuned settings, the same days and draws as the comparison: the same GPU-hours.
    assert float(cells[settings[0]][0]) == pytest.approx(result["policies"]["new"]["gpu_hours"], abs=0.05)
    assert float(cells[settings[2]][0]) == pytest.approx(result["policies"]["kubeai"]["gpu_hours"], abs=0.05)
    for argv in (["--quick", "--at", "nope=1"], ["--quick", "--at", "new=six"], ["--quick", "--json", "--at", "new=6"]):
        with pytest.raises(SystemExit):
            sim.main(argv)
        assert "--at" in capsys.readouterr().err, argv


def test_the_committed_tuning_of_the_operators_policy_is_its_default(sim: Any) -> None:
    # The comparison scores `new` at the operator's default settings: the tuning script's choice for the
    # default scenario and routing is what an endpoint that sets nothing gets, and it was tuned on
    # training seeds only, never on the held-out ones (1 on) it is scored on.
    constants = sim.load_constants()
    assert sim.settings_for("small-h100", "gateway", constants)["new"] == DEFAULT_TARGET_ACTIVE_REQUESTS
    trained = constants["training"]["small-h100"]["gateway"]["seeds"]
    assert min(trained) >= 100, trained


def test_the_staged_weights_constants_were_tuned_on_training_seeds_with_staged_weights(sim: Any) -> None:
    # `make bench` scores every policy with the weights in a shared cache at the constants the same script
    # chose on the same training seeds with that cold-start path, for every policy the simulator compares.
    constants = sim.load_constants(sim.CONSTANTS_FILE.with_name("policy_constants-cache.json"))
    trained = constants["training"]["small-h100"]["gateway"]
    assert trained["weights"] == "cache", trained.keys()
    assert min(trained["seeds"]) >= 100, trained["seeds"]
    assert set(constants["settings"]["small-h100"]["gateway"]) == set(sim.POLICY_BY_NAME)
    assert set(trained["tried"]) == set(sim.POLICY_BY_NAME)
    # What the tuning chose for the operator's policy is the default of an endpoint whose replicas read
    # their weights from a cache (autoscale/loop.py).
    assert sim.settings_for("small-h100", "gateway", constants)["new"] == STAGED_TARGET_ACTIVE_REQUESTS
    # From the node's disk the tuning (of the operator's policy alone) chose the hub's default again.
    local = sim.load_constants(sim.CONSTANTS_FILE.with_name("policy_constants-local.json"))
    assert local["training"]["small-h100"]["gateway"]["weights"] == "local"
    assert min(local["training"]["small-h100"]["gateway"]["seeds"]) >= 100
    assert sim.settings_for("small-h100", "gateway", local)["new"] == DEFAULT_TARGET_ACTIVE_REQUESTS
    # A run with staged weights at the hub's constants says so.
    mismatched, _ = run_main(sim, "--quick", "--json", "--weights", "cache", "--policies", "new")
    assert "(tuned with weights from hub)" in mismatched, mismatched
    cache_file = str(sim.CONSTANTS_FILE.with_name("policy_constants-cache.json"))
    matched, _ = run_main(
        sim, "--quick", "--json", "--weights", "cache", "--constants", cache_file, "--policies", "new"
    )
    assert "settings from policy_constants-cache.json;" in matched, matched


def test_the_simulator_runs_the_operators_own_policy(sim: Any) -> None:
    assert sim.new_policy is operator_policy
    # The simulation's defaults are the operator's: the spec's for the requests policy (the default).
    assert sim.POLICY_BY_NAME["new"].default == operator_policy.Limits(0, 1).target_active_requests
    assert sim.POLICY_BY_NAME["new"].default == DEFAULT_TARGET_ACTIVE_REQUESTS
    assert sim.POLICY_BY_NAME["workload"].default == operator_policy.Limits(0, 1).target_utilization
    scenario = sim.SCENARIOS["small-h100"]
    limits = sim.POLICY_BY_NAME["new"].make(scenario, sim.Engine.of(scenario), 8, {}).limits
    assert (limits.policy, limits.target_active_requests) == (str(AutoscalingSpec().policy), 8)


def test_the_oracles_start_replicas_ahead_of_the_load_ahead_of_the_expected_load_or_after_it(sim: Any) -> None:
    # The same rule, one told the trace ahead and one only the minutes already over: on a morning ramp
    # (05:00-07:00 of a built-in Monday) the first extra replica comes a cold start before the minute
    # that needs it, or after that minute. The forecast oracle below: ahead of the expected load.
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1)
    day = sim.call_centre_day(3, scenario.peak_rate, day=0)
    ramp = [(t - 18000, audio, output) for t, audio, output in day if 18000 <= t < 25200]
    engine = sim.Engine.of(scenario)
    lead = sim.cold_start_range(engine, True, "hub")[1]
    need = sim.oracle_need(ramp, engine, 0.0, 7200.0 + lead, 0.7)
    needed_at = next(i for i, n in enumerate(need) if n > 1) * sim.ORACLE_BIN_S
    assert needed_at > lead, need  # the ramp starts late enough for an oracle to be early

    @dataclass
    class Watched:
        """The oracle, and the replicas there are after each of its ticks."""

        oracle: Any
        seen: list[tuple[float, int]] = field(default_factory=list)

        def tick(self, cluster: Any, now: float) -> None:
            self.oracle.tick(cluster, now)
            self.seen.append((now, cluster.replicas))

    first_up = {}
    for foresight in (True, False):
        watched = Watched(sim.Oracle(need, 0.0, lead, 1, scenario.max_replicas, foresight))
        sim.simulate(ramp, scenario, "gateway", watched, 5, 0.0, 7200.0)
        first_up[foresight] = next(now for now, replicas in watched.seen if replicas > 1)
    assert first_up[True] <= needed_at - lead + 10, (first_up, needed_at, lead)
    assert first_up[False] >= needed_at + sim.ORACLE_BIN_S, (first_up, needed_at)

    # The forecast oracle: the hindsight oracle's past and, ahead, the load other draws of this day's rate
    # (without bursts) bring on average. Told a past that never asks for more than one replica, it starts
    # the second a cold start before the expected load asks for it; the hindsight oracle never does.
    setup = sim.Setup(scenario, seeds=(3,), days=1, warmup_days=0)
    expected = sim.need_of(sim.expected_kv_token_seconds(setup, 3, engine, 18000.0, 25200.0 + lead), engine, 0.7)
    assert len(expected) == len(need)
    assert expected[0] <= 1 < max(expected), expected  # the ramp is in the expected load
    expected_at = next(i for i, n in enumerate(expected) if n > 1) * sim.ORACLE_BIN_S
    flat = [1] * len(need)
    seen = {}
    for name, ahead in (("forecast", expected), ("hindsight", None)):
        watched = Watched(sim.Oracle(flat, 0.0, lead, 1, scenario.max_replicas, False, ahead))
        sim.simulate(ramp, scenario, "gateway", watched, 5, 0.0, 7200.0)
        seen[name] = [now for now, replicas in watched.seen if replicas > 1]
    assert seen["hindsight"] == [], seen["hindsight"][:3]
    assert seen["forecast"], (expected_at, lead)
    assert expected_at - lead - sim.ORACLE_BIN_S <= seen["forecast"][0] <= expected_at - lead + 10, (
        seen["forecast"][0],
        expected_at,
        lead,
    )


def test_more_replicas_never_raise_the_wait(sim: Any, morning: Rows) -> None:
    base = sim.SCENARIOS["small-h100"]
    for routing in ("service", "gateway"):
        waits, hours = [], []
        for replicas in (3, 5, 8, 12):
            scenario = replace(base, min_replicas=replicas, max_replicas=replicas)
            run = sim.simulate(morning, scenario, routing, sim.Static(replicas), 5, 0.0, 7200.0)
            day = run.days[0]
            waits.append((sim.percentile(day.waits, 95), sim.percentile(day.waits, 99), day.failed))
            hours.append(day.gpu_s / 3600)
        assert waits == sorted(waits, reverse=True), (routing, waits)
        assert waits[0] > waits[-1], routing  # the scenario is tight enough for it to matter
        assert hours == [r * 2.0 for r in (3, 5, 8, 12)]  # static replicas bill exactly their hours


def test_an_overloaded_endpoint_counts_timeouts_as_failures(sim: Any, morning: Rows) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1, queue_timeout_s=60.0)
    for routing in ("service", "gateway"):
        day = sim.simulate(morning, scenario, routing, sim.Static(1), 5, 0.0, 1200.0).days[0]
        assert day.failed > 0, routing
        assert day.requests == len([r for r in morning if r[0] < 1200.0]), routing
        assert sim.percentile(day.waits, 99) >= 60.0, routing  # a failure sits in the tail at the timeout


def test_the_gateway_refuses_past_its_queue_bound(sim: Any, morning: Rows) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1, gateway_max_queue=5)
    day = sim.simulate(morning, scenario, "gateway", sim.Static(1), 5, 0.0, 600.0).days[0]
    assert day.failed > 0


def test_vllm_preempts_the_newest_request_when_blocks_run_out_and_recomputes_it(sim: Any) -> None:
    engine = replace(sim.Engine.of(sim.SCENARIOS["small-h100"]), kv_tokens=4000)
    replica = sim.Replica("pod-1", 0.0, 0.0, 1, False)
    replica.state = sim.READY
    requests = [sim.Request(0.0, 20.0, 1500) for _ in range(6)]  # 314-token prompts, long answers
    for request in requests:
        replica.queue.append(request)
        replica.queued_tokens += request.need
    waits: list[tuple[float, float]] = []
    done: list[Any] = []
    for second in range(600):
        replica.advance(engine, float(second), 1.0, waits, done)
        assert replica.kv_used() <= engine.kv_tokens + sim.KV_BLOCK_TOKENS, second
    assert replica.preemptions > 0  # blocks are allocated as tokens come, not reserved at admission
    assert len(waits) == 6  # each request's wait is recorded once, preempted or not
    assert sorted(id(r) for r in done) == sorted(id(r) for r in requests)  # all finish after recompute
    assert replica.running == 0
    assert replica.kv_used() == pytest.approx(0, abs=1e-6)


def test_vllm_default_batch_follows_the_gpu(sim: Any) -> None:
    assert sim.vllm_default_batch("H100-80GB") == (1024, 8192)
    assert sim.vllm_default_batch("A100-80GB") == (256, 2048)
    assert sim.vllm_default_batch("L4-24GB") == (256, 2048)
    engine = sim.Engine.of(sim.SCENARIOS["small-h100"])
    assert engine.max_num_seqs == 1024
    assert engine.gateway_inflight == 128  # the operator's 256 split over two gateway pods
    # 80 GB x 0.9 - 55 GB of weights - 2 GB activation reserve, 163,840 bytes per token
    assert engine.kv_tokens == (72_000_000_000 - 55_000_000_000 - 2_000_000_000) // 163_840


def test_cold_start_paths_order_as_their_steps_do(sim: Any) -> None:
    engine = sim.Engine.of(sim.SCENARIOS["small-h100"])
    hub_new = sim.cold_start_range(engine, True, "hub")
    hub_held = sim.cold_start_range(engine, False, "hub")
    cache_new = sim.cold_start_range(engine, True, "cache")
    cache_held = sim.cold_start_range(engine, False, "cache")
    local_held = sim.cold_start_range(engine, False, "local")
    assert cache_held[1] < hub_held[1] < hub_new[1]
    assert local_held[1] < hub_held[1]
    assert cache_new[0] < hub_new[0]
    # The shared cache also holds the compile cache: only that path skips compiling.
    assert cache_held[0] >= sim.ENGINE_START_S[0] + sim.COMPILE_CACHED_S[0]
    assert hub_held[0] >= sim.ENGINE_LOAD_S[0]
    assert set(sim.OPERATOR_PATHS.values()) == {"ColdDownload", "SharedCache", "LocalCache"}


def test_reserved_gpus_are_paid_whatever_happens(sim: Any, morning: Rows) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=2, max_replicas=2)
    run = sim.simulate(morning, scenario, "gateway", sim.Static(2), 5, 0.0, 7200.0, reserved_gpus=4)
    score = sim.Score("fixed", 2, [run.days[0]], 2.0, 4)
    assert score.billed_hours(run.days[0]) == 8.0  # 4 reserved GPUs for 2 hours, nothing beyond
    busy = score.summary(1)["reserved_busy_fraction"]
    assert 0 < busy <= 0.5  # two replicas can keep at most half of four GPUs busy


def test_gpu_hours_split_into_the_reserved_pool_and_overflow(sim: Any, morning: Rows) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=2, max_replicas=2)
    for reserved, overflowing in ((4, False), (1, True)):
        run = sim.simulate(morning, scenario, "gateway", sim.Static(2), 5, 0.0, 7200.0, reserved_gpus=reserved)
        score = sim.Score("fixed", 2, [run.days[0]], 2.0, reserved)
        summary = score.summary(1)
        assert summary["reserved_gpu_hours"] == reserved * 2.0, summary
        assert (summary["overflow_gpu_hours"] > 0) == overflowing, summary
        assert summary["reserved_gpu_hours"] + summary["overflow_gpu_hours"] == pytest.approx(
            summary["gpu_hours"], abs=0.02
        ), summary


def test_days_of_the_week_and_holidays_differ(sim: Any) -> None:
    peak = sim.SCENARIOS["small-h100"].peak_rate
    monday = sim.call_centre_day(11, peak, day=0)
    assert [sim.day_kind(d, (2,)) for d in range(8)] == [
        "weekday",
        "weekday",
        "holiday",
        "weekday",
        "weekday",
        "saturday",
        "sunday",
        "weekday",
    ]
    saturday = sim.call_centre_day(11, peak, day=5)
    holiday = sim.call_centre_day(11, peak, day=2, kind="holiday")
    assert holiday == sim.call_centre_day(11, peak, day=2, kind="holiday")  # the same seed, the same day
    assert len(holiday) < len(saturday) < 0.5 * len(monday)
    long_files = [r for r in monday if r[1] >= 1500]
    assert 0.02 < len(long_files) / len(monday) < 0.06  # a few percent of requests are 25-40 minute files


def test_what_foresight_buys_is_one_table_of_the_three_oracles_beside_the_policy(
    sim: Any, capsys: Any, monkeypatch: Any
) -> None:
    # One utilisation each keeps the smoke test short; the table is the same code at the full grid.
    monkeypatch.setattr(sim, "ORACLES", {"oracle": (0.9,), "hindsight": (0.7,)})
    assert sim.main(["--quick", "--foresight"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("what foresight buys: small-h100, routing gateway, weights from hub, seeds 1-1, days"), out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")][1:]
    assert [row[0] for row in rows] == ["| oracle", "| forecast", "| hindsight", "| new"], rows
    assert rows[0][4] == "1.00", rows
    assert rows[1][2] == "70% of the KV cache", rows  # the forecast tries the hindsight oracle's utilisations
    assert rows[3][2] == "targetActiveRequests 4", rows
    for argv in (["--quick", "--foresight", "--json"], ["--quick", "--foresight", "--at", "new=4"]):
        with pytest.raises(SystemExit):
            sim.main(argv)
        assert "--foresight prints its own table" in capsys.readouterr().err, argv


def test_days_without_their_bursts_keep_everything_else(sim: Any, capsys: Any) -> None:
    peak = sim.SCENARIOS["small-h100"].peak_rate
    monday_stream = 5 * 1_000_003  # call_centre_day's stream for seed 5, day 0
    with_bursts = sim._rate_curve(random.Random(monday_stream), peak)
    without = sim._rate_curve(random.Random(monday_stream), peak, bursts_on=False)
    raised = [s for s, (a, b) in enumerate(zip(with_bursts, without, strict=True)) if a != b]
    assert raised, "seed 5's Monday has bursts"
    assert all(with_bursts[s] >= 1.5 * without[s] for s in raised)  # a burst is 1.5-2.5x
    assert len(raised) < len(without) / 4  # the rest of the day: the same level, timing and noise
    monday, calm = sim.call_centre_day(5, peak, day=0), sim.call_centre_day(5, peak, day=0, bursts=False)
    assert len(calm) < len(monday)
    first = raised[0]
    before = [r for r in monday if r[0] < first]
    assert len(before) > 1000, first  # bursts start from 07:00: a night and a morning ramp before it
    assert [r for r in calm if r[0] < first] == before
    with pytest.raises(SystemExit):
        sim.main(["--quick", "--no-bursts", "--trace", "calls.csv"])
    assert "--no-bursts takes the bursts out of the built-in days" in capsys.readouterr().err


def test_a_trace_with_classes_replays_deterministically(sim: Any, morning: Rows, tmp_path: Path) -> None:
    trace = tmp_path / "calls.csv"
    lines = ["arrival_s,audio_s,output_tokens,class", "100.0,30.0,90,batch"]
    lines += [f"{t:.3f},{audio:.2f},{output}," for t, audio, output in morning]  # class empty: interactive
    trace.write_text("\n".join(lines) + "\n")
    read = sim.read_trace(trace)
    assert read.batch == 1
    assert [round(t, 3) for t, _, _ in read.rows] == sorted(round(t, 3) for t, _, _ in morning)
    plain = tmp_path / "plain.csv"
    sim.write_trace(plain, morning)
    assert sim.read_trace(plain).rows == read.rows
    setup = sim.Setup(sim.SCENARIOS["small-h100"], trace=trace, warmup_days=0, window=(0.0, 1800.0))
    settings = [("new", 6), ("workload", 0.35), ("hpa-kv", 0.5)]
    first = sim.evaluate_seeds(setup, settings, {})
    again = sim.evaluate_seeds(setup, settings, {})
    assert [s.days for s in first] == [s.days for s in again]
    assert [s.policy for s in first] == ["new", "workload", "hpa-kv"]


def test_the_cheapest_setting_meeting_the_target_on_every_day_is_chosen(sim: Any) -> None:
    def score(value: float, hours: float, worst_p99: float) -> Any:
        good = sim.DayFigures(waits={0: 100}, requests=100, gpu_s=hours * 3600)
        worst = sim.DayFigures(waits={0: 95, sim._bin(worst_p99): 5}, requests=100, gpu_s=hours * 3600)
        return sim.Score("hpa-kv", value, [good, worst], 24.0, 0)

    target = sim.Target(p95_wait_s=10.0, p99_wait_s=60.0)
    scores = [score(0.3, 200.0, 0.0), score(0.4, 150.0, 50.0), score(0.5, 120.0, 90.0)]
    best, met = sim.choose(scores, target)
    assert (best.value, met) == (0.4, True)
    best, met = sim.choose([score(0.5, 120.0, 90.0), score(0.6, 100.0, 300.0)], target)
    assert (best.value, met) == (0.5, False)  # none meets it: the one missing it least


def test_the_lane_rule_leaves_headroom_and_yields_to_waiting_interactive_work(sim: Any) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1)
    engine = sim.Engine.of(scenario)
    # The slots bound alone, and no taking back (the slots' headroom is what is tested)
    cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1, lane_kv=False, take_back=False)
    slots, headroom = engine.gateway_inflight, max(1, engine.gateway_inflight // 8)
    for _ in range(400):
        cluster.arrive(sim.Request(0.0, 30.0, 90, deferrable=True))
    cluster.step(0.0, 0.01)
    pod = cluster.pods[0]
    assert all(cluster.deferred), "more deferrable work than slots: some waits at each gateway pod"
    assert pod.gw_inflight == [slots - headroom] * scenario.gateway_pods  # H slots left for interactive work
    arrived = [0] * scenario.gateway_pods
    for _ in range(4 * headroom):
        request = sim.Request(1.0, 30.0, 90)
        cluster.arrive(request)
        arrived[request.gw] += 1
    cluster.step(1.0, 0.01)  # too short for anything to finish
    for g, held in enumerate(cluster.held):
        assert pod.gw_inflight[g] == slots - headroom + min(arrived[g], headroom), (g, arrived)
        assert len(held) == max(0, arrived[g] - headroom), (g, arrived)  # waits for a slot, no deferrable work


def test_by_default_deferrable_work_stays_within_each_gateway_pods_share_of_the_kv_cache(sim: Any) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1)
    engine = sim.Engine.of(scenario)
    cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1)
    for _ in range(400):
        cluster.arrive(sim.Request(0.0, 1200.0, 900, deferrable=True))  # 20-minute recordings
    cluster.step(0.0, 0.01)
    pod, need = cluster.pods[0], sim.Request(0.0, 1200.0, 900).need
    bound = engine.kv_tokens / scenario.gateway_pods  # each gateway pod's share
    for admitted in pod.gw_inflight:  # each pod counts the whole sequences it sent
        assert 0 < admitted < engine.gateway_inflight - max(1, engine.gateway_inflight // 8), admitted
        assert admitted * need <= bound, (admitted, need, bound)
        assert (admitted + 1) * need > bound, (admitted, need, bound)


@pytest.mark.parametrize("take_back", [True, False])
def test_an_interactive_upload_that_does_not_fit_beside_deferrable_work_takes_it_back(
    sim: Any, take_back: bool
) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1)
    engine = sim.Engine.of(scenario)
    cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1, take_back=take_back)
    for _ in range(400):
        cluster.arrive(sim.Request(0.0, 1500.0, 900, deferrable=True))  # 25-minute recordings
    for second in range(5):
        cluster.step(float(second), 1.0)  # admitted and prefilled: most of each gateway pod's share
    pod = cluster.pods[0]
    before = sum(pod.gw_inflight)
    upload = sim.Request(5.0, 2400.0, 600)  # a 40-minute upload: more than the eighth left
    cluster.arrive(upload)
    cluster.step(5.0, 1.0)
    # Taken back, vLLM admits the upload at its next step; otherwise it waits for a deferrable one to finish.
    assert upload.admitted is take_back, (cluster.taken_back, pod.kv_used(), upload.need)
    assert (cluster.taken_back > 0) is take_back
    taken = cluster.taken_back
    assert sum(pod.gw_inflight) == before + 1 - taken
    assert all(r.deferrable and r.pod is None and r.left == r.prompt for r in list(cluster.deferred[upload.gw])[:taken])
    assert not any(r.deferrable for r in pod.queue)


@pytest.mark.parametrize("rule", ["what-if", "reads", "none"])
def test_the_what_if_takes_back_where_vllm_reports_an_interactive_request_waiting(sim: Any, rule: str) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=1)
    engine = sim.Engine.of(scenario)
    on_waiting = rule != "none"
    cluster = sim.Cluster(
        scenario,
        engine,
        "gateway",
        5,
        0.0,
        1,
        take_back=on_waiting,
        take_back_on_waiting=rule == "what-if",
        take_back_on_reads=rule == "reads",
    )
    for _ in range(400):
        cluster.arrive(sim.Request(0.0, 1500.0, 900, deferrable=True))
    for second in range(5):
        cluster.step(float(second), 1.0)
    pod = cluster.pods[0]
    upload = sim.Request(5.0, 2400.0, 600)
    cluster.arrive(upload)
    cluster.step(5.0, 1.0)
    # Nothing is taken back when it is sent: the upload waits in vLLM's queue for blocks...
    assert not upload.admitted, (cluster.taken_back, pod.kv_used())
    assert cluster.taken_back == 0
    others = pod.gw_inflight[1 - upload.gw]
    cluster.step(6.0, 1.0)
    # ...until the next reading of the replica's metrics shows it waiting; with nothing taken back, it waits on.
    assert upload.admitted is on_waiting, (cluster.taken_back, pod.kv_used(), upload.need)
    assert (cluster.taken_back > 0) is on_waiting
    assert pod.kv_used() <= engine.kv_tokens
    if rule == "reads":  # a gateway pod takes back only its own requests, as many as the upload's tokens need
        taken = list(cluster.deferred[upload.gw])[: cluster.taken_back]
        assert [r.gw for r in taken] == [upload.gw] * cluster.taken_back
        assert sum(r.need for r in taken[:-1]) < upload.need <= sum(r.need for r in taken)
        assert pod.gw_inflight[1 - upload.gw] == others, "the other gateway pod's requests are not this pod's"


def test_deferrable_rows_are_due_by_eight_the_next_morning_and_scored(sim: Any, tmp_path: Path) -> None:
    assert sim.due_by(0.0) == sim.DAY + 8 * 3600
    assert sim.due_by(sim.DAY + 23 * 3600) == 2 * sim.DAY + 8 * 3600
    trace = tmp_path / "with-batch.csv"
    interactive = [(sim.DAY + 60.0 * m + 1.0, 20.0, 70) for m in range(120)]  # day 1, 00:00-02:00
    batch = [(sim.DAY - 3600 + i, 600.0, 1800) for i in range(40)]  # 23:00 on day 0, due 08:00 on day 1
    sim.write_trace(trace, interactive, batch)
    read = sim.read_trace(trace)
    assert (read.rows, read.batch_rows) == (tuple(interactive), tuple(batch))
    setup = sim.Setup(sim.SCENARIOS["small-h100"], trace=trace, warmup_days=1, window=(0.0, 3 * 3600.0))
    for deferrable in (True, False):
        scores = sim.evaluate_seeds(
            replace(setup, deferrable=deferrable), [("new", 6), ("workload", 0.3), ("hpa-kv", 0.55)], {}
        )
        for score in scores:
            summary = score.summary(1)
            assert summary["batch_done_by_deadline"] == (1.0 if deferrable else None), (score.policy, summary)
            assert summary["p95_wait_s"] == 0.0, (score.policy, summary)  # the interactive lane's wait only
            assert score.pooled.requests == 120, score.policy


@pytest.mark.parametrize("policy_name", ["requests", "workload"])
def test_a_reserved_pool_is_kept_up_while_deferrable_work_waits_and_not_beyond(sim: Any, policy_name: str) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=8)
    engine = sim.Engine.of(scenario)
    batch = [(10.0 + i, 1500.0, 4500) for i in range(150)]  # long recordings: many replicas' worth
    policy = sim.New(replace(sim.new_limits(scenario, engine, 0.3, policy=policy_name), reserved_replicas=3))
    run = sim.simulate([], scenario, "gateway", policy, 5, 0.0, 7200.0, reserved_gpus=3, batch_rows=batch, lane_kv=True)
    assert run.peak_replicas == 3  # up to the pool while deferrable work waits, never beyond it
    busy, _ready, waiting = (value / 3600 for value in run.hours[0])
    assert busy > 2.5, run.hours  # the pool's idle nodes start at once (no provisioning) and fill up
    assert waiting > 0, run.hours
    assert run.hours[1][1] < 3 * 3600, run.hours  # the backlog done, the pool scales down again


def test_keep_pool_up_holds_the_reserved_pool_through_a_quiet_night_and_only_with_the_option(sim: Any) -> None:
    """--keep-pool-up is minReplicas at the pool's size for the operator's policy: a quiet night with no
    deferrable work keeps every reserved replica up; without the option it scales down to what the load asks."""
    setup = first_day_window(sim, (2, 4), reserved_gpus=3, deferrable=False)
    constants = sim.settings_for("small-h100", "gateway", sim.load_constants())
    up = {}
    for keep in (True, False):
        (score,) = sim.evaluate(replace(setup, keep_pool_up=keep), 3, (("new", constants["new"]),), constants)
        up[keep] = [score.hours[hour][1] / 3600 for hour in (2, 3)]  # replicas up, averaged over the hour
    assert up[True] == [3.0, 3.0], up
    assert max(up[False]) < 2.0, up  # a night's trickle asks for one replica


def test_keep_pool_up_needs_a_reserved_pool(sim: Any) -> None:
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        sim.main(["--quick", "--keep-pool-up"])


def test_deferrable_arrivals_leave_the_interactive_random_draws_as_they_were(sim: Any) -> None:
    """The reserved-pool target compares a run with deferrable work against one without, day by day:
    interactive requests must pick the same gateway pods, and replicas started alike load as long, in both."""
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=8)
    engine = sim.Engine.of(scenario)
    runs = []
    for with_deferrable in (True, False):
        cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1)
        picks = []
        for i in range(200):
            if with_deferrable:
                cluster.arrive(sim.Request(float(i), 600.0, 300, deferrable=True))
            request = sim.Request(float(i), 30.0, 90)
            cluster.arrive(request)
            picks.append(request.gw)
        cluster.scale_to(4, 200.0)
        runs.append((picks, sorted(pod.ready_at for pod in cluster.pods)))
    assert len(set(runs[1][0])) == scenario.gateway_pods  # the picks do vary
    assert runs[0] == runs[1]


def test_another_draw_changes_the_simulations_chance_and_draw_0_is_the_default(sim: Any) -> None:
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=8)
    engine = sim.Engine.of(scenario)
    runs = []
    for draw in (None, 0, 1):
        cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1, **({} if draw is None else {"draw": draw}))
        picks = []
        for i in range(50):
            request = sim.Request(float(i), 30.0, 90)
            cluster.arrive(request)
            picks.append(request.gw)
        cluster.scale_to(4, 60.0)
        runs.append((picks, sorted(pod.ready_at for pod in cluster.pods)))
    assert runs[0] == runs[1]
    assert runs[2][0] != runs[0][0]
    assert runs[2][1] != runs[0][1]


@pytest.mark.parametrize("paired", [True, False])
def test_paired_draws_keep_picks_and_cold_starts_when_one_run_started_replicas_the_other_did_not(
    sim: Any, paired: bool
) -> None:
    """Paired, a run that started two replicas an hour earlier and let them go still sends each later request
    to the same gateway pod, and the replica both start fourth that morning loads as long in both; one stream
    (the Cluster's default; Setup pairs) shifts both."""
    scenario = replace(sim.SCENARIOS["small-h100"], min_replicas=1, max_replicas=8)
    engine = sim.Engine.of(scenario)
    runs = []
    for started_early in (True, False):
        cluster = sim.Cluster(scenario, engine, "gateway", 5, 0.0, 1, paired_draws=paired)
        if started_early:
            cluster.scale_to(3, 100.0)
            cluster.scale_to(1, 200.0)
            cluster.step(900.0, 1.0)  # their nodes released: the later starts take new nodes in both runs
        picks = []
        for i in range(50):
            request = sim.Request(3700.0 + i, 30.0, 90)
            cluster.arrive(request)
            picks.append(request.gw)
        cluster.scale_to(4, 3800.0)
        runs.append((picks, cluster.pods[3].ready_at - 3800.0))
    assert len(set(runs[1][0])) == scenario.gateway_pods, runs  # the picks do vary
    if paired:
        assert runs[0] == runs[1]
    else:
        assert runs[0][0] != runs[1][0], runs
        assert runs[0][1] != runs[1][1], runs


def test_the_reserved_target_pairs_each_draw_with_its_own_run_without_deferrable_work(sim: Any) -> None:
    """With no deferrable rows, the run "with" deferrable work is the run without it, draw for draw: the
    rule can miss no day. The other draws without deferrable work, judged by the same rule, do miss
    this morning's (their replicas come up at other times): the comparison is not of a run with itself."""
    setup = first_day_window(sim, (7, 8), reserved_gpus=2)
    constants = sim.settings_for("small-h100", "gateway", sim.load_constants())
    # A setting at which this hour's waits are short and hang on when replicas come up (at 4 no draw waits,
    # at 8 every draw waits minutes): there the draws differ, so a rule judged by chance alone can miss.
    text, payload = sim.reserved_target(setup, 6, constants, 1, draws=2)
    assert payload["tail_days_missed"]["with_deferrable"] == 0, text
    assert payload["tail_draw_days_missed"]["with_deferrable"] == 0, text
    assert payload["tail_draw_days_missed"]["by_chance_alone"] >= 1, text
    assert payload["tail_draw_days_missed"]["of"] == 2, text
    assert payload["batch_done_by_deadline"] is None, text
    assert "no deferrable requests due" in text
    waits = payload["long_waits"]["backlog_hours"]  # 07:00-08:00 is in them: the same runs count the same
    assert waits["with_deferrable"] == waits["without"], text
    assert payload["long_waits"]["working_day"]["with_deferrable"] == 0, text


def test_long_waits_are_counted_by_their_hour_of_arrival_and_split_at_the_backlogs_hours(sim: Any) -> None:
    day = sim.DayFigures()
    monday = 7 * sim.DAY
    sim.record_wait(day, monday + 19 * sim.HOUR + 5, 6.0)  # the backlog's hours
    sim.record_wait(day, monday + 7 * sim.HOUR, 600.0)  # still theirs (a timeout counts)
    sim.record_wait(day, monday + 12 * sim.HOUR, 30.0)  # the working day's
    sim.record_wait(day, monday + 12 * sim.HOUR, sim.LONG_WAIT_S)  # not more than the threshold
    assert sim.long_waits_split(day) == (2, 1)
    assert sum(day.waits.values()) == 4
    pooled = sim.DayFigures()
    pooled.add(day)
    pooled.add(day)
    assert sim.long_waits_split(pooled) == (4, 2)


def test_tuning_halves_from_the_cheapest_value_that_met_the_target_toward_a_neighbour_that_missed_it(
    tune: Any,
) -> None:
    """After the five values, each policy's search goes halfway toward the cheaper side it has not
    proven: between the value chosen and a tried neighbour that missed, in whole numbers where the knob
    takes only those; nothing when no neighbour missed or nothing new lies between."""
    # The shape of the requests policy's training figures: 6 met, 8 cheaper and missed.
    figures = {3.0: (107.2, True), 4.0: (86.8, True), 6.0: (67.2, True), 8.0: (60.7, False), 10.0: (65.1, False)}
    assert tune.halfway(figures, whole=True) == 7.0
    assert tune.halfway(figures | {7.0: (63.0, True)}, whole=True) is None  # 7.5 is no whole number
    assert tune.halfway(figures | {7.0: (63.0, True)}, whole=False) == 7.5
    assert tune.halfway(figures | {7.0: (63.0, False)}, whole=False) == 6.5
    # Both neighbours missed (more replicas can cost more when waits pile up): the cheaper side.
    both = {3.0: (98.5, False), 4.0: (80.6, True), 6.0: (70.0, False)}
    assert tune.halfway(both, whole=False) == 5.0
    assert tune.halfway({2.0: (70.2, True), 3.0: (71.7, True)}, whole=True) is None  # no neighbour missed
    assert tune.halfway({0.1: (259.0, False), 0.25: (252.9, False)}, whole=False) is None  # nothing met
    assert tune.halfway({11.0: (264.0, False), 12.0: (288.0, True)}, whole=True) is None  # nothing between


def test_tuning_for_another_weights_path_refuses_to_overwrite_the_default_constants(tune: Any, sim: Any) -> None:
    before = sim.CONSTANTS_FILE.read_bytes()
    with pytest.raises(SystemExit, match="own file"):
        tune.main(["--weights", "cache"])
    assert sim.CONSTANTS_FILE.read_bytes() == before


def test_the_backlog_is_sized_per_reserved_gpu_on_training_nights_to_the_largest_finished_by_its_deadline(
    sim: Any, tune: Any
) -> None:
    """`tune_policies.py --reserved-backlog` keeps the largest backlog a night per reserved GPU that every
    training night finishes by 08:00; the reserved target then queues that many per GPU of its pool."""
    # One GPU, a day of warm-up and the night after it, a trickle of interactive work.
    setup = sim.Setup(
        replace(sim.SCENARIOS["small-h100"], min_replicas=1),
        seeds=(3,),
        days=2,
        warmup_days=1,
        reserved_gpus=1,
        peak_scale=0.02,
        window=(0.0, 10 * 3600.0),  # the scored day until 10:00: the backlog was due at 08:00
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        chosen, training = tune.size_backlog(setup, {}, 1, values=(20, 2000))
    tried = training["tried"]
    assert (tried["20"]["on_time"], tried["20"]["due"]) == (20, 20), tried
    assert tried["2000"]["on_time"] < tried["2000"]["due"] == 2000, tried  # one GPU cannot finish it
    assert tried["2000"]["latest_last_done_min_after_deadline"] > 0, tried
    assert (chosen, training["met"]) == (20, True), out.getvalue()

    sized, _ = sim.reserved_setup(replace(setup, reserved_gpus=3), {"reserved": {"backlog_per_gpu": chosen}})
    assert sized.backlog == 3 * chosen
    given, _ = sim.reserved_setup(replace(setup, backlog=5), {"reserved": {"backlog_per_gpu": chosen}})
    assert given.backlog == 5


def test_the_last_evening_has_its_backlog_too_due_after_the_days_simulated(sim: Any) -> None:
    rows = sim.overnight_backlog(5, 3, 10)
    evenings = sorted({int(arrival // sim.DAY) for arrival, _, _ in rows})
    assert evenings == [0, 1, 2], evenings
    last = [arrival for arrival, _, _ in rows if arrival >= 2 * sim.DAY]
    assert len(last) == 10
    assert all(sim.due_by(arrival) > 3 * sim.DAY for arrival in last)  # after the 3 days: never scored


def test_a_day_beyond_the_endpoints_ceiling_is_named_and_every_policy_judged_without_it(sim: Any) -> None:
    # Two seeds of two scored days; the fourth day is more than every replica the endpoint may have can
    # serve. It is named, and each policy's verdict and GPU-hours are given again on the other three.
    def day(failed: int = 0, gpu_h: float = 10.0) -> Any:
        waits = {0: 100 - failed, int(600 / sim.WAIT_BIN_S): failed} if failed else {0: 100}
        return sim.DayFigures(waits=waits, requests=100, failed=failed, gpu_s=gpu_h * 3600)

    def score(policy: str, value: float, *days: Any) -> Any:
        return sim.Score(policy, value, list(days), 24.0, 0)

    setup = sim.Setup(sim.SCENARIOS["small-h100"], seeds=(7, 8))
    target = sim.Target()
    new = score("new", 4, day(), day(), day(), day(failed=30, gpu_h=50))
    kubeai = score("kubeai", 2, day(), day(failed=5), day(), day(failed=40))
    oracle = score("oracle", 0.55, day(gpu_h=6), day(gpu_h=6), day(gpu_h=6), day(failed=20))
    # Fuller replicas: cheaper on the days within the ceiling, worse beyond it.
    fuller = score("oracle", 0.7, day(gpu_h=5), day(gpu_h=5), day(gpu_h=5), day(failed=80))
    hindsight = score("hindsight", 0.3, day(), day(), day(), day(failed=20))
    ceiling = score("fixed", 24, day(gpu_h=576), day(gpu_h=576), day(gpu_h=576), day(failed=10, gpu_h=576))
    assert sim.choose_oracles([oracle, fuller, hindsight], target) == (oracle, hindsight)  # the least miss
    text, _ = sim.report(setup, [new, kubeai], oracle, hindsight, target, ceiling, [oracle, fuller, hindsight])
    assert "seed 8 day 6 (100 requests, 10 failed); on the other 3 days:" in text, text
    assert "new 10.0 GPU-h/day met" in text, text
    assert "kubeai 10.0 GPU-h/day MISSED (p99 up to 600 s)" in text, text
    assert "oracle (utilization 0.7) 5.0 GPU-h/day met" in text, text  # chosen again on those days
    assert not target.met(new)  # the table's own verdict is over every day
    # Without a ceiling run, or when it meets the target every day, nothing more is said.
    for other in (None, score("fixed", 24, *(day(gpu_h=576) for _ in range(4)))):
        plain, _ = sim.report(setup, [new, kubeai], oracle, hindsight, target, other)
        assert "ceiling" not in plain, plain
