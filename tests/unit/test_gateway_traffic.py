"""Whether inference went through an endpoint's gateway pods since the autoscaler's last look: what
keeps an idle endpoint from scaling to zero, so a missed scrape must not count as traffic."""

from __future__ import annotations

from voxtral_operator.autoscale.loop import requests_moved

PODS = {"gw-a", "gw-b"}


def test_a_pod_that_missed_a_look_is_not_traffic_when_it_answers_again() -> None:
    counts: dict[str, float] = {"gw-a": 10.0, "gw-b": 7.0}
    moved, counts = requests_moved(counts, {"gw-a": 10.0}, PODS)  # gw-b timed out
    assert not moved
    assert counts == {"gw-a": 10.0, "gw-b": 7.0}, "gw-b's last count is kept"
    moved, counts = requests_moved(counts, {"gw-a": 10.0, "gw-b": 7.0}, PODS)
    assert not moved, "gw-b answering again with the same count is no request"


def test_an_idle_endpoint_with_a_flaky_pod_stays_idle_over_many_looks() -> None:
    counts: dict[str, float] = {"gw-a": 3.0, "gw-b": 4.0}
    for look in range(120):
        answered = {"gw-a": 3.0} if look % 30 == 0 else {"gw-a": 3.0, "gw-b": 4.0}
        moved, counts = requests_moved(counts, answered, PODS)
        assert not moved, f"look {look}: no request went through"


def test_a_request_is_seen_on_any_pod_that_answers() -> None:
    moved, counts = requests_moved({"gw-a": 3.0, "gw-b": 4.0}, {"gw-b": 5.0}, PODS)
    assert moved
    assert counts == {"gw-a": 3.0, "gw-b": 5.0}


def test_new_pods_count_from_zero_and_gone_ones_are_forgotten() -> None:
    moved, counts = requests_moved({"gw-a": 3.0, "gw-old": 9.0}, {"gw-a": 3.0, "gw-b": 0.0}, PODS)
    assert not moved, "a new pod that has served nothing is no request"
    assert counts == {"gw-a": 3.0, "gw-b": 0.0}, "gw-old is gone"
    moved, _ = requests_moved(counts, {"gw-a": 3.0, "gw-c": 2.0}, PODS | {"gw-c"})
    assert moved, "a new pod that has served requests since it started is traffic"
