"""An endpoint's life as a platform team and its callers see it, on a real control plane: the
bundled examples become Ready, callers use the OpenAI SDK through the Service, `kubectl scale` and a
burst of load change replicas, and deleting the endpoint lets the garbage collector take every child."""

from __future__ import annotations

import base64
import io
import time
import wave
from typing import Any

import openai
import pytest

from .conftest import (
    MINI,
    ROOT,
    Kubectl,
    LocalCluster,
    chat_callers,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    service_base_url,
    wait_ready,
)

pytestmark = pytest.mark.e2e
API_KEY = "sk-e2e-key"
CHILD_KINDS = "deployments,services,poddisruptionbudgets,networkpolicies,persistentvolumeclaims,pods"


def _wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


def test_examples_become_ready_and_list_usefully(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(ROOT / "examples"))
    try:
        for name in ("voxtral-mini", "voxtral-small"):
            wait_ready(kubectl, name, "speech")  # Ready: a first replica serves; the others may still load

            def all_replicas_ready(name: str = name) -> dict[str, Any] | None:
                found = kubectl.get("vxe", name, "speech") or {}
                ready = (found.get("status") or {}).get("readyReplicas")
                return found if ready == (found.get("spec") or {}).get("minReplicas") else None

            endpoint = eventually(all_replicas_ready, timeout=60, what=f"every replica of {name} ready")
            held = endpoint["status"]["readyReplicas"] * endpoint["status"]["tensorParallelSize"]
            eventually(
                lambda name=name, held=held: (kubectl.get("vxe", name, "speech") or {})["status"].get("gpus") == held,
                timeout=30,
                what=f"status.gpus of {name} = {held}",
            )
        small = kubectl.get("deployment", "voxtral-small", "speech")
        assert small is not None
        assert small["spec"]["template"]["spec"]["priorityClassName"] == "gpu-inference"
        claim = kubectl.get("pvc", "voxtral-small-cache", "speech")
        assert claim is not None
        assert claim["status"]["phase"] == "Bound"
        listing = kubectl.run("get", "vxe", "-n", "speech").stdout
        header = listing.splitlines()[0].split()
        for column in ("NAME", "MODEL", "GPU", "REPLICAS", "READY", "GPUS"):
            assert column in header, listing
        assert "voxtral-small" in listing, listing
        assert "2/2" in listing, listing
    finally:
        for name in ("voxtral-mini", "voxtral-small"):
            delete_endpoint(kubectl, name, "speech")


def _calls(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=2)
    transcript = client.audio.transcriptions.create(
        model=model, file=("call.wav", _wav(), "audio/wav"), language="en", temperature=0.0
    )
    assert transcript.text
    audio: Any = {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": [audio, {"type": "text", "text": "Summarise."}]}]
    )
    assert chat.choices[0].message.content
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "create_ticket",
                "description": "Open a ticket",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    called = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [audio]}], tools=tools)
    assert (called.choices[0].message.tool_calls or [])[0].function.name == "create_ticket"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()


def _spec_replicas(kubectl: Kubectl, name: str, namespace: str) -> int:
    endpoint = kubectl.get("vxe", name, namespace) or {}
    return int(endpoint.get("spec", {}).get("replicas", 0))


