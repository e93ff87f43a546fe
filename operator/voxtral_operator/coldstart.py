"""Pure: which way a replica gets its weights (its cold-start path), whether the cache warmer has staged
them, and the conditions that say so.

Paths:
- ColdDownload: vLLM downloads the weights from the hub while the replica holds its GPUs (no model
  cache, or a model cache nothing has filled yet);
- SharedCache: the weights are read from the model cache volume, filled by the cache warmer, by an
  earlier replica, or preloaded there;
- LocalCache: the weights are on the node's own disk: baked into the image (weightsSource preloaded
  without a model cache), or in the pod's emptyDir after a container restart (it outlives the container).

The path is derived from the spec and what the cluster shows, not reported by vLLM: an operator that
reads no pod logs cannot see more. Conditions keep lastTransitionTime unless their status flips, and
their messages change only when a replica starts or becomes ready, so a steady endpoint writes nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voxtral_operator.api import models
from voxtral_operator.status import make_condition

JSON = dict[str, Any]

COLD_DOWNLOAD = "ColdDownload"
SHARED_CACHE = "SharedCache"
LOCAL_CACHE = "LocalCache"
PATHS = (COLD_DOWNLOAD, SHARED_CACHE, LOCAL_CACHE)
PATH_WORDS = {
    COLD_DOWNLOAD: "downloading the weights from the hub",
    SHARED_CACHE: "reading the weights from the shared model cache",
    LOCAL_CACHE: "reading the weights from the node's local disk",
}

WEIGHTS_STAGED = "WeightsStaged"
LOADING = "Loading"
STAGED = "Staged"
STAGING = "StagingWeights"
STAGING_FAILED = "StagingFailed"


@dataclass(frozen=True)
class Staging:
    """The cache warmer's state: staged (the Job completed), failed, or still at work."""

    reason: str  # STAGED, STAGING or STAGING_FAILED
    message: str

    @property
    def staged(self) -> bool:
        return self.reason == STAGED


def staging(job_name: str, job: Mapping[str, Any] | None) -> Staging:
    """What the warmer Job's conditions say (the Job controller's Complete and Failed)."""
    if job is None:
        return Staging(STAGING, f"the cache warmer Job {job_name} is being created; replicas wait for it")
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
    if (conditions.get("Complete") or {}).get("status") == "True":
        return Staging(STAGED, f"the cache warmer Job {job_name} filled the model cache")
    failed = conditions.get("Failed") or {}
    if failed.get("status") == "True":
        why = failed.get("message") or failed.get("reason") or "failed"
        return Staging(
            STAGING_FAILED,
            f"the cache warmer Job {job_name} failed ({failed.get('reason') or 'Failed'}: {why}); "
            f"its pod's log says why (kubectl logs job/{job_name}). Replicas are not created; delete the Job "
            "to try again",
        )
    return Staging(STAGING, f"the cache warmer Job {job_name} is downloading the weights; replicas wait for it")


def start_path(spec: models.VoxtralEndpointSpec, *, staged: bool, cache_filled: bool, restarts: int = 0) -> str:
    """The path a replica (a new one by default; a restarted container with `restarts`) takes."""
    if spec.model_cache is None:
        if spec.weights_source == models.WeightsSource.PRELOADED or restarts > 0:
            return LOCAL_CACHE
        return COLD_DOWNLOAD
    if spec.weights_source == models.WeightsSource.PRELOADED or staged or cache_filled:
        return SHARED_CACHE
    return COLD_DOWNLOAD


def _epoch(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def load_seconds(pod: Mapping[str, Any]) -> float | None:
    """From the container's start to the pod's Ready: the load itself (image pull and scheduling before it)."""
    started, ready = _epoch(pod.get("startedAt")), _epoch(pod.get("readySince"))
    if started is None or ready is None or ready < started:
        return None
    return ready - started


def _restarts(pod: Mapping[str, Any]) -> int:
    return max((int(c.get("restartCount") or 0) for c in pod.get("containerStatuses") or []), default=0)


def with_cold_start(
    status: JSON,
    *,
    previous: Mapping[str, Any],
    spec: models.VoxtralEndpointSpec,
    warmer: Staging | None,
    pods: Iterable[Mapping[str, Any]],
    generation: int | None,
    now: str,
) -> JSON:
    """`status` with WeightsStaged (when the endpoint prestages) and Loading (once a replica has started);
    while the weights are not staged and no replica is ready, Ready and the phase say so."""
    previous_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    meta = (generation, now)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") not in (WEIGHTS_STAGED, LOADING)]
    status = dict(status)
    if warmer is not None:
        conditions.append(
            make_condition(previous_conditions, WEIGHTS_STAGED, warmer.staged, warmer.reason, warmer.message, *meta)
        )
        if not warmer.staged and not status.get("readyReplicas") and not spec.suspended:
            conditions = [
                make_condition(previous_conditions, "Ready", False, warmer.reason, warmer.message, *meta)
                if c.get("type") == "Ready"
                else c
                for c in conditions
            ]
            status["phase"] = "Failed" if warmer.reason == STAGING_FAILED else "Pending"
    live = sorted((p for p in pods if not p.get("deleting") and p.get("startedAt")), key=lambda p: str(p["name"]))
    staged = warmer is not None and warmer.staged
    ready = [p for p in live if p.get("ready")]
    # A replica that was ready (now or before) filled a shared cache for the ones after it.
    filled = bool(ready) or bool(previous.get("readyReplicas"))
    loading = [p for p in live if not p.get("ready")]
    loading_condition: JSON | None = None
    if loading:
        pod = loading[0]
        path = start_path(spec, staged=staged, cache_filled=filled and pod not in ready, restarts=_restarts(pod))
        more = f" ({len(loading) - 1} more loading)" if len(loading) > 1 else ""
        message = f"pod {pod['name']} is {PATH_WORDS[path]}, since {pod['startedAt']}{more}"
        loading_condition = make_condition(previous_conditions, LOADING, True, path, message, *meta)
    elif ready:
        pod = max(ready, key=lambda p: (_epoch(p.get("readySince")) or 0.0, str(p["name"])))
        old = previous_conditions.get(LOADING)
        # The path a ready replica took is what was said while it loaded; first seen ready: derive it.
        if old is not None and str(old.get("message", "")).startswith(f"pod {pod['name']} "):
            path = str(old.get("reason"))
        else:
            path = start_path(spec, staged=staged, cache_filled=bool(previous.get("readyReplicas")))
        took = load_seconds(pod)
        timing = f" in {took:.0f}s (container start to ready)" if took is not None else ""
        words = PATH_WORDS.get(path, path)
        message = f"pod {pod['name']} loaded{timing}, {words}"
        loading_condition = make_condition(previous_conditions, LOADING, False, path, message, *meta)
    elif LOADING in previous_conditions:
        loading_condition = previous_conditions[LOADING]
    if loading_condition is not None:
        conditions.append(loading_condition)
    status["conditions"] = conditions
    return status
