"""Two operator replicas with peering under the chart's RBAC: the active one killed (SIGKILL) in the
middle of a burst, the other takes over within a bound, every endpoint converges, and the API server's
audit log shows the two never wrote at the same time.

Both processes use the chart's ServiceAccount, so the audit log tells them apart by User-Agent: each
operator process sends `voxtral-operator/<version> (<host>/<pid>)`, its peering identity.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import defaultdict

import pytest

from .chaos.audit import AuditLog, Write
from .chaos.test_faults import unconverged, wait_converged
from .conftest import Kubectl, LocalCluster, endpoint_body, eventually
from .test_operator import identity_of, peers, pid_of, two_peers

pytestmark = pytest.mark.e2e
BURST = 40  # suspended endpoints created at once: children and status, no GPU
# kopf's peering lease (settings.peering.lifetime): a peer killed without a word is presumed dead once
# its last keepalive is this old, and only then does the other resume (it lists everything again).
LEASE_SECONDS = 60.0
TAKEOVER_SECONDS = LEASE_SECONDS + 30.0  # the lease, then the relist and the first write


def _endpoint_of(write: Write, names: list[str]) -> str | None:
    for name in names:  # children are named after their endpoint, Events "<name>.<suffix>"
        if write.name == name or write.name.startswith((f"{name}-", f"{name}.")):
            return name
    return None


def test_takeover_after_the_active_replica_is_killed_mid_burst(kubectl: Kubectl, local: LocalCluster) -> None:
    namespace = f"takeover-{uuid.uuid4().hex[:6]}"
    names = [f"tk-{i:02d}" for i in range(BURST)]
    kubectl.run("create", "namespace", namespace)
    audit = AuditLog(local.audit_log)
    try:
        with two_peers(local):
            _takeover(kubectl, local, audit, namespace, names)
    finally:
        # Gone before the next test: the operator otherwise keeps reconciling 40 endpoints in a terminating
        # namespace (every apply refused), which the fault suite after this one counts as its writes.
        kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=300s", check=False)


def _takeover(kubectl: Kubectl, local: LocalCluster, audit: AuditLog, namespace: str, names: list[str]) -> None:
    identities = {instance: identity_of(local, instance) for instance in (1, 2)}
    priorities = peers(kubectl)  # both in it: two_peers waited for that, and for the lower one's pause
    active = max(identities, key=lambda instance: priorities[identities[instance]])
    passive = 3 - active
    agent = {instance: f"({identities[instance]})" for instance in identities}

    since = audit.offset()
    kubectl.apply(*(endpoint_body(name, namespace, suspended=True) for name in names))
    first_status = eventually(
        lambda: next(
            (w for w in audit.writes(since) if w.namespace == namespace and w.resource.endswith("/status")),
            None,
        ),
        120,
        "the active operator's first status write",
        interval=0.05,
    )
    os.killpg(pid_of(local, active), signal.SIGKILL)
    killed_at = time.time()
    left_at_kill = unconverged(kubectl, namespace, gateways=False)
    assert agent[active] in first_status.user_agent, (
        f"the first status write came from {first_status.user_agent!r}, not the active {agent[active]}"
    )
    assert left_at_kill, "every endpoint converged before the kill: not a takeover mid-burst"

    # Who wrote what is judged here, not quiet after settling: the 40 endpoints' gateway pods, which take
    # minutes to start on two cores, are not waited for (the fault suite, four endpoints a burst, waits).
    converged_at = wait_converged(kubectl, namespace, gateways=False)
    time.sleep(3)  # the last writes' audit entries reach the log
    writes = [w for w in audit.writes(since) if w.namespace == namespace]
    by_peer = {instance: [w for w in writes if agent[instance] in w.user_agent] for instance in (active, passive)}
    strangers = [f"{w} by {w.user_agent}" for w in writes if not any(a in w.user_agent for a in agent.values())]
    assert not strangers, f"operator writes from neither peer: {strangers[:10]}"
    assert by_peer[passive], "the passive operator never wrote: no takeover"
    # By when the API server received each write, not when it completed: a request the killed peer sent
    # just before the kill may complete later on a busy server, and that is not a write after the kill.
    took_over = min(w.received_at for w in by_peer[passive]) - killed_at
    last_of_killed = max(w.received_at for w in by_peer[active])

    # No endpoint written by both at once: each endpoint's writes by the killed peer all precede
    # the other's, and the passive one wrote nothing before the kill.
    per_endpoint: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for instance, seen in by_peer.items():
        for write in seen:
            endpoint = _endpoint_of(write, names)
            assert endpoint is not None, f"a write to no endpoint of the burst: {write}"
            per_endpoint[endpoint][instance].append(write.received_at)
    interleaved = [
        name
        for name, times in per_endpoint.items()
        if times[active] and times[passive] and max(times[active]) >= min(times[passive])
    ]
    both = sorted(name for name, times in per_endpoint.items() if times[active] and times[passive])
    print(
        "\n[takeover] "
        + json.dumps(
            {
                "endpoints": BURST,
                "unconverged_at_kill": len(left_at_kill),
                "takeover_seconds": round(took_over, 1),
                "converged_seconds_after_kill": round(converged_at - killed_at, 1),
                "writes_by_killed": len(by_peer[active]),
                "writes_by_successor": len(by_peer[passive]),
                "endpoints_written_by_both_one_after_the_other": len(both),
            }
        )
    )
    assert took_over > 0, f"the passive operator wrote {-took_over:.1f}s before the active one was killed"
    # A peer killed with SIGKILL sends nothing more; the slack is the API server taking in what was sent.
    assert last_of_killed <= killed_at + 10, (
        f"the killed operator's writes went on after the kill: its last was received "
        f"{last_of_killed - killed_at:.2f}s after it"
    )
    assert not interleaved, f"endpoints written by both peers at once: {interleaved}"
    assert took_over <= TAKEOVER_SECONDS, f"took over {took_over:.0f}s after the kill (bound {TAKEOVER_SECONDS:.0f}s)"
