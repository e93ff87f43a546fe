"""Generate the VoxtralEndpoint CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, no `anyOf` for optional
fields (`nullable` instead), a `type` on every node. Pydantic emits JSON Schema; this module
turns one into the other and adds what only a CRD has (subresources, printer columns).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from voxtral_operator.api import models

# JSON Schema keywords a structural schema keeps; pydantic's `title` and the like are dropped.
_KEPT_KEYWORDS = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "minProperties",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "nullable",
    "x-kubernetes-validations",
    "format",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **rest}
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any], *, nested: bool = False) -> dict[str, Any]:
    node = _resolve(node, defs)
    optional = False
    if "anyOf" in node:
        variants = [_resolve(v, defs) for v in node["anyOf"]]
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {node}")
        merged = {**non_null[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", "") is None:
            del merged["default"]
            optional = True
        node = merged
    if "const" in node:  # a one-value Literal
        node = {**node, "enum": [node.pop("const")]}
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        node["type"] = "integer" if kinds == {int} else "string"

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEPT_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs, nested=True) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, nested=True)
        elif key == "additionalProperties":
            # `false` is how pydantic says extra="forbid"; a structural schema forbids unknown
            # fields by pruning them, and `kubectl apply` (strict field validation) reports them.
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 gives the bound; OpenAPI v3.0 wants the bound plus a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value

    required = [r for r in out.get("required", []) if "default" not in out["properties"][r]]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    # A block with defaults inside gets `default: {}`, so the API server fills the nested defaults
    # when the user leaves the whole block out; but not a block that is optional (`modelCache: {}`
    # would ask for a PVC) nor one with required fields (the server checks defaults against the
    # schema, and `{}` would fail it: the CRD could not be installed).
    if (
        nested
        and not optional
        and not required
        and out.get("type") == "object"
        and "default" not in out
        and any("default" in p for p in out.get("properties", {}).values())
    ):
        out["default"] = {}
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "GPU", "type": "string", "jsonPath": ".spec.gpu.type"},
    {
        "name": "Replicas",
        "type": "string",
        "jsonPath": ".status.replicaSummary",
        "description": "Ready replicas / desired replicas",
    },
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why the endpoint is or is not ready: the blocker, or Available",
    },
    {
        "name": "Queue",
        "type": "integer",
        "jsonPath": ".status.queueDepth",
        "description": "Requests waiting across all replicas",
    },
    {
        "name": "GPUs",
        "type": "integer",
        "jsonPath": ".status.gpus",
        "description": "GPUs the endpoint holds now (its scheduled pods x tensor-parallel size)",
    },
    {
        "name": "Overflow",
        "type": "integer",
        "jsonPath": ".status.gpusByPool.overflow",
        "description": "Of those, GPUs on the overflow pool (spec.nodePool.overflow)",
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
    {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def custom_resource_definition() -> dict[str, Any]:
    spec_schema = openapi_schema(models.VoxtralEndpointSpec)
    status_schema = openapi_schema(models.VoxtralEndpointStatus)
    # Conditions are a map keyed by type, so each writer applies its own conditions (server-side
    # apply) without replacing anyone else's.
    status_schema["properties"]["conditions"].update(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "voxtral-operator", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": models.SHORT_NAMES,
                "categories": ["voxtral"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A dedicated, single-tenant Voxtral inference endpoint served by vLLM.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {**spec_schema, "description": "The endpoint wanted."},
                                "status": {**status_schema, "description": "The endpoint observed."},
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `voxtral-operator crd` from the API models. Do not edit.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
