"""The API server's audit log as the judge of a fault scenario: the operator's writes with their times,
and "settled" as the log defines it (no operator write for a quiet window)."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..conftest import OPERATOR_USER, whole_events_end

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Write:
    at: float  # the API server's stageTimestamp, seconds since the epoch
    verb: str
    resource: str
    namespace: str
    name: str
    code: int
    user_agent: str = ""  # which operator process (peers share one ServiceAccount)
    # When the API server took the request in. A busy server may complete a request a second or more
    # after it was sent, so "who was sending when" (a killed peer, a takeover) is judged by this time.
    received_at: float = 0.0

    def __str__(self) -> str:
        return f"{self.verb} {self.resource} {self.namespace}/{self.name} -> {self.code}"


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class AuditLog:
    def __init__(self, path: Path, user: str = OPERATOR_USER) -> None:
        self.path = path
        self.user = user

    def offset(self) -> int:
        """Where the next whole event starts (see `whole_events_end`)."""
        return whole_events_end(self.path)

    def writes(self, since: int) -> list[Write]:
        """The operator's completed writes from byte offset `since`, refused ones (429, 404...) included."""
        with self.path.open("rb") as log:
            log.seek(since)
            data = log.read()
        found = []
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
                continue
            if (event.get("user") or {}).get("username") != self.user:
                continue
            ref = event.get("objectRef") or {}
            found.append(
                Write(
                    at=_seconds(event["stageTimestamp"]),
                    verb=event["verb"],
                    resource=ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else ""),
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    user_agent=event.get("userAgent", ""),
                    received_at=_seconds(event.get("requestReceivedTimestamp") or event["stageTimestamp"]),
                )
            )
        return found

    def wait_settled(self, since: int, started: float, quiet: float, timeout: float) -> float:
        """Wait until the operator has made no write for `quiet` seconds (by the log's own times) and
        return that moment: its last write from `since` (or `started`, if none) plus `quiet`."""
        deadline = time.time() + timeout
        while True:
            writes = self.writes(since)
            last = max((w.at for w in writes), default=started)
            if time.time() >= last + quiet:
                return last + quiet
            if time.time() >= deadline:
                recent = [str(w) for w in writes if w.at >= last - quiet][-10:]
                raise AssertionError(f"the operator never went {quiet:.0f}s without a write; last: {recent}")
            time.sleep(1.0)
