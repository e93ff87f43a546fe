"""A Kubernetes API server stand-in for tests and the demo: kmock's emulator plus what a real one does.

kmock 0.8 serves discovery, routes requests and lets tests inject faults with its DSL
(`server["patch", kmock.resource(...)] << 409`), but stores objects as plain merged JSON.
This layer replaces the storage with the semantics the operator relies on from a real API server:

- server-assigned metadata: `uid`, `resourceVersion` (one counter, as etcd's revision),
  `generation` (bumped on changes outside metadata and status), `creationTimestamp`;
- no-op writes change nothing: no new resourceVersion, no watch event;
- optimistic concurrency: a stale `metadata.resourceVersion` in a PUT or PATCH answers 409;
- the `status` and `scale` subresources: the main endpoint ignores status, `/status` writes only
  status, `/scale` reads and writes `spec.replicas` as an autoscaling/v1 Scale;
- patches: JSON merge patch, JSON patch, strategic merge patch (approximated as a merge patch:
  the operator never sends one), and server-side apply (below);
- Secret `stringData` merged into `data` (base64) on every write and never stored, as a real server does;
- a CustomResourceDefinition created through the API is served at once (no `Established` wait);
- Service `spec.clusterIP` allocation (on loopback, a block per process, so tests can really serve it);
- label selectors on list and watch (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`);
- watch from a resourceVersion (replayed from a bounded history; older answers 410 Gone),
  `timeoutSeconds`;
- deletion with finalizers and uid preconditions, and owner-reference garbage collection
  (background propagation, recursive).

Server-side apply is simplified: each field manager's last applied object is remembered; a new
apply removes the fields that manager applied before and no longer applies, then merges the new
object in (maps merge, lists are replaced whole). Conflicts between managers are not emulated:
every apply behaves as `force=true`, which is what the operator sends.

- the namespaces collection (`/api/v1/namespaces`), which kmock's path parser cannot route;
- discovery as kubectl needs it (`/api`, `/apis`, `/apis/{group}`, `/api/v1`, `/apis/{group}/{version}`,
  with singular names, short names and categories; kmock's own calls the core group version "/v1",
  which kubectl rejects), as plain APIGroupList/APIResourceList JSON: kubectl asks for aggregated
  discovery first and falls back to these;
- server-side printing: a GET asking for `as=Table` gets a meta.k8s.io/v1 Table, from the CRD's
  additionalPrinterColumns for custom resources and a minimal set of the real server's columns for
  built-in kinds (as a real server, core and events.k8s.io Events are one collection there).

Not emulated: admission, defaulting beyond metadata, field validation, RBAC.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal.rendering import ReactionMismatchError  # exported by kmock, missing from its __all__

from voxtral_testbed import loopback

JSON = dict[str, Any]

CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
# Resources the operator and its tests touch: (group/version/plural, kind, namespaced, subresources).
BUILTIN_RESOURCES: list[tuple[str, str, bool, set[str]]] = [
    ("v1/pods", "Pod", True, {"status"}),
    ("v1/services", "Service", True, {"status"}),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True, {"status"}),
    ("v1/events", "Event", True, set()),
    ("v1/secrets", "Secret", True, set()),
    ("v1/serviceaccounts", "ServiceAccount", True, set()),
    ("v1/configmaps", "ConfigMap", True, set()),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True, set()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True, set()),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, set()),
    ("v1/namespaces", "Namespace", False, {"status"}),
    ("events.k8s.io/v1/events", "Event", True, set()),
    ("apps/v1/deployments", "Deployment", True, {"status", "scale"}),
    ("apps/v1/daemonsets", "DaemonSet", True, {"status"}),
    ("batch/v1/jobs", "Job", True, {"status"}),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, {"status"}),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, set()),
    ("coordination.k8s.io/v1/leases", "Lease", True, set()),
    ("kopf.dev/v1/kopfpeerings", "KopfPeering", True, set()),
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, set()),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, {"status"}),
    ("keda.sh/v1alpha1/scaledobjects", "ScaledObject", True, {"status"}),
]
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# Discovery extras the real server gives built-in resources: (shortNames, categories).
BUILTIN_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "v1/pods": (["po"], ["all"]),
    "v1/services": (["svc"], ["all"]),
    "apps/v1/deployments": (["deploy"], ["all"]),
    "apps/v1/daemonsets": (["ds"], ["all"]),
    "batch/v1/jobs": ([], ["all"]),
    "v1/persistentvolumeclaims": (["pvc"], []),
    "v1/events": (["ev"], []),
    "v1/serviceaccounts": (["sa"], []),
    "v1/configmaps": (["cm"], []),
    "v1/namespaces": (["ns"], []),
    "policy/v1/poddisruptionbudgets": (["pdb"], []),
    "networking.k8s.io/v1/networkpolicies": (["netpol"], []),
    "apiextensions.k8s.io/v1/customresourcedefinitions": (["crd", "crds"], []),
    "keda.sh/v1alpha1/scaledobjects": (["so"], ["keda-all"]),
}
_DISCOVERY_PATH = re.compile(r"/api(?:/(?P<core>v1))?|/apis(?:/(?P<group>[^/]+)(?:/(?P<version>[^/]+))?)?")
HISTORY_LIMIT = 50_000
_UNMATCHED = object()


class Gone(kmock.KubernetesError):
    pass


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")] if path else []


def json_patch(target: JSON, operations: list[JSON]) -> JSON:
    """RFC 6902 JSON patch: add, remove, replace, test."""
    doc = copy.deepcopy(target)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        kind = op["op"]
        if kind == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise _error(422, "Invalid", f"test failed at {op['path']}")
        elif kind == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if kind == "add":
                    node.insert(index, op["value"])
                else:
                    node[index] = op["value"]
            else:
                node[last] = op["value"]
        else:
            raise _error(422, "Invalid", f"unsupported JSON patch op {kind!r}")
    return doc


def _drop_unapplied(live: Any, previous: Any, current: Any) -> Any:
    """Remove from live what `previous` applied and `current` no longer does (maps only)."""
    if not isinstance(live, dict) or not isinstance(previous, dict):
        return live
    current = current if isinstance(current, dict) else {}
    result = dict(live)
    for key, value in previous.items():
        if key not in current:
            result.pop(key, None)
        elif key in result:
            result[key] = _drop_unapplied(result[key], value, current[key])
    return result


def _deep_merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _deep_merge(base.get(key), value)
        return merged
    return copy.deepcopy(overlay)


_SELECTOR_TERM = re.compile(
    r"\s*(?P<neg>!)?(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)


def _secret_stored(secret: JSON) -> JSON:
    """What a real server stores of a Secret: `stringData` is write-only, merged into `data` (base64,
    winning over a `data` entry of the same key) and never returned."""
    string_data = secret.get("stringData")
    if string_data is None:
        return secret
    stored = {k: v for k, v in secret.items() if k != "stringData"}
    encoded = {str(k): base64.b64encode(str(v).encode()).decode() for k, v in (string_data or {}).items()}
    stored["data"] = {**(secret.get("data") or {}), **encoded}
    return stored


def _split_selector(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [*terms, current] if current.strip() else terms


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    for term in _split_selector(selector or ""):
        match = _SELECTOR_TERM.fullmatch(term)
        if not match:
            raise _error(400, "BadRequest", f"unable to parse label selector term {term!r}")
        key = match["key"]
        if match["op"] in ("=", "=="):
            ok = labels.get(key) == match["value"]
        elif match["op"] == "!=":
            ok = labels.get(key) != match["value"]
        elif match["setop"]:
            values = {v.strip() for v in match["values"].split(",")}
            ok = (labels.get(key) in values) == (match["setop"] == "in")
        else:
            ok = (key in labels) != bool(match["neg"])
        if not ok:
            return False
    return True


def _field_selector_matches(selector: str | None, obj: JSON) -> bool:
    for term in filter(None, (selector or "").split(",")):
        path, _, value = term.partition("=")
        negate = path.endswith("!")
        node: Any = obj
        for part in path.rstrip("!").split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == value.lstrip("=")) == negate:
            return False
    return True


def _header(request: kmock.Request, name: str) -> str:
    return next((str(v) for k, v in request.headers.items() if k.lower() == name.lower()), "")


def _wants_table(request: kmock.Request) -> bool:
    """Whether the Accept header asks for a meta.k8s.io/v1 Table first (kubectl get does)."""
    for media in _header(request, "Accept").split(","):
        params = dict(p.strip().partition("=")[::2] for p in media.split(";")[1:])
        if params.get("as") == "Table" and params.get("v", "v1") == "v1" and params.get("g") == "meta.k8s.io":
            return True
        if media.strip():
            return False  # an earlier media type is preferred
    return False


def human_duration(seconds: float) -> str:
    """Kubernetes' duration.HumanDuration, as the AGE column shows it."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())


