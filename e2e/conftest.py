"""e2e: against the cluster KUBECONFIG points at, or, without one, the local sandbox (API stand-in + the real operator).

With a real cluster the operator must be installed (see e2e/README.md); endpoints use the image
in VOXTRAL_E2E_IMAGE (the vLLM simulator image on CPU nodes, or a real vLLM image on GPU nodes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voxtral_operator.testing.harness import Kube, OperatorProcess
from voxtral_operator.testing.sandbox import Sandbox


class ClusterKube(Kube):
    """The same interface over a real cluster, authenticated as kubectl is (kubernetes client config)."""

    def __init__(self) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        self._api = client.ApiClient()
        super().__init__(self._api.configuration.host, session=None)  # type: ignore[arg-type]

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        import asyncio

        def call() -> Any:
            response = self._api.call_api(
                path,
                method,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                response_type="object",
                _return_http_data_only=True,
            )
            return response

        return await asyncio.to_thread(call)

    async def get(self, path: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return await self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


@pytest.fixture
def namespace() -> str:
    return os.environ.get("VOXTRAL_E2E_NAMESPACE", "default")


@pytest.fixture
def image() -> str | None:
    return os.environ.get("VOXTRAL_E2E_IMAGE")


@pytest.fixture
def unique_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    if os.environ.get("KUBECONFIG"):
        yield ClusterKube()
        return
    async with Sandbox() as sandbox, aiohttp.ClientSession() as session:
        operator = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log").start()
        try:
            yield Kube(sandbox.url, session)
        finally:
            operator.stop()
