"""Flows per key and the fairness policies between them, as tables: no dispatcher, no network."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from voxtral_operator.gateway.flows import DeficitRoundRobin, FirstComeFirstServed, FlowQueue


@dataclass(eq=False)
class Job:
    key: str
    cost: float
    order: int


def queue_of(
    policy: DeficitRoundRobin[Job] | FirstComeFirstServed[Job], *bursts: tuple[str, int, float, float]
) -> FlowQueue[Job]:
    """Bursts of (key, count, cost, weight), pushed one burst after the other."""
    queue: FlowQueue[Job] = FlowQueue(policy)
    order = 0
    for key, count, cost, weight in bursts:
        for _ in range(count):
            queue.push(key, Job(key, cost, order), weight)
            order += 1
    return queue


def drain(queue: FlowQueue[Job], count: int) -> list[Job]:
    taken = []
    for _ in range(count):
        job = queue.pop_next(lambda _: True)
        assert job is not None
        taken.append(job)
    return taken


def test_first_come_first_served_ignores_keys() -> None:
    queue = queue_of(FirstComeFirstServed(), ("a", 3, 1, 1), ("b", 1, 1, 1))
    assert [job.key for job in drain(queue, 4)] == ["a", "a", "a", "b"]
    assert queue.pop_next(lambda _: True) is None
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("cost_a", "bound"),
    [
        (5.0, 7),  # a turn of 30 work-seconds is 6 of A's clips, then B's
        (1.0, 31),
        (600.0, 2),  # A's long file first (its turn), then B
    ],
)
def test_a_key_behind_anothers_burst_waits_about_one_turn(cost_a: float, bound: int) -> None:
    queue = queue_of(DeficitRoundRobin(quantum=30), ("a", 1000, cost_a, 1), ("b", 1, 5, 1))
    keys = [job.key for job in drain(queue, bound)]
    assert "b" in keys, f"B's request was not among the first {bound}: {keys}"


@pytest.mark.parametrize(
    ("weight_a", "weight_b", "cost_a", "cost_b"),
    [
        (1, 1, 5, 5),
        (3, 1, 5, 5),
        (1, 4, 5, 5),
        (1, 1, 60, 5),  # long files against short clips: shared by work, not by count
        (2, 1, 5, 60),
    ],
)
def test_work_is_shared_in_proportion_to_the_weights(
    weight_a: int, weight_b: int, cost_a: float, cost_b: float
) -> None:
    queue = queue_of(DeficitRoundRobin(quantum=30), ("a", 2000, cost_a, weight_a), ("b", 2000, cost_b, weight_b))
    taken = drain(queue, 400)
    work_a = sum(job.cost for job in taken if job.key == "a")
    work_b = sum(job.cost for job in taken if job.key == "b")
    share = weight_a / (weight_a + weight_b)
    assert work_a / (work_a + work_b) == pytest.approx(share, abs=0.03), (work_a, work_b)


def test_fcfs_inside_a_flow() -> None:
    queue = queue_of(DeficitRoundRobin(), ("a", 5, 1, 1), ("b", 5, 1, 1))
    taken = drain(queue, 10)
    for key in "ab":
        orders = [job.order for job in taken if job.key == key]
        assert orders == sorted(orders)


def test_an_idle_key_saves_no_credit() -> None:
    policy: DeficitRoundRobin[Job] = DeficitRoundRobin(quantum=30)
    queue = queue_of(policy, ("a", 1, 1, 1))
    drain(queue, 1)  # A had a turn of 30 and used 1: the rest is dropped with its empty flow
    queue = queue_of(policy, ("b", 100, 5, 1))
    queue.push("a", Job("a", 5, 1000), 1)
    for _ in range(3):
        queue.push("a", Job("a", 5, 1001), 1)
    keys = [job.key for job in drain(queue, 20)]
    assert keys.count("a") == 4
    assert keys.index("a") <= 6


def test_a_huge_request_is_picked_without_spinning() -> None:
    queue = queue_of(DeficitRoundRobin(quantum=1), ("a", 1, 1e9, 1), ("b", 1, 2e9, 1))
    assert [job.key for job in drain(queue, 2)] == ["a", "b"]


def test_heads_the_caller_cannot_place_are_passed_over_and_keep_their_place() -> None:
    for policy in (DeficitRoundRobin[Job](), FirstComeFirstServed[Job]()):
        queue = queue_of(policy, ("a", 2, 1, 1), ("b", 2, 1, 1))
        only_b = queue.pop_next(lambda job: job.key == "b")
        assert only_b is not None
        assert only_b.key == "b"
        assert queue.pop_next(lambda job: False) is None
        assert queue.by_key() == {"a": 2, "b": 1}


def test_removing_a_waiting_item_and_the_longest_flow() -> None:
    queue = queue_of(DeficitRoundRobin(), ("a", 3, 1, 1), ("b", 1, 1, 1))
    longest = queue.longest()
    assert longest is not None
    assert longest.key == "a"
    newest = longest.newest()
    assert queue.remove("a", newest)
    assert not queue.remove("a", newest)  # twice is once
    assert queue.waiting("a") == 2
    assert len(queue) == 3
    assert [job.key for job in drain(queue, 3)].count("a") == 2
