"""The reconciler under faults the API server reports: a namespace being deleted under an endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from voxtral_operator.config import OperatorConfig
from voxtral_operator.k8s.client import ApiClient, ApiError, Connection, NotFound
from voxtral_operator.reconcile import ChildKey, EmptyView, Key, Reconciler

ROOT = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]


class TerminatingNamespace(ApiClient):
    """Every create in the namespace is refused as the API server refuses it while the namespace is deleted."""

    def __init__(self) -> None:
        super().__init__(Connection(server="http://api.invalid"), attempts=1)
        self.writes: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> JSON:
        if method == "GET":
            raise NotFound(404, "NotFound", "not found")
        self.writes.append(f"{method} {path}")
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


async def test_a_terminating_namespace_ends_the_reconcile_with_no_retry_status_or_event() -> None:
    endpoint = yaml.safe_load((ROOT / "examples" / "mini-on-l4.yaml").read_text())
    endpoint["metadata"].update(uid="u-1", generation=1)
    client, posted = TerminatingNamespace(), []
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
