"""Tune every policy of bench/policy_sim.py on training seeds only, with the same budget, and write the
chosen constants to bench/policy_constants.json, which the simulator reads.

Each policy has one constant and five values to try (`PolicySpec.values`): the same number of
simulated days for each. The training seeds (101 on) are never scored; `policy_sim.py` scores on
seeds 1 on. A value is chosen when every scored training day meets the wait target (per-day p95 and
p99, failures); among those the cheapest in GPU-hours; when none meets it, the one missing it least.
The schedule floor beside HPA (`cron-hpa`) is tuned after HPA on KV usage, whose target it reuses.

    python bench/tune_policies.py                      # small-h100 behind the gateway, seed 101
    python bench/tune_policies.py --routing service --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import policy_sim as sim  # beside this script


def tune(
    setup: sim.Setup, target: sim.Target, workers: int, names: Sequence[str], known: dict[str, float]
) -> tuple[dict[str, float], dict[str, Any]]:
    """The chosen value of each named policy, and what each tried value did on the training days."""
    chosen: dict[str, float] = dict(known)
    tried: dict[str, Any] = {}
    # cron-hpa reuses HPA on KV usage's target, so it comes second.
    first = [s for s in sim.POLICIES if s.name in names and s.name != "cron-hpa"]
    stages = [first, [sim.POLICY_BY_NAME["cron-hpa"]] if "cron-hpa" in names else []]
    for specs in stages:
        if not specs:
            continue
        settings = [(spec.name, float(value)) for spec in specs for value in spec.values]
        scores = sim.evaluate_seeds(setup, settings, chosen, workers)
        for spec in specs:
            own = [s for s in scores if s.policy == spec.name]
            best, met = sim.choose(own, target)
            chosen[spec.name] = best.value
            tried[spec.name] = {
                "met": met,
                "values": {
                    f"{s.value:g}": {
                        "gpu_hours_per_day": round(sum(s.billed_hours(d) for d in s.days) / len(s.days), 1),
                        "gpu_hours_by_day": [round(s.billed_hours(d), 1) for d in s.days],
                        "p95_by_day": s.per_day(95),
                        "p99_by_day": s.per_day(99),
                        "worst_day_p95_s": max(s.per_day(95)),
                        "worst_day_p99_s": max(s.per_day(99)),
                        "failed": s.pooled.failed,
                        "met": target.met(s),
                    }
                    for s in own
                },
            }
            print(f"  {spec.name:<12} -> {best.value:g} ({'meets' if met else 'misses'} the target)", flush=True)
    return chosen, tried


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(sim.SCENARIOS), default="small-h100")
    parser.add_argument("--routing", choices=("service", "gateway"), default="gateway")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=101, help="training seeds start here (scoring: 1 on)")
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--warmup-days", type=int, default=5)
    parser.add_argument("--holidays", default="8")
    parser.add_argument("--policies", default=",".join(p.name for p in sim.POLICIES), help="comma-separated")
    parser.add_argument("--out", type=Path, default=sim.CONSTANTS_FILE)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.first_seed < 100:
        raise SystemExit("training seeds start at 100 or later: seeds below are held out for scoring")

    scenario = sim.SCENARIOS[args.scenario]
    holidays = tuple(int(d) for d in args.holidays.split(",") if d.strip())
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    setup = sim.Setup(scenario, args.routing, seeds, args.days, args.warmup_days, holidays)
    constants = sim.load_constants(args.out)
    target = sim.target_from(constants)
    started = time.perf_counter()
    print(f"tuning {scenario.name} / {args.routing} on seeds {seeds[0]}-{seeds[-1]}", flush=True)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    settings = constants.setdefault("settings", {}).setdefault(scenario.name, {}).setdefault(args.routing, {})
    chosen, tried = tune(setup, target, args.workers, names, settings)
    constants["target"] = asdict(target)
    settings.update(chosen)
    training = constants.setdefault("training", {}).setdefault(scenario.name, {}).setdefault(args.routing, {})
    training.update(seeds=list(seeds), days=args.days, warmup_days=args.warmup_days, holidays=list(holidays))
    training.setdefault("tried", {}).update(tried)
    args.out.write_text(json.dumps(constants, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
