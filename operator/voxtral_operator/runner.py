"""`voxtral-operator run`: kopf underneath, the operator's metrics server beside it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import sys
import urllib.parse

import kopf
import prometheus_client

from voxtral_operator import keepalive, logs, toggles, trimming
from voxtral_operator.config import OperatorConfig
from voxtral_operator.runtime import STATE

logger = logging.getLogger(__name__)


def credentials_problem() -> str | None:
    """Why the operator could not log in to a cluster, or None when it can.

    kopf would retry a failed login for ever with a traceback a minute; a missing kubeconfig is
    a mistake to report once. The check is the one kopf's login (login_via_client) makes.
    """
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return None
    except kubernetes.config.ConfigException as exc:
        in_cluster = str(exc)
    try:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        return None
    except Exception as exc:  # any reason the kubeconfig is unusable is reported, not raised
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return (
        f"no Kubernetes credentials: kubeconfig {kubeconfig}: {reason.rstrip('.')}; "
        f"not in a cluster either ({in_cluster.rstrip('.')}). Set KUBECONFIG, or run in a pod with a service account"
    )


def _unusable_liveness_port(liveness: str) -> str | None:
    """Why kopf could not listen at the liveness URL (a port in use); None when it could. Checked before
    kopf starts, which would end in its traceback: a bind and release, so another may take it between."""
    if not liveness:
        return None
    parts = urllib.parse.urlsplit(liveness)
    host, port = parts.hostname or "0.0.0.0", parts.port or 80
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"--liveness {liveness}: cannot listen there ({why})"


def run_operator(args: argparse.Namespace, config: OperatorConfig) -> int:
    STATE.config = config
    namespaces = list(args.namespace) or list(config.watched_namespaces)
    # Distinct priorities: equal ones would pause every replica.
    STATE.peering_priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    STATE.peering_name = args.peering
    STATE.namespaces = namespaces
    # In a pod the hostname is the pod's name; two local processes differ by pid.
    STATE.identity = f"{socket.gethostname()}/{os.getpid()}"
    STATE.user_agent = f"voxtral-operator/{args.version} ({STATE.identity})"
    toggles.install()  # kopf's start-up gate, linear in the watched objects (toggles.py)
    keepalive.install()  # a peering lease kept through a busy start-up (keepalive.py)
    trimming.install()  # watch events cut to what is read before kopf queues them (trimming.py)
    import voxtral_operator.handlers  # noqa: F401 - registers the handlers with kopf

    logs.configure(args.log_format or config.log_format, verbose=args.verbose)
    logger.info(
        "voxtral-operator %s (%s) starting: watching %s, %s",
        args.version,
        STATE.identity,
        ", ".join(namespaces) if namespaces else "all namespaces",
        f"peering {args.peering} at priority {STATE.peering_priority}" if args.peering else "standalone",
    )
    busy = _unusable_liveness_port(args.liveness)
    if busy is not None:
        print(f"error: {busy}", file=sys.stderr)
        return 1
    if args.metrics_port:
        try:
            prometheus_client.start_http_server(args.metrics_port)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            print(f"error: --metrics-port {args.metrics_port}: cannot listen there ({why})", file=sys.stderr)
            return 1
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.peering is None,
            peering_name=args.peering,
            identity=STATE.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
