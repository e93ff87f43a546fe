"""Level-triggered reconciliation: gather (from watch caches) -> decide (pure) -> act (thin API layer).

Every trigger (the endpoint changed, a child or pod changed) only enqueues the endpoint's key.
One worker per key at a time; triggers during a run coalesce into one more run. A reconcile of
an unchanged endpoint reads only in-memory caches and writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import logging
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from voxtral_operator import capacity, coldstart, diffing, logs, metrics, render, status
from voxtral_operator.api.resolve import InvalidSpec, Plan, resolve
from voxtral_operator.config import OperatorConfig
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import FIELD_MANAGER, ApiClient, ApiError, NotFound

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, endpoint name)
ChildKey = tuple[str, str]  # (kind, name)
JSON = dict[str, Any]


class ClusterView(Protocol):
    """What the watch caches know: the endpoint, its children and its pods."""

    def endpoint(self, key: Key) -> JSON | None: ...

    def children(self, key: Key) -> dict[ChildKey, JSON]: ...

    def pods(self, key: Key) -> list[JSON]: ...

    def endpoint_keys(self) -> list[Key]: ...

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels (for namespace policies that select by label), None when unknown."""
        ...


class NamespaceTerminating(Exception):
    """The endpoint's namespace is being deleted: nothing can be created there, and the endpoint goes too."""


class EndpointGone(Exception):
    """The endpoint is no longer on the server, though the watch cache still holds it."""


