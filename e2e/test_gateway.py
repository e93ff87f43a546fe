"""The endpoint gateway on a real control plane: callers reach only the OpenAI routes with a valid
key, keys rotate with no failed request (callers' keys, and the backend key deleted and created again),
vLLM answers only the gateway's own key, a request sent at
zero replicas is answered once a replica is up, and a suspended endpoint frees its GPUs and says so."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from .conftest import (
    MINI,
    Kubectl,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    service_base_url,
    wait_ready,
)
from .metrics import samples
from .test_lifecycle import _calls, _spec_replicas, _wav

pytestmark = pytest.mark.e2e
OLD_KEY = "sk-e2e-key"  # what test_lifecycle's _calls sends
NEW_KEY = "sk-e2e-rotated"
LIMITED_KEY = "sk-e2e-limited"


def _get(url: str, key: str | None = None, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"raw": body[:200].decode(errors="replace")}


def _transcribe(base_url: str, key: str, timeout: float, task: str = "transcriptions") -> tuple[int, dict[str, Any]]:
    boundary = "e2e-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MINI}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + _wav(2.0)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base_url}/audio/{task}",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _limited_call(url: str, key: str) -> tuple[int, int, dict[str, Any]]:
    """(status, Retry-After or 0, the error object or {}) of a GET on a fresh connection."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, 0, {}
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        return error.code, int(error.headers.get("Retry-After") or 0), body.get("error") or {}


def _set_keys(kubectl: Kubectl, name: str, namespace: str, **keys: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": keys,
    }
    # One atomic replace, as a rotation is done: a key left out is removed, the others never go away.
    if kubectl.get("secret", name, namespace) is None:
        kubectl.run("create", "-f", "-", stdin=json.dumps(secret))
    else:
        kubectl.run("replace", "-f", "-", stdin=json.dumps(secret))


