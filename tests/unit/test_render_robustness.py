"""Inputs a fuzzer found: each either renders exactly or is refused as InvalidSpec, never a traceback."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from voxtral_operator.api.resolve import MAX_DEPTH, InvalidSpec, resolve
from voxtral_operator.config import OperatorConfig
from voxtral_operator.render import render, yaml_flow

CONFIG = OperatorConfig()


def _endpoint(metadata: Any = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}}
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "ep", "namespace": "team-a"} if metadata is None else metadata,
        "spec": {**base, **spec},
    }


def _args(objects: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "ep"]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("voxtral 🎙️", id="emoji"),
        pytest.param("\U0001d54d\U0001d560\U0001d569", id="astral-letters"),
        pytest.param("a\u2028b\u2029c\ufeffd\u0085e", id="yaml-line-breaks-and-bom"),
        pytest.param("back\\slash, \"quotes\", 'single', {braces}: [and], #hash", id="escapes"),
        pytest.param("ünïcödé ✓", id="bmp"),
    ],
)
def test_any_unicode_in_a_free_text_field_renders_exactly(text: str) -> None:
    objects = render(_endpoint(servedModelName=text, engine={"extraArgs": ["--response-role", text]}), CONFIG)
    args = _args(objects)
    assert args[args.index("--served-model-name") + 1] == text
    assert args[-1] == text
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34", strict=True)
        assert yaml.safe_load(yaml.safe_dump(obj, allow_unicode=True)) == obj


@pytest.mark.parametrize(
    "value",
    ["", "x", "🎙️", "a\x00b", "\x7f\x9f", "\U0010ffff", {"k": ["v", 1, 0.5, True, None]}, [], {}],
)
def test_yaml_flow_reads_back_as_the_value(value: Any) -> None:
    assert yaml.safe_load(yaml_flow(value)) == value


REFUSED = [
    pytest.param(_endpoint(modelCache={"storageClassName": "ssd-🎙️"}), "spec.modelCache.storageClassName", id="emoji"),
    pytest.param(_endpoint({"name": [["a", 1]]}), "metadata.name", id="name-not-a-string"),
    pytest.param(_endpoint({"name": "Not_A_Label"}), "metadata.name", id="name-not-dns"),
    # The API server takes "1ep" for the endpoint but would refuse its Services (DNS-1035).
    pytest.param(_endpoint({"name": "1ep"}), "metadata.name", id="name-starts-with-a-digit"),
    # Python's "$" matches before a final newline; the API server's patterns do not.
    pytest.param(_endpoint({"name": "ep\n"}), "metadata.name", id="name-trailing-newline"),
    pytest.param(_endpoint({"name": "ep", "namespace": "team-a\n"}), "metadata.namespace", id="namespace-newline"),
    pytest.param(
        _endpoint(nodePool={"nodeSelector": {"pool\n": "x"}}), "spec.nodePool.nodeSelector", id="selector-key-newline"
    ),
    pytest.param(_endpoint({"name": "ep", "namespace": {"a": 1}}), "metadata.namespace", id="namespace-object"),
    pytest.param(_endpoint({"name": "ep", "namespace": "Team A"}), "metadata.namespace", id="namespace-not-dns"),
    pytest.param(_endpoint({"name": "ep", "uid": 7}), "metadata.uid", id="uid-number"),
    pytest.param(_endpoint(["ep"]), "metadata", id="metadata-list"),
    pytest.param({**_endpoint(), "kind": ["VoxtralEndpoint"]}, "kind", id="kind-list"),
    pytest.param(_endpoint(access={"fromPodLabels": {"role": "a client"}}), "spec.access.fromPodLabels", id="value"),
    pytest.param(_endpoint(access={"fromPodLabels": {"bad key": "x"}}), "spec.access.fromPodLabels", id="key"),
    pytest.param(_endpoint(access={"fromPodLabels": {"a/b/c": "x"}}), "spec.access.fromPodLabels", id="slashes"),
    pytest.param(
        _endpoint(nodePool={"nodeSelector": {"pool": "-x"}}), "spec.nodePool.nodeSelector", id="selector-value"
    ),
    pytest.param(
        _endpoint(nodePool={"nodeSelector": {"x" * 64: "y"}}), "spec.nodePool.nodeSelector", id="selector-key-long"
    ),
    pytest.param(
        _endpoint(nodePool={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.nodePool.tolerations[0]",
        id="exists-with-value",
    ),
    pytest.param(
        _endpoint(nodePool={"tolerations": [{"key": "k", "tolerationSeconds": 3}]}),
        "spec.nodePool.tolerations[0]",
        id="seconds-without-noexecute",
    ),
    pytest.param(_endpoint(nodePool={"priorityClassName": "High Prio"}), "spec.nodePool", id="priority-class"),
    pytest.param(_endpoint(auth={"apiKeySecretRef": {"name": "k", "key": "../x"}}), "spec.auth", id="secret-key"),
    pytest.param(_endpoint(servedModelName="two\nlines"), "spec.servedModelName", id="control-character"),
    pytest.param(_endpoint(image="vllm:1 --privileged"), "spec.image", id="image-with-space"),
    pytest.param(_endpoint(servedModelName="\ud83d"), "spec.servedModelName", id="lone-surrogate"),
    pytest.param(_endpoint(engine={1: "x"}), "spec.engine", id="non-string-key"),
    pytest.param(_endpoint(engine={"allowedMediaDomains": ["169.254.169.254"]}), "spec.engine", id="media-ip"),
    pytest.param(_endpoint(engine={"allowedMediaDomains": ["localhost"]}), "spec.engine", id="media-localhost"),
    pytest.param(_endpoint(engine={"allowedMediaDomains": ["kubernetes"]}), "spec.engine", id="media-bare-name"),
    # The API server knows the JSON names and types only: what it would refuse, render refuses too.
    pytest.param(_endpoint(min_replicas=2), "spec.min_replicas: unknown key (did you mean minReplicas?)", id="snake"),
    pytest.param(_endpoint(suspended="yes"), "spec.suspended", id="string-for-a-boolean"),
    pytest.param(_endpoint(minReplicas="2"), "spec.minReplicas", id="string-for-an-integer"),
    pytest.param(_endpoint(minReplicas=True), "spec.minReplicas", id="boolean-for-an-integer"),
]


@pytest.mark.parametrize(("endpoint", "field"), REFUSED)
def test_what_the_api_server_would_refuse_in_a_child_is_refused_up_front(endpoint: Any, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        resolve(endpoint, CONFIG)
    assert any(p.startswith(field) for p in caught.value.problems), caught.value.problems


def test_very_deep_nesting_ends_in_a_message() -> None:
    deep: Any = "x"
    for _ in range(200_000):
        deep = [deep]
    with pytest.raises(InvalidSpec) as caught:
        resolve(_endpoint(engine={"extraArgs": deep}), CONFIG)
    assert f"nested deeper than {MAX_DEPTH} levels" in str(caught.value)


def test_the_endpoint_itself_must_be_an_object() -> None:
    with pytest.raises(InvalidSpec, match="must be an object"):
        resolve(["not", "an", "endpoint"], CONFIG)  # type: ignore[arg-type]
