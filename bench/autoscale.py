"""Autoscaler latency and scrape cost, with the operator's own Autoscaler over real HTTP.

1. Spike -> decision: one endpoint whose pod serves a vLLM /metrics page the benchmark controls;
   the queue jumps from 0 to 50, and the time until `spec.replicas` changes on the API server
   (through the scale subresource) is measured, 20 times, at the default 2 s scrape interval.
   Target: p95 <= 5 s.
2. Scrape cost: 1,000 pods (50 endpoints x 20 ready pods, each its own loopback address) served by
   one `simulate-vllm` process; the wall time and the autoscaler's CPU time per pass over all of them.

    python bench/autoscale.py [--spikes 20] [--pods 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import aiohttp
from aiohttp import web

from voxtral_operator.autoscale.loop import Autoscaler
from voxtral_operator.autoscale.policy import SCALE_UP_PERIOD_SECONDS
from voxtral_operator.config import OperatorConfig
from voxtral_operator.k8s.client import ApiClient, Connection
from voxtral_testbed.harness import free_port, start_simulator
from voxtral_testbed.sandbox import ENDPOINTS, Sandbox

Key = tuple[str, str]


class StaticView:
    """Endpoints and ready pods as the operator's watch caches would hold them."""

    def __init__(self, sandbox: Sandbox, pods: dict[Key, list[str]]) -> None:
        self.sandbox = sandbox
        self._pods = pods

    def endpoint_keys(self) -> list[Key]:
        return list(self._pods)

    def endpoint(self, key: Key) -> dict[str, Any] | None:
        return self.sandbox.api.find(ENDPOINTS, key[0], key[1])

    def pods(self, key: Key) -> list[dict[str, Any]]:
        return [{"ip": ip, "ready": True} for ip in self._pods[key]]

    def children(self, key: Key) -> dict[tuple[str, str], dict[str, Any]]:
        return {}

    def gateway_pods(self, key: Key) -> list[dict[str, Any]]:
        return []


def _endpoint(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "model": "mistralai/Voxtral-Mini-3B-2507",
            "gpu": {"type": "L4-24GB"},
            "replicas": 1,
            "minReplicas": 1,
            "maxReplicas": 40,
        },
    }


def _post_nothing(*_: Any) -> None:
    return None


async def spike_to_decision(spikes: int) -> list[float]:
    port = free_port()
    queue = {"waiting": 0}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            text=f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {queue["waiting"]}.0\n'
            f'vllm:num_requests_running{{engine="0",model_name="m"}} 4.0\n'
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    random.seed(11)
    latencies = []
    async with Sandbox(controllers=False) as sandbox:
        await sandbox.api.create_object(ENDPOINTS, _endpoint("spiky"))
        config = OperatorConfig(vllm_port=port)  # default scrape interval: 2 s
        client = ApiClient(Connection(server=sandbox.url))
        view = StaticView(sandbox, {("bench", "spiky"): ["127.0.0.1"]})
        autoscaler = Autoscaler(client=client, config=config, view=view, post_event=_post_nothing)
        loop_task = asyncio.create_task(autoscaler.run_forever())
        try:
            for _ in range(spikes):
                # Spikes land anywhere in the scrape cycle, each after the policy's scale-up period (a second
                # scale-up within it waits for the period, as HPA's does).
                await asyncio.sleep(SCALE_UP_PERIOD_SECONDS + random.uniform(0.0, 2.0))
                queue["waiting"] = 50
                started = time.perf_counter()
                # Polls the API server's store: the moment of the write is what is measured.
                while (sandbox.api.find(ENDPOINTS, "bench", "spiky") or {})["spec"]["replicas"] == 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                latencies.append(time.perf_counter() - started)
                queue["waiting"] = 0
                obj = sandbox.api.find(ENDPOINTS, "bench", "spiky")
                assert obj is not None
                await sandbox.api.write_status(ENDPOINTS, "bench", "spiky", obj.get("status") or {})
                async with aiohttp.ClientSession() as session:
                    await session.patch(
                        f"{sandbox.url}/apis/voxtral.dev/v1alpha1/namespaces/bench/voxtralendpoints/spiky/scale",
                        json={"spec": {"replicas": 1}},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
        finally:
            loop_task.cancel()
            await client.close()
            await runner.cleanup()
    return latencies


async def scrape_cost(pod_count: int) -> tuple[float, float]:
    port = free_port()
    simulator = start_simulator("0.0.0.0", port)
    try:
        async with Sandbox(controllers=False) as sandbox:
            pods: dict[Key, list[str]] = {}
            per_endpoint = 20
            for index in range(pod_count // per_endpoint):
                name = f"ep-{index}"
                await sandbox.api.create_object(ENDPOINTS, _endpoint(name))
                pods[("bench", name)] = [
                    f"127.0.{1 + (index * per_endpoint + i) // 250}.{1 + (index * per_endpoint + i) % 250}"
                    for i in range(per_endpoint)
                ]
            client = ApiClient(Connection(server=sandbox.url))
            autoscaler = Autoscaler(
                client=client,
                config=OperatorConfig(vllm_port=port),
                view=StaticView(sandbox, pods),
                post_event=_post_nothing,
            )
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                autoscaler._session = session
                while True:  # wait for the simulator to listen
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/health") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                walls, cpus = [], []
                for _ in range(5):
                    wall, cpu = time.perf_counter(), time.process_time()
                    await autoscaler.tick()
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
            await client.close()
            return statistics.median(walls), statistics.median(cpus)
    finally:
        simulator.terminate()
        simulator.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spikes", type=int, default=20)
    parser.add_argument("--pods", type=int, default=1000)
    args = parser.parse_args()
    latencies = sorted(asyncio.run(spike_to_decision(args.spikes)))
    p95 = latencies[max(0, round(len(latencies) * 0.95) - 1)]
    print(f"queue spike -> spec.replicas written, {len(latencies)} spikes at a 2 s scrape interval:")
    print(f"  p50 {statistics.median(latencies):.2f} s   p95 {p95:.2f} s   max {latencies[-1]:.2f} s")
    wall, cpu = asyncio.run(scrape_cost(args.pods))
    print(
        f"one pass over {args.pods} pods (scrape + parse + decide): wall {wall * 1000:.0f} ms, "
        f"autoscaler CPU {cpu * 1000:.0f} ms (median of 5)"
    )


if __name__ == "__main__":
    main()