class Hammer:
    """Calls GET /v1/models with one key in a loop and keeps every failure it saw."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.calls = 0
        self.failures: list[tuple[int, dict[str, Any]]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:  # a slow answer on a busy machine is not a failure; none at all, or a refused one, is
                code, body = _get(self.url, self.key, timeout=60)
            except OSError as error:
                code, body = 0, {"error": repr(error)}
            self.calls += 1
            if code != 200:
                self.failures.append((code, body))
            self.stop.wait(0.05)

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def test_gateway_fronts_the_api_and_rotates_keys(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    keys = f"{name}-callers"
    _set_keys(kubectl, keys, namespace, current=OLD_KEY, limited=LIMITED_KEY)
    # Two requests a minute for the `limited` entry: one per gateway pod.
    gateway_spec = {"enabled": True, "keys": [{"name": "limited", "requestsPerMinute": 2}]}
    kubectl.apply(endpoint_body(name, namespace, gateway=gateway_spec, auth={"apiKeysSecretName": keys}))
    try:
        wait_ready(kubectl, name, namespace)
        eventually(
            lambda: condition(kubectl.get("vxe", name, namespace), "Serving").get("status") == "True",
            timeout=90,
            what="Serving (checked through the Service, now the gateway)",
        )
        serving = condition(kubectl.get("vxe", name, namespace), "Serving")
        assert "the gateway enforces the API key" in serving["message"], serving
        # Ready needs one gateway pod; the per-pod limits below need both.
        eventually(
            lambda: (
                ((kubectl.get("deployment", f"{name}-gateway", namespace) or {}).get("status") or {}).get(
                    "readyReplicas"
                )
                == 2
            ),
            120,
            "both gateway pods ready",
        )
        with service_base_url(kubectl, name, namespace) as base_url:
            _calls(base_url, MINI)  # transcription, audio chat, a tool call; a wrong key refused
            root = base_url.removesuffix("/v1")
            for path in ("/invocations", "/metrics", "/tokenize", "/health", "/load", "/version", "/v1/../invocations"):
                code, _ = _get(root + path, OLD_KEY)
                assert code == 404, f"{path} answered {code} through the Service"

            # The rest of the API, streamed answers included, through the gateway.
            client = openai.OpenAI(base_url=base_url, api_key=OLD_KEY, max_retries=0)
            assert client.completions.create(model=MINI, prompt="Once").choices[0].text
            code, translated = _transcribe(base_url, OLD_KEY, timeout=30, task="translations")  # the SDK deprecates it
            assert code == 200, translated
            stream = client.chat.completions.create(
                model=MINI, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert len([chunk for chunk in stream if chunk.choices]) > 1

            # vLLM itself answers only the gateway's key: a caller's key reaching a pod is refused.
            pod_ip = _vllm_pods(kubectl, name, namespace)[0]["status"]["podIP"]
            assert _get(f"http://{pod_ip}:8000/v1/models", OLD_KEY)[0] == 401
            # What the gateway closes: on the pod itself (which only the gateway may reach) inference
            # outside /v1 needs no key at all.
            invocation = urllib.request.Request(
                f"http://{pod_ip}:8000/invocations",
                data=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(invocation, timeout=10) as response:
                assert response.status == 200

            # A key over its limit gets 429 with Retry-After at whichever gateway pod it reaches;
            # together the pods admit no more than the limit, and other keys are served meanwhile.
            answers = [_limited_call(f"{base_url}/models", LIMITED_KEY) for _ in range(5)]
            assert [code for code, _, _ in answers].count(200) in (1, 2), answers
            refused = [(retry_after, error) for code, retry_after, error in answers if code == 429]
            assert len(refused) >= 3, answers
            for retry_after, error in refused:
                assert 1 <= retry_after <= 60, answers
                assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded"), answers
            assert _get(f"{base_url}/models", OLD_KEY)[0] == 200

            # Rotation: add the new key while callers keep using the old one, then remove the old one.
            # The gateways read their Secrets as volumes: a change arrives at the kubelet's next sync.
            # Callers move once every gateway pod has it (each is asked on its own address).
            gateways = _pods(
                kubectl, namespace, f"app.kubernetes.io/name=voxtral-gateway,app.kubernetes.io/instance={name}"
            )

            def every_gateway(key: str, code: int) -> bool:
                return all(_get(f"http://{pod['status']['podIP']}:8000/v1/models", key)[0] == code for pod in gateways)

            with Hammer(f"{base_url}/models", OLD_KEY) as old_callers:
                _set_keys(kubectl, keys, namespace, current=OLD_KEY, next=NEW_KEY)
                eventually(lambda: every_gateway(NEW_KEY, 200), 120, "the new key accepted by every gateway pod")
            assert old_callers.calls > 0
            assert not old_callers.failures, old_callers.failures[:3]
            with Hammer(f"{base_url}/models", NEW_KEY) as new_callers:
                _set_keys(kubectl, keys, namespace, next=NEW_KEY)
                eventually(lambda: every_gateway(OLD_KEY, 401), 120, "the old key refused by every gateway pod")
            assert new_callers.calls > 0
            assert not new_callers.failures, new_callers.failures[:3]

            # The backend key deleted (how it is rotated): the operator, which cannot read Secrets,
            # learns it from the gateways and creates a new one; the gateways keep the key the running
            # vLLM pods started with, so no caller sees a failure.
            backend_key = f"{name}-backend-key"
            first = kubectl.get("secret", backend_key, namespace)
            assert first is not None
            with Hammer(f"{base_url}/models", NEW_KEY) as callers:
                kubectl.run("delete", "secret", backend_key, "-n", namespace)

                def recreated() -> dict[str, Any] | None:
                    secret = kubectl.get("secret", backend_key, namespace)
                    return secret if secret and secret["metadata"]["uid"] != first["metadata"]["uid"] else None

                second = eventually(recreated, 240, "the backend key created again")
                eventually(
                    lambda: all(not _reports_missing(pod["status"]["podIP"]) for pod in gateways),
                    120,
                    "the gateways reading the new key",
                )
            assert second["data"]["api-key"] != first["data"]["api-key"]
            assert callers.calls > 0
            assert not callers.failures, callers.failures[:3]
            # The running vLLM pod still holds the key it started with; the gateways send it that one.
            assert _get(f"{base_url}/models", NEW_KEY)[0] == 200

        # The autoscaler reads the gateways: their queue is in status, in audio-seconds.
        eventually(
            lambda: "queuedAudioSeconds" in ((kubectl.get("vxe", name, namespace) or {}).get("status") or {}),
            timeout=30,
            what="status.queuedAudioSeconds from the gateways",
        )
    finally:
        delete_endpoint(kubectl, name, namespace)


def _vllm_pods(kubectl: Kubectl, name: str, namespace: str) -> list[dict[str, Any]]:
    return _pods(kubectl, namespace, f"app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance={name}")


def _pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"])


def _reports_missing(pod_ip: str) -> bool:
    """Whether a gateway pod's metrics name a Secret it cannot find."""
    return bool(samples(f"http://{pod_ip}:9091/metrics", "voxtral_gateway_secret_missing"))


