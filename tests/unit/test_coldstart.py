"""Cold start by path: the cache warmer Job and what waits for it, the compile caches on the model cache,
the image pre-pull, the Loading condition's path, and the autoscaler's cold start per path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from voxtral_operator import coldstart
from voxtral_operator.api import flags, models
from voxtral_operator.api.resolve import InvalidSpec
from voxtral_operator.autoscale.policy import Limits, Observation, State, decide
from voxtral_operator.config import OperatorConfig
from voxtral_operator.reconcile import ChildKey, Key, Reconciler
from voxtral_operator.render import render

from .test_reconcile_faults import OneEndpoint, Recording

CONFIG = OperatorConfig()
JSON = dict[str, Any]
MINI = "mistralai/Voxtral-Mini-3B-2507"


def _endpoint(name: str = "ep", **spec: Any) -> JSON:
    base = {"model": MINI, "gpu": {"type": "L4-24GB"}, "nodePool": {"nodeSelector": {"pool": "l4-speech"}}}
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": "speech", "uid": "u-1", "generation": 1},
        "spec": {**base, **spec},
    }


PRESTAGED = {"modelCache": {}, "coldStart": {"prestageWeights": True}}


def _kinds(objects: list[JSON], kind: str) -> list[JSON]:
    return [obj for obj in objects if obj["kind"] == kind]


def _vllm(objects: list[JSON]) -> JSON:
    (deployment,) = [d for d in _kinds(objects, "Deployment") if d["metadata"]["name"] == "ep"]
    container: JSON = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


# --- rendering -----------------------------------------------------------------------------------


def test_the_warmer_downloads_as_the_vllm_user_with_no_gpu_credentials_or_port() -> None:
    objects = render(_endpoint(**PRESTAGED), CONFIG)
    (job,) = _kinds(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["hf", "download", MINI]
    # Only what the mistral load format reads: the Hugging Face-format copy would double the download.
    assert container["command"][3:] == ["--include", "consolidated*.safetensors", "*.json"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "ports" not in container
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ep-cache"
    assert pod["nodeSelector"] == {"pool": "l4-speech", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "voxtral-cache-warmer"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # Its own policy: no connection in; DNS and HTTPS out when the platform renders egress.
    (policy,) = [p for p in _kinds(objects, "NetworkPolicy") if p["metadata"]["name"] == "ep-cache-warmer"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "voxtral-cache-warmer"
    assert "ingress" not in policy["spec"]


def test_the_warmer_job_is_renamed_when_its_immutable_template_changes() -> None:
    def job_name(**spec: Any) -> str:
        (job,) = _kinds(render(_endpoint("e" * 52, **PRESTAGED, **spec), CONFIG), "Job")
        return str(job["metadata"]["name"])

    h100 = {"gpu": {"type": "H100-80GB"}}
    same, again = job_name(**h100), job_name(**h100)
    other = job_name(**h100, model="mistralai/Voxtral-Small-24B-2507")
    assert same == again
    assert same != other
    assert len(same) <= 63, "a Job's name is a label value on its pods"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"coldStart": {"prestageWeights": True}}, "needs modelCache"),
        ({**PRESTAGED, "weightsSource": "preloaded"}, "weightsSource hub"),
    ],
    ids=["no-cache", "preloaded"],
)
def test_prestaging_needs_a_cache_to_fill_and_weights_to_download(spec: JSON, problem: str) -> None:
    with pytest.raises(InvalidSpec, match=problem):
        render(_endpoint(**spec), CONFIG)


def test_no_warmer_prepull_or_shared_compile_cache_unless_asked() -> None:
    objects = render(_endpoint(), CONFIG)
    assert not _kinds(objects, "Job")
    assert not _kinds(objects, "DaemonSet")
    env = {e["name"] for e in _vllm(objects)["env"]}
    assert "VLLM_CACHE_ROOT" not in env
    assert "--safetensors-load-strategy" not in _vllm(objects)["args"]


def test_compile_caches_live_on_the_model_cache_and_the_weights_are_read_whole() -> None:
    container = _vllm(render(_endpoint(modelCache={}), CONFIG))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_CACHE_ROOT"] == "/models/vllm"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/models/inductor"
    assert env["TRITON_CACHE_DIR"] == "/models/triton"
    args = container["args"]
    assert args[args.index("--safetensors-load-strategy") + 1] == "eager"
    # vLLM 0.33's parser (the generated table) reads it as its own option, once.
    parsed = flags.parse(args)
    assert parsed.problems == [], parsed.problems
    dests = [d for option in parsed.options for d in option.dests]
    assert dests.count("safetensors_load_strategy") == 1
    off = _vllm(render(_endpoint(modelCache={}, coldStart={"shareCompileCache": False}), CONFIG))
    assert "VLLM_CACHE_ROOT" not in {e["name"] for e in off["env"]}


def test_the_prepull_daemon_set_pulls_the_vllm_image_on_the_pool_and_holds_no_gpu() -> None:
    (daemon_set,) = _kinds(render(_endpoint(coldStart={"prepullImage": True}), CONFIG), "DaemonSet")
    pod = daemon_set["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == CONFIG.vllm_image
    assert init["command"] == ["true"]
    assert pod["nodeSelector"] == {"pool": "l4-speech", "nvidia.com/gpu.product": "NVIDIA-L4"}
    for container in (*pod["initContainers"], *pod["containers"]):
        assert "nvidia.com/gpu" not in container["resources"]["requests"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False


# --- the warmer's state and the paths ------------------------------------------------------------


def _job(*conditions: tuple[str, str, str]) -> JSON:
    return {
        "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]}
    }


def test_staging_follows_the_job_controllers_conditions() -> None:
    assert coldstart.staging("w", None).reason == coldstart.STAGING
    assert coldstart.staging("w", _job()).reason == coldstart.STAGING
    assert coldstart.staging("w", _job(("Complete", "", ""))).staged
    failed = coldstart.staging("w", _job(("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")))
    assert failed.reason == coldstart.STAGING_FAILED
    assert "BackoffLimitExceeded" in failed.message
    assert "kubectl logs job/w" in failed.message


@pytest.mark.parametrize(
    ("spec", "staged", "filled", "restarts", "path"),
    [
        ({}, False, False, 0, coldstart.COLD_DOWNLOAD),
        ({}, False, True, 0, coldstart.COLD_DOWNLOAD),  # an emptyDir: a new pod downloads again
        ({}, False, False, 2, coldstart.LOCAL_CACHE),  # a restarted container keeps its emptyDir
        ({"weightsSource": "preloaded"}, False, False, 0, coldstart.LOCAL_CACHE),  # in the image
        ({"modelCache": {}}, False, False, 0, coldstart.COLD_DOWNLOAD),  # the first fills the cache
        ({"modelCache": {}}, False, True, 0, coldstart.SHARED_CACHE),
        (PRESTAGED, True, False, 0, coldstart.SHARED_CACHE),
    ],
)
def test_start_path(spec: JSON, staged: bool, filled: bool, restarts: int, path: str) -> None:
    parsed = models.parse_spec(_endpoint(**spec)["spec"])
    assert coldstart.start_path(parsed, staged=staged, cache_filled=filled, restarts=restarts) == path


def _pod(name: str, *, ready: bool, started: str = "2026-12-02T10:00:00Z", ready_at: str | None = None) -> JSON:
    return {
        "name": name,
        "ready": ready,
        "startedAt": started,
        "readySince": ready_at if ready else None,
        "containerStatuses": [{"restartCount": 0}],
    }


def _cold(status: JSON, pods: list[JSON], warmer: coldstart.Staging | None, **spec: Any) -> JSON:
    return coldstart.with_cold_start(
        {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "Pending"}], **status},
        previous=status,
        spec=models.parse_spec(_endpoint(**spec)["spec"]),
        warmer=warmer,
        pods=pods,
        generation=1,
        now="2026-12-02T10:05:00Z",
    )


def _conditions(status: JSON) -> dict[str, JSON]:
    return {c["type"]: c for c in status["conditions"]}


def test_the_loading_condition_names_the_path_and_then_the_time_it_took() -> None:
    staged = coldstart.Staging(coldstart.STAGED, "filled")
    loading = _cold({}, [_pod("ep-a", ready=False)], staged, **PRESTAGED)
    condition = _conditions(loading)["Loading"]
    assert (condition["status"], condition["reason"]) == ("True", coldstart.SHARED_CACHE)
    assert condition["message"].startswith("pod ep-a is reading the weights from the shared model cache")

    done = _cold(loading, [_pod("ep-a", ready=True, ready_at="2026-12-02T10:00:37Z")], staged, **PRESTAGED)
    condition = _conditions(done)["Loading"]
    assert (condition["status"], condition["reason"]) == ("False", coldstart.SHARED_CACHE)
    assert "loaded in 37s" in condition["message"]
    # Nothing changed: the same status again (no write), lastTransitionTime kept.
    again = _cold(done, [_pod("ep-a", ready=True, ready_at="2026-12-02T10:00:37Z")], staged, **PRESTAGED)
    assert again["conditions"] == done["conditions"]


def test_replicas_wait_for_the_warmer_and_a_failed_one_fails_the_endpoint() -> None:
    waiting = _cold({}, [], coldstart.Staging(coldstart.STAGING, "downloading"), **PRESTAGED)
    assert waiting["phase"] == "Pending"
    assert _conditions(waiting)["Ready"]["reason"] == coldstart.STAGING
    assert _conditions(waiting)["WeightsStaged"]["status"] == "False"
    failed = _cold({}, [], coldstart.Staging(coldstart.STAGING_FAILED, "failed"), **PRESTAGED)
    assert failed["phase"] == "Failed"
    assert _conditions(failed)["Ready"]["reason"] == coldstart.STAGING_FAILED


# --- the reconciler holds the Deployment back ---------------------------------------------------


class WithChildren(OneEndpoint):
    def __init__(self, endpoint: JSON, children: dict[ChildKey, JSON]) -> None:
        super().__init__(endpoint)
        self.live = children

    def children(self, key: Key) -> dict[ChildKey, JSON]:
        return self.live


async def _reconcile(children: dict[ChildKey, JSON]) -> list[str]:
    endpoint = _endpoint(**PRESTAGED)
    client = Recording()
    view = WithChildren(endpoint, children)
    await Reconciler(client=client, config=CONFIG, view=view, post_event=lambda *_: None).reconcile(("speech", "ep"))
    return client.writes


async def test_the_deployment_is_created_only_once_the_weights_are_staged() -> None:
    (job,) = _kinds(render(_endpoint(**PRESTAGED), CONFIG), "Job")
    name = job["metadata"]["name"]
    writes = await _reconcile({})
    assert any(f"/jobs/{name}" in w for w in writes), writes
    assert not any("/deployments/ep?" in w or w.endswith("/deployments/ep") for w in writes), writes

    live = copy.deepcopy(job)
    live["status"] = _job(("Complete", "", ""))["status"]
    writes = await _reconcile({("Job", name): live})
    assert any(w.endswith("/deployments/ep") or "/deployments/ep?" in w for w in writes), writes


# --- the autoscaler learns a cold start per path -------------------------------------------------


def test_the_autoscaler_learns_a_cold_start_per_path() -> None:
    limits = Limits(min_replicas=1, max_replicas=4, cold_start_seconds=1500.0)
    state = State()
    seen = Observation(replicas=2, ready=1, start_path=coldstart.SHARED_CACHE)
    state = decide(limits, seen, state, now=0.0).state
    state = decide(limits, seen, state, now=1.0).state
    ready = Observation(replicas=2, ready=2, start_path=coldstart.SHARED_CACHE)
    decision = decide(limits, ready, state, now=121.0)
    learned = decision.state.cold_starts[coldstart.SHARED_CACHE]
    assert learned < 1500.0, decision.state.cold_starts
    assert coldstart.COLD_DOWNLOAD not in decision.state.cold_starts
    # Planning for a replica on another path uses that path's own figure (the prior until learned).
    other = decide(limits, Observation(replicas=2, ready=2, start_path=coldstart.COLD_DOWNLOAD), decision.state, 122.0)
    assert other.explanation.cold_start == 1500.0
    assert "(ColdDownload)" in other.explanation.capacity_text
    restored = State.from_dict(decision.state.to_dict())
    assert restored.cold_starts == decision.state.cold_starts
