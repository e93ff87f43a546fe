"""kopf's start-up gate made linear in the watched objects (kopf 1.45's `ToggleSet`, counted).

During its initial listing kopf keeps one toggle per listed object in a `ToggleSet(all)` (the
"operator indexed" gate) and every object's worker waits on the set's one condition until all are
dropped. The stock set re-evaluates every toggle (`all(...)` over the whole set) for every waiter at
every drop, and its watcher evaluates it again for each new object: with 16,000 watched objects a
restarted operator spent minutes of CPU before its first reconcile. This set keeps a count of the
toggles that are on, so its state is O(1), and wakes its waiters only when that state changes.
Behaviour is otherwise kopf's: the same toggles, the same condition, the same semantics of `any`
and `all`. `install()` puts it in place of kopf's class before `kopf.operator()` builds its sets
(kopf creates them as `aiotoggles.ToggleSet(...)`, looked up at call time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from kopf._cogs.aiokits import aiotoggles

STOCK_TOGGLE_SET = aiotoggles.ToggleSet


class CountedToggle(aiotoggles.Toggle):
    """A toggle of a `CountedToggleSet`: tells its set when it turns."""

    def __init__(self, state: bool, *, name: str | None, condition: asyncio.Condition, owner: CountedToggleSet):
        super().__init__(state, name=name, condition=condition)
        self._owner = owner

    async def turn_to(self, __state: bool) -> None:
        async with self._condition:
            state = bool(__state)
            if state != self._state and self in self._owner:
                self._owner._on += 1 if state else -1
            self._state = state
            self._condition.notify_all()


class CountedToggleSet(aiotoggles.ToggleSet):
    """`ToggleSet` for `any` and `all` with its state counted, not recomputed over every toggle."""

    def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
        if fn not in (any, all):
            raise ValueError(f"only any and all are counted, not {fn!r}")
        super().__init__(fn)
        self._on = 0

    def is_on(self) -> bool:
        if self._fn is all:
            return self._on == len(self._toggles)
        return self._on > 0

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
        toggle = CountedToggle(bool(__val), name=name, condition=self._condition, owner=self)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            self._on += toggle.is_on()
            self._notify_if_changed(before)
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            before = self.is_on()
            for toggle in toggles:
                if toggle in self._toggles:
                    self._toggles.discard(toggle)
                    self._on -= toggle.is_on()
            self._notify_if_changed(before)

    def _notify_if_changed(self, before: bool) -> None:
        # The set's waiters wait for its state; a toggle's own waiters for the toggle's (turn_to).
        if self.is_on() != before:
            self._condition.notify_all()


def install() -> None:
    """kopf's sets built from now on are counted ones (idempotent)."""
    aiotoggles.ToggleSet = CountedToggleSet  # type: ignore[misc]