class ChildRefused(Exception):
    """A child cannot be applied until something outside the operator changes (reported in status)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# NetworkPolicy first: the endpoint serves only once its policy exists (fail closed).
APPLY_ORDER = (
    "NetworkPolicy",
    # The gateway's identity and its key before the pods that use them.
    "Secret",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Certificate",
    "PersistentVolumeClaim",
    "Deployment",
    "Job",
    "DaemonSet",
    "Service",
    "PodDisruptionBudget",
    "ScaledObject",
)
# Created with generated content, never read nor updated (the operator holds only `create` on
# Secrets): the gateway's backend key. See Reconciler._ensure_backend_key.
CREATE_ONLY_KINDS = ("Secret",)
# After the gateway reports its backend-key Secret missing, the operator creates it again; the
# gateway's files follow within the kubelet's sync period, so it asks again no sooner than this.
BACKEND_KEY_RECREATE_SECONDS = 180.0
SERVING_KINDS = ("Deployment", "Service")
# APPLY_ORDER in stages whose children do not need one another: the policy and what the pods use
# (none of which serves anything); then, once the policy is in place, the RoleBinding (the API server
# refuses one whose Role does not exist yet), what serves, and the workloads, whose pods find their
# identity, key and volume in place. The gateway's permissions (the RoleBinding) come with its pods,
# not before them: a pod takes seconds to start, the binding a round trip, and a gateway that still
# finds its watches refused retries them within a second and is not ready until they are read. A
# stage more cost every new endpoint the RoleBinding's time at the server (its escalation check, up
# to a second under load) before its workloads were even sent.
APPLY_STAGES = (
    ("NetworkPolicy", "Secret", "ServiceAccount", "Role", "Certificate", "PersistentVolumeClaim"),
    ("RoleBinding", "Service", "PodDisruptionBudget", "ScaledObject", "Deployment", "Job", "DaemonSet"),
)

# API answers that retrying the same apply cannot change: bad request, forbidden, no such resource
# type (a CRD such as KEDA's is missing), invalid or immutable field.
_REFUSALS = {400, 403, 404, 422}


class EmptyView:
    """The view before the watch caches exist: nothing is known, so nothing is acted on."""

    def endpoint(self, key: Key) -> JSON | None:
        return None

    def children(self, key: Key) -> dict[ChildKey, JSON]:
        return {}

    def pods(self, key: Key) -> list[JSON]:
        return []

    def endpoint_keys(self) -> list[Key]:
        return []

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return None


EventPoster = Callable[[JSON, str, str, str], None]  # (endpoint body, type, reason, message)


def utc_now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _child_key(obj: Mapping[str, Any]) -> ChildKey:
    return (obj["kind"], obj["metadata"]["name"])


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def _status_view(status: Mapping[str, Any], like: Mapping[str, Any]) -> JSON:
    """The part of status that `like` sets, comparable regardless of condition order."""
    view = {k: status.get(k) for k in like if k != "conditions"}
    if "conditions" in like:
        types = {c["type"] for c in like["conditions"]}
        view["conditions"] = {c["type"]: c for c in status.get("conditions") or [] if c.get("type") in types}
    return view


@dataclass
class _Work:
    task: asyncio.Task[None] | None = None
    dirty: bool = False
    failures: int = 0


@dataclass
class Reconciler:
    client: ApiClient
    config: OperatorConfig
    view: ClusterView
    post_event: EventPoster
    clock: Callable[[], str] = utc_now
    concurrency: int = 32
    max_backoff: float = 60.0
    _work: dict[Key, _Work] = field(default_factory=dict)
    # Writes whose watch event has not arrived yet: the caches are behind, not the cluster.
    # Each entry: (what the cache showed when we wrote, when). Any watch event of the object ends it,
    # and so does any change of what the cache shows; entries also expire, in case the event of our
    # write arrived before the entry was made and the object was deleted since. The expiry is long:
    # in a burst of a thousand endpoints the watch events arrive minutes late, and an entry expired
    # before its event came would have the operator apply the same child again and again.
    _pending_children: dict[tuple[Key, ChildKey], tuple[str | None, float]] = field(default_factory=dict)
    _pending_status: dict[Key, tuple[JSON, float]] = field(default_factory=dict)
    pending_ttl: float = 300.0
    # Children this operator deleted (uid -> when), kept through their late watch events.
    _deleted_uids: dict[str, float] = field(default_factory=dict)
    _semaphore: asyncio.Semaphore = field(init=False)
    _phases: dict[Key, str] = field(default_factory=dict)
    # Each endpoint's rendered children, compressed JSON (a tenth of the objects' size in memory).
    _rendered: dict[Key, tuple[str, bytes]] = field(default_factory=dict)
    # Endpoints (by UID) known to be deleted before the cache shows it: their namespace refused a create
    # as being deleted, or their status write answered 404. No later reconcile of them writes until
    # their DELETED event arrives (each child the namespace controller or the garbage collector deletes
    # would otherwise bring the children back, and the two would fight). An endpoint made again under
    # the name has a new UID.
    _known_deleted: dict[Key, str] = field(default_factory=dict)
    # The last active check through each endpoint's Service: (ok, reason, message).
    serving: dict[Key, tuple[bool, str, str]] = field(default_factory=dict)
    # What the endpoint's gateway pods report missing: (Secret name, key or "").
    missing_secrets: dict[Key, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # When this operator last asked to create each endpoint's backend key:
    # (endpoint uid, monotonic time, whether the gateway had reported it missing).
    _backend_key_created: dict[Key, tuple[str | None, float, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.concurrency)

    # --- triggers -------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        work = self._work.setdefault(key, _Work())
        if work.task is not None and not work.task.done():
            work.dirty = True
            return
        work.dirty = False
        work.task = asyncio.get_running_loop().create_task(self._run(key), name=f"reconcile {key[0]}/{key[1]}")

    async def stop(self) -> None:
        """The operator is stopping: reconciles in flight are abandoned, not left to fail on a closed
        client and retry (each write is whole, and the next operator's listing reconciles every endpoint)."""
        running = [work.task for work in self._work.values() if work.task is not None and not work.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def child_observed(self, key: Key, kind: str, name: str) -> None:
        """A child's watch event arrived: the cache is current for it again."""
        self._pending_children.pop((key, (kind, name)), None)

    def endpoint_observed(self, key: Key) -> None:
        self._pending_status.pop(key, None)

    def serving_checked(self, key: Key, result: tuple[bool, str, str]) -> None:
        """A Serving check finished: a changed result is a reason to recompute status."""
        if self.serving.get(key) != result:
            self.serving[key] = result
            self.enqueue(key)

    def secrets_reported(self, key: Key, missing: tuple[tuple[str, str], ...]) -> None:
        """The gateway pods' report of missing Secrets: a change is a reason to reconcile."""
        missing = tuple(sorted(set(missing)))
        if self.missing_secrets.get(key, ()) != missing:
            self.missing_secrets[key] = missing
            self.enqueue(key)

    @property
    def endpoints_seen(self) -> int:
        return len(self._phases)

    def forget(self, key: Key) -> None:
        self.serving.pop(key, None)
        self.missing_secrets.pop(key, None)
        self._backend_key_created.pop(key, None)
        self._phases.pop(key, None)
        self._rendered.pop(key, None)
        self._known_deleted.pop(key, None)
        metrics.GPU_METER.forget(*key)
        self._update_phase_gauge()

    async def _run(self, key: Key) -> None:
        logs.bind_endpoint(key)
        work = self._work[key]
        while True:
            work.dirty = False
            started = time.perf_counter()
            try:
                async with self._semaphore:
                    await self.reconcile(key)
            except Exception as exc:  # never lose the endpoint: retry with backoff
                metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
                metrics.RECONCILES.labels("error").inc()
                work.failures += 1
                if work.failures == 1 and not isinstance(exc, ChildRefused):  # refusals are in status
                    endpoint = self.view.endpoint(key)
                    if endpoint is not None:
                        self.post_event(endpoint, "Warning", "ReconcileFailed", str(exc)[:1000])
                delay = min(self.max_backoff, 0.5 * 2 ** (work.failures - 1))
                logger.warning("reconcile of %s/%s failed (%s); retrying in %.1fs", *key, exc, delay)
                await asyncio.sleep(delay)
                work.dirty = True
                continue
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
            metrics.RECONCILES.labels("ok").inc()
            work.failures = 0
            # Triggers that arrived during the run (there is no await from here to the end).
            if not work.dirty:
                break
        if self.view.endpoint(key) is None:
            self._work.pop(key, None)

    # --- one reconcile --------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        endpoint = self.view.endpoint(key)
        if endpoint is None:
            logs.log_endpoint_gone(key)
            self.forget(key)  # deleted: owner references take the children with it
            return
        meta = endpoint.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        uid = meta.get("uid")
        if uid is not None and self._known_deleted.get(key) == uid:
            return
        generation = meta.get("generation")
        current_status: JSON = dict(endpoint.get("status") or {})
        try:
            plan = resolve(endpoint, self.config, self.view.namespace_labels(key[0]))
        except InvalidSpec as exc:
            message = "; ".join(exc.problems)
            new_status = status.invalid_status(
                generation=generation, previous=current_status, message=message, now=self.clock()
            )
            if await self._write_status(key, current_status, new_status, uid):
                self.post_event(endpoint, "Warning", status.INVALID_SPEC, message)
            return

        live_children = self.view.children(key)
        pods = self.view.pods(key)
        desired = _with_overflow_replicas(self._desired(key, endpoint, plan), plan, live_children, pods)
        warmer = _staging(desired, live_children)
        # Until the cache warmer has staged the weights, the replicas' Deployments are neither created nor
        # changed (a running one keeps serving the model it has); they are still wanted, so never deleted.
        held = warmer is not None and not warmer.staged
        replicas = {("Deployment", plan.name), ("Deployment", render.overflow_name(plan.name))}
        applied = [o for o in desired if not (held and _child_key(o) in replicas)]
        refused: ChildRefused | None = None
        created: list[str] = []
        updated: list[str] = []
        try:
            # The spec is unchanged since status last described it: a new desired object comes from
            # the operator's config (or version), and the log line says so.
            spec_changed = current_status.get("observedGeneration") != generation
            established = current_status.get("observedGeneration") is not None
            created, updated = await self._apply_children(
                key, plan.uid, applied, live_children, spec_changed, established
            )
            await self._delete_stale_children(key, plan.uid, desired, live_children)
        except ChildRefused as exc:
            refused = exc
        except EndpointGone:
            logger.info("%s/%s: deleted on the server, its DELETED event not yet seen; nothing is re-created", *key)
            if uid is not None:
                self._known_deleted[key] = uid
            return
        except NamespaceTerminating:
            # No retry, no status, no Event: the namespace controller is deleting the endpoint too.
            logger.info("%s/%s: the namespace is being deleted; nothing more is written", *key)
            if uid is not None:
                self._known_deleted[key] = uid
            return

        deployment = live_children.get(("Deployment", plan.name))
        backend_key = render.gateway.backend_key_secret_name(plan.name)
        missing = [m for m in self.missing_secrets.get(key, ()) if m[0] != backend_key]  # recreated, not reported
        serving = status.secrets_missing_check(plan.namespace, missing) or self.serving.get(key)
        new_status = status.compute_status(
            generation=generation,
            desired_replicas=plan.spec.desired_replicas,
            deployment=deployment,
            pods=pods,
            previous=current_status,
            url=render.service_url(plan.name, plan.namespace, self.config, tls=plan.spec.gateway.tls is not None),
            selector=render.label_selector_string(plan.name),
            tensor_parallel_size=plan.tensor_parallel_size,
            now=self.clock(),
            serving=serving,
            refused=(refused.reason, refused.message) if refused else None,
            suspended=plan.spec.suspended,
            gateway_ready=_ready_replicas(live_children.get(("Deployment", render.gateway.gateway_name(plan.name))))
            if plan.spec.gateway.enabled
            else None,
            overflow=plan.spec.node_pool.overflow is not None,
        )
        metrics.GPU_METER.held(*key, capacity.gpus_by_pool(pods, plan.tensor_parallel_size), time.monotonic())
        new_status = status.with_exposure(
            new_status,
            previous=current_status,
            gateway=plan.spec.gateway.enabled,
            caller_keys=plan.spec.auth.api_key_secret_ref is not None or bool(plan.spec.auth.api_keys_secret_name),
            generation=generation,
            now=self.clock(),
        )
        new_status = coldstart.with_cold_start(
            new_status,
            previous=current_status,
            spec=plan.spec,
            warmer=warmer,
            pods=pods,
            generation=generation,
            now=self.clock(),
        )
        self._post_change_events(endpoint, created, updated, deployment, plan.spec.desired_replicas)
        old_ready = status.condition_of(current_status, status.READY)
        old_serving = status.condition_of(current_status, status.SERVING) or {}
        if await self._write_status(key, current_status, new_status, uid):
            self._post_condition_events(endpoint, old_ready, status.condition_of(new_status, status.READY))
            new_serving = status.condition_of(new_status, status.SERVING) or {}
            if new_serving.get("reason") == status.SECRET_MISSING and old_serving.get("message") != new_serving.get(
                "message"
            ):
                self.post_event(endpoint, "Warning", status.SECRET_MISSING, str(new_serving.get("message", "")))
            if refused is not None:
                self.post_event(endpoint, "Warning", refused.reason, refused.message)
        if refused is not None:
            raise refused  # retried with backoff: the obstacle may be removed by hand

    def _desired(self, key: Key, endpoint: JSON, plan: Plan) -> list[JSON]:
        """Rendered children, re-rendered only when the spec (or the endpoint's identity) changes:
        most reconciles are triggered by children and pods, not by the spec. Kept compressed:
        a thousand endpoints' rendered objects take about 80 MB as Python objects, 3 MB so, and
        unpacking them costs a few percent of rendering them again."""
        fingerprint = json.dumps([endpoint.get("spec"), plan.uid], sort_keys=True)
        cached = self._rendered.get(key)
        if cached is not None and cached[0] == fingerprint:
            desired: list[JSON] = json.loads(zlib.decompress(cached[1]))
            return desired
        desired = [diffing.with_applied_hash(obj) for obj in render.render_plan(plan, self.config)]
        self._rendered[key] = (fingerprint, zlib.compress(json.dumps(desired).encode(), 1))
        return desired

    async def _apply_children(
        self,
        key: Key,
        uid: str | None,
        desired: list[JSON],
        live_children: Mapping[ChildKey, JSON],
        spec_changed: bool = True,
        established: bool = False,
    ) -> tuple[list[str], list[str]]:
        created: list[str] = []
        updated: list[str] = []
        refusals: list[ChildRefused] = []
        # The look before applying each child missing from the cache (see _apply_child), all at once
        # up front rather than one round trip per stage.
        lookups = {
            _child_key(obj): asyncio.ensure_future(
                self.client.get(resources.BY_KIND[obj["kind"]], key[0], obj["metadata"]["name"])
            )
            for obj in desired
            if obj["kind"] not in CREATE_ONLY_KINDS
            and _child_key(obj) not in live_children
            and not self._is_pending(self._pending_children.get((key, _child_key(obj))), None)
        }
        # A child of an endpoint reconciled before is missing: most often the garbage collector took
        # it because the endpoint was deleted, and the children's events came before the endpoint's.
        # The endpoint itself is looked at with the children, so nothing is made again for it.
        owner = (
            asyncio.ensure_future(self.client.get(resources.ENDPOINTS, key[0], key[1]))
            if lookups and established
            else None
        )

        async def one(obj: JSON) -> str | None:
            if obj["kind"] in CREATE_ONLY_KINDS:
                return await self._ensure_backend_key(key, uid, obj, live_children)
            child = _child_key(obj)
            return await self._apply_child(key, uid, obj, live_children.get(child), spec_changed, lookups.get(child))

        try:
            if owner is not None:
                found = await owner
                if found is None or (uid is not None and found.get("metadata", {}).get("uid") != uid):
                    raise EndpointGone(f"{key[0]}/{key[1]}")
            await self._apply_stages(desired, live_children, one, refusals, created, updated)
        finally:
            pending = [*lookups.values(), *([owner] if owner is not None else [])]
            for lookup in pending:
                lookup.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if refusals:
            reasons = sorted({r.reason for r in refusals}, key=lambda r: r == "NetworkPolicyMissing")
            raise ChildRefused(reasons[0], "; ".join(r.message for r in refusals))
        return created, updated

    async def _apply_stages(
        self,
        desired: list[JSON],
        live_children: Mapping[ChildKey, JSON],
        one: Callable[[JSON], Awaitable[str | None]],
        refusals: list[ChildRefused],
        created: list[str],
        updated: list[str],
    ) -> None:
        # Fail closed: nothing serves until the endpoint's NetworkPolicy exists.
        policy_in_place = not any(obj["kind"] == "NetworkPolicy" for obj in desired)
        # The children of one stage are applied together (one round trip for all), stage after stage.
        for stage in APPLY_STAGES:
            batch = sorted((o for o in desired if o["kind"] in stage), key=lambda o: APPLY_ORDER.index(o["kind"]))
            if not policy_in_place:
                for obj in [o for o in batch if o["kind"] in SERVING_KINDS]:
                    refusals.append(
                        ChildRefused(
                            "NetworkPolicyMissing",
                            f"{obj['kind']} {obj['metadata']['name']} waits for the NetworkPolicy",
                        )
                    )
                    batch.remove(obj)
            outcomes = await asyncio.gather(*(one(obj) for obj in batch), return_exceptions=True)
            failure = next(
                (o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ChildRefused)), None
            )
            if failure is not None:
                raise failure
            for obj, outcome in zip(batch, outcomes, strict=True):
                child = _child_key(obj)
                if isinstance(outcome, ChildRefused):
                    refusals.append(outcome)  # one refused child never holds up the others
                    continue
                if child[0] == "NetworkPolicy":
                    policy_in_place = outcome is not None or child in live_children
                if outcome == "created":
                    created.append(f"{child[0]}/{child[1]}")
                elif outcome == "updated":
                    updated.append(f"{child[0]}/{child[1]}")

    async def _ensure_backend_key(
        self, key: Key, uid: str | None, obj: JSON, live_children: Mapping[ChildKey, JSON]
    ) -> str | None:
        """Create the gateway's backend-key Secret with a random key, without ever reading it.

        Asked for when this operator has not created it for this endpoint and the gateway Deployment
        (applied after it) does not exist yet, or when the gateway pods report it missing (deleted;
        then again at most every BACKEND_KEY_RECREATE_SECONDS). 409 means it exists: kept as it is,
        whoever made it. So a reconcile of an unchanged endpoint sends nothing, also after a restart."""
        name = obj["metadata"]["name"]
        reported_missing = any(secret == name for secret, _ in self.missing_secrets.get(key, ()))
        gateway = live_children.get(("Deployment", render.gateway.gateway_name(key[1])))
        last = self._backend_key_created.get(key)  # (uid, when, asked for because reported missing)
        ours = last is not None and last[0] == uid
        if reported_missing:
            if ours and last is not None and last[2] and time.monotonic() - last[1] < BACKEND_KEY_RECREATE_SECONDS:
                return None  # asked already: the gateway's files have not caught up yet
        elif ours or (gateway is not None and _owned_by(gateway, uid)):
            return None  # created before the gateway was, by this operator or an earlier one
        value = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
        body = {**obj, "data": {render.gateway.BACKEND_KEY: value}}
        body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "annotations"}
        # Recorded once the server has answered that it exists: a create that failed (the API server
        # restarting mid-request) is sent again by the retry, not taken as made.
        made = (uid, time.monotonic(), reported_missing)
        try:
            await self.client.create(resources.SECRETS, key[0], body)
        except ApiError as exc:
            if exc.status == 409:
                self._backend_key_created[key] = made
                return None
            if exc.status not in _REFUSALS:
                raise
            logs.log_child_change(key, "refused", "Secret", name, f"{exc.status} {exc.reason}: {exc.message}")
            raise ChildRefused("ApplyRejected", f"Secret {name}: {exc.status} {exc.reason}: {exc.message}") from exc
        self._backend_key_created[key] = made
        why = "the gateway reported it missing" if reported_missing else "the gateway's backend key"
        logs.log_child_change(key, "created", "Secret", name, why)
        return "created"

    async def _apply_child(
        self,
        key: Key,
        uid: str | None,
        obj: JSON,
        live: JSON | None,
        spec_changed: bool = True,
        lookup: Awaitable[JSON | None] | None = None,
    ) -> str | None:
        """Apply one child if it drifted: "created", "updated", or when nothing was needed None (the
        cache shows it as applied) or "unchanged" (the cache lacks it, the server has it as applied)."""
        child: ChildKey = (obj["kind"], obj["metadata"]["name"])
        why = diffing.drift(obj, live, FIELD_MANAGER)
        if not why:
            return None
        live_version = (live or {}).get("metadata", {}).get("resourceVersion")
        pending = (key, child)
        if self._is_pending(self._pending_children.get(pending), live_version):
            return None  # our last write has not reached the cache yet
        resource = resources.BY_KIND[obj["kind"]]
        if live is None:
            # Not in the cache: look before applying, so an object someone else made under
            # this name is never silently taken over (it may also be ours with its labels edited).
            live = await (lookup or self.client.get(resource, key[0], child[1]))
            if live is not None and _owned_by(live, uid) and not diffing.drift(obj, live, FIELD_MANAGER):
                # Ours and as applied: the watch cache is behind (its event is still queued), not the cluster.
                self._pending_children[pending] = (live_version, time.monotonic())
                return "unchanged"
        if live is not None and not _owned_by(live, uid):
            logs.log_child_change(key, "refused", *child, "exists and is not owned by this endpoint")
            raise ChildRefused(
                "NameConflict",
                f"{child[0]} {child[1]} exists and is not owned by this endpoint; it is left untouched: "
                "remove it or rename the endpoint",
            )
        # Create and update alike by server-side apply, so one field manager owns every field
        # and fields the spec stops setting are removed.
        try:
            await self.client.apply(resource, obj)
        except ApiError as exc:
            if exc.status not in _REFUSALS:
                raise
            if exc.status == 403 and "being terminated" in exc.message:
                raise NamespaceTerminating(exc.message) from exc
            if exc.status == 404 and f'namespaces "{key[0]}" not found' in exc.message:
                raise NamespaceTerminating(exc.message) from exc  # already gone: the endpoint went with it
            message = f"{child[0]} {child[1]}: {exc.status} {exc.reason}: {exc.message}"
            logs.log_child_change(key, "refused", *child, f"{exc.status} {exc.reason}: {exc.message}")
            unserved = ("could not find the requested resource", "page not found")
            if exc.status == 404 and any(words in exc.message for words in unserved):
                # The API server's words for a type (or a whole group) it does not serve, not a missing object.
                message = (
                    f"{child[0]} {child[1]}: this cluster does not serve {resource.plural}.{resource.group}; "
                    "install its CRDs or change the spec that asks for it"
                )
                raise ChildRefused("CustomResourceMissing", message) from exc
            raise ChildRefused("ApplyRejected", message) from exc
        self._pending_children[pending] = (live_version, time.monotonic())
        logger.debug("%s/%s: applying %s %s: %s", *key, *child, ", ".join(why[:5]))
        logs.log_child_change(
            key, "created" if live is None else "updated", *child, logs.change_reason(obj, live, spec_changed)
        )
        return "created" if live is None else "updated"

    async def _delete_stale_children(
        self, key: Key, uid: str | None, desired: list[JSON], live_children: Mapping[ChildKey, JSON]
    ) -> None:
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
        for child, live in live_children.items():
            if child in wanted or not _owned_by(live, uid):
                continue
            live_version, live_uid = live["metadata"].get("resourceVersion"), live["metadata"].get("uid")
            if self._is_pending(self._pending_children.get((key, child)), live_version):
                continue  # deleted already; the cache has not heard yet
            if live["metadata"].get("deletionTimestamp") or self._deleted_recently(live_uid):
                # Its deletion is under way: an event from before the delete (a status write, a
                # finalizer's) can arrive after it and show the object still there.
                continue
            await self.client.delete(resources.BY_KIND[child[0]], key[0], child[1], live_uid)
            logs.log_child_change(key, "deleted", *child, "the spec no longer asks for it")
            self._pending_children[(key, child)] = (live_version, time.monotonic())
            self._remember_deleted(live_uid)

    def _deleted_recently(self, uid: str | None) -> bool:
        at = self._deleted_uids.get(uid) if uid else None
        return at is not None and time.monotonic() - at < self.pending_ttl

    def _remember_deleted(self, uid: str | None) -> None:
        if not uid:
            return
        now = time.monotonic()
        for old in [u for u, at in self._deleted_uids.items() if now - at >= self.pending_ttl]:
            del self._deleted_uids[old]
        self._deleted_uids[uid] = now

    def _is_pending(self, entry: tuple[Any, float] | None, value: Any) -> bool:
        return entry is not None and entry[0] == value and time.monotonic() - entry[1] < self.pending_ttl

    async def _write_status(self, key: Key, current: JSON, new: JSON, uid: str | None = None) -> bool:
        """Write status only when it differs from what is there (or what was just written)."""
        self._record_phase(key, new.get("phase"))
        if _status_view(current, new) == _status_view(new, new) or self._is_pending(self._pending_status.get(key), new):
            return False
        namespace, name = key
        # Applied under the operator's field manager: the autoscaler's fields and other writers'
        # conditions (conditions is a map keyed by type) are left as they are.
        try:
            await self.client.apply_status(resources.ENDPOINTS, namespace, name, new, FIELD_MANAGER)
        except NotFound:
            if uid is not None:  # deleted while this reconcile ran: its DELETED event is on the way
                logger.info("%s/%s: deleted (its status answered 404); nothing more is written", *key)
                self._known_deleted[key] = uid
            return False
        ready = status.condition_of(new, status.READY) or {}
        logs.log_phase_change(
            key, current.get("phase"), new.get("phase"), ready.get("reason", ""), ready.get("message", "")
        )
        self._pending_status[key] = (new, time.monotonic())
        return True

    def _record_phase(self, key: Key, phase: str | None) -> None:
        if phase and self._phases.get(key) != phase:
            self._phases[key] = phase
            self._update_phase_gauge()

    def _update_phase_gauge(self) -> None:
        counts: dict[str, int] = {}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase in ("Pending", "Loading", "Ready", "Degraded", "Failed"):
            metrics.ENDPOINTS_BY_PHASE.labels(phase).set(counts.get(phase, 0))

    # --- events ---------------------------------------------------------------------------

    def _post_change_events(
        self,
        endpoint: JSON,
        created: list[str],
        updated: list[str],
        deployment: JSON | None,
        desired_replicas: int,
    ) -> None:
        if created:
            self.post_event(endpoint, "Normal", "Created", "created " + ", ".join(created))
        if updated:
            self.post_event(endpoint, "Normal", "Updated", "updated " + ", ".join(updated))
        live_replicas = ((deployment or {}).get("spec") or {}).get("replicas")
        if deployment is not None and live_replicas is not None and live_replicas != desired_replicas:
            self.post_event(endpoint, "Normal", "Scaled", f"replicas {live_replicas} -> {desired_replicas}")

    def _post_condition_events(self, endpoint: JSON, old: JSON | None, new: JSON | None) -> None:
        if new is None or (old is not None and old.get("reason") == new.get("reason")):
            return
        if new.get("reason") in (*status.FAILURE_REASONS, coldstart.STAGING_FAILED):
            self.post_event(endpoint, "Warning", str(new["reason"]), str(new.get("message", "")))
        elif new.get("status") == "True" and (old is None or old.get("status") != "True"):
            self.post_event(endpoint, "Normal", "Ready", str(new.get("message", "")))


