"""Helpers for driving the real operator process against the sandbox (tests, demo, e2e, benchmarks)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from voxtral_operator.status import condition_of

T = TypeVar("T")
# Requests the tests make themselves (as kubectl would) carry this, so they can be told apart.
USER_AGENT = "kubectl-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_simulator(host: str, port: int, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """The vLLM simulator (`simulate-vllm`) on host:port, as a pod's (or a test's) vLLM stand-in;
    its output goes to `log` when given (so a pod that never gets ready can say why)."""
    with log.open("ab") if log is not None else open(os.devnull, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "voxtral_testbed.simulator", "--host", host, "--port", str(port), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
        )


class OperatorProcess:
    """`voxtral-operator run` as a subprocess, with its metrics port to see what it has done."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra_args: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voxtral_operator.cli",
                "run",
                "--liveness",
                "",
                "--metrics-port",
                str(self.metrics_port),
                "--verbose",
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def metric(self, name: str, labels: str = "") -> float | None:
        """One sample from the operator's /metrics, or None while it is not serving yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0, interval: float = 0.1) -> T:  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    """Poll until check() returns something truthy; fail with the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Kube:
    """Plain HTTP to the API server, as kubectl would send it."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {payload}")
            return payload

    async def get(self, path: str) -> Any | None:
        async with self.session.get(self.url + path, headers={"User-Agent": USER_AGENT}) as response:
            if response.status == 404:
                return None
            return await response.json(content_type=None)

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def merge(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)


def endpoint_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/voxtral.dev/v1alpha1/namespaces/{namespace}/voxtralendpoints"
    return f"{base}/{name}" if name else base


def condition(endpoint: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The endpoint's condition of that type, or {} when it has none yet."""
    return condition_of((endpoint or {}).get("status") or {}, type_) or {}


def request_permissions(requests: Iterable[Any]) -> set[tuple[str, str, str]]:
    """(group, resource[/subresource], verb) for each API request, as RBAC would judge it."""
    needed = set()
    for request in requests:
        resource = request.resource
        if resource is None or not resource.plural:
            continue  # discovery
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        if method == "GET":
            verb = "watch" if request.params.get("watch") in ("true", "1") else ("get" if request.name else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        name = resource.plural + (f"/{request.subresource}" if request.subresource else "")
        needed.add((resource.group or "", name, verb))
        if verb == "patch" and "apply-patch" in request.headers.get("Content-Type", "") and not request.subresource:
            needed.add((resource.group or "", name, "create"))  # an apply that creates needs create too
    return needed
