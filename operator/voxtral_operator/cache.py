"""Pure: what the watch caches keep of each object: the fields the operator reads, nothing else.

An object as the API server sends it is mostly what the operator never reads: a Deployment's pod
template, every manager's managedFields (the controller-manager's status entry alone is larger
than the rest), labels, the `kubectl apply` annotation. Kept whole, a thousand endpoints' children
cost hundreds of megabytes. Each index function stores the trimmed copy instead; the raw event is
dropped as soon as it has been indexed.

What is read, and by whom:
- children: name, uid, resourceVersion, generation, ownerReferences, deletionTimestamp (the
  reconciler: ownership, pending writes, rollout), the applied-hash annotation and the operator's own
  apply entry in managedFields (diffing.drift; its field set kept as compressed JSON text), the other entries'
  manager and operation (whether the server keeps managedFields at all), spec.replicas (the Scaled
  event), spec.clusterIP (the autoscaler's serving check), status (status.compute_status).
- endpoints: all but managedFields and the `kubectl apply` annotation; of managedFields, who owns
  spec.replicas and when (the autoscaler tells a person's scale from its own).

A server that keeps no managedFields (the API emulator) gets the drift check's fallback, which
compares values: its children are kept whole.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from voxtral_operator.diffing import APPLIED_HASH_ANNOTATION

JSON = dict[str, Any]

CHILD_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "ownerReferences", "deletionTimestamp")
CHILD_SPEC = ("replicas", "clusterIP")
ENTRY_IDENTITY = ("manager", "operation", "subresource")
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def child(body: Mapping[str, Any], manager: str) -> JSON:
    """The cached form of a child the operator applies as `manager`."""
    metadata = body.get("metadata") or {}
    entries = metadata.get("managedFields")
    if not entries:
        return dict(body)
    kept_metadata: JSON = {key: metadata[key] for key in CHILD_METADATA if key in metadata}
    applied_hash = (metadata.get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    if applied_hash is not None:
        kept_metadata["annotations"] = {APPLIED_HASH_ANNOTATION: applied_hash}
    kept_metadata["managedFields"] = [_child_entry(entry, manager) for entry in entries]
    kept: JSON = {key: body[key] for key in ("apiVersion", "kind") if key in body}
    kept["metadata"] = kept_metadata
    spec = body.get("spec") or {}
    read_spec = {key: spec[key] for key in CHILD_SPEC if key in spec}
    if read_spec:
        kept["spec"] = read_spec
    if "status" in body:
        kept["status"] = body["status"]
    return kept


def _child_entry(entry: Mapping[str, Any], manager: str) -> JSON:
    identity = {key: entry[key] for key in ENTRY_IDENTITY if key in entry}
    if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
        # As compressed compact JSON: a Deployment's field set is a tree of small dicts (about 17 kB
        # of memory as objects, 3 kB as text, under 1 kB compressed); only a drift check reads it,
        # and unpacks it then (diffing._owned_fields).
        fields = entry.get("fieldsV1") or {}
        if isinstance(fields, bytes):
            return {**identity, "fieldsV1": fields}
        text = fields if isinstance(fields, str) else json.dumps(fields, separators=(",", ":"))
        return {**identity, "fieldsV1": zlib.compress(text.encode(), 1)}
    return identity


def endpoint(body: Mapping[str, Any]) -> JSON:
    """The cached form of a VoxtralEndpoint."""
    metadata = dict(body.get("metadata") or {})
    if "managedFields" in metadata:
        metadata["managedFields"] = [_endpoint_entry(entry) for entry in metadata["managedFields"] or []]
    annotations = metadata.get("annotations")
    if annotations and LAST_APPLIED_ANNOTATION in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION}
    return {**body, "metadata": metadata}


def _endpoint_entry(entry: Mapping[str, Any]) -> JSON:
    kept = {key: entry[key] for key in (*ENTRY_IDENTITY, "time") if key in entry}
    spec = (entry.get("fieldsV1") or {}).get("f:spec")
    if isinstance(spec, dict) and "f:replicas" in spec:
        kept["fieldsV1"] = {"f:spec": {"f:replicas": {}}}
    return kept
