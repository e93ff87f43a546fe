"""What the autoscaler reads back from its ConfigMap is held to what a run could have learned: the
ConfigMap is editable by whoever may edit ConfigMaps in the namespace, and JSON carries NaN and
Infinity. Read back as the loop reads it (JSON, the saved fields, State.from_dict, restored_within),
then decided on an idle endpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.test_autoscale_policy import LIMITS, NOW, pods
from voxtral_operator.autoscale.loop import SAVED_FIELDS
from voxtral_operator.autoscale.policy import (
    LEVEL_RANGE,
    PROFILE_BINS,
    REQUESTS_POLICY,
    Observation,
    State,
    decide,
    restored_within,
)


def _read_back(saved: dict[str, Any]) -> State:
    learned = json.loads(json.dumps(saved))  # NaN and Infinity survive json, as from a ConfigMap
    return State.from_dict({k: v for k, v in learned.items() if k in SAVED_FIELDS})


# (saved state, the most replicas an idle endpoint may then be given). A profile at maxReplicas all day
# reads as a history of saturated days, which the workload policy plans for; nothing more.
HOSTILE = {
    "infinite-profile": ({"days": [[float("inf")] * PROFILE_BINS], "day": 9}, LIMITS.max_replicas),
    "nan-profile": ({"days": [[float("nan")] * PROFILE_BINS], "day": 9}, 1),
    "huge-profile": ({"days": [[1e9] * PROFILE_BINS], "day": 9}, LIMITS.max_replicas),
    "negative-cold-start": ({"coldStart": -0.001, "coldStarts": {"ColdDownload": -5}}, 1),
    "denormal-capacity": ({"capacity": 5e-324}, 1),
    # A level held to its range: 1.5 x a profile of 0.4 replicas at 50 % utilisation is 2 (not 1e9 x).
    "huge-level": ({"level": 1e9, "days": [[0.4] * PROFILE_BINS], "day": 9}, 2),
    "unknown-cold-start-paths": ({"coldStarts": {f"path-{i}": 60 for i in range(1000)}}, 1),
}


@pytest.mark.parametrize("limits", [LIMITS, replace(LIMITS, policy=REQUESTS_POLICY)], ids=["workload", "requests"])
@pytest.mark.parametrize(("saved", "most"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hand_edited_state_neither_crashes_nor_holds_replicas_for_no_load(
    saved: dict[str, Any], most: int, limits: Any
) -> None:
    state = restored_within(_read_back(saved), limits)
    idle = Observation(1, 1, pods(0.0))
    decision = decide(limits, idle, state, NOW)  # raised, or held maxReplicas, before
    assert decision.replicas <= most, decision.reason
    assert LEVEL_RANGE[0] <= state.level <= LEVEL_RANGE[1]
    assert set(state.cold_starts) <= {"ColdDownload", "SharedCache", "LocalCache"}


def test_what_a_run_learned_is_restored_as_it_was() -> None:
    learned = {
        "capacity": 850.0,
        "workPerRequest": 30.0,
        "coldStart": 240.0,
        "coldStarts": {"ColdDownload": 300.0, "SharedCache": 90.0},
        "level": 1.2,
        "days": [[0.5] * PROFILE_BINS, [None] * PROFILE_BINS],
        "day": 9,
    }
    read = _read_back(learned)
    assert restored_within(read, LIMITS) == read