_JSONPATH_STEP = re.compile(
    r"\.(?P<field>[A-Za-z0-9_-]+)|\[(?P<index>\d+)\]"
    r"|\[\?\(@\.(?P<key>[A-Za-z0-9_.-]+)\s*==\s*(?P<quote>[\"'])(?P<value>.*?)(?P=quote)\)\]"
)


def jsonpath(obj: Any, path: str) -> Any:
    """The simple JSONPaths of printer columns: `.a.b`, `[0]`, `[?(@.type=="Ready")]`; None when absent."""
    nodes, position = [obj], 0
    path = path.strip().removeprefix("{").removesuffix("}").removeprefix("$")
    while position < len(path):
        step = _JSONPATH_STEP.match(path, position)
        if not step:
            raise _error(400, "BadRequest", f"unsupported JSONPath {path!r}")
        position = step.end()
        found: list[Any] = []
        for node in nodes:
            if step["field"] is not None and isinstance(node, dict) and step["field"] in node:
                found.append(node[step["field"]])
            elif step["index"] is not None and isinstance(node, list) and int(step["index"]) < len(node):
                found.append(node[int(step["index"])])
            elif step["key"] is not None and isinstance(node, list):
                for item in node:
                    value = item
                    for part in step["key"].split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    if value is not None and str(value) == step["value"]:
                        found.append(item)
        nodes = found
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return None
    if len(nodes) == 1:
        return nodes[0]
    return ",".join(n if isinstance(n, str) else json.dumps(n) for n in nodes)


