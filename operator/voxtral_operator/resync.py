"""Undo what a watch gap leaves behind in the watch caches.

kopf lists again after a watch breaks (410 Gone, a dropped connection, a restarted API server), but
it never drops from its indexes the objects deleted during the gap: a deleted Service would look
present for ever and never be recreated. Every `resyncSeconds` the operator lists what it watches
(the server-side label selectors keep that to its own objects) and marks the uids the caches still
hold but the server no longer has; the view hides them, and their endpoints are reconciled again.

A kind the cluster does not serve (KEDA's ScaledObject, cert-manager's Certificate without their
CRDs) answers 404: it is noted once and not listed again until its CRD appears (`crd_changed`, from
the operator's watch of CustomResourceDefinitions).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from voxtral_operator.k8s.client import ApiClient, NotFound
from voxtral_operator.k8s.resources import Resource

logger = logging.getLogger(__name__)
Key = tuple[str, str]


class CachedUids(Protocol):
    def cached_uids(self) -> dict[str, Key]:
        """uid -> the endpoint key it belongs to, for every object in the watch caches."""
        ...

    def mark_absent(self, uids: set[str]) -> None: ...


def stale_uids(cached_before: Iterable[str], listed: set[str]) -> set[str]:
    """Pure: uids cached before the listing began that the listing no longer has.

    Objects created while listing are not in `cached_before`, so they are never taken for stale."""
    return {uid for uid in cached_before if uid not in listed}


class Resync:
    def __init__(
        self,
        client: ApiClient,
        view: CachedUids,
        watched: Iterable[tuple[Resource, str | None]],
        namespaces: list[str],
        enqueue: Callable[[Key], None],
        interval: float,
    ) -> None:
        self.client = client
        self.view = view
        self.watched = list(watched)
        self.namespaces = namespaces
        self.enqueue = enqueue
        self.interval = interval
        self._reported: set[str] = set()
        self.unserved: set[Resource] = set()

    def crd_changed(self, crd_name: str, present: bool) -> None:
        """A CustomResourceDefinition (`plural.group`) was added or deleted: list its kind again, or not."""
        for resource, _ in self.watched:
            if f"{resource.plural}.{resource.group}" != crd_name:
                continue
            if present and resource in self.unserved:
                self.unserved.discard(resource)
                logger.info("the cluster now serves %s: listing it again", crd_name)
            elif not present:
                self.unserved.add(resource)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.once()
            except Exception as exc:  # the next round tries again
                logger.warning("resync of the watch caches failed: %s", exc)

    async def once(self) -> set[str]:
        before = self.view.cached_uids()
        listed: set[str] = set()
        for resource, selector in self.watched:
            if resource in self.unserved:
                continue
            namespaces: list[str | None] = list(self.namespaces) or [None]
            for namespace in namespaces:
                try:
                    uids = await self.client.list_uids(resource, namespace, selector)
                except NotFound:  # a kind whose CRD is not installed (KEDA's): nothing of it is cached
                    self.unserved.add(resource)
                    logger.info(
                        "the cluster does not serve %s.%s (no CRD): not listed until its CRD appears",
                        resource.plural,
                        resource.group,
                    )
                    break
                listed.update(uids)
        stale = stale_uids(before, listed)
        self.view.mark_absent(stale)
        # kopf keeps what it missed for good: report and reconcile each stale object once.
        new = stale - self._reported
        self._reported = stale
        if new:
            logger.info("watch caches held %d deleted object(s); reconciling their endpoints", len(new))
            for key in {before[uid] for uid in new}:
                self.enqueue(key)
        return stale
