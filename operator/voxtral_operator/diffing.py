"""Pure: does a live child need the desired object applied again?

A real API server adds defaults (protocol, scheme, clusterIP, ...) and drops empty maps, so
"live equals desired" never holds. The operator instead asks (1) is every desired field
present with the desired value, and (2) is the desired object the one last applied, by a
hash annotation: (1) catches hand edits, (2) catches fields the spec no longer sets, which
only an apply (server-side apply removes fields its manager stopped applying) can clear.
"""

from __future__ import annotations

import copy
import hashlib
import json
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


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """desired carries its applied-hash annotation (see with_applied_hash)."""
    if live is None:
        return True
    wanted_hash = desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    return live_hash != wanted_hash or not is_subset(desired, live)