def _column(name: str, kind: str = "string", description: str = "", priority: int = 0, fmt: str = "") -> JSON:
    return {"name": name, "type": kind, "format": fmt, "description": description, "priority": priority}


def _pod_row(pod: JSON) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    reason = status.get("reason") or status.get("phase") or "Pending"
    for container in statuses:
        state = container.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    ready = sum(1 for c in statuses if c.get("ready"))
    return [
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        sum(int(c.get("restartCount", 0)) for c in statuses),
        _age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _service_row(service: JSON) -> list[Any]:
    spec = service.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or ",".join(
        spec.get("externalIPs") or []
    )
    if not external:
        external = "<pending>" if kind == "LoadBalancer" else "<none>"
    ports = ",".join(
        f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    return [
        kind,
        spec.get("clusterIP") or "<none>",
        external,
        ports or "<none>",
        _age(service["metadata"].get("creationTimestamp")),
        selector or "<none>",
    ]


def _deployment_row(deployment: JSON) -> list[Any]:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    selector = ",".join(f"{k}={v}" for k, v in ((spec.get("selector") or {}).get("matchLabels") or {}).items())
    return [
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(deployment["metadata"].get("creationTimestamp")),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        selector or "<none>",
    ]


def core_event(event: JSON) -> JSON:
    """An events.k8s.io/v1 Event as the core v1 API shows it (the real server stores them as one)."""
    if event.get("apiVersion") != "events.k8s.io/v1":
        return event
    series = event.get("series") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": event.get("metadata", {}),
        "involvedObject": event.get("regarding") or {},
        "related": event.get("related"),
        "reason": event.get("reason", ""),
        "message": event.get("note", ""),
        "type": event.get("type", ""),
        "source": {"component": event.get("reportingController", "")},
        "reportingComponent": event.get("reportingController", ""),
        "reportingInstance": event.get("reportingInstance", ""),
        "action": event.get("action", ""),
        "eventTime": event.get("eventTime"),
        "firstTimestamp": event.get("deprecatedFirstTimestamp"),
        "lastTimestamp": series.get("lastObservedTime") or event.get("deprecatedLastTimestamp"),
        "count": series.get("count") or event.get("deprecatedCount") or 1,
    }


def _event_seen(event: JSON) -> str:
    event = core_event(event)
    return str(event.get("lastTimestamp") or event.get("eventTime") or event["metadata"].get("creationTimestamp") or "")


def _event_row(event: JSON) -> list[Any]:
    event = core_event(event)
    seen = _age(_event_seen(event)[:19] + "Z" if _event_seen(event) else None)
    involved = event.get("involvedObject") or {}
    target = f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}"
    return [seen, event.get("type", ""), event.get("reason", ""), target, event.get("message", "")]


