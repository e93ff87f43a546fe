"""Pure: does a live child need the desired object applied again?

A real API server normalises what it stores: it drops false and empty `omitempty` fields, writes
quantities canonically ("4000m" becomes "4"), fills defaults and keeps list entries other managers
added. Comparing live values with desired ones therefore never settles. The operator asks instead:
(1) is the desired object the one last applied, by a hash annotation (catches spec changes, and
fields the spec no longer sets, which only an apply removes), and (2) does the operator's field
manager still own every field it applies, read from the server's own bookkeeping (managedFields):
a hand edit of an applied field moves that field to the editor's manager, a deleted field loses
its owner. Neither check compares a value the server may have rewritten.

An object without managedFields (a stand-in server that does not track them) falls back to
comparing values: every desired field present in live with the desired value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib
from typing import Any

APPLIED_HASH_ANNOTATION = "voxtral.dev/applied-hash"


def applied_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def with_applied_hash(obj: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    annotations = result["metadata"].setdefault("annotations", {})
    annotations[APPLIED_HASH_ANNOTATION] = applied_hash(obj)
    return result


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def is_subset(desired: Any, live: Any) -> bool:
    """Every field of desired is in live with the same value; the server may omit empty values."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return _empty(desired) and live is None
        return all(
            is_subset(value, live.get(key)) if not _empty(value) else _empty_or_equal(value, live.get(key))
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return _empty(desired) and live is None
        return len(desired) == len(live) and all(is_subset(d, lv) for d, lv in zip(desired, live, strict=True))
    return bool(desired == live)


def _empty_or_equal(desired: Any, live: Any) -> bool:
    return _empty(live) or is_subset(desired, live)


def _owned_fields(live: dict[str, Any], manager: str) -> dict[str, Any] | None:
    """The fields `manager` owns by apply on the object itself (not a subresource), or None when the
    server keeps no managedFields. The watch caches keep the field set as compressed JSON text (cache.py)."""
    entries = live.get("metadata", {}).get("managedFields")
    if not entries:
        return None
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
            fields = entry.get("fieldsV1") or {}
            if isinstance(fields, bytes):
                fields = zlib.decompress(fields)
            return dict(json.loads(fields) if isinstance(fields, str | bytes) else fields)
    return {}


def _list_entry(item: Any, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The managedFields node of one list item: `k:{...}` for keyed lists, `v:...` for sets."""
    if not isinstance(item, dict):
        node = fields.get("v:" + json.dumps(item, separators=(",", ":")))
        return node if isinstance(node, dict) else None
    for key, node in fields.items():
        if not key.startswith("k:"):
            continue
        identity = json.loads(key[2:])
        if all(item.get(name) == value for name, value in identity.items()):
            return dict(node)
    return None


def unowned_fields(desired: Any, fields: dict[str, Any], path: str = "") -> list[str]:
    """Paths of desired that the manager whose managedFields are `fields` does not own.

    A node with no children is owned whole (a leaf, an atomic map or list)."""
    missing: list[str] = []
    if not fields:
        return missing
    if isinstance(desired, dict):
        for key, value in desired.items():
            node = fields.get(f"f:{key}")
            if node is None:
                missing.append(f"{path}.{key}")
            elif isinstance(value, dict | list):
                missing += unowned_fields(value, node, f"{path}.{key}")
    elif isinstance(desired, list):
        for index, item in enumerate(desired):
            node = _list_entry(item, fields)
            if node is None:
                missing.append(f"{path}[{index}]")
            elif isinstance(item, dict):
                missing += unowned_fields(item, {k: v for k, v in node.items() if k != "."}, f"{path}[{index}]")
    return missing


def _applied_part(desired: dict[str, Any]) -> dict[str, Any]:
    """What managedFields track of an applied object: not its identity (apiVersion, kind, name, namespace)."""
    metadata = {k: v for k, v in desired["metadata"].items() if k not in ("name", "namespace")}
    return {**{k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}, "metadata": metadata}


def drift(desired: dict[str, Any], live: dict[str, Any] | None, manager: str) -> list[str]:
    """Why desired must be applied again (empty: it need not). desired carries its applied-hash
    annotation (see with_applied_hash)."""
    if live is None:
        return ["absent"]
    wanted_hash = desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    if live_hash != wanted_hash:
        return ["spec changed"]
    owned = _owned_fields(live, manager)
    if owned is None:
        return [] if is_subset(desired, live) else ["values differ"]
    if not owned:
        return ["no fields owned by " + manager]
    return [f"{path} edited or removed" for path in unowned_fields(_applied_part(desired), owned)]
