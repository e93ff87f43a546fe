"""Autoscaling end to end: simulator processes as pods, the real operator scraping them, the scale subresource."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from voxtral_operator import rbac
from voxtral_testbed.harness import (
    Kube,
    OperatorProcess,
    condition,
    endpoint_path,
    eventually,
    free_port,
    request_permissions,
)
from voxtral_testbed.sandbox import Behaviour, PodBehaviour, Sandbox

pytestmark = pytest.mark.integration
NS = "speech"


@pytest.fixture
def vllm_port() -> int:
    return free_port()


@pytest.fixture
async def sandbox(vllm_port: int) -> AsyncIterator[Sandbox]:
    async with Sandbox(vllm_port=vllm_port) as running:
        running.controllers.default = Behaviour(
            PodBehaviour.SIMULATED, simulator_args=("--max-num-seqs", "2", "--request-seconds", "0.5")
        )
        yield running


@pytest.fixture
def operator(sandbox: Sandbox, tmp_path: Path, vllm_port: int) -> Iterator[OperatorProcess]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vllmPort": vllm_port,
                "scrapeIntervalSeconds": 0.5,
                "scrapeTimeoutSeconds": 0.5,
                "servingCheckSeconds": 1.0,
            }
        )
    )
    process = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()
    try:
        yield process
    finally:
        process.stop()


def endpoint(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": "mistralai/Voxtral-Mini-3B-2507",
            "gpu": {"type": "L4-24GB"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "autoscaling": {"targetQueueDepth": 2, "scaleDownDelaySeconds": 3, "maxScaleUpStep": 2},
            **spec,
        },
    }


async def spec_replicas(kube: Kube, name: str) -> int:
    current = await kube.get(endpoint_path(NS, name))
    return int(((current or {}).get("spec") or {}).get("replicas") or 0)


async def ready_replicas(kube: Kube, name: str) -> int:
    current = await kube.get(endpoint_path(NS, name))
    return int(((current or {}).get("status") or {}).get("readyReplicas") or 0)


def pod_ips(sandbox: Sandbox, name: str) -> list[str]:
    pods = sandbox.api.objects_of("v1/pods", NS)
    return [p["status"]["podIP"] for p in pods if p["metadata"]["name"].startswith(f"{name}-") and p.get("status")]


@contextlib.asynccontextmanager
async def load(ips: list[str], port: int, concurrency: int) -> AsyncIterator[None]:
    """Keep `concurrency` chat requests in flight against the given pods until the block ends."""
    stop = asyncio.Event()

    async def caller(session: aiohttp.ClientSession, index: int) -> None:
        url = f"http://{ips[index % len(ips)]}:{port}/v1/chat/completions"
        body = {"model": "mistralai/Voxtral-Mini-3B-2507", "messages": [{"role": "user", "content": "hi"}]}
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url, json=body) as response:
                    await response.read()

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(caller(session, i)) for i in range(concurrency)]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    ("policy", "up_reason", "down_reason"),
    [
        ("requests", "requests in flight above target", "highest recommendation of the last 3s"),
        ("workload", "queue", "low load"),
    ],
)
async def test_burst_scales_up_then_back_down_after_the_delay(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    vllm_port: int,
    policy: str,
    up_reason: str,
    down_reason: str,
) -> None:
    body = endpoint("asr")
    body["spec"]["autoscaling"] |= {"policy": policy, "targetActiveRequests": 3}
    await kube.create(endpoint_path(NS), body)
    await eventually(lambda: ready_replicas(kube, "asr"), timeout=30)

    async with load(pod_ips(sandbox, "asr"), vllm_port, concurrency=12):
        # 12 in flight on max-num-seqs 2: ~10 waiting against 2 tolerated (workload), or 12 in flight
        # against 3 a replica (requests) -> scale up at once.
        # The scale is written before the status that explains it: wait for the decision itself, whose
        # status write carries the queue it was made on.
        status = await eventually(lambda: _scaled_up_status(kube, "asr", 2, up_reason), timeout=15)
        assert status["queueDepth"] > 0, status  # 12 callers, 2 sequences a replica: some waited

    # Load stopped: back to minReplicas after scaleDownDelaySeconds.
    await eventually(lambda: _exactly(kube, "asr", 1), timeout=90)
    current = await kube.get(endpoint_path(NS, "asr"))
    assert down_reason in current["status"]["lastScaleDecision"]["reason"]
    assert condition(current, "Ready")["status"] == "True"
    reasons = [e.get("reason") for e in sandbox.api.objects_of("events.k8s.io/v1/events", NS)]
    assert "ScaledReplicasUp" in reasons
    assert "ScaledReplicasDown" in reasons
    denied = sorted(p for p in request_permissions(_operator_requests(sandbox)) if not rbac.allowed(*p))
    assert not denied, denied


async def test_a_load_beyond_max_replicas_is_one_warning_and_a_gauge_until_it_fits(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int
) -> None:
    body = endpoint("capped", maxReplicas=2)
    body["spec"]["autoscaling"] |= {"policy": "requests", "targetActiveRequests": 3}
    await kube.create(endpoint_path(NS), body)
    await eventually(lambda: ready_replicas(kube, "capped"), timeout=30)
    short = 'endpoint="capped",namespace="speech"'

    async def replicas_short() -> float | None:
        value = operator.metric("voxtral_operator_replicas_short", short)
        return value or None

    def limited_events() -> list[dict[str, Any]]:
        events = sandbox.api.objects_of("events.k8s.io/v1/events", NS)
        return [e for e in events if e.get("reason") == "ScalingLimited"]

    async with load(pod_ips(sandbox, "capped"), vllm_port, concurrency=24):
        # About 24 in flight at 3 a replica asks for 8 replicas; maxReplicas holds the endpoint at 2.
        await eventually(replicas_short, timeout=30)

        async def posted() -> list[dict[str, Any]]:
            return limited_events()

        await eventually(posted, timeout=15)
        # Many more ticks at the ceiling (each scrapes both replicas).
        scrapes = "voxtral_operator_scrape_duration_seconds_count"
        before = operator.metric(scrapes) or 0.0

        async def ticked() -> bool:
            return (operator.metric(scrapes) or 0.0) >= before + 16

        await eventually(ticked, timeout=30)
        assert await spec_replicas(kube, "capped") == 2

    events = limited_events()
    # One Event for the episode: posted again at every tick it would be a series (count, last seen).
    assert len(events) == 1, events
    assert "series" not in events[0], events[0]
    asked = re.search(r"the load asks for (\d+) replicas and maxReplicas is 2:", events[0]["note"])
    assert asked is not None, events[0]["note"]
    assert int(asked.group(1)) > 2, events[0]["note"]
    assert events[0]["type"] == "Warning"

    # The load gone, the gauge says so at the next tick.
    async def fits() -> bool:
        return operator.metric("voxtral_operator_replicas_short", short) == 0.0

    await eventually(fits, timeout=15)


@pytest.mark.parametrize(
    ("weights", "target"),
    [({}, 4), ({"weightsSource": "preloaded", "modelCache": {"size": "20Gi"}}, 5)],
    ids=["from-the-hub", "from-the-model-cache"],
)
async def test_the_default_target_follows_where_replicas_read_their_weights(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int, weights: dict[str, Any], target: int
) -> None:
    # No targetActiveRequests: the operator picks it by the next replica's cold-start path, and says which.
    body = endpoint("asr", **weights)
    await kube.create(endpoint_path(NS), body)
    await eventually(lambda: ready_replicas(kube, "asr"), timeout=30)
    async with load(pod_ips(sandbox, "asr"), vllm_port, concurrency=12):
        status = await eventually(lambda: _scaled_up_status(kube, "asr", 2, "requests in flight above"), timeout=30)
    assert f"target {target} a replica" in status["lastScaleDecision"]["reason"], status["lastScaleDecision"]


async def test_serving_is_checked_through_the_service(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int, tmp_path: Path
) -> None:
    # Without the gateway callers reach vLLM through the Service, so vLLM's own key is all that guards it.
    direct = {"enabled": False}
    await kube.create(endpoint_path(NS), endpoint("open", gateway=direct))
    # The spec asks for an API key, but these replicas were started without one: a misconfiguration
    # only a check through the Service can see.
    leaky = endpoint("leaky", gateway=direct, auth={"apiKeySecretRef": {"name": "leaky-key"}})
    await kube.create(endpoint_path(NS), leaky)

    async def serving(name: str, reason: str) -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, name))
        return current if condition(current, "Serving").get("reason") == reason else None

    current = await eventually(lambda: serving("open", "Answering"), timeout=40)
    assert condition(current, "Serving")["status"] == "True"
    assert condition(current, "Degraded")["status"] == "False"
    leaky = await eventually(lambda: serving("leaky", "AuthNotEnforced"), timeout=40)
    assert condition(leaky, "Serving")["status"] == "False"
    assert condition(leaky, "Degraded")["status"] == "True"
    assert condition(leaky, "Degraded")["reason"] == "AuthNotEnforced"
    assert condition(leaky, "Ready")["status"] == "True"  # pods are up; the endpoint is degraded


async def _scaled_up_status(kube: Kube, name: str, count: int, reason: str) -> dict[str, Any] | None:
    """The endpoint's status once it shows a decision for at least `count` replicas, for `reason`."""
    current = await kube.get(endpoint_path(NS, name))
    status = (current or {}).get("status") or {}
    decision = status.get("lastScaleDecision") or {}
    return status if decision.get("replicas", 0) >= count and reason in decision.get("reason", "") else None