def _with_overflow_replicas(
    desired: list[JSON], plan: Plan, live_children: Mapping[ChildKey, JSON], pods: list[JSON]
) -> list[JSON]:
    """The overflow Deployment as rendered, with the replicas the reserved pods call for now
    (capacity.overflow_replicas): the one child whose content follows the pods, not the spec."""
    overflow = plan.spec.node_pool.overflow
    if overflow is None:
        return desired
    name = render.overflow_name(plan.name)
    live = live_children.get(("Deployment", name))
    current = int(((live or {}).get("spec") or {}).get("replicas") or 0)
    replicas = capacity.overflow_replicas(
        desired=plan.spec.desired_replicas, pods=pods, current=current, cap=overflow.max_replicas
    )
    result = []
    for obj in desired:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == name:
            obj = copy.deepcopy(obj)
            del obj["metadata"]["annotations"][diffing.APPLIED_HASH_ANNOTATION]
            if not obj["metadata"]["annotations"]:
                del obj["metadata"]["annotations"]
            obj["spec"]["replicas"] = replicas
            obj = diffing.with_applied_hash(obj)
        result.append(obj)
    return result


def _staging(desired: list[JSON], live_children: Mapping[ChildKey, JSON]) -> coldstart.Staging | None:
    """The cache warmer's state when the endpoint has one (coldStart.prestageWeights), else None."""
    job = next((o for o in desired if o["kind"] == "Job"), None)
    if job is None:
        return None
    name = job["metadata"]["name"]
    return coldstart.staging(name, live_children.get(("Job", name)))


def _ready_replicas(deployment: JSON | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
