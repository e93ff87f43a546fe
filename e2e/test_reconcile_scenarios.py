"""The operator loop's scenarios as a platform team meets them: drift is undone, bad specs are named."""

from __future__ import annotations

from typing import Any

import pytest

from voxtral_testbed.harness import condition, endpoint_path, eventually

from .conftest import Target, endpoint_body

pytestmark = pytest.mark.e2e


async def test_deleted_child_returns_and_hand_edit_is_reverted(target: Target, unique_name: str) -> None:
    kube, namespace, name = target.kube, target.namespace, unique_name
    service = f"/api/v1/namespaces/{namespace}/services/{name}"
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    await kube.create(endpoint_path(namespace), endpoint_body(target, name))
    try:

        async def service_uid() -> str | None:
            current = await kube.get(service)
            return (current or {}).get("metadata", {}).get("uid")

        first = await eventually(service_uid, timeout=120)
        await kube.delete(service)

        async def recreated() -> bool:
            uid = await service_uid()
            return uid is not None and uid != first

        await eventually(recreated, timeout=60)

        container = (await kube.get(deployment))["spec"]["template"]["spec"]["containers"][0]
        edited = {**container, "args": [*container["args"], "--enforce-eager"]}
        await kube.merge(deployment, {"spec": {"template": {"spec": {"containers": [edited]}}}})

        async def reverted() -> bool:
            current = await kube.get(deployment)
            return "--enforce-eager" not in current["spec"]["template"]["spec"]["containers"][0]["args"]

        await eventually(reverted, timeout=60)
    finally:
        await kube.delete(endpoint_path(namespace, name))


async def test_spec_that_cannot_fit_is_refused_by_name(target: Target, unique_name: str) -> None:
    kube, namespace, name = target.kube, target.namespace, unique_name
    await kube.create(
        endpoint_path(namespace),
        endpoint_body(target, name, model="mistralai/Voxtral-Small-24B-2507", tensorParallelSize=1),
    )
    try:

        async def refused() -> dict[str, Any] | None:
            current = await kube.get(endpoint_path(namespace, name))
            return current if condition(current, "Ready").get("reason") == "InvalidSpec" else None

        current = await eventually(refused, timeout=60)
        assert "spec.tensorParallelSize" in condition(current, "Ready")["message"]
        assert await kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") is None
    finally:
        await kube.delete(endpoint_path(namespace, name))