async def _at_least(kube: Kube, name: str, count: int) -> bool:
    return await spec_replicas(kube, name) >= count


async def _exactly(kube: Kube, name: str, count: int) -> bool:
    return await spec_replicas(kube, name) == count


async def test_a_changed_spec_is_what_the_next_decision_is_made_on(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    # The autoscaler validates a spec again only when it changes (a thousand endpoints a tick): a
    # raised floor must still reach its decision.
    await kube.create(endpoint_path(NS), endpoint("floor"))
    await eventually(lambda: ready_replicas(kube, "floor"), timeout=30)

    async def decided(replicas: int) -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, "floor")) or {}
        return current if (current.get("status") or {}).get("desiredReplicas") == replicas else None

    await eventually(lambda: decided(1), timeout=15)
    await kube.merge(endpoint_path(NS, "floor"), {"spec": {"minReplicas": 2}})
    await eventually(lambda: decided(2), timeout=15)


async def test_hung_or_failing_scrapes_never_shrink_and_never_stall_others(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int
) -> None:
    # "stuck"'s replicas pass readiness but their /metrics hang (far beyond the scrape timeout).
    hung = ("--max-num-seqs", "2", "--metrics-hang-seconds", "30")
    sandbox.controllers.behave(NS, "stuck", Behaviour(PodBehaviour.SIMULATED, simulator_args=hung))
    await kube.create(endpoint_path(NS), endpoint("stuck", replicas=2, minReplicas=1))
    await kube.create(endpoint_path(NS), endpoint("busy"))
    # Both endpoints' replicas (each a process) start together with their gateway pods: on a busy
    # machine that can take a while; a failure says what the pods and the endpoint showed.
    try:
        await eventually(lambda: _ready_exactly(kube, "stuck", 2), timeout=120)
        await eventually(lambda: ready_replicas(kube, "busy"), timeout=120)
    except AssertionError as exc:
        pods = {p["metadata"]["name"]: p.get("status") for p in sandbox.api.objects_of("v1/pods", NS)}
        statuses = {n: (await kube.get(endpoint_path(NS, n)) or {}).get("status") for n in ("stuck", "busy")}
        raise AssertionError(f"{exc}; pods: {pods}; endpoints: {statuses}") from None

    # "busy" still scales up within a few scrape intervals...
    async with load(pod_ips(sandbox, "busy"), vllm_port, concurrency=12):
        await eventually(lambda: _at_least(kube, "busy", 2), timeout=30)
    # ...while "stuck", idle but with ready replicas whose metrics are missing, is never scaled down,
    # though its scaleDownDelaySeconds (3 s) passes several times over (after the person's scale to 2,
    # kept until both were ready and 3 s more, has ended).
    await asyncio.sleep(8)
    current = await kube.get(endpoint_path(NS, "stuck"))
    assert current["spec"]["replicas"] == 2
    assert current["status"].get("lastScaleDecision") is None  # no decision was ever written for it
    assert "scaleHold" not in current["status"], current["status"]["scaleHold"]


