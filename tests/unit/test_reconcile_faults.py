"""The reconciler under faults the API server reports: a namespace being deleted under an endpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from voxtral_operator.config import OperatorConfig
from voxtral_operator.k8s.client import ApiClient, ApiError, Connection, NotFound
from voxtral_operator.reconcile import ChildKey, ChildRefused, EmptyView, Key, Reconciler

ROOT = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]


class TerminatingNamespace(ApiClient):
    """Every create in the namespace is refused as the API server refuses it while the namespace is
    deleted, or (gone) once it has been deleted."""

    def __init__(self, gone: bool = False) -> None:
        super().__init__(Connection(server="http://api.invalid"), attempts=1)
        self.writes: list[str] = []
        self.gone = gone

    async def request(self, method: str, path: str, **_: Any) -> JSON:
        if method == "GET":
            raise NotFound(404, "NotFound", "not found")
        self.writes.append(f"{method} {path}")
        if self.gone:
            raise NotFound(404, "NotFound", 'namespaces "speech" not found')
        raise ApiError(
            403,
            "Forbidden",
            f"{path.rsplit('/', 2)[-2]} is forbidden: unable to create new content in namespace speech "
            "because it is being terminated",
        )


class OneEndpoint(EmptyView):
    def __init__(self, endpoint: JSON) -> None:
        self.body = endpoint

    def endpoint(self, key: Key) -> JSON | None:
        return self.body

    def children(self, key: Key) -> dict[ChildKey, JSON]:
        return {}

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return {}


@pytest.mark.parametrize("gone", [False, True], ids=["terminating", "gone"])
async def test_a_terminating_namespace_ends_the_reconcile_with_no_retry_status_or_event(gone: bool) -> None:
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    client, posted = TerminatingNamespace(gone), []
    reconciler = Reconciler(
        client=client,
        config=OperatorConfig(),
        view=OneEndpoint(endpoint),
        post_event=lambda *event: posted.append(event),
    )
    await reconciler.reconcile(("speech", "voxtral-mini"))  # returns: nothing to retry
    # The first stage's refused writes (sent together), then nothing: no workload, no status write.
    assert any("/networkpolicies/" in write for write in client.writes), client.writes
    later = [w for w in client.writes if any(part in w for part in ("/deployments/", "/services/", "/status"))]
    assert not later, client.writes
    assert not posted
    # Reconciled again (a resync, or a child the namespace controller deleted): no write at all.
    refused = len(client.writes)
    for _ in range(3):
        await reconciler.reconcile(("speech", "voxtral-mini"))
    assert len(client.writes) == refused, client.writes[refused:]
    # An endpoint of the same name in a namespace made again under the name (a new UID) is reconciled.
    endpoint["metadata"]["uid"] = "u-2"
    await reconciler.reconcile(("speech", "voxtral-mini"))
    assert len(client.writes) > refused


class Recording(ApiClient):
    """Applies succeed and are kept; a GET answers what was applied there (404 before)."""

    def __init__(self, applied: dict[str, JSON] | None = None) -> None:
        super().__init__(Connection(server="http://api.invalid"), attempts=1)
        self.applied = applied if applied is not None else {}
        self.writes: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        if method == "GET":
            if path not in self.applied:
                raise NotFound(404, "NotFound", "not found")
            return self.applied[path]
        self.writes.append(f"{method} {path}")
        if method == "PATCH" and not path.endswith("/status"):
            self.applied[path] = kwargs["body"]
        return {}


async def test_a_child_the_watch_cache_has_not_seen_yet_is_not_applied_again_when_the_server_has_it_as_applied() -> (
    None
):
    """In a burst the watch events arrive minutes late: a child missing from the cache that the
    server has, owned and as applied, is left alone (one look, no write)."""
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    first = Recording()
    await Reconciler(
        client=first, config=OperatorConfig(), view=OneEndpoint(endpoint), post_event=lambda *_: None
    ).reconcile(("speech", "voxtral-mini"))
    assert any("/deployments/" in write for write in first.writes), first.writes

    again = Recording(first.applied)
    await Reconciler(
        client=again, config=OperatorConfig(), view=OneEndpoint(endpoint), post_event=lambda *_: None
    ).reconcile(("speech", "voxtral-mini"))
    children = [w for w in again.writes if w.startswith("PATCH") and not w.endswith("/status")]
    assert not children, again.writes


class WithStaleClaim(OneEndpoint):
    """The endpoint, what it applied (as the watch would show it), and a cache volume claim of its own
    the spec no longer asks for."""

    def __init__(self, endpoint: JSON, client: Recording) -> None:
        super().__init__(endpoint)
        self.client = client
        self.claim: JSON = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "voxtral-mini-model-cache",
                "namespace": "speech",
                "uid": "claim-1",
                "resourceVersion": "10",
                "ownerReferences": [
                    {"kind": "VoxtralEndpoint", "name": "voxtral-mini", "uid": "u-1", "controller": True}
                ],
            },
        }

    def children(self, key: Key) -> dict[ChildKey, JSON]:
        applied = {(body["kind"], body["metadata"]["name"]): body for body in self.client.applied.values()}
        return {**applied, ("PersistentVolumeClaim", self.claim["metadata"]["name"]): self.claim}


async def test_a_deleted_child_is_not_deleted_again_when_an_older_event_of_it_arrives_late() -> None:
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    client = Recording()
    view = WithStaleClaim(endpoint, client)
    reconciler = Reconciler(client=client, config=OperatorConfig(), view=view, post_event=lambda *_: None)
    key = ("speech", "voxtral-mini")
    for _ in range(4):  # a stage at a time, as the watch shows each applied
        with contextlib.suppress(ChildRefused):
            await reconciler.reconcile(key)
    deletes = [w for w in client.writes if w.startswith("DELETE")]
    assert len(deletes) == 1, client.writes
    assert "persistentvolumeclaims" in deletes[0], client.writes
    # The claim's status write from before the delete arrives now: the cache shows it, newer, still there.
    view.claim["metadata"]["resourceVersion"] = "11"
    reconciler.child_observed(key, "PersistentVolumeClaim", view.claim["metadata"]["name"])
    with contextlib.suppress(ChildRefused):
        await reconciler.reconcile(key)
    assert [w for w in client.writes if w.startswith("DELETE")] == deletes, client.writes


class DeletedEndpoint(ApiClient):
    """The endpoint was deleted a moment ago: its children are still written (the garbage collector
    removes them later), its status answers 404."""

    def __init__(self) -> None:
        super().__init__(Connection(server="http://api.invalid"), attempts=1)
        self.writes: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        if method == "GET":
            raise NotFound(404, "NotFound", "not found")
        self.writes.append(f"{method} {path}")
        if path.endswith("/status"):
            raise NotFound(404, "NotFound", 'voxtralendpoints.voxtral.dev "voxtral-mini" not found')
        return dict(kwargs.get("body") or {})


async def test_an_endpoint_whose_status_answers_404_is_not_written_again_before_its_deleted_event() -> None:
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    client = DeletedEndpoint()
    reconciler = Reconciler(
        client=client, config=OperatorConfig(), view=OneEndpoint(endpoint), post_event=lambda *_: None
    )
    await reconciler.reconcile(("speech", "voxtral-mini"))
    assert client.writes[-1].endswith("/voxtralendpoints/voxtral-mini/status"), client.writes
    # The cache still shows it (its DELETED event is queued): reconciled again, e.g. as the garbage
    # collector deletes its children, nothing is written: no fight with the collector.
    written = len(client.writes)
    for _ in range(3):
        await reconciler.reconcile(("speech", "voxtral-mini"))
    assert client.writes[written:] == []
    # An endpoint made again under the name (a new UID) is reconciled.
    endpoint["metadata"]["uid"] = "u-2"
    with contextlib.suppress(ChildRefused):  # this fake's cache never shows the children applied
        await reconciler.reconcile(("speech", "voxtral-mini"))
    assert len(client.writes) > written, client.writes


class CollectedChildren(DeletedEndpoint):
    """The garbage collector has taken the children (each look answers 404); the endpoint itself is
    on the server as `on_server` says: gone, made again under its name (another UID), or there."""

    def __init__(self, on_server: JSON | None) -> None:
        super().__init__()
        self.on_server = on_server

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        if method == "GET" and path.endswith("/voxtralendpoints/voxtral-mini") and self.on_server is not None:
            return self.on_server
        return await super().request(method, path, **kwargs)


@pytest.mark.parametrize("on_server", ["gone", "made again", "there"])
async def test_children_of_an_endpoint_deleted_on_the_server_are_not_made_again(on_server: str) -> None:
    """The endpoint was deleted and the collector took its children; their events came before the
    endpoint's, whose cache still shows it, reconciled before. Nothing is made again for it, unless
    the server still has that endpoint (a child deleted by hand is made again)."""
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    endpoint["status"] = {"observedGeneration": 1}
    found = {"gone": None, "made again": {"metadata": {"uid": "u-2"}}, "there": endpoint}[on_server]
    client = CollectedChildren(found)
    reconciler = Reconciler(
        client=client, config=OperatorConfig(), view=OneEndpoint(endpoint), post_event=lambda *_: None
    )
    with contextlib.suppress(ChildRefused):  # this fake's cache never shows the children applied
        await reconciler.reconcile(("speech", "voxtral-mini"))
    child_writes = [w for w in client.writes if "/voxtralendpoints/" not in w]
    if on_server == "there":
        assert child_writes, "a child missing from an endpoint still on the server was not made again"
    else:
        assert child_writes == [], f"children made again for an endpoint {on_server} on the server: {child_writes}"
