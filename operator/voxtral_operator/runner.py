"""`voxtral-operator run`: kopf underneath, the operator's metrics server beside it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random

import kopf
import prometheus_client

from voxtral_operator.config import load_config
from voxtral_operator.runtime import STATE


def run_operator(args: argparse.Namespace) -> int:
    STATE.config = load_config(args.config)
    namespaces = list(args.namespace) or list(STATE.config.watched_namespaces)
    # Distinct priorities: equal ones would pause every replica.
    STATE.peering_priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    STATE.peering_name = args.peering
    STATE.namespaces = namespaces
    import voxtral_operator.handlers  # noqa: F401 - registers the handlers with kopf

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.peering is None,
            peering_name=args.peering,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
