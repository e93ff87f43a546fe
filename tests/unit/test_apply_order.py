"""The stages children are applied in: what the API server or the pods need first comes in an earlier stage."""

from __future__ import annotations

import pytest

from voxtral_operator.reconcile import APPLY_ORDER, APPLY_STAGES, SERVING_KINDS


def _stage(kind: str) -> int:
    return next(i for i, stage in enumerate(APPLY_STAGES) if kind in stage)


def test_every_kind_is_in_exactly_one_stage() -> None:
    flat = [kind for stage in APPLY_STAGES for kind in stage]
    assert sorted(flat) == sorted(APPLY_ORDER), APPLY_STAGES


@pytest.mark.parametrize(
    ("first", "then"),
    [
        # The API server refuses (404) a RoleBinding whose Role does not exist yet.
        ("Role", "RoleBinding"),
        # Fail closed: nothing serves before its NetworkPolicy exists.
        *[("NetworkPolicy", kind) for kind in SERVING_KINDS],
        # What the pods use exists before the pods (their permissions may come with them: see APPLY_STAGES).
        *[(kind, "Deployment") for kind in ("Secret", "ServiceAccount", "PersistentVolumeClaim")],
    ],
)
def test_a_kind_another_needs_is_applied_in_an_earlier_stage(first: str, then: str) -> None:
    assert _stage(first) < _stage(then), APPLY_STAGES


def test_the_workloads_are_not_held_back_a_stage_by_the_rolebinding() -> None:
    """A new endpoint's status waits for every stage; the RoleBinding's escalation check at the server
    must not be a stage of its own before the workloads."""
    assert _stage("RoleBinding") == _stage("Deployment"), APPLY_STAGES
