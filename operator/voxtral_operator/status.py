"""Pure: the endpoint's status from what its children report.

Conditions keep their lastTransitionTime unless their status flips, so a steady endpoint
computes the same status every time and the operator writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voxtral_operator import capacity

JSON = dict[str, Any]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SERVING = "Serving"
# False while pods wait for a node or cannot be created; its lastTransitionTime says since when.
PODS_SCHEDULED = "PodsScheduled"
OWN_CONDITIONS = (READY, PROGRESSING, DEGRADED, SERVING, PODS_SCHEDULED)

# Reasons, most blocking first: the first one found among the pods names the blocker.
INVALID_SPEC = "InvalidSpec"
POD_CREATION_FAILED = "PodCreationFailed"
IMAGE_PULL_FAILED = "ImagePullFailed"
# The kubelet cannot start a container: a Secret (or key) its env names is missing, or other config.
SECRET_MISSING = "SecretMissing"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
OOM_KILLED = "OOMKilled"
CRASH_LOOP = "CrashLoop"
WAITING_FOR_GPU = "WaitingForGPU"
# The scheduler nominated a node where lower-priority pods (lent reserved GPUs) are being preempted.
WAITING_FOR_PREEMPTION = "WaitingForPreemption"
UNSCHEDULABLE = "Unschedulable"
LOADING = "Loading"
PENDING = "Pending"
SUSPENDED = "Suspended"
SCALED_TO_ZERO = "ScaledToZero"
AVAILABLE = "Available"
GATEWAY_UNAVAILABLE = "GatewayUnavailable"
# The status fields the autoscaler writes (under its own field manager); the reconciler never sends them.
AUTOSCALER_FIELDS = (
    "queueDepth",
    "queuedAudioSeconds",
    "desiredReplicas",
    "lastScaleDecision",
    "scaleHold",
    "coldStartSeconds",
)
SCHEDULED = "Scheduled"
# Blockers a person must remove: the endpoint is Failed (Degraded while some replica serves).
FAILURE_REASONS = (
    POD_CREATION_FAILED,
    SECRET_MISSING,
    CONTAINER_CONFIG_ERROR,
    IMAGE_PULL_FAILED,
    OOM_KILLED,
    CRASH_LOOP,
)
# Blockers that may clear by themselves (a GPU frees up, the cluster autoscaler adds a node):
# the endpoint stays Pending, and PodsScheduled says since when it has waited.
WAITING_REASONS = (WAITING_FOR_GPU, UNSCHEDULABLE, WAITING_FOR_PREEMPTION)
BLOCKER_ORDER = (*FAILURE_REASONS, *WAITING_REASONS, LOADING, PENDING)

# The CRD's limit on a condition's message is 4096; API server messages (PodSecurity) can be long.
MAX_MESSAGE = 2048

_IMAGE_PULL_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
# The kubelet's words (pkg/kubelet/kubelet_pods.go) when a container's env names a missing Secret or key.
_SECRET_NOT_FOUND = re.compile(r'secret "(?P<name>[^"]+)" not found')
_SECRET_KEY_NOT_FOUND = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<namespace>[^/\s]+)/(?P<name>\S+)")


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str


def pod_summary(pod: Mapping[str, Any]) -> JSON:
    """The few pod fields status needs (what the operator keeps in memory per pod)."""
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    containers = status.get("containerStatuses") or []
    running = ((containers[0].get("state") or {}).get("running") or {}) if containers else {}
    ready_since = next(
        (c.get("lastTransitionTime") for c in conditions if c.get("type") == "Ready" and c.get("status") == "True"),
        None,
    )
    return {
        "name": pod.get("metadata", {}).get("name"),
        "pool": (pod.get("metadata", {}).get("labels") or {}).get(capacity.POOL_LABEL),
        "nominatedNode": status.get("nominatedNodeName"),
        # When the container started and when the pod turned Ready: the replica's load time (coldstart.py).
        "startedAt": running.get("startedAt"),
        "readySince": ready_since,
        "ip": status.get("podIP"),
        "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        "phase": status.get("phase"),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in status.get("conditions") or []
        ],
        "containerStatuses": [
            {
                "ready": c.get("ready", False),
                "started": c.get("started"),
                "restartCount": c.get("restartCount", 0),
                "waiting": (c.get("state") or {}).get("waiting"),
                "lastTerminated": (c.get("lastState") or {}).get("terminated"),
                "terminated": (c.get("state") or {}).get("terminated"),
            }
            for c in status.get("containerStatuses") or []
        ],
        "deleting": bool(pod.get("metadata", {}).get("deletionTimestamp")),
        # Bound to a node and not finished: its GPUs are allocated (a terminating pod still holds them).
        "holdsNode": bool((pod.get("spec") or {}).get("nodeName"))
        and status.get("phase") not in ("Succeeded", "Failed"),
    }


def container_config_problem(pod_name: object, message: str) -> PodProblem:
    """CreateContainerConfigError, from the kubelet's message alone (the operator reads no Secret):
    name the missing Secret and key when that is what it is."""
    missing = _SECRET_NOT_FOUND.search(message)
    if missing:
        return PodProblem(
            SECRET_MISSING,
            f"pod {pod_name} cannot start: Secret {missing['name']} is missing (kubelet: {message}); "
            "create it or correct the name the spec gives",
        )
    no_key = _SECRET_KEY_NOT_FOUND.search(message)
    if no_key:
        return PodProblem(
            SECRET_MISSING,
            f"pod {pod_name} cannot start: Secret {no_key['name']} has no key {no_key['key']} "
            f"(kubelet: {message}); add the key or correct the key the spec gives",
        )
    return PodProblem(CONTAINER_CONFIG_ERROR, f"pod {pod_name} cannot start: {message}")


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """Why a pod is not serving, or None when it is ready."""
    name = pod.get("name")
    conditions = {c["type"]: c for c in pod.get("conditions") or []}
    scheduled = conditions.get("PodScheduled")
    if capacity.waits_for_preemption(pod):
        return PodProblem(
            WAITING_FOR_PREEMPTION,
            f"pod {name} waits for lower-priority pods on node {pod.get('nominatedNode')} to be preempted",
        )
    if scheduled and scheduled.get("status") == "False":
        message = scheduled.get("message") or ""
        if "nvidia.com/gpu" in message:
            return PodProblem(WAITING_FOR_GPU, f"pod {name} waits for a GPU: {message}")
        return PodProblem(UNSCHEDULABLE, f"pod {name} cannot be scheduled: {message}")
    for container in pod.get("containerStatuses") or []:
        waiting = container.get("waiting") or {}
        last = container.get("lastTerminated") or {}
        terminated = container.get("terminated") or {}
        if waiting.get("reason") == "CreateContainerConfigError":
            return container_config_problem(name, str(waiting.get("message") or "CreateContainerConfigError"))
        if waiting.get("reason") in _IMAGE_PULL_WAITING:
            return PodProblem(IMAGE_PULL_FAILED, f"pod {name}: {waiting.get('message') or waiting['reason']}")
        if "OOMKilled" in (last.get("reason"), terminated.get("reason")):
            return PodProblem(OOM_KILLED, f"pod {name}: vLLM was killed for exceeding its memory limit")
        if waiting.get("reason") == "CrashLoopBackOff":
            restarts = container.get("restartCount", 0)
            return PodProblem(
                CRASH_LOOP,
                f"pod {name} is crash-looping ({restarts} restarts, last exit code {last.get('exitCode')})",
            )
    if pod.get("phase") == "Running":
        if conditions.get("Ready", {}).get("status") == "True":
            return None
        return PodProblem(LOADING, f"pod {name} is loading the model")
    return PodProblem(PENDING, f"pod {name} is {pod.get('phase') or 'Pending'}")


def make_condition(
    previous: Mapping[str, JSON],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> JSON:
    value = "True" if status else "False"
    message = message[:MAX_MESSAGE]
    old = previous.get(type_)
    changed = old is None or old.get("status") != value
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else old["lastTransitionTime"],  # type: ignore[index]
        "observedGeneration": generation,
    }


def deployment_problem(deployment: Mapping[str, Any] | None) -> PodProblem | None:
    """Pods the Deployment's ReplicaSet cannot create, with the API server's own words: a missing
    PriorityClass, an exhausted quota, a PodSecurity or admission refusal (reason FailedCreate)."""
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            message = condition.get("message") or condition.get("reason") or "FailedCreate"
            return PodProblem(POD_CREATION_FAILED, f"the API server refuses the pods: {message}")
    return None


def _pod_problems(pods: Iterable[Mapping[str, Any]], overflow: bool = False) -> list[PodProblem]:
    # By pod name, so the same pods always name the same blocker (no status flip-flop between them).
    live = sorted((pod for pod in pods if not pod.get("deleting")), key=lambda pod: str(pod.get("name")))
    if overflow:
        # A reserved pod with no room is what the overflow pool is for: no problem while an overflow
        # pod stands in for it (the overflow pod's own wait, if any, is the one reported).
        covering = sum(1 for pod in live if capacity.pool_of(pod) == capacity.OVERFLOW)
        covered = [pod for pod in live if capacity.waits_for_room(pod)][:covering]
        live = [pod for pod in live if pod not in covered]
    return [p for p in (pod_problem(pod) for pod in live) if p is not None]


def _with_gpu_need(problem: PodProblem, tensor_parallel_size: int) -> PodProblem:
    """A GPU wait says what one replica needs: all its GPUs on a single node, which the scheduler's
    count of nodes does not say (a tensor-parallel size above any node's GPUs waits for ever)."""
    if problem.reason != WAITING_FOR_GPU:
        return problem
    need = (
        f"each replica needs {tensor_parallel_size} nvidia.com/gpu on one node (tensorParallelSize "
        f"{tensor_parallel_size}); if no node of the pool has that many, choose a GPU type or pool that has"
        if tensor_parallel_size > 1
        else "each replica needs 1 nvidia.com/gpu"
    )
    pod, _, scheduler = problem.message.partition(" waits for a GPU: ")
    return PodProblem(WAITING_FOR_GPU, f"{pod} waits for a GPU: {need}; the scheduler: {scheduler}")


def _first(problems: list[PodProblem], reasons: Iterable[str]) -> PodProblem | None:
    for reason in reasons:
        for problem in problems:
            if problem.reason == reason:
                return problem
    return None


def _ready_count(ready: int, desired: int) -> str:
    """Ready against wanted; replicas beyond what is wanted (a scale-down or rollout still draining) apart."""
    if ready <= desired:
        return f"{ready}/{desired} replicas ready"
    return f"{desired}/{desired} replicas ready, {ready - desired} more still stopping"


def compute_status(
    *,
    generation: int | None,
    desired_replicas: int,
    deployment: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    previous: Mapping[str, Any],
    url: str,
    selector: str,
    tensor_parallel_size: int,
    now: str,
    serving: tuple[bool, str, str] | None = None,
    refused: tuple[str, str] | None = None,
    suspended: bool = False,
    gateway_ready: int | None = None,
    overflow: bool = False,
) -> JSON:
    """overflow: the endpoint has an overflow pool (spec.nodePool.overflow).
    serving: the last active check through the Service (ok, reason, message), if any.
    refused: a child the API would not take (reason, message), if any.
    gateway_ready: ready gateway pods when callers come through a gateway, else None."""
    pods = list(pods)
    previous_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    dep_status = (deployment or {}).get("status") or {}
    replicas = int(dep_status.get("replicas") or 0)
    # The Deployment counts a pod ready a moment after the pod says so: counting the pods too keeps
    # the phase from passing Loading -> Pending -> Ready in that moment.
    ready = max(
        int(dep_status.get("readyReplicas") or 0), sum(1 for p in pods if p.get("ready") and not p.get("deleting"))
    )
    updated = int(dep_status.get("updatedReplicas") or 0)
    dep_conditions = {c.get("type"): c for c in dep_status.get("conditions") or []}
    creation = deployment_problem(deployment)
    pod_problems = [_with_gpu_need(p, tensor_parallel_size) for p in _pod_problems(pods, overflow)]
    problem = creation or _first(pod_problems, BLOCKER_ORDER)
    unscheduled = creation or _first(pod_problems, WAITING_REASONS)
    waiting = problem is not None and problem.reason in WAITING_REASONS
    # A long wait for a GPU is still a wait: the deadline does not fail it.
    deadline_exceeded = (
        dep_conditions.get("Progressing", {}).get("reason") == "ProgressDeadlineExceeded" and not waiting
    )
    rolled_out = (
        deployment is not None
        and dep_status.get("observedGeneration") == deployment.get("metadata", {}).get("generation")
        and updated >= desired_replicas
        and ready >= desired_replicas
        and replicas == desired_replicas
    )

    # Behind a gateway, replicas serve callers only once a gateway pod can take their requests.
    reachable = gateway_ready is None or gateway_ready >= 1
    if suspended:
        ready_reason, ready_message = SUSPENDED, "spec.suspended is true: no replicas, GPUs freed, model cache kept"
        if replicas:
            ready_message += f"; {replicas} replica(s) still stopping"
    elif ready >= 1 and not reachable:
        ready_reason = GATEWAY_UNAVAILABLE
        ready_message = (
            f"{_ready_count(ready, desired_replicas)}, but no gateway pod is ready: callers cannot reach them"
        )
    elif ready >= 1:
        ready_reason, ready_message = AVAILABLE, _ready_count(ready, desired_replicas)
    elif problem is not None:
        ready_reason, ready_message = problem.reason, problem.message
    elif desired_replicas == 0:
        ready_reason, ready_message = SCALED_TO_ZERO, "no replicas: the next request starts one"
    else:
        ready_reason, ready_message = PENDING, "waiting for the first replica"

    failing = problem is not None and problem.reason in FAILURE_REASONS
    not_serving = serving is not None and not serving[0] and ready >= 1
    if refused is not None:
        degraded_reason, degraded_message = refused
    elif not_serving:
        assert serving is not None
        degraded_reason, degraded_message = serving[1], serving[2]
    elif deadline_exceeded:
        degraded_reason, degraded_message = "ProgressDeadlineExceeded", dep_conditions["Progressing"].get("message", "")
    elif failing:
        assert problem is not None
        degraded_reason, degraded_message = problem.reason, problem.message
    else:
        degraded_reason, degraded_message = "AsExpected", ""
    degraded = deadline_exceeded or failing or not_serving or refused is not None

    if rolled_out:
        progressing_reason, progressing_message = "Complete", _ready_count(ready, desired_replicas)
    elif replicas < desired_replicas or ready < desired_replicas:
        progressing_reason = problem.reason if problem is not None else "ScalingUp"
        progressing_message = _ready_count(ready, desired_replicas)
    else:
        progressing_reason, progressing_message = "RollingOut", f"{updated}/{desired_replicas} replicas updated"

    conditions = [
        make_condition(
            previous_conditions,
            READY,
            ready >= 1 and reachable and not suspended,
            ready_reason,
            ready_message,
            generation,
            now,
        ),
        make_condition(
            previous_conditions, PROGRESSING, not rolled_out, progressing_reason, progressing_message, generation, now
        ),
        make_condition(previous_conditions, DEGRADED, degraded, degraded_reason, degraded_message, generation, now),
    ]
    if unscheduled is not None:
        scheduled = (False, unscheduled.reason, unscheduled.message)
    else:
        scheduled = (True, SCHEDULED, "every pod has a node")
    conditions.append(make_condition(previous_conditions, PODS_SCHEDULED, *scheduled, generation, now))
    if serving is not None:
        conditions.append(
            make_condition(previous_conditions, SERVING, serving[0], serving[1], serving[2], generation, now)
        )
    # The operator's conditions this function does not compute (Serving before its first check) are
    # carried over; other writers' conditions are theirs (status is applied per field manager).
    computed = {c["type"] for c in conditions}
    conditions += [c for t, c in previous_conditions.items() if t not in computed and t in OWN_CONDITIONS]

    if suspended:
        phase = SUSPENDED
    elif ready >= 1 and not reachable:
        phase = "Pending"
    elif ready >= 1:
        phase = "Degraded" if degraded else "Ready"
    elif failing or deadline_exceeded or refused is not None:
        phase = "Failed"
    elif problem is not None and problem.reason == LOADING:
        phase = "Loading"
    elif desired_replicas == 0 and replicas == 0:
        phase = SCALED_TO_ZERO
    else:
        phase = "Pending"

    status = {
        "phase": phase,
        "conditions": conditions,
        "replicas": replicas,
        "readyReplicas": ready,
        "replicaSummary": f"{min(ready, desired_replicas)}/{desired_replicas}",
        "url": url,
        "selector": selector,
        "observedGeneration": generation,
        "tensorParallelSize": tensor_parallel_size,
        "gpus": sum(1 for pod in pods if pod.get("holdsNode")) * tensor_parallel_size,
    }
    if overflow:
        status["gpusByPool"] = capacity.gpus_by_pool(pods, tensor_parallel_size)
    return status


EXPOSED = "Exposed"
# What vLLM serves besides the OpenAI API routes, none of it behind its --api-key.
UNKEYED_VLLM_ROUTES = "/invocations, /tokenize, /detokenize and /metrics"


def with_exposure(
    status: JSON, *, previous: Mapping[str, Any], gateway: bool, caller_keys: bool, generation: int | None, now: str
) -> JSON:
    """`status` with the Exposed condition: what callers the NetworkPolicy admits can reach without a key."""
    previous_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    if gateway:
        condition = make_condition(
            previous_conditions,
            EXPOSED,
            not caller_keys,
            "GatewayEnabled" if caller_keys else "NoCallerKeys",
            "the gateway forwards only the OpenAI API routes, each after a caller key check; vLLM admits only the "
            "gateway and the operator"
            if caller_keys
            else "the gateway forwards only the OpenAI API routes, with no key asked (spec.auth names none)",
            generation,
            now,
        )
    else:
        if caller_keys:
            reach = f"its /v1 routes check the caller key, but {UNKEYED_VLLM_ROUTES} answer without one"
        else:
            reach = f"spec.auth names no key: every route answers without one, {UNKEYED_VLLM_ROUTES} among them"
        condition = make_condition(
            previous_conditions,
            EXPOSED,
            True,
            "GatewayDisabled",
            f"gateway.enabled is false: callers the NetworkPolicy admits reach vLLM directly; {reach}",
            generation,
            now,
        )
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != EXPOSED]
    return {**status, "conditions": [*conditions, condition]}


