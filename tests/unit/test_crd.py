"""The CRD is generated from the models, structural, in sync, and rejects what the models reject."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cel
import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from voxtral_operator.api import catalog
from voxtral_operator.api.crd import crd_yaml, custom_resource_definition
from voxtral_operator.api.models import VoxtralEndpointSpec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_CRD = ROOT / "crds" / "voxtralendpoints.voxtral.dev.yaml"
CHART_CRD = ROOT / "charts" / "voxtral-operator" / "crds" / "voxtralendpoints.voxtral.dev.yaml"


def _version() -> dict[str, Any]:
    crd = custom_resource_definition()
    (version,) = crd["spec"]["versions"]
    return version


def _spec_schema() -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED_CRD.read_text() == crd_yaml(), "crds/ drifted from the API models: run `make crds`"


def test_chart_crd_is_a_copy_of_the_generated_one() -> None:
    assert CHART_CRD.read_text() == COMMITTED_CRD.read_text(), "chart CRD drifted: run `make crds`"


def test_crd_validates_against_the_apiextensions_schema() -> None:
    kubernetes_validate.validate(custom_resource_definition(), "1.34", strict=True)


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural_and_documented() -> None:
    for path, node in _walk(_version()["schema"]["openAPIV3Schema"]):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "const"} & node.keys(), path
        if path.startswith(".spec.") and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description for kubectl explain"


def test_subresources_and_printer_columns() -> None:
    version = _version()
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Model", "GPU", "Replicas", "Queue", "URL", "Ready", "Age"} <= columns


def test_catalog_enums_and_defaults_reach_the_schema() -> None:
    spec = _spec_schema()["properties"]
    assert spec["gpu"]["properties"]["type"]["enum"] == list(catalog.GPU_TYPES)
    assert spec["tensorParallelSize"]["enum"] == [1, 2, 4, 8]
    assert spec["engine"]["default"] == {}
    assert spec["engine"]["properties"]["maxModelLen"]["default"] == 32768
    assert spec["autoscaling"]["properties"]["targetQueueDepth"]["default"] == 4
    assert spec["modelProfile"]["properties"]["weightsGB"] == {
        **spec["modelProfile"]["properties"]["weightsGB"],
        "minimum": 0,
        "exclusiveMinimum": True,
    }


def _cel_format(expression: str, value: Any) -> str:
    """A messageExpression `'... %d ...'.format([args])`: Kubernetes' CEL string library's format(),
    which the Python CEL package lacks; its %d and %s read as Python's."""
    match = re.fullmatch(r"'(?P<template>[^']*)'\.format\((?P<args>\[.*\])\)", expression)
    assert match, f"not a format() messageExpression: {expression}"
    return match["template"] % tuple(cel.evaluate(match["args"], {"self": value}))


def _cel_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """Evaluate every x-kubernetes-validations rule of the schema against value, as the API server would."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not cel.evaluate(rule["rule"], {"self": value}):
            expression = rule.get("messageExpression")  # the server's message when the rule gives one
            failures.append(_cel_format(expression, value) if expression else rule["message"])
    for name, sub in schema.get("properties", {}).items():
        if isinstance(value, dict) and name in value:
            failures += _cel_problems(sub, value[name])
    return failures


VALID = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, "minReplicas": 1, "maxReplicas": 3}

SCHEMA_REJECTS = [
    pytest.param({**VALID, "gpu": {"type": "T4-16GB"}}, id="unknown-gpu"),
    pytest.param({**VALID, "tensorParallelSize": 3}, id="tp-3"),
    pytest.param({**VALID, "maxReplicas": 0}, id="max-replicas-0"),
    pytest.param({**VALID, "engine": {"gpuMemoryUtilization": 1.5}}, id="utilization-over-1"),
    pytest.param({**VALID, "model": "bad model name"}, id="model-id-pattern"),
    # apimachinery's decimal kilo is "k": "64K" fails its suffix parsing in the child.
    pytest.param({**VALID, "resources": {"memory": "64K"}}, id="quantity-capital-k"),
    pytest.param({**VALID, "modelCache": {"size": "0Gi"}}, id="empty-cache"),
    pytest.param({**VALID, "modelCache": {"size": "0.0"}}, id="empty-cache-decimal"),
]

CEL_REJECTS = [
    pytest.param({**VALID, "minReplicas": 4}, "minReplicas 4 must not exceed maxReplicas 3", id="min-gt-max"),
    pytest.param(
        {**VALID, "replicas": 7},
        "replicas 7 must lie within [minReplicas 1, maxReplicas 3]",
        id="replicas-out-of-range",
    ),
    pytest.param({**VALID, "model": "acme/whisper-xl"}, "need modelProfile.weightsGB", id="unknown-model"),
    pytest.param(
        {**VALID, "engine": {"extraArgs": ["--enforce-eager", "--max-model-len=4096"]}},
        "extraArgs may not set flags the operator owns",
        id="owned-flag",
    ),
    pytest.param(
        {**VALID, "modelCache": {"accessMode": "ReadWriteOnce"}},
        "ReadWriteOnce model cache cannot be shared",
        id="rwo-cache-multi-replica",
    ),
    pytest.param(
        {**VALID, "engine": {"maxNumSeqs": 1}},
        "engine.maxNumSeqs must be at least gateway.replicas",
        id="fewer-sequences-than-gateway-pods",
    ),
    # vLLM's parser would take a leading '-' for a flag and leave --served-model-name without a value.
    pytest.param({**VALID, "servedModelName": "-:"}, "servedModelName may not begin with '-'", id="name-like-a-flag"),
]


@pytest.mark.parametrize("spec", SCHEMA_REJECTS)
def test_openapi_schema_rejects(spec: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(_spec_schema()).validate(VALID)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_spec_schema()).validate(spec)
    with pytest.raises(pydantic.ValidationError):
        VoxtralEndpointSpec.model_validate(spec)


@pytest.mark.parametrize(("spec", "message"), CEL_REJECTS)
def test_cel_rules_reject_what_the_models_reject(spec: dict[str, Any], message: str) -> None:
    assert _cel_problems(_spec_schema(), VALID) == []
    problems = _cel_problems(_spec_schema(), spec)
    assert any(message in p for p in problems), problems
    try:
        parsed = VoxtralEndpointSpec.model_validate(spec)
    except pydantic.ValidationError:
        return
    assert parsed.cross_field_problems(), "the models accept what the CRD refuses"


def test_examples_pass_schema_and_cel() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        endpoint = yaml.safe_load(path.read_text())
        jsonschema.Draft4Validator(_spec_schema()).validate(endpoint["spec"])
        assert _cel_problems(_spec_schema(), endpoint["spec"]) == [], path.name
