"""An endpoint's life as a platform team sees it: apply, Ready, scale, delete, cleanup."""

from __future__ import annotations

from typing import Any

import pytest

from voxtral_operator.testing.harness import Kube, condition, endpoint_path, eventually

pytestmark = pytest.mark.e2e


def _endpoint(name: str, namespace: str, image: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "mistralai/Voxtral-Mini-3B-2507",
        "gpu": {"type": "L4-24GB"},
        "minReplicas": 1,
        "maxReplicas": 2,
    }
    if image:
        spec["image"] = image
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def test_endpoint_lifecycle(kube: Kube, namespace: str, unique_name: str, image: str | None) -> None:
    path = endpoint_path(namespace, unique_name)
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{unique_name}"
    service = f"/api/v1/namespaces/{namespace}/services/{unique_name}"
    await kube.create(endpoint_path(namespace), _endpoint(unique_name, namespace, image))
    try:

        async def ready() -> dict[str, Any] | None:
            current = await kube.get(path)
            return current if condition(current, "Ready").get("status") == "True" else None

        current = await eventually(ready, timeout=600)
        assert current["status"]["url"].startswith(f"http://{unique_name}.{namespace}.svc.")
        assert await kube.get(service) is not None

        await kube.request("PATCH", path + "/scale", {"spec": {"replicas": 2}}, "application/merge-patch+json")

        async def scaled() -> bool:
            current = await kube.get(path)
            return ((current or {}).get("status") or {}).get("readyReplicas") == 2

        await eventually(scaled, timeout=600)
    finally:
        await kube.delete(path)

    async def gone() -> bool:
        return await kube.get(deployment) is None and await kube.get(service) is None

    await eventually(gone, timeout=120)
