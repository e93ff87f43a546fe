"""The gateway's queue as flows, one per caller key, and the fairness between them. No I/O.

Each flow is first come first served inside; when a replica has room, a fairness policy picks the
flow whose head goes next. `DeficitRoundRobin` shares dispatch between the waiting keys in
proportion to their weights, counted in estimated work (so one key's burst of long files cannot
starve another key's short clips); `FirstComeFirstServed` ignores keys (one FIFO queue, the
baseline).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Item(Protocol):
    """What a flow holds: its estimated work and its place in arrival order."""

    @property
    def cost(self) -> float: ...

    @property
    def order(self) -> int: ...


T = TypeVar("T", bound=Item)


class Flow(Generic[T]):
    """One key's waiting requests, oldest first."""

    def __init__(self, key: str, weight: float = 1.0) -> None:
        self.key = key
        self.weight = weight
        self._items: collections.OrderedDict[T, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def head(self) -> T:
        return next(iter(self._items))

    def newest(self) -> T:
        return next(reversed(self._items))

    def append(self, item: T) -> None:
        self._items[item] = None

    def discard(self, item: T) -> bool:
        """Remove the item; False when it was not here."""
        if item not in self._items:
            return False
        del self._items[item]
        return True


class FairnessPolicy(Protocol[T]):
    """Which non-empty flow dispatches next; told about flows that fill, empty and get served."""

    def activate(self, flow: Flow[T]) -> None: ...

    def deactivate(self, flow: Flow[T]) -> None: ...

    def pick(self, eligible: Callable[[T], bool]) -> Flow[T] | None: ...

    def charge(self, flow: Flow[T], cost: float) -> None: ...


class FirstComeFirstServed(Generic[T]):
    """The oldest head among the flows: one FIFO queue across keys."""

    def __init__(self) -> None:
        self._active: dict[str, Flow[T]] = {}

    def activate(self, flow: Flow[T]) -> None:
        self._active[flow.key] = flow

    def deactivate(self, flow: Flow[T]) -> None:
        self._active.pop(flow.key, None)

    def pick(self, eligible: Callable[[T], bool]) -> Flow[T] | None:
        heads = [flow for flow in self._active.values() if eligible(flow.head())]
        return min(heads, key=lambda flow: flow.head().order, default=None)

    def charge(self, flow: Flow[T], cost: float) -> None:
        pass


class DeficitRoundRobin(Generic[T]):
    """Weighted deficit round robin over estimated work.

    The flows take turns; a flow's turn adds `quantum x weight` work-seconds to its deficit, and it
    dispatches heads while the head's cost fits the deficit. Over time each waiting key gets
    dispatched work in proportion to its weight, whatever the size of its requests; a key that
    arrives behind another's burst waits at most about one turn of every other flow.
    """

    def __init__(self, quantum: float = 30.0) -> None:
        self.quantum = quantum
        self._rotation: collections.deque[Flow[T]] = collections.deque()
        self._deficit: dict[str, float] = {}
        self._turn_started = False  # the front flow already got this turn's quantum

    def activate(self, flow: Flow[T]) -> None:
        if flow.key not in self._deficit:
            self._deficit[flow.key] = 0.0
            self._rotation.append(flow)

    def deactivate(self, flow: Flow[T]) -> None:
        # An emptied flow keeps no credit: a key cannot save up turns while idle.
        if self._deficit.pop(flow.key, None) is None:
            return
        if self._rotation and self._rotation[0] is flow:
            self._turn_started = False
        self._rotation.remove(flow)

    def _share(self, flow: Flow[T]) -> float:
        return self.quantum * max(flow.weight, 1e-9)

    def pick(self, eligible: Callable[[T], bool]) -> Flow[T] | None:
        candidates = [flow for flow in self._rotation if eligible(flow.head())]
        if not candidates:
            return None
        # Whole rounds in which no head would fit are skipped in one step (a 40-minute file must
        # not cost thousands of turns); then one more pass finds the flow.
        rounds = min(math.ceil((flow.head().cost - self._deficit[flow.key]) / self._share(flow)) for flow in candidates)
        if rounds > 1:
            for flow in candidates:
                self._deficit[flow.key] += (rounds - 1) * self._share(flow)
        for _ in range(2 * len(self._rotation) + 2):
            flow = self._rotation[0]
            if eligible(flow.head()):
                if not self._turn_started:
                    self._deficit[flow.key] += self._share(flow)
                    self._turn_started = True
                if flow.head().cost <= self._deficit[flow.key]:
                    return flow
            self._rotation.rotate(-1)
            self._turn_started = False
        return candidates[0]  # not reached: the skip above leaves a head that fits within one pass

    def charge(self, flow: Flow[T], cost: float) -> None:
        if flow.key in self._deficit:
            self._deficit[flow.key] -= cost


class FlowQueue(Generic[T]):
    """The waiting requests, as flows per key, with a fairness policy between them."""

    def __init__(self, policy: FairnessPolicy[T]) -> None:
        self.policy = policy
        self._flows: dict[str, Flow[T]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for flow in list(self._flows.values()):
            yield from list(flow)

    def waiting(self, key: str) -> int:
        flow = self._flows.get(key)
        return len(flow) if flow is not None else 0

    def by_key(self) -> dict[str, int]:
        return {key: len(flow) for key, flow in self._flows.items()}

    def longest(self) -> Flow[T] | None:
        return max(self._flows.values(), key=len, default=None)

    def push(self, key: str, item: T, weight: float = 1.0) -> None:
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = Flow(key, weight)
            self.policy.activate(flow)
        flow.weight = weight
        flow.append(item)
        self._size += 1

    def remove(self, key: str, item: T) -> bool:
        flow = self._flows.get(key)
        if flow is None or not flow.discard(item):
            return False
        self._size -= 1
        if not flow:
            self.policy.deactivate(flow)
            del self._flows[key]
        return True

    def pop_next(self, eligible: Callable[[T], bool]) -> T | None:
        """The next item the policy picks among heads `eligible` accepts (removed), or None."""
        flow = self.policy.pick(eligible)
        if flow is None:
            return None
        item = flow.head()
        self.policy.charge(flow, item.cost)
        self.remove(flow.key, item)
        return item
