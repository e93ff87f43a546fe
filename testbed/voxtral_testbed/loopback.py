"""Loopback addresses for the sandbox's pods and Services.

Each process takes its own /16 of 127.0.0.0/8 (from its PID), so a demo beside a test run, or two
test runs at once, never bind the same address and port. Pods count up from 127.B.0.2, Services
from 127.B.128.2, across every sandbox of the process: a sandbox never takes an address an earlier
one's process may still hold.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

BLOCK = 2 + os.getpid() % 252  # 127.2.x.x .. 127.253.x.x: never 127.0.x.x, where 127.0.0.1 lives
PER_OCTET = 250  # host numbers .2 .. .251


def _addresses(first_third_octet: int, octets: int) -> Iterator[str]:
    for index in itertools.count():
        third = first_third_octet + (index // PER_OCTET) % octets
        yield f"127.{BLOCK}.{third}.{2 + index % PER_OCTET}"


_PODS = _addresses(0, 128)
_SERVICES = _addresses(128, 128)


def pod_addresses() -> Iterator[str]:
    return _PODS


def service_addresses() -> Iterator[str]:
    return _SERVICES