# Built-in kinds' columns after Name, and the function that fills them (Age is among them).
BUILTIN_COLUMNS: dict[str, tuple[list[JSON], Any]] = {
    "v1/pods": (
        [
            _column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            _column("Status", description="The aggregate status of the containers in this pod."),
            _column("Restarts", "string", "The number of times the containers in this pod have been restarted."),
            _column("Age", description="CreationTimestamp is a timestamp representing the server time ..."),
            _column("IP", description="IP address allocated to the pod.", priority=1),
            _column("Node", description="Name of the Node this pod is assigned to.", priority=1),
        ],
        _pod_row,
    ),
    "v1/services": (
        [
            _column("Type", description="The type of the service."),
            _column("Cluster-IP", description="The cluster IP of the service."),
            _column("External-IP", description="The external IP of the service."),
            _column("Port(s)", description="The ports of the service."),
            _column("Age", description="CreationTimestamp is a timestamp representing the server time ..."),
            _column("Selector", description="The selector of the service.", priority=1),
        ],
        _service_row,
    ),
    "apps/v1/deployments": (
        [
            _column("Ready", description="Number of the pod with ready state"),
            _column("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment."),
            _column("Available", "string", "Total number of available pods (ready for at least minReadySeconds)."),
            _column("Age", description="CreationTimestamp is a timestamp representing the server time ..."),
            _column("Containers", description="Names of each container in the template.", priority=1),
            _column("Images", description="Images referenced by each container in the template.", priority=1),
            _column("Selector", description="Label selector for pods.", priority=1),
        ],
        _deployment_row,
    ),
    "v1/events": (
        [
            _column("Last Seen", description="Time since the event was last observed."),
            _column("Type", description="Type of this event (Normal, Warning)."),
            _column("Reason", description="Why the action was taken."),
            _column("Object", description="The object this event is about."),
            _column("Message", description="A human-readable description of the status of this operation."),
        ],
        _event_row,
    ),
}
BUILTIN_COLUMNS["events.k8s.io/v1/events"] = BUILTIN_COLUMNS["v1/events"]