async def test_replicas_a_person_asked_for_are_kept_while_they_load_then_for_the_delay(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int
) -> None:
    # Replicas that take 10 s to load, on an idle endpoint whose scaleDownDelaySeconds is 1 s.
    slow = ("--max-num-seqs", "2", "--load-seconds", "10")
    sandbox.controllers.behave(NS, "event", Behaviour(PodBehaviour.SIMULATED, simulator_args=slow))
    manifest = endpoint("event", replicas=2, minReplicas=1)
    manifest["spec"]["autoscaling"]["scaleDownDelaySeconds"] = 1
    await kube.create(endpoint_path(NS), manifest)

    async def held() -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, "event"))
        return current if (current.get("status") or {}).get("scaleHold") else None

    current = await eventually(held, timeout=60)
    hold = current["status"]["scaleHold"]
    assert hold["replicas"] == 2
    assert "kept until all 2 are ready" in hold["message"], hold
    replicas_seen = []
    deadline = asyncio.get_running_loop().time() + 90
    while await ready_replicas(kube, "event") < 2:  # the whole load: never cancelled
        replicas_seen.append(await spec_replicas(kube, "event"))
        assert replicas_seen[-1] == 2, replicas_seen
        assert asyncio.get_running_loop().time() < deadline, f"2 replicas not ready in 90 s: {replicas_seen}"
        await asyncio.sleep(0.5)
    # Ready, then 1 s more: the hold ends and the idle endpoint steps down to what the load needs.
    await eventually(lambda: _exactly(kube, "event", 1), timeout=60)

    async def hold_gone() -> dict[str, Any] | None:  # status follows the scale write, a tick later at most
        current = await kube.get(endpoint_path(NS, "event"))
        return None if "scaleHold" in current["status"] else current

    current = await eventually(hold_gone, timeout=10)
    assert "scale down" in current["status"]["lastScaleDecision"]["reason"]


