"""Process-wide state the kopf handlers share: set once by the runner and the login handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voxtral_operator.children import ChildCache
from voxtral_operator.config import OperatorConfig

if TYPE_CHECKING:
    from voxtral_operator.reconcile import Reconciler
    from voxtral_operator.resync import Resync


@dataclass
class OperatorState:
    config: OperatorConfig = field(default_factory=OperatorConfig)
    peering_priority: int = 0
    peering_name: str | None = None
    # This process among its peers (its peering identity), and its API requests' User-Agent, which
    # carries that identity so the audit log tells peers apart (they share one ServiceAccount).
    identity: str = ""
    user_agent: str | None = None
    namespaces: list[str] = field(default_factory=list)
    # The watch caches of children, replicas' pods and gateway pods (children.py), filled by the
    # watch streams from the first listing on.
    children: ChildCache = field(default_factory=ChildCache)
    pods: ChildCache = field(default_factory=ChildCache)
    gateway_pods: ChildCache = field(default_factory=ChildCache)
    autoscaler_task: asyncio.Task[None] | None = None
    resync_task: asyncio.Task[None] | None = None
    resync: Resync | None = None
    _reconciler: Reconciler | None = None

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            raise RuntimeError("the operator has not logged in to the API server yet")
        return self._reconciler

    @reconciler.setter
    def reconciler(self, value: Reconciler) -> None:
        self._reconciler = value


STATE = OperatorState()
