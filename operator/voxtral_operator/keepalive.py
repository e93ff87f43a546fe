"""kopf's peering keep-alive with a margin that survives a busy start-up.

kopf (1.45) touches the peering object 5 to 10 s before its lease (60 s) runs out. A replica that
starts with thousands of watched objects keeps its event loop busy with the initial listing for
longer than that margin: measured with 1,050 endpoints, its keep-alive came 16 s late, the other
replica presumed it dead and resumed, and for 10 s both acted. This keep-alive touches every third
of the lease (20 s of 60), leaving two thirds as the margin, and withdraws on exit as kopf's does.
`install()` puts it in place of kopf's before `kopf.operator()` starts its peering tasks (kopf looks
`peering.keepalive` up when it starts them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

from kopf._cogs.configs import configuration
from kopf._cogs.structs import references
from kopf._core.engines import peering

logger = logging.getLogger(__name__)

STOCK_KEEPALIVE = peering.keepalive
TOUCHES_PER_LEASE = 3


async def keepalive(
    *,
    namespace: references.Namespace,
    resource: references.Resource,
    identity: peering.Identity,
    settings: configuration.OperatorSettings,
) -> NoReturn:
    try:
        while True:
            await peering.touch(identity=identity, settings=settings, resource=resource, namespace=namespace)
            await asyncio.sleep(max(1.0, settings.peering.lifetime / TOUCHES_PER_LEASE))
    finally:
        # Withdraw at once (lease 0), so a replica stopped gracefully hands over without the lease's wait.
        try:
            await asyncio.shield(
                peering.touch(identity=identity, settings=settings, resource=resource, namespace=namespace, lifetime=0)
            )
        except asyncio.CancelledError:
            pass
        except Exception:  # as kopf's: a failed withdrawal leaves the lease to run out
            logger.exception("could not withdraw from the peering; the other replicas wait for the lease")


def install() -> None:
    """kopf's peering tasks started from now on keep alive every third of the lease (idempotent)."""
    peering.keepalive = keepalive