async def _ready_exactly(kube: Kube, name: str, count: int) -> bool:
    return await ready_replicas(kube, name) == count


async def test_what_the_autoscaler_learned_survives_a_restart(
    sandbox: Sandbox, kube: Kube, vllm_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    settings = {"vllmPort": vllm_port, "scrapeIntervalSeconds": 0.5, "autoscalerStateSaveSeconds": 1}
    config.write_text(yaml.safe_dump(settings))
    first = OperatorProcess(sandbox.kubeconfig, tmp_path / "first.log", "--config", str(config)).start()
    saved: dict[str, Any] = {}
    try:
        await kube.create(endpoint_path(NS), endpoint("learner"))
        await eventually(lambda: ready_replicas(kube, "learner"), timeout=60)

        async def learned_capacity() -> bool:
            found = await kube.get(f"/api/v1/namespaces/{NS}/configmaps/learner-autoscaler")
            state = yaml.safe_load(((found or {}).get("data") or {}).get("state.json") or "{}")
            saved.update(found or {})
            return bool(state.get("capacity"))

        async with load(pod_ips(sandbox, "learner"), vllm_port, concurrency=4):
            await eventually(learned_capacity, timeout=60)
    finally:
        first.stop()
    endpoint_uid = (await kube.get(endpoint_path(NS, "learner")))["metadata"]["uid"]
    assert [ref["uid"] for ref in saved["metadata"]["ownerReferences"]] == [endpoint_uid]  # goes with the endpoint
    # The first save creates the ConfigMap (an apply that creates needs `create`): the chart must grant it.
    denied = sorted(p for p in request_permissions(_operator_requests(sandbox)) if not rbac.allowed(*p))
    assert not denied, f"requests the chart's RBAC would refuse: {denied}"

    second = OperatorProcess(sandbox.kubeconfig, tmp_path / "second.log", "--config", str(config)).start()
    try:
        restored = "learner: restored the autoscaler's learned state"
        # An operator starting on a busy machine can take a while to import, list and begin scraping.
        await eventually(lambda: _logged(tmp_path / "second.log", restored), timeout=90)
    finally:
        second.stop()


async def test_a_configmap_named_like_the_saved_state_but_not_the_endpoints_is_left_untouched(
    sandbox: Sandbox, kube: Kube, vllm_port: int, tmp_path: Path
) -> None:
    """`squatter-autoscaler` made by someone else: the endpoint `squatter` neither restores it nor saves
    into it (an apply would take it over, with an owner reference that garbage-collects it), and says so.
    `learner` beside it, under the same load, shows that a save was due."""
    config = tmp_path / "config.yaml"
    settings = {"vllmPort": vllm_port, "scrapeIntervalSeconds": 0.5, "autoscalerStateSaveSeconds": 1}
    config.write_text(yaml.safe_dump(settings))
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "squatter-autoscaler", "namespace": NS, "labels": {"team": "billing"}},
        "data": {"state.json": '{"days": []}', "owner": "billing"},
    }
    await kube.create(f"/api/v1/namespaces/{NS}/configmaps", foreign)
    log = tmp_path / "operator.log"
    operator = OperatorProcess(sandbox.kubeconfig, log, "--config", str(config)).start()
    try:
        await kube.create(endpoint_path(NS), endpoint("squatter"))
        await kube.create(endpoint_path(NS), endpoint("learner"))
        await eventually(lambda: ready_replicas(kube, "squatter"), timeout=60)
        await eventually(lambda: ready_replicas(kube, "learner"), timeout=60)

        async def learned(name: str) -> bool:
            found = await kube.get(f"/api/v1/namespaces/{NS}/configmaps/{name}-autoscaler")
            state = yaml.safe_load(((found or {}).get("data") or {}).get("state.json") or "{}")
            return bool(state.get("capacity"))

        async with load(pod_ips(sandbox, "squatter") + pod_ips(sandbox, "learner"), vllm_port, concurrency=8):
            await eventually(lambda: learned("learner"), timeout=60)
            await asyncio.sleep(3)  # three save intervals more for the squatter's learned state
        conflict = "ConfigMap squatter-autoscaler exists and is not owned by this endpoint"
        await eventually(lambda: _logged(log, conflict), timeout=30)
    finally:
        operator.stop()
    kept = await kube.get(f"/api/v1/namespaces/{NS}/configmaps/squatter-autoscaler")
    assert kept is not None, "the foreign ConfigMap is gone"
    assert kept["data"] == foreign["data"], kept["data"]
    assert not kept["metadata"].get("ownerReferences"), kept["metadata"]
    assert "squatter: restored the autoscaler's learned state" not in log.read_text()
    events = [e for e in sandbox.api.objects_of("events.k8s.io/v1/events", NS) if e.get("reason") == "NameConflict"]
    assert any(conflict in e.get("note", "") and e["regarding"]["name"] == "squatter" for e in events), events


