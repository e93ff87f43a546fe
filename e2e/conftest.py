"""e2e: against the cluster KUBECONFIG points at, or, without one, the local sandbox (API stand-in,
simulated vLLM pods, a kube-proxy stand-in, and the real operator process).

With a real cluster the operator must be installed (see e2e/README.md); endpoints use the image
in VOXTRAL_E2E_IMAGE (the simulator image on CPU nodes, or a real vLLM image on GPU nodes), and
Services are reached with `kubectl port-forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from voxtral_testbed.harness import Kube, OperatorProcess, free_port
from voxtral_testbed.sandbox import Behaviour, PodBehaviour, Sandbox

ROOT = Path(__file__).resolve().parents[1]


class ClusterKube(Kube):
    """The same interface over a real cluster, authenticated as kubectl is (kubernetes client config)."""

    def __init__(self) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        self._api = client.ApiClient()
        self.url = self._api.configuration.host

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        def call() -> Any:
            return self._api.call_api(
                path,
                method,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                response_type="object",
                _return_http_data_only=True,
            )

        return await asyncio.to_thread(call)

    async def get(self, path: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return await self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


@dataclass
class Target:
    kube: Kube
    namespace: str
    image: str | None
    vllm_port: int
    sandbox: Sandbox | None = None

    @contextlib.asynccontextmanager
    async def service_url(self, name: str) -> AsyncIterator[str]:
        """The endpoint's OpenAI base URL as a caller reaches it."""
        if self.sandbox is not None:
            service = await self.kube.get(f"/api/v1/namespaces/{self.namespace}/services/{name}")
            yield f"http://{(service or {})['spec']['clusterIP']}:{self.vllm_port}/v1"
            return
        kubectl = shutil.which("kubectl") or str(ROOT / ".tools" / "kubectl")
        local = free_port()
        forward = subprocess.Popen(  # noqa: ASYNC220 - a long-lived helper process
            [kubectl, "-n", self.namespace, "port-forward", f"svc/{name}", f"{local}:{self.vllm_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(2)
            yield f"http://127.0.0.1:{local}/v1"
        finally:
            forward.terminate()


def endpoint_body(target: Target, name: str, **spec: Any) -> dict[str, Any]:
    """A Voxtral Mini endpoint on L4s, running the target's image when it names one."""
    body: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, **spec}
    if target.image:
        body["image"] = target.image
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": target.namespace},
        "spec": body,
    }


@pytest.fixture
def unique_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    namespace = os.environ.get("VOXTRAL_E2E_NAMESPACE", "default")
    if os.environ.get("KUBECONFIG"):
        yield Target(ClusterKube(), namespace, os.environ.get("VOXTRAL_E2E_IMAGE"), 8000)
        return
    vllm_port = free_port()
    async with Sandbox(vllm_port=vllm_port) as sandbox, aiohttp.ClientSession() as session:
        sandbox.controllers.default = Behaviour(
            PodBehaviour.SIMULATED, simulator_args=("--max-num-seqs", "2", "--request-seconds", "0.5")
        )
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump({"vllmPort": vllm_port, "scrapeIntervalSeconds": 0.5, "servingCheckSeconds": 1.0})
        )
        operator = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()
        try:
            yield Target(Kube(sandbox.url, session), namespace, None, vllm_port, sandbox)
        finally:
            operator.stop()
