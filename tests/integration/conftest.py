"""The real operator process against the API server stand-in, over HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from voxtral_testbed.harness import Kube, OperatorProcess
from voxtral_testbed.sandbox import Sandbox


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as running:
        yield running


@pytest.fixture
async def kube(sandbox: Sandbox) -> AsyncIterator[Kube]:
    async with aiohttp.ClientSession() as session:
        yield Kube(sandbox.url, session)


@pytest.fixture
def operator(sandbox: Sandbox, tmp_path: Path) -> Iterator[OperatorProcess]:
    # These pods serve nothing (the autoscaling tests use simulated vLLM pods): no Serving checks.
    config = tmp_path / "operator-config.yaml"
    config.write_text("servingCheckSeconds: 0\n")
    process = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()
    try:
        yield process
    finally:
        process.stop()


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    # Show the operator's log beside a failure: it is the first thing anyone looks at. Then each
    # pod's own output (a simulator that never got ready says why there).
    if call.excinfo is None:
        return
    funcargs = getattr(item, "funcargs", {})
    if "operator" in funcargs:
        item.add_report_section(call.when, "operator log", funcargs["operator"].log()[-6000:])
    sandbox = funcargs.get("sandbox")
    if isinstance(sandbox, Sandbox):
        for name, text in sandbox.pod_logs().items():
            item.add_report_section(call.when, f"pod {name} log", text[-3000:])