async def test_a_restarted_operator_does_not_take_its_predecessors_scale_for_a_persons(
    sandbox: Sandbox, kube: Kube, vllm_port: int, tmp_path: Path
) -> None:
    """spec.replicas written by the last operator, on a server that names no owner (this one keeps no
    managedFields): the next one reads its predecessor's write from status.lastScaleDecision and holds
    no person's floor; the idle endpoint steps down after scaleDownDelaySeconds."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"vllmPort": vllm_port, "scrapeIntervalSeconds": 0.5}))
    body = endpoint("inherited")
    body["spec"]["autoscaling"] |= {"targetActiveRequests": 3}
    first = OperatorProcess(sandbox.kubeconfig, tmp_path / "first.log", "--config", str(config)).start()
    try:
        await kube.create(endpoint_path(NS), body)
        await eventually(lambda: ready_replicas(kube, "inherited"), timeout=30)
        async with load(pod_ips(sandbox, "inherited"), vllm_port, concurrency=12):
            # 12 in flight against 3 a replica: maxReplicas (3), written and shown in status.
            await eventually(lambda: _scaled_and_shown(kube, "inherited", 3), timeout=30)
            first.stop()  # under load: the scale-up is the last thing it wrote
    finally:
        first.stop()
    assert await _scaled_and_shown(kube, "inherited", 3)

    second = OperatorProcess(sandbox.kubeconfig, tmp_path / "second.log", "--config", str(config)).start()
    try:
        seen: list[tuple[int, Any]] = []
        deadline = asyncio.get_running_loop().time() + 120
        while not seen or seen[-1][0] != 1:
            current = await kube.get(endpoint_path(NS, "inherited"))
            seen.append((int(current["spec"]["replicas"]), (current.get("status") or {}).get("scaleHold")))
            assert seen[-1][1] is None, f"the predecessor's scale held as a person's: {seen[-1]}"
            assert asyncio.get_running_loop().time() < deadline, f"never back to 1: {seen[-5:]}"
            await asyncio.sleep(0.2)
        current = await kube.get(endpoint_path(NS, "inherited"))
        assert "scale down" in current["status"]["lastScaleDecision"]["reason"], current["status"]

        # A person's scale through /scale (no time recorded): a floor, and after a restart the same floor,
        # dated as the last operator showed it, not from the new one's first sight of it.
        await kube.merge(endpoint_path(NS, "inherited"), {"spec": {"autoscaling": {"scaleDownDelaySeconds": 300}}})
        await kube.merge(endpoint_path(NS, "inherited") + "/scale", {"spec": {"replicas": 2}})
        held = await eventually(lambda: _hold_until(kube, "inherited"), timeout=60)
    finally:
        second.stop()
    await asyncio.sleep(1.5)  # a restart in a later second: a floor dated anew would show another setAt
    third = OperatorProcess(sandbox.kubeconfig, tmp_path / "third.log", "--config", str(config)).start()
    try:
        ticks = "voxtral_operator_scrape_duration_seconds_count"
        await eventually(lambda: asyncio.to_thread(lambda: (third.metric(ticks) or 0) >= 6), timeout=90)
        current = await kube.get(endpoint_path(NS, "inherited"))
        shown = current["status"].get("scaleHold")
        assert shown == held, f"after the restart {shown}, before it {held}"
        assert current["spec"]["replicas"] == 2
    finally:
        third.stop()


async def _hold_until(kube: Kube, name: str) -> dict[str, Any] | None:
    """status.scaleHold once its end is known (all the person's replicas ready)."""
    hold = ((await kube.get(endpoint_path(NS, name))).get("status") or {}).get("scaleHold")
    return hold if hold and hold.get("until") else None


async def _scaled_and_shown(kube: Kube, name: str, count: int) -> bool:
    current = await kube.get(endpoint_path(NS, name))
    shown = ((current.get("status") or {}).get("lastScaleDecision") or {}).get("replicas")
    return current["spec"].get("replicas") == shown == count


async def _logged(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text)


def _operator_requests(sandbox: Sandbox) -> list[Any]:
    return [r for r in sandbox.api if "kubectl-test" not in r.headers.get("User-Agent", "")]


async def test_a_refused_save_of_what_the_autoscaler_learned_waits_for_the_save_interval(
    sandbox: Sandbox, kube: Kube, vllm_port: int, tmp_path: Path
) -> None:
    """A refused save (RBAC, quota, a webhook) is tried again after the save interval, not at every
    tick: at 5,000 endpoints, every endpoint's refused save at every tick took the API client's
    connections from the reconciles."""
    save_seconds = 4.0
    config = tmp_path / "config.yaml"
    settings = {"vllmPort": vllm_port, "scrapeIntervalSeconds": 0.5, "autoscalerStateSaveSeconds": save_seconds}
    config.write_text(yaml.safe_dump(settings))
    sandbox.api["patch", kmock.resource("", "v1", "configmaps"), kmock.name("refused-autoscaler")] << 403
    operator = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()

    def saves() -> int:
        return sum(
            1 for r in _operator_requests(sandbox) if r.method == kmock.method.PATCH and r.name == "refused-autoscaler"
        )

    try:
        await kube.create(endpoint_path(NS), endpoint("refused"))
        await eventually(lambda: ready_replicas(kube, "refused"), timeout=60)
        async with load(pod_ips(sandbox, "refused"), vllm_port, concurrency=4):

            async def refused_once() -> bool:
                return saves() > 0

            await eventually(refused_once, timeout=60)
            first = saves()
            window = 2.5 * save_seconds  # 20 ticks
            await asyncio.sleep(window)
            tried = saves() - first
    finally:
        operator.stop()
    # At most one try per interval: 2 in the window (3 if the first try fell early in it).
    assert tried <= 3, f"{tried} tries to save in {window:.0f} s after a refusal, one due every {save_seconds} s"