def test_callers_scaling_and_garbage_collection(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    kubectl.run("create", "secret", "generic", f"{name}-key", "-n", namespace, f"--from-literal=api-key={API_KEY}")
    body = endpoint_body(
        name,
        namespace,
        minReplicas=1,
        maxReplicas=3,
        engine={"maxNumSeqs": 2},
        autoscaling={"targetQueueDepth": 2, "scaleDownDelaySeconds": 5},
        auth={"apiKeySecretRef": {"name": f"{name}-key"}},
        gateway={"enabled": False},  # callers straight to vLLM: the opt-out path (the gateway has its own files)
    )
    kubectl.apply(body)
    try:
        endpoint = wait_ready(kubectl, name, namespace)
        assert endpoint["status"]["url"].startswith(f"http://{name}.{namespace}.svc.")
        exposed = condition(endpoint, "Exposed")
        assert (exposed.get("status"), exposed.get("reason")) == ("True", "GatewayDisabled"), exposed
        assert "/invocations" in exposed["message"], exposed
        eventually(
            lambda: condition(kubectl.get("vxe", name, namespace), "Serving").get("status") == "True",
            timeout=60,
            what="Serving (checked through the Service)",
        )
        # Without the gateway the key guards /v1 only, and the condition says so rather than claim more.
        serving = condition(kubectl.get("vxe", name, namespace), "Serving")
        assert "under /v1 only" in serving["message"], serving
        with service_base_url(kubectl, name, namespace) as base_url:
            _calls(base_url, MINI)

            # `kubectl scale` goes through the scale subresource to spec.replicas and the Deployment (how
            # long the autoscaler keeps a person's scale is the scenario below).
            kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=2")
            eventually(
                lambda: (kubectl.get("deployment", name, namespace) or {}).get("spec", {}).get("replicas") == 2,
                timeout=30,
                what="the Deployment at 2 replicas after kubectl scale",
                interval=0.2,
            )
            kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=1")
            eventually(lambda: _spec_replicas(kubectl, name, namespace) == 1, 30, "spec.replicas back to 1")

            # A burst: 12 callers on replicas that batch 2 requests each.
            with chat_callers(base_url, 12, API_KEY):
                eventually(lambda: _spec_replicas(kubectl, name, namespace) >= 2, 120, "scale up under a burst")
        eventually(lambda: _spec_replicas(kubectl, name, namespace) == 1, 180, "scale down after the burst")
    finally:
        kubectl.run("delete", "vxe", name, "-n", namespace, "--wait=true", "--timeout=120s")
    selector = f"app.kubernetes.io/instance={name}"
    eventually(
        lambda: not kubectl.json("get", CHILD_KINDS, "-n", namespace, "-l", selector)["items"],
        timeout=120,
        what="the garbage collector removing every child",
    )


def test_replicas_a_person_asked_for_are_kept_while_they_load(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    """`replicas: 2` applied, and later `kubectl scale --replicas 2`, on an idle endpoint whose replicas
    take 40 s to load and whose scaleDownDelaySeconds is 15: never cut while they load."""
    name = unique_name
    local.set_fault(namespace, name, {"loadSeconds": 40})
    body = endpoint_body(
        name, namespace, replicas=2, minReplicas=1, maxReplicas=2, autoscaling={"scaleDownDelaySeconds": 15}
    )
    try:
        kubectl.apply(body)
        applied = time.monotonic()
        hold = _kept_while_loading(kubectl, name, namespace)
        assert hold["setBy"] == "kubectl-client-side-apply", hold
        assert time.monotonic() - applied > 15, "the replicas loaded before the delay passed: nothing was proven"
        # All ready, 15 s more, then the idle endpoint steps down to what its load needs.
        # The autoscaler writes /scale and then its status (the hold dropped): two writes, each awaited.
        eventually(
            lambda: (lambda e: e.get("spec", {}).get("replicas") == 1 and "scaleHold" not in e.get("status", {}))(
                kubectl.get("vxe", name, namespace) or {}
            ),
            120,
            "back to 1 replica, and no scaleHold in status, after the hold",
        )

        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=2")
        hold = _kept_while_loading(kubectl, name, namespace)
        assert hold["setBy"] == "kubectl (/scale)", hold
    finally:
        local.set_fault(namespace, name, None)
        delete_endpoint(kubectl, name, namespace)


def test_kubectl_scale_is_kept_on_an_endpoint_created_without_replicas(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    """No `replicas` in the manifest: nobody owns spec.replicas, and the API server records no owner for
    writes through /scale to it (the autoscaler's or `kubectl scale`'s). The person's scale is still a floor."""
    name = unique_name
    body = endpoint_body(name, namespace, minReplicas=1, maxReplicas=2, autoscaling={"scaleDownDelaySeconds": 15})
    try:
        kubectl.apply(body)
        wait_ready(kubectl, name, namespace)
        local.set_fault(namespace, name, {"loadSeconds": 40})
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=2")
        hold = _kept_while_loading(kubectl, name, namespace)
        assert hold["setBy"] == "a client of /scale", hold
        eventually(lambda: _spec_replicas(kubectl, name, namespace) == 1, 120, "back to 1 after the hold")
    finally:
        local.set_fault(namespace, name, None)
        delete_endpoint(kubectl, name, namespace)


def _kept_while_loading(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    """status.scaleHold once it shows, after spec.replicas stayed 2 until both replicas were ready."""
    hold = eventually(
        lambda: (kubectl.get("vxe", name, namespace) or {}).get("status", {}).get("scaleHold"),
        timeout=60,
        what="status.scaleHold",
    )
    assert hold["replicas"] == 2, hold
    deadline = time.monotonic() + 300
    while True:
        endpoint = kubectl.get("vxe", name, namespace) or {}
        assert endpoint["spec"]["replicas"] == 2, endpoint.get("status")
        if endpoint.get("status", {}).get("readyReplicas") == 2:
            return dict(hold)
        assert time.monotonic() < deadline, f"never both ready: {endpoint.get('status')}"
        time.sleep(1)
