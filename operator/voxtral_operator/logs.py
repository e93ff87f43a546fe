"""Operator logs a platform engineer can read and a log pipeline can parse.

Every line has a UTC timestamp and a level; every line about an endpoint names it
(`namespace/name`), whether the call site passes the endpoint or runs inside a reconcile or
autoscaling task that bound it (`bind_endpoint`), or comes from kopf about the endpoint object.
Text lines for people, JSON lines (`--log-format json`) for pipelines, with the same fields.

What is logged at INFO, once each: a child created, updated, deleted or refused (with why), an
endpoint's phase changing, an autoscaling decision. kopf's per-handler lines ("Handler
'pod_changed' succeeded.") are dropped unless --verbose.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from voxtral_operator.diffing import APPLIED_HASH_ANNOTATION

Key = tuple[str, str]  # (namespace, endpoint name)

TEXT = "text"
JSON_LINES = "json"
LOG_FORMATS = (TEXT, JSON_LINES)

ENDPOINT_KIND = "VoxtralEndpoint"

children_logger = logging.getLogger("voxtral_operator.children")
status_logger = logging.getLogger("voxtral_operator.status")
autoscale_logger = logging.getLogger("voxtral_operator.autoscale")

# The endpoint the current asyncio task works on: tasks copy the context they start in, so a
# reconcile task's lines (the API client's retries included) carry its endpoint.
_current_endpoint: contextvars.ContextVar[Key | None] = contextvars.ContextVar("voxtral_endpoint", default=None)

# kopf logs one INFO line per handler call; with a watch on every pod, that is most of the log.
_KOPF_CHATTER = re.compile(r"^(Handler|Activity|Timer|Daemon) '[^']*' succeeded\.$")

# Record attributes logging itself sets; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_KOPF_ATTRS = frozenset({"k8s_ref", "k8s_skip", "settings"})


def bind_endpoint(key: Key) -> None:
    """Lines logged from now on in this asyncio task are about this endpoint."""
    _current_endpoint.set(key)


# --- what is logged -----------------------------------------------------------------------


def change_reason(desired: Mapping[str, Any], live: Mapping[str, Any] | None, spec_changed: bool = True) -> str:
    """Why a child is applied: missing, the spec (or, when the spec did not change, the operator's
    config) changed it, or the live object drifted from it."""
    if live is None:
        return "missing"
    wanted = ((desired.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    applied = ((live.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    if wanted != applied:
        return "the spec changed it" if spec_changed else "the operator's config (or version) changed it"
    return "the live object drifted from the spec (edited by hand?)"


_refusals: dict[tuple[Key, str, str], str] = {}


def log_child_change(key: Key, verb: str, kind: str, name: str, reason: str) -> None:
    """One INFO line for a child `created`, `updated`, `deleted` or `refused`, with a short reason.

    A refusal repeated by the retries is logged once (then at DEBUG) until the child changes.
    """
    child = (key, kind, name)
    level = logging.INFO
    if verb == "refused":
        if _refusals.get(child) == reason:
            level = logging.DEBUG
        _refusals[child] = reason
    else:
        _refusals.pop(child, None)
    children_logger.log(
        level,
        "%s %s %s: %s",
        verb,
        kind,
        name,
        reason,
        extra={"endpoint": key, "event": f"child_{verb}", "verb": verb, "kind": kind, "child": name, "reason": reason},
    )


_phases: dict[Key, str] = {}


def log_phase_change(key: Key, old: str | None, new: str | None, reason: str = "", message: str = "") -> None:
    """A status write with this phase is being made: one line when the phase is not the last one logged.

    `old` is the phase in the status written over; the last phase logged wins, as the watch cache
    may be behind the operator's own last write.
    """
    old = _phases.get(key, old)
    if new is None or new == old:
        return
    _phases[key] = new
    why = f" ({reason}: {message})" if reason and message else f" ({reason})" if reason else ""
    status_logger.info(
        "phase %s -> %s%s",
        old or "(none)",
        new,
        why,
        extra={"endpoint": key, "event": "phase_changed", "from": old, "to": new, "reason": reason},
    )


def log_endpoint_gone(key: Key) -> None:
    """The endpoint was deleted; Kubernetes deletes its children (owner references)."""
    if _phases.pop(key, None) is None:
        return  # already said, or never seen by this process
    for child in [c for c in _refusals if c[0] == key]:
        del _refusals[child]
    status_logger.info(
        "deleted; its children go with it (owner references)", extra={"endpoint": key, "event": "endpoint_deleted"}
    )


def log_scale_decision(key: Key, old: int, new: int, reason: str) -> None:
    autoscale_logger.info(
        "scale %d -> %d replicas: %s",
        old,
        new,
        reason,
        extra={"endpoint": key, "event": "scaled", "from": old, "to": new, "reason": reason},
    )


# --- formatting ---------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def subject(record: logging.LogRecord) -> dict[str, str]:
    """What a line is about: the endpoint (namespace, name), or another object kopf logged about."""
    key = getattr(record, "endpoint", None) or _current_endpoint.get()
    if key is not None:
        return {"namespace": key[0], "name": key[1]}
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, Mapping) and ref.get("name"):
        found = {"namespace": str(ref.get("namespace") or ""), "name": str(ref["name"])}
        if ref.get("kind") != ENDPOINT_KIND:
            found["kind"] = str(ref.get("kind") or "")
        return found
    return {}


def _subject_text(about: Mapping[str, str]) -> str:
    if not about:
        return ""
    path = f"{about['namespace']}/{about['name']}" if about["namespace"] else about["name"]
    return f"{about['kind']} {path}" if about.get("kind") else path


class TextFormatter(logging.Formatter):
    """`2026-11-25T09:14:03.512Z INFO    speech/voxtral-mini: created Deployment voxtral-mini: missing`"""

    def format(self, record: logging.LogRecord) -> str:
        about = _subject_text(subject(record))
        line = f"{_timestamp(record)} {record.levelname:<7} {about + ': ' if about else ''}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the endpoint, and the call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        about = subject(record)
        if about:
            entry.update(about)
            if "kind" not in about:
                entry["endpoint"] = _subject_text(about)
        for attr, value in vars(record).items():
            if attr not in _STANDARD_ATTRS and attr not in _KOPF_ATTRS and attr != "endpoint":
                entry.setdefault(attr, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KopfChatterFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("kopf")
            and record.levelno == logging.INFO
            and _KOPF_CHATTER.match(record.getMessage()) is not None
        )


_KOPF_RETRY = re.compile(r"Request attempt #(\d+)(/\d+)? failed; will retry: ")


class KopfRetryFilter(logging.Filter):
    """kopf logs every retried request as an ERROR, also while a starting API server answers 429
    "storage is (re)initializing": the first retry of a request is a WARNING, later ones INFO. A
    request that fails for good ("escalating") stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("kopf") and record.levelno == logging.ERROR:
            retry = _KOPF_RETRY.match(record.getMessage())
            if retry is not None:
                record.levelno = logging.WARNING if retry.group(1) == "1" else logging.INFO
                record.levelname = logging.getLevelName(record.levelno)
        return True


def configure(log_format: str = TEXT, *, verbose: bool = False) -> None:
    """The root logger writes to stderr in the chosen format; kopf's loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == JSON_LINES else TextFormatter())
    handler.addFilter(KopfRetryFilter())
    if not verbose:
        handler.addFilter(KopfChatterFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Library internals, as kopf.configure() quiets them: per-request lines and asyncio's debug.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.INFO if verbose else logging.WARNING)