def test_scale_from_zero_and_suspend(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    keys = f"{name}-callers"
    _set_keys(kubectl, keys, namespace, current=OLD_KEY)
    body = endpoint_body(
        name,
        namespace,
        minReplicas=0,
        maxReplicas=1,
        gateway={"enabled": True},
        auth={"apiKeysSecretName": keys},
    )
    kubectl.apply(body)
    try:
        eventually(
            lambda: ((kubectl.get("vxe", name, namespace) or {}).get("status") or {}).get("phase") == "ScaledToZero",
            timeout=60,
            what="phase ScaledToZero",
        )
        eventually(
            lambda: (
                (kubectl.get("deployment", f"{name}-gateway", namespace) or {}).get("status", {}).get("readyReplicas")
                == 2
            ),
            timeout=90,
            what="both gateway pods ready",
        )
        assert not _vllm_pods(kubectl, name, namespace)
        with service_base_url(kubectl, name, namespace) as base_url:
            started = time.monotonic()
            code, answer = _transcribe(base_url, OLD_KEY, timeout=240)  # held while a replica starts
            assert code == 200, answer
            assert answer.get("text"), answer
            waited = time.monotonic() - started
            endpoint = kubectl.get("vxe", name, namespace) or {}
            assert endpoint["spec"].get("replicas") == 1, endpoint["spec"]
            decision = endpoint["status"].get("lastScaleDecision") or {}
            assert "held" in decision.get("reason", ""), decision

            # Suspended: no replica, the GPU freed, callers told why.
            kubectl.run("patch", "vxe", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":true}}')
            eventually(lambda: not _vllm_pods(kubectl, name, namespace), 120, "the vLLM pod gone")
            eventually(
                lambda: ((kubectl.get("vxe", name, namespace) or {}).get("status") or {}).get("phase") == "Suspended",
                timeout=30,
                what="phase Suspended",
            )

            def suspended_answer() -> dict[str, Any] | None:
                code, answer = _get(f"{base_url}/models", OLD_KEY)
                return answer if code == 503 and "suspended" in json.dumps(answer) else None

            eventually(suspended_answer, 120, "503 endpoint suspended through the Service")

            # Started again: the next request wakes it.
            kubectl.run("patch", "vxe", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":false}}')
            eventually(lambda: _get(f"{base_url}/models", OLD_KEY, timeout=240)[0] == 200, 300, "answered after resume")

            # Idle: back to zero replicas after scaleToZeroAfterSeconds without a request.
            idle = '{"spec":{"autoscaling":{"scaleToZeroAfterSeconds":10}}}'
            kubectl.run("patch", "vxe", name, "-n", namespace, "--type=merge", "-p", idle)
            eventually(lambda: _spec_replicas(kubectl, name, namespace) == 0, 90, "spec.replicas 0 after idling")
            eventually(lambda: not _vllm_pods(kubectl, name, namespace), 120, "the vLLM pod gone after idling")
            reason = ((kubectl.get("vxe", name, namespace) or {}).get("status") or {}).get("lastScaleDecision") or {}
            assert "idle" in reason.get("reason", ""), reason
        print(f"first request at zero replicas answered after {waited:.1f}s")
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_certificate_without_cert_manager_is_named_and_blocks_nothing_else(
    kubectl: Kubectl, namespace: str, unique_name: str
) -> None:
    if kubectl.run("get", "crd", "certificates.cert-manager.io", check=False).returncode == 0:
        pytest.skip("cert-manager is installed here")
    name = unique_name
    tls = {"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}
    kubectl.apply(endpoint_body(name, namespace, gateway={"enabled": True, "tls": tls}))
    try:

        def degraded() -> dict[str, Any] | None:
            found = condition(kubectl.get("vxe", name, namespace), "Degraded")
            return found if found.get("reason") == "CustomResourceMissing" else None

        reason = eventually(degraded, 60, "Degraded: CustomResourceMissing")
        assert "certificates.cert-manager.io" in reason["message"], reason
        assert kubectl.get("deployment", f"{name}-gateway", namespace) is not None
        assert kubectl.get("deployment", name, namespace) is not None
    finally:
        delete_endpoint(kubectl, name, namespace)
