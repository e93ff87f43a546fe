"""kopf glue: watch caches (indexes) and triggers. No logic lives here.

kopf starts non-indexing handlers only after every index is filled by the initial listing, so a
restarted operator compares against the whole cluster before it could write anything. The caches
of children and pods are the operator's own (children.py); each of those kinds is registered as an
index only so that kopf watches it and waits for its listing.
No on.create/on.update handlers, daemons or timers: those would make kopf store progress
annotations and add finalizers (writes) that a level-triggered design does not need.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from voxtral_operator import cache, events, render
from voxtral_operator.api import models
from voxtral_operator.autoscale.loop import Autoscaler, peering_is_active
from voxtral_operator.children import ChildCache
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import ApiClient, Connection
from voxtral_operator.reconcile import ChildKey, EmptyView, Key, Reconciler
from voxtral_operator.resync import Resync
from voxtral_operator.runtime import STATE

logger = logging.getLogger(__name__)

MANAGED = {render.LABEL_MANAGED_BY: render.MANAGED_BY}
# What the server selects for the operator's watches of children and pods (all carry both labels).
WATCHED_SELECTOR = f"{render.LABEL_MANAGED_BY}={render.MANAGED_BY},{render.LABEL_INSTANCE}"
QUEUE_IDLE_SECONDS = 0.5


def _plain(body: Any) -> dict[str, Any]:
    return {key: body[key] for key in body}


class IndexView:
    """The Reconciler's ClusterView over kopf's indexes (endpoints, namespaces) and the operator's
    own watch caches (children, pods)."""

    def __init__(
        self,
        endpoints: kopf.Index[Any, Any],
        children: ChildCache,
        pods: ChildCache,
        namespaces: kopf.Index[Any, Any],
        gateway_pods: ChildCache,
    ):
        self._gateway_pods = gateway_pods
        self._endpoints = endpoints
        self._children = children
        self._pods = pods
        self._namespaces = namespaces
        # Objects the indexes still hold that the server no longer has (see resync.py).
        self._absent: set[str] = set()

    def _present(self, body: Any) -> bool:
        return not self._absent or _uid(body) not in self._absent

    def endpoint(self, key: Key) -> dict[str, Any] | None:
        for body in self._endpoints.get(key, []):
            if self._present(body):
                return dict(body)
        return None

    def children(self, key: Key) -> dict[ChildKey, dict[str, Any]]:
        found: dict[ChildKey, dict[str, Any]] = {}
        for body in self._children.get(key):
            if self._present(body):
                found[(body["kind"], body["metadata"]["name"])] = body
        return found

    def pods(self, key: Key) -> list[dict[str, Any]]:
        return [pod for pod in self._pods.get(key) if self._present(pod)]

    def gateway_pods(self, key: Key) -> list[dict[str, Any]]:
        return [pod for pod in self._gateway_pods.get(key) if self._present(pod)]

    def endpoint_keys(self) -> list[Key]:
        return [key for key in self._endpoints if self.endpoint(key) is not None]

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        for labels in self._namespaces.get(namespace, []):
            return dict(labels)
        return None

    def cached_uids(self) -> dict[str, Key]:
        uids: dict[str, Key] = self._children.uids() | self._pods.uids() | self._gateway_pods.uids()
        for key in self._endpoints:
            for body in self._endpoints.get(key, []):
                uids[_uid(body)] = key
        return uids

    def mark_absent(self, uids: set[str]) -> None:
        cached = self.cached_uids()
        # Forget marks of objects the indexes have dropped since (their DELETED event came after all).
        self._absent = {uid for uid in self._absent | uids if uid in cached}


def _uid(body: Any) -> str:
    return str(body.get("uid") or body["metadata"]["uid"])


def post_event(endpoint: dict[str, Any], type_: str, reason: str, message: str) -> None:
    # events.k8s.io Events from voxtral-operator with an action, repeats folded into a series.
    events.post(STATE.reconciler.client, endpoint, type_, reason, message)


# --- settings and credentials ---------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The operator posts its own Events (events.py, from voxtral-operator with real actions); kopf's
    # log lines never become Events ("From: kopf", "Action?").
    settings.posting.enabled = False
    # Children and pods are filtered by the API server, not after listing: on a large cluster the
    # operator must never list and cache every Pod (kopf filters handler labels client-side only).
    for resource in (*resources.CHILDREN, resources.PODS):
        settings.watching.label_selectors[resource.group, resource.version, resource.plural] = WATCHED_SELECTOR
    # No settings.watching.chunk_size: kopf fetches the next page only once the previous page's
    # objects are handled, which at thousands of objects outlasts the continue token (410 Gone), and
    # kopf's watcher then fails for good.
    # Ask the server to end each watch now and then; kopf resumes from the last resourceVersion.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.peering.priority = STATE.peering_priority
    # kopf keeps a worker task and a queue for each object until it has had no event for this long
    # (5 s by default); in a burst or a restart's listing, that is one for nearly every watched object.
    settings.queueing.idle_timeout = QUEUE_IDLE_SECONDS


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log kopf in (kubeconfig or in-cluster) and give the operator's API client the same credentials."""
    info: kopf.ConnectionInfo | None = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    connection = Connection.from_kopf(info, user_agent=STATE.user_agent)
    if STATE._reconciler is None:
        client = ApiClient(connection)
        STATE.reconciler = Reconciler(client=client, config=STATE.config, view=EmptyView(), post_event=post_event)
    else:  # the reconciler and the autoscaler share this client
        await STATE.reconciler.client.reconnect(connection)
    return info