def invalid_status(*, generation: int | None, previous: Mapping[str, Any], message: str, now: str) -> JSON:
    """Status of an endpoint the operator refuses to render: children untouched, the reason stated."""
    previous_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    conditions = [
        make_condition(previous_conditions, READY, False, INVALID_SPEC, message, generation, now),
        make_condition(
            previous_conditions, PROGRESSING, False, INVALID_SPEC, "fix the spec to continue", generation, now
        ),
        make_condition(previous_conditions, DEGRADED, True, INVALID_SPEC, message, generation, now),
    ]
    return {
        **{
            k: v
            for k, v in previous.items()
            if k not in ("conditions", "phase", "observedGeneration", *AUTOSCALER_FIELDS)
        },
        "phase": "Failed",
        "conditions": conditions,
        "observedGeneration": generation,
    }


def condition_of(status: Mapping[str, Any], type_: str) -> JSON | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def secrets_missing_check(namespace: str, missing: Iterable[tuple[str, str]]) -> tuple[bool, str, str] | None:
    """The Serving check's result when the gateway reports Secrets it cannot find, (name, key or "")
    each; None when it reports none. Names only: never a Secret's data."""
    named = [f"Secret {namespace}/{name}" + (f" key {key!r}" if key else "") for name, key in sorted(set(missing))]
    if not named:
        return None
    return (
        False,
        SECRET_MISSING,
        "the gateway finds missing or empty: " + "; ".join(named) + ". Requests are refused until it exists "
        "(with no caller key at all, every request gets 503 endpoint_misconfigured); check the name in spec.auth",
    )
