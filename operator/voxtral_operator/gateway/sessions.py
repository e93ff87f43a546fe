"""Admission of realtime sessions to replicas, by open sessions. No I/O.

A realtime session holds one of a replica's engine slots for its whole life (one streaming request),
so a replica admits at most `per_replica` sessions from this gateway pod (the operator sets it from
the model's per-session memory, divided among the gateway pods). A session goes to the replica with
the fewest open sessions (ties: the address), and stays there. A replica that leaves the ready set
(scale-down, rollout, node drain) takes no new session; its open ones are drained by the caller of
`set_replicas`, which learns which replicas just left. Newcomers that find no room are held, first
come first served: `admit(ticket)` places only the oldest held ticket.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field


class Wait(enum.Enum):
    """Why a session cannot be placed now."""

    NO_REPLICA = "no_replica"  # none ready: the endpoint is at zero or starting
    FULL = "full"  # every ready replica has its sessions


@dataclass
class ReplicaSessions:
    address: str
    open: int = 0
    leaving: bool = False  # left the ready set: no new session; its open ones drain


@dataclass
class Admission:
    per_replica: int
    replicas: dict[str, ReplicaSessions] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)  # tickets in arrival order
    _tickets: itertools.count[int] = field(default_factory=itertools.count)

    def set_replicas(self, addresses: Iterable[str]) -> list[str]:
        """The ready replicas now; returns those that just left with sessions still open (to drain)."""
        wanted = set(addresses)
        left = []
        for address, replica in list(self.replicas.items()):
            if address in wanted:
                replica.leaving = False  # ready again (a flapping readiness probe) before its drain ended
            elif not replica.leaving:
                if replica.open:
                    replica.leaving = True
                    left.append(address)
                else:
                    del self.replicas[address]
        for address in wanted:
            self.replicas.setdefault(address, ReplicaSessions(address))
        return sorted(left)

    def choose(self, exclude: frozenset[str] = frozenset()) -> str | Wait:
        """The replica a new session goes to, or why there is none."""
        ready = [r for r in self.replicas.values() if not r.leaving and r.address not in exclude]
        if not ready:
            return Wait.NO_REPLICA
        best = min(ready, key=lambda r: (r.open, r.address))
        return best.address if best.open < self.per_replica else Wait.FULL

    def hold(self) -> int:
        """A ticket for a newcomer; it waits behind every older one."""
        ticket = next(self._tickets)
        self.held.append(ticket)
        return ticket

    def admit(self, ticket: int | None = None, exclude: frozenset[str] = frozenset()) -> str | Wait:
        """Place a session (a held one only when its ticket is the oldest) and count it open."""
        if ticket is not None and self.held and self.held[0] != ticket:
            found = self.choose(exclude)
            return found if isinstance(found, Wait) else Wait.FULL  # an older session goes first
        if ticket is None and self.held:
            return Wait.FULL if self.replicas else Wait.NO_REPLICA
        found = self.choose(exclude)
        if isinstance(found, str):
            self.replicas[found].open += 1
            if ticket is not None:
                self.held.remove(ticket)
        return found

    def unhold(self, ticket: int) -> None:
        if ticket in self.held:
            self.held.remove(ticket)

    def close(self, address: str) -> None:
        """A session on `address` ended; a left replica is forgotten with its last session."""
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.open = max(0, replica.open - 1)
        if replica.leaving and not replica.open:
            del self.replicas[address]

    @property
    def open(self) -> int:
        return sum(r.open for r in self.replicas.values())

    def open_by_replica(self) -> dict[str, int]:
        return {address: r.open for address, r in sorted(self.replicas.items())}