@kopf.on.cleanup()
async def close_client(**_: Any) -> None:
    # Everything the operator started stops here: kopf would wait 5 s for tasks it did not start.
    loops = [task for task in (STATE.autoscaler_task, STATE.resync_task) if task is not None]
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    if STATE._reconciler is not None:
        await STATE.reconciler.stop()
        await events.close(STATE.reconciler.client)  # the last events are written before the client goes
        await STATE.reconciler.client.close()


def _reconciler(**indexes: Any) -> Reconciler:
    reconciler = STATE.reconciler
    if not isinstance(reconciler.view, IndexView):
        reconciler.view = IndexView(
            indexes["endpoint_index"],
            STATE.children,
            STATE.pods,
            indexes["namespace_index"],
            STATE.gateway_pods,
        )

        def child_changed(key: Key, kind: str, name: str) -> None:
            reconciler.child_observed(key, kind, name)
            reconciler.enqueue(key)

        STATE.children.on_change = child_changed
        # A replica's pod changed: its readiness and placement are in the status. (A gateway pod's
        # change reaches the status through its Deployment.)
        STATE.pods.on_change = lambda key, kind, name: reconciler.enqueue(key)
        _start_autoscaler(reconciler)
        _start_resync(reconciler, reconciler.view)
    return reconciler


def _start_resync(reconciler: Reconciler, view: IndexView) -> None:
    watched = [(resources.ENDPOINTS, None)] + [(r, WATCHED_SELECTOR) for r in (*resources.CHILDREN, resources.PODS)]
    resync = Resync(
        client=reconciler.client,
        view=view,
        watched=watched,
        namespaces=STATE.namespaces,
        enqueue=reconciler.enqueue,
        interval=STATE.config.resync_seconds,
    )
    STATE.resync = resync
    STATE.resync_task = asyncio.get_running_loop().create_task(resync.run_forever(), name="resync")


def _start_autoscaler(reconciler: Reconciler) -> None:
    """Started from within a handler, so its events post through kopf like the reconciler's."""
    is_active = None
    if STATE.peering_name:
        if STATE.namespaces:
            path = f"/apis/kopf.dev/v1/namespaces/{STATE.namespaces[0]}/kopfpeerings/{STATE.peering_name}"
        else:
            path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{STATE.peering_name}"

        async def is_active() -> bool:
            return await peering_is_active(reconciler.client, path, STATE.peering_priority)

    autoscaler = Autoscaler(
        client=reconciler.client,
        config=STATE.config,
        view=reconciler.view,
        post_event=post_event,
        is_active=is_active,
        serving_sink=reconciler.serving_checked,
        secrets_sink=reconciler.secrets_reported,
    )
    STATE.autoscaler_task = asyncio.get_running_loop().create_task(autoscaler.run_forever(), name="autoscaler")


# --- watch caches -------------------------------------------------------------------------


@kopf.index(models.GROUP, models.VERSION, models.PLURAL)
async def endpoint_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): cache.endpoint(_plain(body))}


async def kept_listed(**_: Any) -> None:
    """Never called: children's and pods' objects stop in the operator's caches (children.py, which
    also trigger the owning endpoint's reconcile). Each kind is registered as an index so that kopf
    watches it and holds every other handler until its listing is over, that is, until the cache is
    full."""


for _resource in (*resources.CHILDREN, resources.PODS):
    kopf.index(
        _resource.group,
        _resource.version,
        _resource.plural,
        id=f"{_resource.plural}_listed",
        labels={**MANAGED, render.LABEL_INSTANCE: kopf.PRESENT},
    )(kept_listed)


# --- triggers -----------------------------------------------------------------------------


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def endpoint_changed(namespace: str, name: str, uid: str, **kwargs: Any) -> None:
    reconciler = _reconciler(**kwargs)
    if kwargs.get("type") == "DELETED":  # events about it not yet written never will be (a namesake is another object)
        events.forget(reconciler.client, namespace, uid)
    reconciler.endpoint_observed((namespace, name))
    reconciler.enqueue((namespace, name))


@kopf.index("", "v1", "namespaces")
async def namespace_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(name: str, **kwargs: Any) -> None:
    """Namespace policies may select by label: a relabelled namespace is a reason to reconcile its endpoints."""
    reconciler = _reconciler(**kwargs)
    if kwargs.get("type") == "DELETED":
        events.forget(reconciler.client, name)
    for key in reconciler.view.endpoint_keys():
        if key[0] == name:
            reconciler.enqueue(key)


# Children whose kinds come from CRDs a cluster may lack (KEDA's, cert-manager's).
OPTIONAL_CRDS = {f"{r.plural}.{r.group}" for r in (resources.SCALED_OBJECTS, resources.CERTIFICATES)}


@kopf.on.event(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=lambda name, **_: name in OPTIONAL_CRDS,
)
async def optional_crd_changed(name: str, type: str | None, **_: Any) -> None:
    """KEDA's or cert-manager's CRD installed or removed: the resync lists its kind again, or stops."""
    if STATE.resync is not None:
        STATE.resync.crd_changed(name, present=type != "DELETED")


@kopf.on.probe(id="endpoints")
async def endpoints_probe(**_: Any) -> int:
    return STATE.reconciler.endpoints_seen