class Store:
    """Objects by (resource, namespace, name), with resourceVersions, history and watchers."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], JSON] = {}
        self.applied: dict[tuple[str, str | None, str, str], JSON] = {}
        self.history: collections.deque[tuple[int, str, JSON]] = collections.deque(maxlen=HISTORY_LIMIT)
        self.watchers: dict[str, set[asyncio.Queue[tuple[int, JSON]]]] = collections.defaultdict(set)
        self.revision = itertools.count(1)
        self.current_revision = 0

    def next_revision(self) -> str:
        self.current_revision = next(self.revision)
        return str(self.current_revision)

    def emit(self, resource: str, event_type: str, obj: JSON) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        revision = int(obj["metadata"]["resourceVersion"])
        self.history.append((revision, resource, event))
        for queue in self.watchers[resource]:
            queue.put_nowait((revision, event))


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the real API server's semantics listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store = Store()
        self.subresources: dict[str, set[str]] = {}
        self.kinds: dict[str, str] = {}
        self.discovery: dict[str, JSON] = {}  # resource path -> its APIResource fields
        self.printer_columns: dict[str, list[JSON]] = {}  # custom resources' additionalPrinterColumns
        self._write_lock = asyncio.Lock()
        self._gc_tasks: set[asyncio.Task[None]] = set()
        self._cluster_ips = loopback.service_addresses()
        # Reactions registered so far are kmock's and this class's fallbacks; later ones are a test's.
        self._builtin_reactions = len(self._payloads)
        for path, kind, namespaced, subresources in BUILTIN_RESOURCES:
            self.declare(path, kind, namespaced=namespaced, subresources=subresources)

    # --- declaring resources ------------------------------------------------------------------

    def declare(
        self,
        path: str,
        kind: str,
        *,
        namespaced: bool,
        subresources: Iterable[str] = (),
        singular: str | None = None,
        short_names: Iterable[str] = (),
        categories: Iterable[str] = (),
        printer_columns: list[JSON] | None = None,
    ) -> None:
        subs = set(subresources)
        self.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subs)
        self.subresources[path] = subs
        self.kinds[path] = kind
        names, cats = BUILTIN_NAMES.get(path, ([], []))
        self.discovery[path] = {
            "singularName": singular or kind.lower(),
            "namespaced": namespaced,
            "kind": kind,
            "shortNames": list(short_names) or names,
            "categories": list(categories) or cats,
        }
        if printer_columns is not None:
            self.printer_columns[path] = printer_columns

    def declare_crd(self, crd: JSON) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            self.declare(
                f"{spec['group']}/{version['name']}/{names['plural']}",
                names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                subresources=version.get("subresources", {}).keys(),
                singular=names.get("singular"),
                short_names=names.get("shortNames") or (),
                categories=names.get("categories") or (),
                printer_columns=version.get("additionalPrinterColumns") or [],
            )

    # --- discovery ----------------------------------------------------------------------------

    def _discovery(self, path: str) -> JSON | None:
        """The discovery document at `path`, or None when it is not a discovery path."""
        match = _DISCOVERY_PATH.fullmatch(path.rstrip("/") or "/")
        if not match:
            return None
        groups: dict[str, list[str]] = {}
        for key in self.discovery:
            *group_version, _ = key.split("/")
            group, version = group_version if len(group_version) == 2 else ("", group_version[0])
            if version not in groups.setdefault(group, []):
                groups[group].append(version)
        if path.startswith("/api") and not path.startswith("/apis"):
            if not match["core"]:
                return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            return self._resource_list("", "v1")

        def group_doc(name: str) -> JSON:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        group, version = match["group"], match["version"]
        if group is None:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups if g]}
        if not group or group not in groups or (version is not None and version not in groups[group]):
            raise _error(404, "NotFound", f"the server could not find the requested resource ({path})")
        if version is None:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(group)}
        return self._resource_list(group, version)

    def _resource_list(self, group: str, version: str) -> JSON:
        group_version = f"{group}/{version}" if group else version
        resources = []
        for key, info in self.discovery.items():
            if key.rsplit("/", 1)[0] != group_version:
                continue
            plural = key.rsplit("/", 1)[1]
            resources.append({"name": plural, **info, "verbs": VERBS})
            for sub in sorted(self.subresources.get(key, ())):
                kind = "Scale" if sub == "scale" else info["kind"]
                group_fields = {"group": "autoscaling", "version": "v1"} if sub == "scale" else {}
                resources.append(
                    {
                        "name": f"{plural}/{sub}",
                        "singularName": "",
                        "namespaced": info["namespaced"],
                        "kind": kind,
                        **group_fields,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}

    # --- request routing ----------------------------------------------------------------------

    @staticmethod
    def _key(resource: Any) -> str:
        return f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/")

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8's path parser fails on the namespaces collection (`/api/v1/namespaces`), which
        # kopf lists and watches when given --namespace; serve that one path here.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            body = await raw_request.read()
            request = kmock.Request(
                method=raw_request.method,
                url=str(raw_request.url),
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                data=json.loads(body) if body else None,
                resource=kmock.resource("", "v1", "namespaces"),
                raw_request=raw_request,
            )
            self._requests.append(request)
            try:
                return await self._dispatch(request)
            except kmock.KubernetesError as exc:
                return await self._render_error(exc)
        response: aiohttp.web.StreamResponse = await super().__call__(raw_request)
        return response

    async def _handle(self, request: kmock.Request) -> Any:
        # Object requests skip kmock's own bookkeeping (KubernetesEmulator._handle keeps objects as
        # merged JSON; this class keeps them) and its general reaction matching, which costs tens of
        # milliseconds a request. Reactions a test adds with kmock's DSL are still matched first.
        if request.resource is None or not request.resource.plural:  # discovery and non-API paths
            if request.method == kmock.method.GET and _DISCOVERY_PATH.fullmatch(request.url.path.rstrip("/")):
                reacted = await self._test_reaction(request)
                if reacted is not _UNMATCHED:
                    return reacted
                return aiohttp.web.json_response(self._discovery(request.url.path))
            return await kmock.KubernetesScaffold._handle(self, request)
        reacted = await self._test_reaction(request)
        if reacted is not _UNMATCHED:
            return reacted
        return await self._dispatch(request)

    async def _test_reaction(self, request: kmock.Request) -> Any:
        for reaction in self._payloads[self._builtin_reactions :]:
            if request in reaction._source and not reaction._disabled.is_set():
                try:
                    return await reaction(request)
                except ReactionMismatchError:  # a sliced reaction used up
                    reaction._disabled.set()
                except NotImplementedError:
                    pass
        return _UNMATCHED

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        method = request.method
        if method == kmock.method.GET and request.params.get("watch") in ("true", "1"):
            return await self._stream(request, self._serve_watch(request))
        if method == kmock.method.GET:
            payload = await (self._serve_list(request) if request.name is None else self._serve_fetch(request))
            if _wants_table(request) and not request.subresource:
                payload = self._table(request, payload)
        elif method == kmock.method.POST and request.name is None:
            payload = await self._serve_create(request)
        elif method in (kmock.method.PATCH, kmock.method.PUT) and request.name is not None:
            payload = await self._modify(request)
        elif method == kmock.method.DELETE and request.name is not None:
            payload = await self._serve_delete(request)
        else:
            raise _error(405, "MethodNotAllowed", f"{method} is not supported here")
        status = 201 if method == kmock.method.POST else 200
        return aiohttp.web.json_response(payload, status=status)

    @staticmethod
    async def _stream(request: kmock.Request, events: AsyncIterator[Any]) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        assert request._raw_request is not None  # always set for requests that came over HTTP
        await response.prepare(request._raw_request)
        with contextlib.suppress(ConnectionError):
            async for event in events:
                if isinstance(event, dict):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        return response

    async def _serve_list(self, request: kmock.Request) -> JSON:
        resource = self._known(request)
        items = [
            copy.deepcopy(obj)
            for (res, ns, _), obj in sorted(self.store.objects.items(), key=lambda kv: str(kv[0]))
            if res == resource and self._selected(request, ns, obj)
        ]
        kind = self.kinds.get(resource, "")
        return {
            "kind": f"{kind}List",
            "apiVersion": resource.rsplit("/", 1)[0],
            "metadata": {"resourceVersion": str(self.store.current_revision)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource = self._known(request)
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        queue: asyncio.Queue[tuple[int, JSON]] = asyncio.Queue()
        self.store.watchers[resource].add(queue)
        try:
            yield b""
            backlog: list[tuple[int, JSON]]
            if since in (None, "", "0"):
                backlog = [
                    (self.store.current_revision, {"type": "ADDED", "object": copy.deepcopy(obj)})
                    for (res, ns, _), obj in self.store.objects.items()
                    if res == resource and self._selected(request, ns, obj)
                ]
            else:
                oldest = self.store.history[0][0] if self.store.history else self.store.current_revision + 1
                if int(since) < oldest - 1 and int(since) < self.store.current_revision:
                    yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
                    return
                backlog = [(rev, ev) for rev, res, ev in self.store.history if res == resource and rev > int(since)]
            last = int(since or 0)
            for revision, event in backlog:
                last = max(last, revision)
                if self._selected(request, event["object"]["metadata"].get("namespace"), event["object"]):
                    yield event
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    revision, event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    return
                if revision <= last:
                    continue
                obj = event["object"]
                if self._selected(request, obj["metadata"].get("namespace"), obj):
                    yield event
        finally:
            self.store.watchers[resource].discard(queue)

    async def _serve_fetch(self, request: kmock.Request) -> JSON:
        resource = self._known(request)
        obj = self._get(resource, request.namespace, request.name)
        if request.subresource == "scale":
            return self._scale_of(resource, obj)
        return copy.deepcopy(obj)

    async def _serve_create(self, request: kmock.Request) -> JSON:
        resource = self._known(request)
        body = self._body(request)
        async with self._write_lock:
            return self._create(resource, request.namespace or body.get("metadata", {}).get("namespace"), body)

    async def _serve_delete(self, request: kmock.Request) -> JSON:
        resource = self._known(request)
        body = request.data if isinstance(request.data, dict) else {}
        async with self._write_lock:
            obj = self._get(resource, request.namespace, request.name)
            uid = (body.get("preconditions") or {}).get("uid")
            if uid and uid != obj["metadata"]["uid"]:
                raise _error(409, "Conflict", f"precondition failed: uid in precondition {uid}")
            return self._delete(resource, request.namespace, request.name)

    # --- server-side printing -----------------------------------------------------------------

    def _table(self, request: kmock.Request, payload: JSON) -> JSON:
        """A list or an object as the meta.k8s.io/v1 Table that `kubectl get` asks for."""
        resource = self._key(request.resource)
        items = payload["items"] if "items" in payload and request.name is None else [payload]
        if resource in ("v1/events", "events.k8s.io/v1/events") and request.name is None:
            # One collection on a real server: either API lists the events posted through the other.
            other = "events.k8s.io/v1/events" if resource == "v1/events" else "v1/events"
            items = items + [
                obj
                for (res, ns, _), obj in self.store.objects.items()
                if res == other and self._selected(request, ns, core_event(obj) if other != "v1/events" else obj)
            ]
            items.sort(key=_event_seen)
        name_column = _column("Name", fmt="name", description="Name must be unique within a namespace.")
        if resource in self.printer_columns:
            specs = self.printer_columns[resource]
            columns = [name_column] + [
                _column(
                    c["name"],
                    c.get("type", "string"),
                    c.get("description", ""),
                    int(c.get("priority", 0)),
                    c.get("format", ""),
                )
                for c in specs
            ]

            def cells(obj: JSON) -> list[Any]:
                values = [jsonpath(obj, c["jsonPath"]) for c in specs]
                return [_age(v) if c.get("type") == "date" and v else v for c, v in zip(specs, values, strict=True)]
        elif resource in BUILTIN_COLUMNS:
            extra, fill = BUILTIN_COLUMNS[resource]
            columns = [name_column, *extra]
            cells = fill
            if resource.endswith("/events"):
                columns = extra  # kubectl shows events without a NAME column, as the real server's table
        else:
            age = _column("Age", description="CreationTimestamp is a timestamp representing the server time ...")
            columns = [name_column, age]

            def cells(obj: JSON) -> list[Any]:
                return [_age(obj["metadata"].get("creationTimestamp"))]

        include = request.params.get("includeObject", "Metadata")
        rows = []
        for obj in items:
            row: JSON = {"cells": ([] if resource.endswith("/events") else [obj["metadata"]["name"]]) + cells(obj)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        metadata = {k: v for k, v in (payload.get("metadata") or {}).items() if k in ("resourceVersion", "continue")}
        if request.name is not None:
            metadata = {"resourceVersion": payload["metadata"].get("resourceVersion", "")}
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "columnDefinitions": columns,
            "rows": rows,
        }

    # --- semantics ----------------------------------------------------------------------------

    def _known(self, request: kmock.Request) -> str:
        resource = self._key(request.resource)
        if resource not in self.subresources:
            raise kmock.KubernetesResourceNotFoundError()
        if request.subresource and request.subresource not in self.subresources[resource]:
            raise _error(404, "NotFound", f"{resource} has no {request.subresource} subresource")
        return resource

    @staticmethod
    def _body(request: kmock.Request) -> Any:
        if request.data is not None:
            return request.data
        text = request.body.decode() if request.body else ""
        return yaml.safe_load(text) if text else {}

    def _selected(self, request: kmock.Request, namespace: str | None, obj: JSON) -> bool:
        if request.namespace is not None and namespace != request.namespace:
            return False
        labels = obj.get("metadata", {}).get("labels") or {}
        return label_selector_matches(request.params.get("labelSelector"), labels) and _field_selector_matches(
            request.params.get("fieldSelector"), obj
        )

    def _get(self, resource: str, namespace: str | None, name: str | None) -> JSON:
        obj = self.store.objects.get((resource, namespace, name or ""))
        if obj is None:
            raise _error(404, "NotFound", f'{resource} "{name}" not found')
        return obj

    def _scale_of(self, resource: str, obj: JSON) -> JSON:
        meta = obj["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            "status": {
                "replicas": obj.get("status", {}).get("replicas", 0),
                "selector": obj.get("status", {}).get("selector", ""),
            },
        }

    def _create(self, resource: str, namespace: str | None, body: JSON) -> JSON:
        meta = dict(body.get("metadata") or {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        key = (resource, namespace, name)
        if key in self.store.objects:
            raise _error(409, "AlreadyExists", f'{resource} "{name}" already exists')
        obj = copy.deepcopy(body)
        if resource == "v1/secrets":
            obj = _secret_stored(obj)
        if "status" in self.subresources.get(resource, set()):
            obj.pop("status", None)
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=_now(),
            resourceVersion=self.store.next_revision(),
        )
        if namespace is not None:
            meta["namespace"] = namespace
        obj["metadata"] = meta
        if resource == "v1/services" and not (obj.get("spec") or {}).get("clusterIP"):
            # Allocated by the API server, as a real one does; loopback so the sandbox's
            # kube-proxy stand-in can really serve it.
            obj.setdefault("spec", {})["clusterIP"] = next(self._cluster_ips)
        obj.setdefault("apiVersion", resource.rsplit("/", 1)[0])
        obj.setdefault("kind", self.kinds.get(resource))
        if resource == CRDS:
            self.declare_crd(obj)  # served from now on, as a real server serves an established CRD
        self.store.objects[key] = obj
        self.store.emit(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    async def _modify(self, request: kmock.Request) -> JSON:
        resource = self._known(request)
        namespace, name, sub = request.namespace, request.name, request.subresource
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        body = self._body(request)
        async with self._write_lock:
            key = (resource, namespace, name or "")
            live = self.store.objects.get(key)
            if content_type == "application/apply-patch+yaml":
                manager = request.params.get("fieldManager")
                if not manager:
                    raise _error(422, "Invalid", "fieldManager is required for apply patch")
                if live is None and sub:
                    # A subresource is never created by apply: the real server answers 404.
                    raise _error(404, "NotFound", f'{resource} "{name}" not found')
                if live is None:
                    created = self._create(resource, namespace, body)
                    self.store.applied[(*key, manager)] = copy.deepcopy(body)
                    return created
                previous = self.store.applied.get((*key, manager), {})
                updated = _deep_merge(_drop_unapplied(live, previous, body), body)
                self.store.applied[(*key, manager)] = copy.deepcopy(body)
            else:
                if live is None:
                    raise _error(404, "NotFound", f'{resource} "{name}" not found')
                if request.method == kmock.method.PUT:
                    updated = self._put_body(resource, live, body, sub)
                elif content_type == "application/json-patch+json":
                    updated = json_patch(self._view(resource, live, sub), body)
                else:  # merge patch; strategic merge patch approximated by it
                    updated = merge_patch(self._view(resource, live, sub), body)
                if sub == "scale":
                    updated = merge_patch(live, {"spec": {"replicas": updated.get("spec", {}).get("replicas", 0)}})
            expected = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
            if expected and expected != live["metadata"]["resourceVersion"]:
                raise _error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            result = self._commit(resource, key, live, updated, sub)
            return self._scale_of(resource, result) if sub == "scale" else copy.deepcopy(result)

    def _view(self, resource: str, live: JSON, sub: str | None) -> JSON:
        return self._scale_of(resource, live) if sub == "scale" else live

    def _put_body(self, resource: str, live: JSON, body: JSON, sub: str | None) -> JSON:
        if sub == "scale":
            return dict(body)
        return {**body, "metadata": {**live["metadata"], **(body.get("metadata") or {})}}

    def _commit(
        self, resource: str, key: tuple[str, str | None, str], live: JSON, updated: JSON, sub: str | None
    ) -> JSON:
        has_status = "status" in self.subresources.get(resource, set())
        if resource == "v1/secrets":
            updated = _secret_stored(updated)
        if sub == "status":
            # Only status changes through /status.
            updated = {**live, "status": updated.get("status", {})}
        elif has_status:
            # The main endpoint ignores status changes when the status subresource exists.
            updated = {k: v for k, v in updated.items() if k != "status"}
            if "status" in live:
                updated["status"] = live["status"]
        meta = dict(updated.get("metadata") or {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if field in live["metadata"]:
                meta[field] = live["metadata"][field]
        updated["metadata"] = meta
        if updated == live:
            return live  # a no-op write: no new resourceVersion, no event
        outside = {"metadata", "status"}
        if {k: v for k, v in updated.items() if k not in outside} != {
            k: v for k, v in live.items() if k not in outside
        }:
            meta["generation"] = live["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = self.store.next_revision()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.store.objects[key] = updated
            return self._remove(resource, key)
        self.store.objects[key] = updated
        self.store.emit(resource, "MODIFIED", updated)
        return updated

    def _delete(self, resource: str, namespace: str | None, name: str | None) -> JSON:
        key = (resource, namespace, name or "")
        obj = self.store.objects[key]
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta = {**meta, "deletionTimestamp": _now(), "resourceVersion": self.store.next_revision()}
                obj = {**obj, "metadata": meta}
                self.store.objects[key] = obj
                self.store.emit(resource, "MODIFIED", obj)
            return copy.deepcopy(obj)
        return self._remove(resource, key)

    def _remove(self, resource: str, key: tuple[str, str | None, str]) -> JSON:
        obj = self.store.objects.pop(key)
        for applied_key in [k for k in self.store.applied if k[:3] == key]:
            del self.store.applied[applied_key]
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": self.store.next_revision()}}
        self.store.emit(resource, "DELETED", obj)
        task = asyncio.get_running_loop().create_task(self._collect_garbage(obj["metadata"]["uid"]))
        self._gc_tasks.add(task)
        task.add_done_callback(self._gc_tasks.discard)
        return copy.deepcopy(obj)

    async def _collect_garbage(self, owner_uid: str) -> None:
        """Background propagation: delete every object that names the deleted owner."""
        async with self._write_lock:
            dependents = [
                (res, ns, name)
                for (res, ns, name), obj in self.store.objects.items()
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
            ]
            for res, ns, name in dependents:
                if (res, ns, name) in self.store.objects:
                    self._delete(res, ns, name)

    # --- direct access for test-support controllers (no HTTP) ----------------------------------

    def objects_of(self, resource: str, namespace: str | None = None) -> list[JSON]:
        return [
            copy.deepcopy(obj)
            for (res, ns, _), obj in self.store.objects.items()
            if res == resource and (namespace is None or ns == namespace)
        ]

    def find(self, resource: str, namespace: str | None, name: str) -> JSON | None:
        obj = self.store.objects.get((resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def write_status(self, resource: str, namespace: str | None, name: str, status: JSON) -> None:
        async with self._write_lock:
            key = (resource, namespace, name)
            live = self.store.objects.get(key)
            if live is not None:
                self._commit(resource, key, live, {**live, "status": status}, "status")

    async def create_object(self, resource: str, obj: JSON) -> JSON:
        async with self._write_lock:
            return self._create(resource, obj["metadata"].get("namespace"), obj)

    async def replace_object(self, resource: str, obj: JSON) -> JSON | None:
        """A controller's update (PUT semantics, server-owned metadata kept); None when the object is gone."""
        async with self._write_lock:
            meta = obj["metadata"]
            key = (resource, meta.get("namespace"), meta["name"])
            live = self.store.objects.get(key)
            if live is None:
                return None
            return copy.deepcopy(self._commit(resource, key, live, copy.deepcopy(obj), None))

    async def delete_object(self, resource: str, namespace: str | None, name: str) -> None:
        async with self._write_lock:
            if (resource, namespace, name) in self.store.objects:
                self._delete(resource, namespace, name)


def writes(server: ApiServer) -> list[kmock.Request]:
    """Every write request the server received (what "zero writes" counts)."""
    write_methods = (kmock.method.POST, kmock.method.PUT, kmock.method.PATCH, kmock.method.DELETE)
    return [r for r in server if r.method in write_methods]  # iterating a kmock view yields its requests
