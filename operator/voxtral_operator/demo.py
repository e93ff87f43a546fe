"""`voxtral-operator demo`: the real operator reconciling the bundled examples against a local API server.

No cluster needed: the sandbox serves the Kubernetes API on loopback and plays the kubelet
(pods become ready after a short "model load"). The operator runs as its own process, exactly
as `voxtral-operator run` runs in a cluster. The demo ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from voxtral_operator.testing.harness import Kube, OperatorProcess, condition, endpoint_path, eventually
from voxtral_operator.testing.sandbox import Behaviour, Sandbox

CHILDREN = [
    ("persistentvolumeclaims", "/api/v1/namespaces/{ns}/persistentvolumeclaims"),
    ("deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
    ("services", "/api/v1/namespaces/{ns}/services"),
    ("poddisruptionbudgets", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
    ("networkpolicies", "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
    ("pods", "/api/v1/namespaces/{ns}/pods"),
]


def _say(text: str) -> None:
    print(text, flush=True)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _endpoint_row(obj: dict[str, Any]) -> list[str]:
    status = obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        obj["spec"]["model"],
        obj["spec"]["gpu"]["type"],
        str(status.get("replicaSummary", "")),
        str(status.get("phase", "")),
        condition(obj, "Ready").get("status", ""),
        condition(obj, "Ready").get("reason", ""),
        str(status.get("url", "")),
    ]


async def _print_endpoints(kube: Kube, namespace: str) -> None:
    listing = await kube.get(endpoint_path(namespace))
    rows = [["NAME", "MODEL", "GPU", "REPLICAS", "PHASE", "READY", "REASON", "URL"]]
    rows += [_endpoint_row(obj) for obj in (listing or {}).get("items", [])]
    _say(_table(rows))


async def _demo(examples: list[Path]) -> int:
    endpoints = [yaml.safe_load(path.read_text()) for path in examples]
    namespaces = sorted({e["metadata"].get("namespace", "default") for e in endpoints})
    async with Sandbox() as sandbox, aiohttp.ClientSession() as session:
        # Pods take a few seconds to "load the model", so the Loading phase is visible.
        sandbox.controllers.default = Behaviour(load_seconds=3.0)
        kube = Kube(sandbox.url, session)
        log = Path(tempfile.mkdtemp(prefix="voxtral-demo-")) / "operator.log"
        _say(f"API server stand-in at {sandbox.url}; operator log: {log}")
        operator = OperatorProcess(sandbox.kubeconfig, log).start()
        try:
            started = time.monotonic()
            for body in endpoints:
                namespace = body["metadata"].get("namespace", "default")
                await kube.create(endpoint_path(namespace), body)
                _say(f"applied VoxtralEndpoint {namespace}/{body['metadata']['name']} ({body['spec']['model']})")

            async def phase(wanted: str) -> bool:
                for body in endpoints:
                    namespace = body["metadata"].get("namespace", "default")
                    current = await kube.get(endpoint_path(namespace, body["metadata"]["name"]))
                    if ((current or {}).get("status") or {}).get("phase") != wanted:
                        return False
                return True

            await eventually(lambda: phase("Loading"), timeout=60)
            _say("\n$ kubectl get vxe   # models loading")
            for namespace in namespaces:
                await _print_endpoints(kube, namespace)
            await eventually(lambda: phase("Ready"), timeout=60)
            _say(f"\n$ kubectl get vxe   # ready after {time.monotonic() - started:.1f}s")
            for namespace in namespaces:
                await _print_endpoints(kube, namespace)

            for namespace in namespaces:
                _say(f"\n$ kubectl get all -n {namespace} -l app.kubernetes.io/managed-by=voxtral-operator")
                rows = [["KIND", "NAME", "OWNER"]]
                for kind, path in CHILDREN:
                    listing = await kube.get(path.format(ns=namespace))
                    for obj in (listing or {}).get("items", []):
                        owners = obj["metadata"].get("ownerReferences") or [{}]
                        rows.append([kind, obj["metadata"]["name"], f"{owners[0].get('kind')}/{owners[0].get('name')}"])
                _say(_table(rows))
                _say(f"\n$ kubectl get events -n {namespace}")
                listing = await kube.get(f"/api/v1/namespaces/{namespace}/events")
                rows = [["TYPE", "REASON", "OBJECT", "MESSAGE"]]
                for event in (listing or {}).get("items", []):
                    involved = event.get("involvedObject", {})
                    rows.append(
                        [
                            event.get("type", ""),
                            event.get("reason", ""),
                            involved.get("name", ""),
                            event.get("message", "")[:90],
                        ]
                    )
                _say(_table(rows))

            first = endpoints[0]
            namespace, name = first["metadata"].get("namespace", "default"), first["metadata"]["name"]
            target = int(first["spec"].get("maxReplicas", 1))
            _say(f"\n$ kubectl scale vxe/{name} -n {namespace} --replicas={target}")
            await kube.request(
                "PATCH",
                endpoint_path(namespace, name) + "/scale",
                {"spec": {"replicas": target}},
                "application/merge-patch+json",
            )

            async def scaled() -> bool:
                current = await kube.get(endpoint_path(namespace, name))
                return ((current or {}).get("status") or {}).get("readyReplicas") == target

            await eventually(scaled, timeout=60)
            for ns in namespaces:
                await _print_endpoints(kube, ns)
            _say("\ndemo complete: the operator reconciled every example; stopping")
        finally:
            operator.stop()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    examples = sorted(Path(args.examples).glob("*.yaml"))
    if not examples:
        print(f"no examples in {args.examples}")
        return 2
    return asyncio.run(_demo(examples))
