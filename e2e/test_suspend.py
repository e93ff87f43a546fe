"""Suspend and resume on a real control plane while callers hammer the gateway: every request gets a
complete HTTP answer (200, or 503 `endpoint_suspended` with Retry-After while suspended), none is
reset or left hanging, and the gateway pods are the same ones throughout: `suspended` is a setting
the gateway follows live from its endpoint, not a rollout of its Deployment."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import MINI, Kubectl, delete_endpoint, endpoint_body, eventually, service_base_url, wait_ready
from .test_gateway import OLD_KEY, _set_keys, _vllm_pods

pytestmark = pytest.mark.e2e

CALLERS = 6
# A request may be held while a replica starts after the resume (the simulator loads in seconds;
# its pod must also be scheduled and pass its probes): past this a request counts as hung.
REQUEST_BOUND_SECONDS = 240.0
# A 503 is prompt: at worst a request was held until the gateway heard of the suspend.
REFUSAL_BOUND_SECONDS = 60.0


@dataclass
class Answer:
    sent: float  # time.monotonic()
    seconds: float
    status: int
    retry_after: str | None
    code: str | None  # the OpenAI-style error code of a non-200


class Callers:
    """Threads calling the chat route and /v1/models in a loop, each on a fresh connection (so
    kube-proxy spreads them over the gateway pods); keeps every answer and every failure."""

    def __init__(self, base_url: str, key: str) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.prefix = url.hostname or "", url.port or 80, url.path
        self.key = key
        self.stop = threading.Event()
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CALLERS)]

    def _call(self, index: int) -> Answer:
        if index % 2:
            method, path, body = "GET", "/models", None
        else:
            chat = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            method, path, body = "POST", "/chat/completions", json.dumps(chat).encode()
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        sent = time.monotonic()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_BOUND_SECONDS)
        try:
            connection.request(method, self.prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()  # the whole body: a cut-off answer raises here
            code = None
            if response.status != 200:
                code = str((json.loads(payload or b"{}").get("error") or {}).get("code"))
            return Answer(sent, time.monotonic() - sent, response.status, response.getheader("Retry-After"), code)
        finally:
            connection.close()

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(self._call(index))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.2)

    def count(self, status: int, since: float = 0.0, code: str | None = None) -> int:
        return sum(1 for a in list(self.answers) if a.status == status and a.sent >= since and a.code == code)

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_BOUND_SECONDS + 10)


def _gateway_pods(kubectl: Kubectl, name: str, namespace: str) -> dict[str, str]:
    selector = f"app.kubernetes.io/name=voxtral-gateway,app.kubernetes.io/instance={name}"
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


def _phase(kubectl: Kubectl, name: str, namespace: str) -> Any:
    return ((kubectl.get("vxe", name, namespace) or {}).get("status") or {}).get("phase")


def test_suspend_and_resume_with_callers_hammering(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    keys = f"{name}-callers"
    _set_keys(kubectl, keys, namespace, current=OLD_KEY)
    kubectl.apply(endpoint_body(name, namespace, auth={"apiKeysSecretName": keys}))  # the gateway by default
    try:
        wait_ready(kubectl, name, namespace)
        eventually(
            lambda: (
                (kubectl.get("deployment", f"{name}-gateway", namespace) or {}).get("status", {}).get("readyReplicas")
                == 2
            ),
            timeout=120,
            what="both gateway pods ready",
        )
        pods_before = _gateway_pods(kubectl, name, namespace)
        generation_before = (kubectl.get("deployment", f"{name}-gateway", namespace) or {})["metadata"]["generation"]
        patch = ["patch", "vxe", name, "-n", namespace, "--type=merge", "-p"]
        with service_base_url(kubectl, name, namespace) as base_url, Callers(base_url, OLD_KEY) as callers:
            eventually(lambda: callers.count(200) >= 20, 120, "20 answers while serving")

            suspended_at = time.monotonic()
            kubectl.run(*patch, '{"spec":{"suspended":true}}')
            eventually(
                lambda: callers.count(503, suspended_at, "endpoint_suspended") >= 20,
                120,
                "20 answers 503 endpoint_suspended",
            )
            first_refusal = min(
                a.sent + a.seconds for a in callers.answers if a.code == "endpoint_suspended" and a.sent >= suspended_at
            )
            eventually(lambda: not _vllm_pods(kubectl, name, namespace), 180, "the vLLM pods gone")
            eventually(lambda: _phase(kubectl, name, namespace) == "Suspended", 60, "phase Suspended")
            settled = time.monotonic()
            eventually(
                lambda: callers.count(503, settled, "endpoint_suspended") >= 20, 60, "503s while suspended, no pods"
            )

            resumed_at = time.monotonic()
            kubectl.run(*patch, '{"spec":{"suspended":false}}')
            eventually(lambda: callers.count(200, resumed_at) >= 20, 300, "20 answers after the resume")
        assert not callers.failures, f"{len(callers.failures)} requests failed: {callers.failures[:5]}"

        answers = list(callers.answers)
        assert {a.status for a in answers} == {200, 503}, sorted({(a.status, a.code) for a in answers})
        refusals = [a for a in answers if a.status == 503]
        assert all(a.code == "endpoint_suspended" and (a.retry_after or "").isdigit() for a in refusals), [
            (a.code, a.retry_after) for a in refusals if a.code != "endpoint_suspended" or not a.retry_after
        ][:5]
        slowest_refusal = max(a.seconds for a in refusals)
        assert slowest_refusal < REFUSAL_BOUND_SECONDS, slowest_refusal
        assert all(a.sent < resumed_at + REFUSAL_BOUND_SECONDS for a in refusals), "503s long after the resume"
        last_refused = max(a.sent + a.seconds for a in refusals)

        # No rollout: the same gateway pods, the same Deployment generation.
        assert _gateway_pods(kubectl, name, namespace) == pods_before
        deployment = kubectl.get("deployment", f"{name}-gateway", namespace) or {}
        assert deployment["metadata"]["generation"] == generation_before
        eventually(lambda: _phase(kubectl, name, namespace) == "Ready", 120, "Ready again")
        print(
            f"{len(answers)} answers ({len(refusals)} x 503 endpoint_suspended), 0 failures; first 503 "
            f"{first_refusal - suspended_at:.1f}s after the suspend, last 503 {last_refused - resumed_at:.1f}s "
            f"after the resume; slowest 503 {slowest_refusal:.1f}s, slowest request "
            f"{max(a.seconds for a in answers):.1f}s; gateway pods unchanged: {sorted(pods_before)}"
        )
    finally:
        delete_endpoint(kubectl, name, namespace)
