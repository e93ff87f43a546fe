"""Scaling policies for a Voxtral endpoint, compared in simulated time: GPU-hours against queue wait.

Pure and deterministic per seed: the same seed (or trace) and the same policy give the same numbers.
Nothing real runs; a simulated day takes a few seconds of CPU per policy.

Traffic (built in): a run of days from Monday on, weekdays (a call-centre day: quiet night, morning
ramp, lunch dip, afternoon peak, evening tail, each day's level and timing jittered, slow noise,
bursts of 5-30 minutes at 1.5-2.5x), Saturdays and Sundays (a fraction of a weekday's level, later),
and holidays (like a Sunday, on a weekday the profile expects busy). Requests are short call clips,
audio questions on 1-15 minute recordings, and 25-40 minute uploads (4 % of requests, most of the
tokens). `--trace FILE` replays a CSV `arrival_s,audio_s,output_tokens[,class]` instead. `--backlog N`
adds N deferrable requests every evening (10-30 minute recordings, 18:00-22:00).

The deferrable lane (rows of class `batch`, `service_tier: flex` at the gateway): due by 08:00 of the
day after they arrive (the trace's clock), counted on the day they are due. The gateway admits them
by the lane rule (operator/voxtral_operator/gateway/lanes.py), counted as the gateway counts: into a
replica only while no interactive request waits in that gateway pod's queue, the replica has more
than a headroom H (an eighth of the slots, at least 1) of that pod's in-flight slots free, and the
whole sequences (prompt and expected output) that pod has in flight there, with the request's, stay
within the pod's share of the replica's KV cache (the cache over the gateway pods);
`--lane-slots-only` drops the KV bound (and taking back with it), for comparison. An interactive
request whose tokens do not fit the pod's share beside what it counts on the replica with the least
work goes to another where they fit, if one has room. Deferrable work an interactive request waits
behind is taken back as the gateway does by default (lanes.to_take_back_on_waiting): every second
each gateway pod reads each replica's vllm:num_requests_waiting (the engine's queue after its last
step) and, where one of its own interactive requests may be among those waiting (its `waiting`
newest there), takes back its own deferrable requests sent before that one, newest first, until
their whole sequences cover the interactive ones': each is aborted, its work lost, and waits at the
front of its lane again (the gateway can take back only requests whose body it kept, within its
`--resend-buffer-mb`, where this assumes every one). `--take-back-by-count` takes back instead when
an interactive request is sent that does not fit and finds no such room (the gateway's
`--take-back-read-seconds 0`): that pod's deferrable requests on its replica (those vLLM has not
started first, then the newest running) until they fit (lanes.to_take_back). `--no-take-back` leaves
them, for comparison; `--take-back-on-waiting` is a what-if no gateway can do (it knows which
request waits and why): every 2 s, where an interactive request waits in vLLM's queue for blocks,
deferrable requests there (any gateway pod's) are taken back until it would be admitted.
Their own queue bound and long timeout; a refused or timed-out one is failed.
Wait figures are the interactive lane's; `batch_done_by_deadline` is the share finished by the
deadline. Through a Service there is no lane: they are sent like any request (and kept out of the
wait figures).

Scoring: every policy lives through the first `--warmup-days` days (the new policy learns its profile
from them; the stateless baselines start an hour before the first scored day) and is scored on the
rest, per day: p95 and p99 queue wait (from arrival to vLLM admitting the request), failed requests
(timed out or refused: the gateway's `queueTimeoutSeconds` 600 s and `maxQueue` 1000 per gateway pod,
or, through a Service, a caller giving up after the same 600 s), GPU-hours; the spread over days and
the pooled figures beside them. A failed request enters the wait percentiles at 600 s.

Engine, per replica, as vLLM 0.33's V1 scheduler behaves (vllm/v1/core/sched/scheduler.py,
vllm/engine/arg_utils.py): the KV cache from the catalog's fit check; `--max-num-seqs` and
`--max-num-batched-tokens` at vLLM's defaults for the OpenAI server when the spec sets none (1024 and
8192 on GPUs of 70 GiB or more other than A100, 256 and 2048 otherwise); first come first served:
the head of the waiting queue is admitted while a sequence slot is free and its prompt's blocks fit
(KV blocks of 16 tokens, allocated as the prompt is prefilled and as tokens are produced, not
reserved for the whole sequence); when a step's blocks run out the newest running request is
preempted: its blocks freed, its prompt and the tokens it had produced recomputed when it is admitted
again from the front of the queue. A step costs the weights read once, the batch's KV cache read
once, and the prefill chunk's compute.

Cold starts, as separate paths (`cold_start_paths` prints the figures): a new node (provisioning,
image pull, weights, load and compile), a node still held from a replica that left (no provisioning,
the image on the node), and the weights from the hub or from a shared model cache (`--weights`).

Chance, paired: kube-proxy's pick of a gateway pod for each request comes from a stream of picks
alone, and each cold start from a draw keyed by its day, the replica's place in the Deployment and how
many times that place started that day; runs compared (policy against policy, with deferrable work
against without) meet the same chance wherever they do the same thing.

Routing: `gateway` as deployed (two gateway pods, each its own queue of at most 1000, each sending at
most 256 / 2 requests in flight to a replica, least outstanding work first) or `service`
(kube-proxy picks a ready pod at random; each vLLM queues on its own). Scale-down drains for
`shutdownTimeoutSeconds` (120 s); requests not started are sent again. The GPU node bills from the
scale-up until a retention period (the cluster autoscaler's unneeded time, 600 s) after its pod goes.
Billing: on demand (every GPU-second of a node), or `--reserved-gpus N` (N GPUs paid all day,
whatever happens; GPUs beyond them on demand; `reserved_busy_fraction` is the share of reserved
GPU-seconds with a replica serving at least one request). The operator's policy is told the pool
(`reservedReplicas`): it keeps the pool up while deferrable work waits, never more for it alone;
with `--keep-pool-up` all day (`minReplicas` at the pool's size, for a pool not lent to other work).
`--reserved-target` measures a reserved pool: a working week of warm-up, then a scored week on
a pool sized for the interactive p95 peak, with an overnight backlog and without it (`--plot FILE`
draws it), each over `--draws` draws of the simulation's own chance (cold starts, kube-proxy's
picks; each day's waits pooled over them; the run with the backlog and its run without draw the same
picks and, replica by replica, the same cold starts), and another set of draws without the backlog
judged against the first by the same rule: how often the per-day tail rule is missed by chance alone.

Metrics each system sees, with its own lag: the operator scrapes every pod every 2 s; HPA reads
Prometheus (15 s scrape) at its 15 s sync; KubeAI samples its proxy every 10 s and averages 10 min.

Policies: `new` (voxtral_operator.autoscale.policy, imported, not copied), HPA on
`vllm:kv_cache_usage_perc`, on (running + waiting) per replica, on waiting requests (what the
operator's KEDA mode renders), a KubeAI-style moving average of active requests, a schedule floor
for working hours plus HPA on KV usage (KEDA's cron trigger beside a reactive trigger), a fixed pool,
and a clairvoyant `oracle` (reads the trace ahead, starts replicas one worst-case cold start early,
pays the same cold starts and billing, tuned to the same wait target): the limit; beside it the same
rule told only the past (`hindsight`: the exact load of every minute already over, nothing ahead),
what a perfect measurement without foresight buys. `--foresight` adds a third between them, the
`forecast` oracle: the exact past and, ahead, each minute's expected load (other draws of the same
day's rate without its bursts, averaged), what a perfect forecast of the load, not of the requests,
adds. `--no-bursts` runs the same days without their bursts. Each policy's constant comes from
bench/policy_constants.json, written by bench/tune_policies.py from training seeds only; this script
scores them.

Not modelled: prefix caching, speculative decoding, the audio encoder's own compute, attention cost
growing with context length, preemption's swap mode and priority scheduling, stragglers and engine
failures, pods sharing a node, node-pool quotas or capacity shortages (every scale-up gets a node),
network time, callers retrying after a failure, the control plane's own latency between a decision
and a pod, and the operator's and the gateway's CPU cost. Without priority scheduling, deferrable
requests are ordered by the gateway alone, as transcriptions are.

    python bench/policy_sim.py                       # held-out seeds, the table
    python bench/policy_sim.py --quick --json        # smoke test
    python bench/policy_sim.py --trace calls.csv --warmup-days 7 --json
    python bench/policy_sim.py --reserved-target --seeds 1 --plot bench/reserved-pool.svg
    python bench/policy_sim.py --foresight --first-seed 10 --seeds 6   # what each kind of foresight buys
    python bench/policy_sim.py --reserved-target --keep-pool-up --json
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import json
import math
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from voxtral_operator.api import catalog
from voxtral_operator.api.models import DEFAULT_SCALE_DOWN_DELAY_SECONDS, AutoscalingPolicy
from voxtral_operator.autoscale import policy as new_policy
from voxtral_operator.gateway import lanes as lane_rule

DAY = 86400.0
AUDIO_TOKENS_PER_SECOND = 12.5  # Voxtral's audio encoder: 80 ms per token after downsampling
TEXT_PROMPT_TOKENS = 64  # the instruction or transcription prompt around the audio
CONSTANTS_FILE = Path(__file__).with_name("policy_constants.json")

# ---------------------------------------------------------------------------------------------
# Scenario and engine


# Bench-only hardware figures (spec sheets): memory bandwidth in bytes/s, dense bf16 FLOP/s.
GPU_SPEED: dict[str, tuple[float, float]] = {
    "L4-24GB": (300e9, 121e12),
    "A10-24GB": (600e9, 125e12),
    "A100-40GB": (1555e9, 312e12),
    "A100-80GB": (2039e9, 312e12),
    "H100-80GB": (3350e9, 989e12),
    "H200-141GB": (4800e9, 989e12),
}
BANDWIDTH_EFFICIENCY = 0.7  # share of peak memory bandwidth a decode step reaches
COMPUTE_EFFICIENCY = 0.45  # model FLOP utilisation of a prefill chunk
TENSOR_PARALLEL_EFFICIENCY = 0.85  # per extra GPU, all-reduce overhead
KV_BLOCK_TOKENS = 16  # vLLM's default block size on CUDA


def vllm_default_batch(gpu_type: str) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM's OpenAI server picks when the flags are unset:
    1024 and 8192 on a GPU of 70 GiB or more that is not an A100, 256 and 2048 otherwise."""
    gpu = catalog.GPUS[gpu_type]
    large = gpu.memory_bytes >= 70 * 2**30 and not gpu_type.startswith("A100")
    return (1024, 8192) if large else (256, 2048)


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    gpu_type: str
    tensor_parallel_size: int
    min_replicas: int
    max_replicas: int
    peak_rate: float  # requests per second at a weekday's peak
    max_num_seqs: int | None = None  # the spec's engine.maxNumSeqs; None: vLLM's default
    shutdown_timeout_s: float = 120.0  # the spec's default shutdownTimeoutSeconds
    node_retention_s: float = 600.0  # cluster autoscaler: a node unneeded this long is removed
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 32768
    gateway_pods: int = 2  # the spec's default gateway.replicas
    gateway_max_queue: int = 1000  # per gateway pod
    queue_timeout_s: float = 600.0  # gateway.queueTimeoutSeconds; a caller's patience through a Service
    deferrable_max_queue: int = 100_000  # per gateway pod: the deferrable lane's own bound
    deferrable_timeout_s: float = 86400.0  # the deferrable lane's own (long) timeout


SCENARIOS = {
    "small-h100": Scenario(
        name="small-h100",
        model="mistralai/Voxtral-Small-24B-2507",
        gpu_type="H100-80GB",
        tensor_parallel_size=1,
        min_replicas=1,
        max_replicas=24,
        peak_rate=5.0,
    ),
    "mini-l4": Scenario(
        name="mini-l4",
        model="mistralai/Voxtral-Mini-3B-2507",
        gpu_type="L4-24GB",
        tensor_parallel_size=1,
        min_replicas=1,
        max_replicas=24,
        peak_rate=3.0,
    ),
}


@dataclass(frozen=True)
class Engine:
    """Per-replica costs derived from the catalog and the GPU's speed."""

    kv_tokens: int
    weights_read_s: float  # per step
    kv_read_s_per_token: float  # per step, per token held in the KV cache
    prefill_s_per_token: float
    max_num_seqs: int  # what vLLM runs with
    max_batched_tokens: int
    gateway_inflight: int  # per replica per gateway pod: the operator's maxNumSeqs over the gateway pods, rounded down
    policy_max_num_seqs: int  # what the operator's autoscaler assumes (spec or its default 256)
    weights_bytes: int
    startup_budget_s: float  # the catalog's: the autoscaler's prior
    gpus: int

    @classmethod
    def of(cls, scenario: Scenario) -> Engine:
        model = catalog.MODELS[scenario.model]
        gpu = catalog.GPUS[scenario.gpu_type]
        tp = scenario.tensor_parallel_size
        fit = catalog.check_fit(model, gpu, tp, scenario.gpu_memory_utilization, scenario.max_model_len)
        if not fit.fits:
            raise ValueError(f"{scenario.model} does not fit on {tp} x {scenario.gpu_type}")
        bandwidth, flops = GPU_SPEED[scenario.gpu_type]
        scale = tp * TENSOR_PARALLEL_EFFICIENCY if tp > 1 else 1.0
        bandwidth *= BANDWIDTH_EFFICIENCY * scale
        flops *= COMPUTE_EFFICIENCY * scale
        default_seqs, default_tokens = vllm_default_batch(scenario.gpu_type)
        operator_seqs = scenario.max_num_seqs or catalog.DEFAULT_MAX_NUM_SEQS
        return cls(
            kv_tokens=fit.kv_cache_available_bytes // model.kv_cache_bytes_per_token,
            weights_read_s=model.weights_bytes / bandwidth,
            kv_read_s_per_token=model.kv_cache_bytes_per_token / bandwidth,
            # 2 FLOP per parameter per token; bf16 weights are 2 bytes per parameter.
            prefill_s_per_token=model.weights_bytes / flops,
            max_num_seqs=scenario.max_num_seqs or default_seqs,
            max_batched_tokens=default_tokens,
            gateway_inflight=max(1, operator_seqs // scenario.gateway_pods),
            policy_max_num_seqs=operator_seqs,
            weights_bytes=model.weights_bytes,
            startup_budget_s=float(model.startup_budget_seconds),
            gpus=tp,
        )


# Cold-start paths, as the operator names them in its Loading condition (coldstart.py): `hub` is
# ColdDownload (vLLM downloads the weights while holding its GPUs), `cache` SharedCache (the model cache
# volume, filled by the cache warmer), `local` LocalCache (the node's own disk: weights baked into the
# image). (low, high) seconds or bytes/s, drawn uniformly. Figures and where they come from:
# - a GPU VM from request to a schedulable node with the NVIDIA device plugin registered: 2-5 minutes
#   on the large clouds; the vLLM image (about 10 GB) pulls in 1.5-4 minutes. The operator's image
#   pre-pull (coldStart.prepullImage) helps nodes that exist before the replica (a reserved pool), not
#   a node the cluster autoscaler adds for it (the DaemonSet's pod starts pulling when the replica does);
# - the hub serves one node 150-500 MB/s; a ReadWriteMany cache reads at 0.5-1.5 GB/s (Filestore
#   Zonal: 260 MiB/s per provisioned TiB up to 9.75 TiB, docs.cloud.google.com/filestore/docs/
#   service-tiers-zonal; vLLM reads it with --safetensors-load-strategy eager); a node's local NVMe SSD
#   at 1-3 GB/s (an assumption: what current NVMe drives read, no one published figure for GPU nodes);
# - vLLM starts its engine (memory profiling, CUDA graph capture) in 30-60 s and compiles the model with
#   torch.compile in 30-120 s; with the compile cache kept (the operator puts VLLM_CACHE_ROOT on the
#   model cache, so only the `cache` path has it) that is 5-20 s (Baseten's figure for a shared
#   torch.compile cache, docs.baseten.co/development/model/torch-compile-cache; vLLM keys the cache by
#   config and code hash, docs.vllm.ai/en/latest/design/torch_compile/).
NODE_PROVISION_S = (120.0, 300.0)
IMAGE_PULL_S = (90.0, 240.0)
WEIGHTS_BYTES_PER_S = {"hub": (150e6, 500e6), "cache": (500e6, 1500e6), "local": (1000e6, 3000e6)}
OPERATOR_PATHS = {"hub": "ColdDownload", "cache": "SharedCache", "local": "LocalCache"}
ENGINE_START_S = (30.0, 60.0)
COMPILE_S = (30.0, 120.0)
COMPILE_CACHED_S = (5.0, 20.0)
ENGINE_LOAD_S = (ENGINE_START_S[0] + COMPILE_S[0], ENGINE_START_S[1] + COMPILE_S[1])  # compile not cached


def engine_load_range(weights: str) -> tuple[float, float]:
    """Engine start plus torch.compile: from the compile cache on the `cache` path, from scratch otherwise."""
    compile_s = COMPILE_CACHED_S if weights == "cache" else COMPILE_S
    return (ENGINE_START_S[0] + compile_s[0], ENGINE_START_S[1] + compile_s[1])


def cold_start(rng: random.Random, engine: Engine, new_node: bool, weights: str) -> float:
    """A replica's load time: on a new node every step; on a node still held the image is there
    (the weights are not: they live in the pod's volume or the shared cache, not on the node)."""
    seconds = rng.uniform(*engine_load_range(weights)) + engine.weights_bytes / rng.uniform(
        *WEIGHTS_BYTES_PER_S[weights]
    )
    if new_node:
        seconds += rng.uniform(*NODE_PROVISION_S) + rng.uniform(*IMAGE_PULL_S)
    return seconds


def cold_start_range(engine: Engine, new_node: bool, weights: str) -> tuple[float, float]:
    low, high = WEIGHTS_BYTES_PER_S[weights]
    load = engine_load_range(weights)
    fixed = (NODE_PROVISION_S[0] + IMAGE_PULL_S[0], NODE_PROVISION_S[1] + IMAGE_PULL_S[1]) if new_node else (0.0, 0.0)
    return (
        load[0] + engine.weights_bytes / high + fixed[0],
        load[1] + engine.weights_bytes / low + fixed[1],
    )


def cold_start_paths(engine: Engine) -> str:
    parts = []
    for weights in ("hub", "cache", "local"):
        for new_node, name in ((True, "new node"), (False, "node held")):
            low, high = cold_start_range(engine, new_node, weights)
            parts.append(f"{name}, {OPERATOR_PATHS[weights]} ({weights}): {low / 60:.0f}-{high / 60:.0f} min")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Traffic


class Request:
    __slots__ = (
        "admitted",
        "arrival",
        "audio_s",
        "deferrable",
        "due",
        "epoch",
        "gw",
        "left",
        "need",
        "output",
        "pod",
        "prompt",
        "remaining",
        "sent",
        "start_clock",
    )

    def __init__(self, arrival: float, audio_s: float, output: int, deferrable: bool = False) -> None:
        self.arrival = arrival
        self.deferrable = deferrable  # the deferrable lane (`class` batch, `service_tier: flex`)
        self.due = due_by(arrival) if deferrable else math.inf
        self.audio_s = audio_s
        self.prompt = float(math.ceil(audio_s * AUDIO_TOKENS_PER_SECOND) + TEXT_PROMPT_TOKENS)
        self.output = max(1, output)
        self.need = self.prompt + self.output  # the whole sequence's tokens: the gateway's estimate of work
        self.left = self.prompt  # prefill tokens still to compute (prompt plus recomputed output)
        self.remaining = float(self.output)  # output tokens still to produce
        self.start_clock = 0.0  # the replica's decode clock when this request began decoding
        self.epoch = 0  # bumped on preemption: a stale decode entry is skipped
        self.admitted = False  # once admitted its wait is recorded; a preempted request keeps it
        self.sent = 0  # the cluster's dispatch count when it was last sent to a replica: dispatch order
        self.gw = 0
        self.pod: Replica | None = None

    def reset(self) -> None:
        """Sent again from the start (its replica went away before it finished)."""
        self.prompt = float(math.ceil(self.audio_s * AUDIO_TOKENS_PER_SECOND) + TEXT_PROMPT_TOKENS)
        self.left = self.prompt
        self.remaining = float(self.output)
        self.epoch += 1


Row = tuple[float, float, int]
DEFERRABLE_DUE_HOUR = 8  # a deferrable row is due by 08:00 of the day after it arrived (the trace's clock)


def due_by(arrival: float) -> float:
    return (math.floor(arrival / DAY) + 1) * DAY + DEFERRABLE_DUE_HOUR * 3600


# (hour, share of the peak arrival rate) of a working day: quiet night, morning ramp, lunch dip,
# afternoon peak, evening tail. Each day jitters the level, the timing and the lunch depth.
DAY_SHAPE = (
    (0.0, 0.04),
    (6.0, 0.04),
    (7.0, 0.15),
    (8.0, 0.55),
    (9.0, 0.9),
    (10.5, 1.0),
    (11.75, 0.9),
    (12.25, 0.6),
    (13.25, 0.6),
    (14.0, 0.95),
    (15.5, 1.0),
    (16.75, 0.85),
    (17.75, 0.5),
    (19.0, 0.25),
    (21.0, 0.12),
    (23.0, 0.06),
    (24.0, 0.04),
)
LONG_FILE_SHARE = 0.04  # 25-40 minute uploads
AUDIO_QUESTION_SHARE = 0.12  # questions about 1-15 minute recordings
# A kind of day: (level against a weekday, shift of the shape in seconds, bursts expected).
DAY_KINDS = {
    "weekday": (1.0, 0.0, 5.0),
    "saturday": (0.3, 5400.0, 1.5),
    "sunday": (0.15, 5400.0, 1.0),
    "holiday": (0.15, 3600.0, 1.0),
}
WEEKDAYS = ("weekday",) * 5 + ("saturday", "sunday")


def day_kind(day: int, holidays: Iterable[int] = ()) -> str:
    """Day 0 is a Monday."""
    return "holiday" if day in set(holidays) else WEEKDAYS[day % 7]


def _rate_curve(rng: random.Random, peak: float, kind: str = "weekday", bursts_on: bool = True) -> list[float]:
    """Arrival rate (requests/s) for every second of one day. Without `bursts_on` the bursts are drawn (the
    day's other draws stay the same) and left out."""
    level_share, kind_shift, burst_mean = DAY_KINDS[kind]
    level = peak * level_share * rng.uniform(0.9, 1.1)
    shift = rng.uniform(-1200, 1200) + kind_shift
    lunch = rng.uniform(0.85, 1.15)
    hours = [h * 3600 + (shift if 0 < h < 24 else 0) for h, _ in DAY_SHAPE]
    shares = [s * (lunch if 12 <= h <= 13.5 else 1.0) for h, s in DAY_SHAPE]
    noise, drift = [], 0.0
    for _ in range(int(DAY // 300) + 1):  # slow noise, 5-minute steps
        drift = 0.85 * drift + rng.gauss(0, 0.06)
        noise.append(math.exp(drift))
    bursts = []
    for _ in range(_poisson(rng, burst_mean)):
        start = rng.uniform(7 * 3600, 20 * 3600)
        bursts.append((start, start + rng.uniform(300, 1800), rng.uniform(1.5, 2.5)))
    curve = []
    index = 0
    for second in range(int(DAY)):
        while index < len(hours) - 2 and second >= hours[index + 1]:
            index += 1
        h0, h1 = hours[index], hours[index + 1]
        share = shares[index] + (shares[index + 1] - shares[index]) * min(1.0, max(0.0, (second - h0) / (h1 - h0)))
        rate = level * share * noise[second // 300]
        for start, end, factor in bursts if bursts_on else ():
            if start <= second < end:
                rate *= factor
        curve.append(rate)
    return curve


def _poisson(rng: random.Random, mean: float) -> int:
    count, threshold, product = 0, math.exp(-mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def _request(rng: random.Random, arrival: float) -> Row:
    kind = rng.random()
    if kind < LONG_FILE_SHARE:
        audio = rng.uniform(1500, 2400)
        if audio <= 1800 and rng.random() < 0.6:  # transcription (the card's 30-minute limit)
            return arrival, audio, round(audio * rng.uniform(2.6, 3.4))
        return arrival, audio, round(min(2000, rng.lognormvariate(math.log(600), 0.6)))
    if kind < LONG_FILE_SHARE + AUDIO_QUESTION_SHARE:
        audio = rng.uniform(60, 900)
        return arrival, audio, round(min(1500, max(30, rng.lognormvariate(math.log(300), 0.7))))
    audio = min(600.0, max(1.0, rng.lognormvariate(math.log(20), 0.9)))  # a call clip, transcribed
    return arrival, audio, round(audio * rng.uniform(2.6, 3.4)) + 5


def call_centre_day(seed: int, peak: float, day: int = 1, kind: str | None = None, bursts: bool = True) -> list[Row]:
    """One day's requests as (arrival_s, audio_s, output_tokens), arrivals from day x 86400 on.

    Each (seed, day) is its own day: its own level, timing, noise and bursts; its kind (weekday,
    saturday, sunday, holiday) from the day of the week unless given. Without `bursts`: the same day's
    level, timing and slow noise, its bursts left out (--no-bursts)."""
    rng = random.Random(seed * 1_000_003 + day)
    curve = _rate_curve(rng, peak, kind or day_kind(day), bursts)
    return _requests(rng, curve, day * DAY)


def _requests(rng: random.Random, curve: Sequence[float], offset: float) -> list[Row]:
    out = []
    for second, rate in enumerate(curve):
        for _ in range(_poisson(rng, rate)):
            out.append(_request(rng, offset + second + rng.random()))
    out.sort()
    return out


def twin_days(seed: int, peak: float, day: int, kind: str, twins: int) -> list[list[Row]]:
    """`twins` other draws of one day's requests from the same rate curve without its bursts: what a
    forecast that knew the day's level, timing and slow noise exactly would expect, request by request."""
    curve = _rate_curve(random.Random(seed * 1_000_003 + day), peak, kind, bursts_on=False)
    return [_requests(random.Random(f"twin {seed} {day} {twin}"), curve, day * DAY) for twin in range(twins)]


def call_centre_days(seed: int, peak: float, days: int, holidays: Iterable[int] = (), bursts: bool = True) -> list[Row]:
    """Days 0..days-1 (day 0 a Monday), with the given days holidays."""
    holidays = set(holidays)
    rows: list[Row] = []
    for day in range(days):
        rows.extend(call_centre_day(seed, peak, day, day_kind(day, holidays), bursts))
    return rows


# An overnight deferrable backlog: the day's recorded meetings and archived calls (10-30 minutes
# each) queued for transcription between 18:00 and 22:00, due 08:00 the next morning.
BACKLOG_HOURS = (18.0, 22.0)


def overnight_backlog(seed: int, days: int, items: int) -> list[Row]:
    """`items` deferrable rows every evening of days 0..days-1. The last evening's are due after the days
    simulated, so no deadline of theirs is scored, but they keep that evening's pool as busy as any
    other's: without them the last scored day's busy share would be the simulation's end, not the lane."""
    rows: list[Row] = []
    for day in range(days):
        rng = random.Random(seed * 2_000_003 + day)
        for _ in range(items):
            arrival = day * DAY + rng.uniform(BACKLOG_HOURS[0] * 3600, BACKLOG_HOURS[1] * 3600)
            audio = rng.uniform(600.0, 1800.0)
            rows.append((arrival, audio, round(audio * rng.uniform(2.6, 3.4)) + 5))
    rows.sort()
    return rows


@dataclass(frozen=True)
class Trace:
    rows: tuple[Row, ...]  # interactive requests, sorted by arrival
    batch_rows: tuple[Row, ...] = ()  # deferrable requests (class batch), sorted by arrival

    @property
    def batch(self) -> int:
        return len(self.batch_rows)


def read_trace(path: Path) -> Trace:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or {"arrival_s", "audio_s", "output_tokens"} - set(reader.fieldnames):
            raise SystemExit(f"{path}: the header must be arrival_s,audio_s,output_tokens[,class]")
        rows: list[Row] = []
        batch: list[Row] = []
        for number, r in enumerate(reader, start=2):
            kind = (r.get("class") or "interactive").strip() or "interactive"
            if kind not in ("interactive", "batch"):
                raise SystemExit(f"{path}:{number}: class must be interactive or batch, not {kind!r}")
            row = (float(r["arrival_s"]), float(r["audio_s"]), int(float(r["output_tokens"])))
            (batch if kind == "batch" else rows).append(row)
    return Trace(tuple(sorted(rows)), tuple(sorted(batch)))


def write_trace(path: Path, rows: Iterable[Row], batch_rows: Iterable[Row] = ()) -> None:
    classed = [(row, "interactive") for row in rows] + [(row, "batch") for row in batch_rows]
    classed.sort()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arrival_s", "audio_s", "output_tokens", "class"])
        for (arrival, audio, output), kind in classed:
            writer.writerow([f"{arrival:.3f}", f"{audio:.2f}", output, kind])


# ---------------------------------------------------------------------------------------------
# Replicas, nodes and routing

LOADING, READY, DRAINING = 0, 1, 2


class Replica:
    """One vLLM engine: a waiting queue, running requests in admission order, KV blocks in use."""

    __slots__ = (
        "clock",
        "dec_start_sum",
        "decoding",
        "drain_deadline",
        "finished",
        "generation_total",
        "gw_inflight",
        "gw_tokens",
        "kv_fixed",
        "name",
        "new_node",
        "preemptions",
        "prefill_left",
        "prefilling",
        "prompt_total",
        "queue",
        "queued_tokens",
        "ready_at",
        "running",
        "running_order",
        "started",
        "state",
    )

    def __init__(self, name: str, started: float, ready_at: float, gateway_pods: int, new_node: bool) -> None:
        self.name = name
        self.state = LOADING
        self.started = started
        self.ready_at = ready_at
        self.new_node = new_node
        self.queue: deque[Request] = deque()  # waiting in the engine's scheduler
        self.queued_tokens = 0.0
        self.prefilling: deque[Request] = deque()
        self.prefill_left = 0.0
        self.decoding: list[tuple[float, int, int, Request]] = []  # heap: (finish clock, id, epoch, request)
        self.running_order: dict[Request, None] = {}  # admission order: the newest is preempted first
        self.clock = 0.0  # decode steps taken so far
        self.kv_fixed = 0.0  # prefilled tokens of every running request
        self.dec_start_sum = 0.0  # sum of decoding requests' start clocks: their produced tokens follow
        self.running = 0
        self.prompt_total = 0.0
        self.generation_total = 0.0
        self.finished = 0
        self.preemptions = 0
        self.drain_deadline = math.inf
        self.gw_inflight = [0] * gateway_pods
        # Each gateway pod's count of this replica's KV tokens: the whole sequences (`need`) it has in flight here.
        self.gw_tokens = [0.0] * gateway_pods

    def kv_used(self) -> float:
        """Tokens in the KV cache: prefilled prompts plus every token produced so far (vLLM allocates
        blocks as tokens arrive; a sequence wastes half a block on average)."""
        decoding = len(self.running_order) - len(self.prefilling)
        produced = decoding * self.clock - self.dec_start_sum
        return self.kv_fixed + produced + self.running * KV_BLOCK_TOKENS / 2

    def advance(
        self, engine: Engine, now: float, dt: float, waits: list[tuple[float, float]], done: list[Request]
    ) -> None:
        queue = self.queue
        if queue and self.state == READY:
            limit_seqs, limit_kv = engine.max_num_seqs, engine.kv_tokens
            used = self.kv_used() + self.prefill_left
            while queue:
                head = queue[0]
                # First come, first served: the head blocks the rest (vLLM's FCFS scheduler). Its
                # prompt is prefilled in chunks over the next steps, so its blocks must fit.
                if self.running >= limit_seqs or used + head.left + KV_BLOCK_TOKENS > limit_kv:
                    break
                queue.popleft()
                self.queued_tokens -= head.need
                if not head.admitted:
                    head.admitted = True
                    if not head.deferrable:  # the wait figures are the interactive lane's
                        waits.append((head.arrival, now - head.arrival if now > head.arrival else 0.0))
                self.running += 1
                self.running_order[head] = None
                self.prefilling.append(head)
                self.prefill_left += head.left
                used += head.left + KV_BLOCK_TOKENS
        if not self.running:
            return
        base = engine.weights_read_s + self.kv_used() * engine.kv_read_s_per_token
        pending = self.prefill_left
        if pending:
            chunk = engine.max_batched_tokens
            chunk_step = base + chunk * engine.prefill_s_per_token
            full, rest = divmod(pending, chunk)
            all_prefill = full * chunk_step + (base + rest * engine.prefill_s_per_token if rest else 0.0)
            if all_prefill <= dt:
                steps = full + (1 if rest else 0) + (dt - all_prefill) / base
                processed = pending
            else:
                steps = dt / chunk_step
                processed = steps * chunk
        else:
            steps = dt / base
            processed = 0.0
        decoding = self.decoding
        decoding_count = len(self.running_order) - len(self.prefilling)
        self.clock += steps
        clock = self.clock
        if decoding_count:
            self.generation_total += decoding_count * steps
            while decoding and decoding[0][0] <= clock:
                finish, _, epoch, request = heapq.heappop(decoding)
                if epoch != request.epoch:
                    continue  # preempted since: its entry is stale
                self.generation_total -= clock - finish
                self.running -= 1
                del self.running_order[request]
                self.kv_fixed -= request.prompt
                self.dec_start_sum -= request.start_clock
                self.finished += 1
                done.append(request)
        if processed:
            self.prompt_total += processed
            self.prefill_left -= processed
            self.kv_fixed += processed
            prefilling = self.prefilling
            while prefilling and processed >= prefilling[0].left - 1e-6:
                request = prefilling.popleft()
                processed -= request.left
                request.left = 0.0
                request.start_clock = clock
                self.dec_start_sum += clock
                heapq.heappush(decoding, (clock + request.remaining, id(request), request.epoch, request))
            if prefilling and processed > 0:
                prefilling[0].left -= processed
            if not prefilling:
                self.prefill_left = 0.0
        # Blocks ran out during the step: vLLM preempts the newest running request (recompute).
        while self.running > 1 and self.kv_used() > engine.kv_tokens:
            self._preempt(next(reversed(self.running_order)))

    def _free(self, request: Request) -> float:
        """A running request leaves the batch: its blocks freed, its decode entry (if any) stale. Returns
        the KV tokens it held (the prompt prefilled so far and the tokens produced)."""
        del self.running_order[request]
        self.running -= 1
        if request.left > 0:  # still prefilling: what it computed is dropped
            held = request.prompt - request.left
            self.prefilling.remove(request)
            self.kv_fixed -= held
            self.prefill_left -= request.left
        else:
            held = request.prompt + min(request.remaining, self.clock - request.start_clock)
            self.kv_fixed -= request.prompt
            self.dec_start_sum -= request.start_clock
        request.epoch += 1
        return held

    def _preempt(self, request: Request) -> None:
        self.preemptions += 1
        decoding = request.left <= 0
        self._free(request)
        if decoding:
            produced = min(request.remaining, self.clock - request.start_clock)
            request.prompt += produced  # what it produced is recomputed with the prompt
            request.remaining -= produced
        request.left = request.prompt
        self.queue.appendleft(request)
        self.queued_tokens += request.need

    def withdraw(self, request: Request) -> float:
        """A running request aborted (its connection closed): its blocks freed, its work lost. Returns the
        KV tokens it held."""
        prefilling = request.left > 0
        held = self._free(request)
        if prefilling and not self.prefilling:
            self.prefill_left = 0.0
        return held

    def evict(self) -> list[Request]:
        """Everything on this engine, waiting or running, taken off it (a cut drain)."""
        out = list(self.queue) + list(self.running_order)
        for request in out:
            request.reset()
        self.queue.clear()
        self.running_order.clear()
        self.prefilling.clear()
        self.decoding.clear()
        self.running = 0
        self.kv_fixed = self.dec_start_sum = self.prefill_left = self.queued_tokens = 0.0
        return out


@dataclass
class PodMetrics:
    """One pod's /metrics, as a scrape would read it."""

    name: str
    waiting: int
    running: int
    kv_cache_usage: float
    prompt_tokens: float
    generation_tokens: float
    finished: int


@dataclass
class GatewayMetrics:
    queued: int  # the interactive lane's
    queued_audio_s: float
    in_flight_audio_s: float  # both lanes
    since_last_request_s: float
    deferrable_queued: int = 0
    deferrable_in_flight_audio_s: float = 0.0
    deferrable_in_flight: int = 0


WAIT_BIN_S = 0.25  # queue-wait histogram resolution
LONG_WAIT_S = 5.0  # an interactive wait counted by its hour of arrival (DayFigures.long_waits)
DRAW_STRIDE = 1_000_003  # between the seeds of two draws of the same seed: far from 7919 * (one seed to the next)
HOUR = 3600
WAITING_READ_S = 2  # how often the what-if reads each replica's vLLM metrics (--take-back-on-waiting)
# How often each gateway pod reads them (taking back on reads, the gateway's default): the gateway's own interval.
READS_S = lane_rule.TAKE_BACK_READ_SECONDS
TIMEOUT_SCAN_S = 5  # how often timed-out waiters are taken off the queues


@dataclass
class DayFigures:
    """One day's figures, by the day requests arrived (waits, failures) or the second billed."""

    waits: dict[int, int] = field(default_factory=dict)  # histogram: bin -> count (bin 0: no wait)
    requests: int = 0
    failed: int = 0
    gpu_s: float = 0.0  # every GPU-second a node was held (on-demand billing)
    overflow_gpu_s: float = 0.0  # GPU-seconds beyond the reserved pool
    busy_reserved_s: float = 0.0  # reserved GPU-seconds serving at least one request
    batch_items: int = 0  # deferrable requests that arrived this day
    batch_on_time: int = 0  # of them, finished by their deadline
    batch_failed: int = 0  # of them, refused or timed out
    batch_taken_back: int = 0  # times one of them was taken back for an interactive request
    batch_last_done: float = -math.inf  # when the last of them finished (simulation clock)
    # Interactive requests that waited more than LONG_WAIT_S (or failed), by the hour of the day they arrived:
    # where in the day a backlog's effect on them would show.
    long_waits: list[int] = field(default_factory=lambda: [0] * 24)

    def add(self, other: DayFigures) -> None:
        for key, count in other.waits.items():
            self.waits[key] = self.waits.get(key, 0) + count
        self.long_waits = [a + b for a, b in zip(self.long_waits, other.long_waits, strict=True)]
        self.requests += other.requests
        self.failed += other.failed
        self.gpu_s += other.gpu_s
        self.overflow_gpu_s += other.overflow_gpu_s
        self.busy_reserved_s += other.busy_reserved_s
        self.batch_items += other.batch_items
        self.batch_on_time += other.batch_on_time
        self.batch_failed += other.batch_failed
        self.batch_taken_back += other.batch_taken_back
        self.batch_last_done = max(self.batch_last_done, other.batch_last_done)


def _bin(wait: float) -> int:
    return 0 if wait <= 0 else 1 + int(wait / WAIT_BIN_S)


def record_wait(figures: DayFigures, arrival: float, wait: float) -> None:
    """One interactive request's wait (a failed one at the timeout) in its arrival day's figures."""
    key = _bin(wait)
    figures.waits[key] = figures.waits.get(key, 0) + 1
    if wait > LONG_WAIT_S:
        figures.long_waits[int(arrival % DAY // HOUR)] += 1


class Cluster:
    """An endpoint's replicas, their GPU nodes, and the path requests take to them."""

    def __init__(
        self,
        scenario: Scenario,
        engine: Engine,
        routing: str,
        seed: int,
        start: float,
        replicas: int,
        weights: str = "hub",
        reserved_gpus: int = 0,
        lane_kv: bool = True,
        take_back: bool = True,
        draw: int = 0,
        take_back_on_waiting: bool = False,
        take_back_on_reads: bool = False,
        paired_draws: bool = False,
        scored_from: float = -math.inf,
    ) -> None:
        self.scenario = scenario
        self.engine = engine
        self.routing = routing
        self.weights = weights
        self.reserved_gpus = reserved_gpus
        # `draw` picks another stream of the simulation's own chance (cold starts, kube-proxy's picks)
        # over the same trace: draw 0 is the stream every figure uses unless told otherwise.
        self.rng = random.Random(seed * 7919 + 17 + draw * DRAW_STRIDE)
        # The deferrable lane's gateway pod picks have a stream of their own: a run with deferrable work
        # then draws interactive picks and cold starts from the same stream as the run without it does,
        # instead of one shifted by every deferrable arrival (the two are compared day by day).
        self.deferrable_rng = random.Random(seed * 7919 + 29 + draw * DRAW_STRIDE)
        # `paired_draws`, for runs compared with each other: kube-proxy's picks of interactive requests get
        # a stream of their own, and each cold start a draw keyed by its day, the replica's place in the
        # Deployment and how often that place started that day. A replica one run starts and the other
        # does not then shifts none of the other draws: the same request goes to the same gateway pod,
        # a place's first start of the day loads as long, in both runs (only that place's later starts
        # that day part).
        self.paired_draws = paired_draws
        self.draw_key = f"{seed}:{draw}"
        self.pick_rng = random.Random(seed * 7919 + 41 + draw * DRAW_STRIDE) if paired_draws else self.rng
        self.starts_by_place: dict[tuple[int, int], int] = {}
        self.pods: list[Replica] = []  # loading or ready: what spec.replicas counts
        self.draining: list[Replica] = []
        self.spare_nodes: list[float] = []  # release times of nodes whose pod left
        pods = scenario.gateway_pods if routing == "gateway" else 1
        # The gateway pods' queues; through a Service, callers retrying while no pod is ready.
        self.held: list[deque[Request]] = [deque() for _ in range(pods)]
        # The gateway pods' deferrable lanes (through a Service there is no lane: they wait in `held`).
        self.deferred: list[deque[Request]] = [deque() for _ in range(pods)]
        self.held_audio_s = 0.0  # the interactive lane's
        self.in_flight_audio_s = 0.0  # both lanes'
        self.deferred_in_flight_audio_s = 0.0
        self.deferred_in_flight = 0
        # The lane rule's headroom H: deferrable work leaves this many of a gateway pod's slots free.
        self.lane_headroom = max(1, engine.gateway_inflight // 8)
        # `lane_kv`: besides the slots, the replica's outstanding tokens (as the gateway counts them)
        # with the deferrable request's stay within its KV cache less the same share of headroom.
        # Each gateway pod counts its own share of a replica's KV cache (the operator divides the cache by the
        # gateway pods) and the whole sequences it has in flight there, as the gateway does.
        self.kv_share = engine.kv_tokens / (scenario.gateway_pods if routing == "gateway" else 1)
        self.lane_kv_tokens = self.kv_share if lane_kv else math.inf
        # `take_back`: an interactive request whose tokens do not fit beside what a replica holds takes
        # back that gateway pod's deferrable requests there, newest first, until they do.
        # Without the KV bound (the gateway given no KV size) the gateway has nothing to measure a fit by.
        self.take_back = take_back and lane_kv and routing == "gateway"
        # `take_back_on_waiting`, a what-if the gateway does not implement: instead of counting, every
        # WAITING_READ_S the gateway reads each replica's vLLM metrics and, where an interactive request
        # waits for KV blocks there, takes back deferrable requests (any gateway pod's) until it fits.
        self.take_back_on_waiting = take_back_on_waiting and self.take_back
        # `take_back_on_reads`, what a gateway pod can see of the what-if: every READS_S each pod reads
        # each replica's vllm:num_requests_waiting and takes back its own deferrable requests there where one
        # of its interactive requests may be among those waiting (lanes.to_take_back_on_waiting).
        self.take_back_on_reads = take_back_on_reads and self.take_back and not self.take_back_on_waiting
        if self.take_back_on_waiting or self.take_back_on_reads:
            self.take_back = False
        self._sent = 0
        self.taken_back = 0
        self.hours: dict[int, list[float]] = {}  # hour -> [busy reserved GPU-s, ready replica-s, deferred queued]
        self.last_arrival = -math.inf
        self.waits: list[tuple[float, float]] = []
        self.days: dict[int, DayFigures] = {}
        # What happens before `scored_from` (a lead-in on the scored day itself: --quick's window) is counted
        # nowhere, so a day's figures cover only the hours its `day_hours` bills.
        self.scored_from = scored_from
        self._unscored = DayFigures()
        self.resent = 0
        self.peak = replicas
        self._serial = 0
        self._done: list[Request] = []
        for _ in range(replicas):
            pod = self._new_pod(start, start, new_node=False)
            pod.state = READY
            self.pods.append(pod)

    def day(self, at: float) -> DayFigures:
        if at < self.scored_from:
            return self._unscored
        key = int(at // DAY)
        figures = self.days.get(key)
        if figures is None:
            figures = self.days[key] = DayFigures()
        return figures

    # -- what policies read ---------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return len(self.pods)

    def ready(self) -> list[Replica]:
        return [p for p in self.pods if p.state == READY]

    def pod_metrics(self) -> list[PodMetrics]:
        kv = self.engine.kv_tokens
        return [
            PodMetrics(
                p.name,
                len(p.queue),
                p.running,
                min(1.0, p.kv_used() / kv),
                p.prompt_total,
                p.generation_total,
                p.finished,
            )
            for p in self.pods
            if p.state == READY
        ]

    def gateway_metrics(self, now: float) -> GatewayMetrics | None:
        if self.routing != "gateway":
            return None
        queued = sum(len(q) for q in self.held)
        return GatewayMetrics(
            queued,
            self.held_audio_s,
            self.in_flight_audio_s,
            now - self.last_arrival,
            sum(len(q) for q in self.deferred),
            self.deferred_in_flight_audio_s,
            self.deferred_in_flight,
        )

    # -- scaling ----------------------------------------------------------------------------

    def _new_pod(self, now: float, ready_at: float, new_node: bool) -> Replica:
        self._serial += 1
        return Replica(f"pod-{self._serial}", now, ready_at, len(self.held), new_node)

    def gpus_held(self) -> int:
        return (len(self.pods) + len(self.draining) + len(self.spare_nodes)) * self.engine.gpus

    def _cold_start_rng(self, now: float) -> random.Random:
        """The draws of the cold start of the replica added now: keyed with `paired_draws`, else the
        cluster's one stream."""
        if not self.paired_draws:
            return self.rng
        place = (int(now // DAY), len(self.pods))
        started = self.starts_by_place.get(place, 0)
        self.starts_by_place[place] = started + 1
        return random.Random(f"{self.draw_key}:{place[0]}:{place[1]}:{started}")

    def scale_to(self, replicas: int, now: float) -> None:
        replicas = min(max(replicas, 0), self.scenario.max_replicas)
        while len(self.pods) < replicas:
            # A node still held (or an idle node of the reserved pool) skips provisioning and the pull.
            held = bool(self.spare_nodes) or self.gpus_held() + self.engine.gpus <= self.reserved_gpus
            if self.spare_nodes:
                self.spare_nodes.remove(max(self.spare_nodes))
            load = cold_start(self._cold_start_rng(now), self.engine, not held, self.weights)
            self.pods.append(self._new_pod(now, now + load, not held))
        if len(self.pods) > replicas:
            # A ReplicaSet deletes pods that are not ready first, then the most recently ready.
            order = sorted(self.pods, key=lambda p: (p.state == READY, -p.ready_at))
            for pod in order[: len(self.pods) - replicas]:
                self.pods.remove(pod)
                if pod.state == LOADING:
                    self.spare_nodes.append(now + self.scenario.node_retention_s)
                    continue
                pod.state = DRAINING
                pod.drain_deadline = now + self.scenario.shutdown_timeout_s
                self.draining.append(pod)
                while pod.queue:  # not yet started: the caller (or the gateway) sends it again
                    self._resend(pod.queue.popleft())
                pod.queued_tokens = 0.0
        self.peak = max(self.peak, len(self.pods))

    # -- requests ---------------------------------------------------------------------------

    def _resend(self, request: Request) -> None:
        pod = request.pod
        if pod is not None and self.routing == "gateway":
            pod.gw_inflight[request.gw] -= 1
            pod.gw_tokens[request.gw] -= request.need
        request.pod = None
        request.reset()
        self.in_flight_audio_s -= request.audio_s
        self.resent += 1
        if request.deferrable:
            self.deferred_in_flight_audio_s -= request.audio_s
            self.deferred_in_flight -= 1
            lane = self.deferred if self.routing == "gateway" else self.held
            lane[request.gw].appendleft(request)
            return
        self.held[request.gw].append(request)
        self.held_audio_s += request.audio_s

    def _fail(self, request: Request) -> None:
        """Timed out or refused: a failed request, in the wait percentiles at the timeout (an
        interactive one; a deferrable one is counted with its lane)."""
        figures = self.day(request.arrival)
        if request.deferrable:
            self.day(request.due - 1).batch_failed += 1
            return
        figures.failed += 1
        record_wait(figures, request.arrival, self.scenario.queue_timeout_s)

    def arrive(self, request: Request) -> None:
        if request.deferrable:
            self.day(request.due - 1).batch_items += 1  # a deferrable request counts on the day it is due
            if self.routing == "gateway":
                request.gw = int(self.deferrable_rng.random() * len(self.deferred))
                if len(self.deferred[request.gw]) >= self.scenario.deferrable_max_queue:
                    self._fail(request)  # the deferrable lane's own bound
                    return
                self.deferred[request.gw].append(request)
            else:
                self.held[0].append(request)
            return
        self.last_arrival = request.arrival
        self.day(request.arrival).requests += 1
        if self.routing == "gateway":
            request.gw = int(self.pick_rng.random() * len(self.held))  # kube-proxy picks a gateway pod
            if len(self.held[request.gw]) >= self.scenario.gateway_max_queue:
                self._fail(request)  # 503: the gateway pod's queue is full
                return
        self.held[request.gw].append(request)
        self.held_audio_s += request.audio_s

    def _route(self) -> None:
        ready = self.ready()
        if not ready:
            return
        if self.routing == "service":
            held, rng = self.held[0], self.pick_rng
            while held:
                request = held.popleft()
                pod = ready[int(rng.random() * len(ready))]
                self._dispatch(request, pod)
            return
        limit = self.engine.gateway_inflight
        work = {pod: pod.kv_used() + pod.prefill_left + pod.queued_tokens for pod in ready}
        for g, held in enumerate(self.held):
            self._route_lane(held, g, ready, work, limit)
            # The lane rule: deferrable work only while no interactive request waits in this gateway
            # pod's queue, and only into a replica with more than the headroom H of its slots free.
            if not held and self.deferred[g]:
                headroom = limit - self.lane_headroom
                self._route_lane(self.deferred[g], g, ready, work, headroom, self.lane_kv_tokens)

    def _route_lane(
        self,
        lane: deque[Request],
        g: int,
        ready: list[Replica],
        work: dict[Replica, float],
        limit: int,
        kv_bound: float = math.inf,
    ) -> None:
        """Least outstanding work first, to replicas with fewer than `limit` of gateway pod g's requests
        (and outstanding tokens, with the request's, within `kv_bound`)."""
        while lane:
            best, best_work = None, math.inf
            need = lane[0].need
            for pod in ready:
                counted = pod.gw_tokens[g]
                if (
                    pod.gw_inflight[g] < limit
                    and work[pod] < best_work
                    and (counted <= 0 or counted + need <= kv_bound)  # nothing in flight: one of any size
                ):
                    best, best_work = pod, work[pod]
            if best is None:
                break
            request = lane.popleft()
            counted = self.take_back or self.take_back_on_reads
            if counted and not request.deferrable and best.gw_tokens[g] + need > self.kv_share:
                # Another replica where the request fits as it is spares the deferrable work taking back.
                room = [p for p in ready if p.gw_inflight[g] < limit and p.gw_tokens[g] + need <= self.kv_share]
                retractable = any(r.deferrable and r.gw == g for r in (*best.queue, *best.running_order))
                if room and retractable:
                    best = min(room, key=work.__getitem__)
                elif self.take_back:
                    self._take_back(best, g, best.gw_tokens[g] + need - self.kv_share)
            best.gw_inflight[g] += 1
            best.gw_tokens[g] += need
            work[best] += need
            self._dispatch(request, best)

    def _retract(self, pod: Replica, request: Request) -> float:
        """A deferrable request in flight on `pod` taken back to its lane: the KV tokens it held."""
        if request in pod.running_order:
            held = pod.withdraw(request)
        else:
            pod.queue.remove(request)
            pod.queued_tokens -= request.need
            held = 0.0
        self.taken_back += 1
        self.day(request.due - 1).batch_taken_back += 1
        self.resent -= 1  # counted as taken back, not as sent again
        self._resend(request)
        return held

    def _take_back_for_waiting(self) -> None:
        """The what-if: on each replica where an interactive request waits in vLLM's queue and would not be
        admitted, deferrable requests not started first, then the newest running, until it would be."""
        engine = self.engine
        for pod in self.ready():
            ahead = 0.0  # vLLM's queue is first come, first served: what waits ahead of it goes first
            for request in pod.queue:
                ahead += request.left + KV_BLOCK_TOKENS
                if not request.deferrable:
                    break
            else:
                continue
            short = pod.kv_used() + pod.prefill_left + ahead - engine.kv_tokens
            if pod.running >= engine.max_num_seqs:
                short = max(short, 1.0)
            queued = [r for r in reversed(pod.queue) if r.deferrable]
            running = [r for r in reversed(pod.running_order) if r.deferrable]
            for request in queued + running:
                if short <= 0:
                    break
                if request in pod.running_order:
                    short -= self._retract(pod, request) + KV_BLOCK_TOKENS / 2
                else:
                    short -= request.left + KV_BLOCK_TOKENS
                    self._retract(pod, request)

    def _take_back_on_reads(self) -> None:
        """Each gateway pod's reading of each replica's waiting requests, and what it takes back for it."""
        for pod in self.ready():
            waiting = len(pod.queue)
            if not waiting:
                continue
            for g in range(len(self.deferred)):
                mine = sorted((r for r in (*pod.running_order, *pod.queue) if r.gw == g), key=lambda r: r.sent)
                unanswered = [lane_rule.Unanswered(r.deferrable, int(r.need), r.deferrable) for r in mine]
                for index in lane_rule.to_take_back_on_waiting(waiting, unanswered):
                    self._retract(pod, mine[index])

    def _take_back(self, pod: Replica, g: int, excess: float) -> None:
        """Gateway pod g's deferrable requests on `pod` taken back to its deferrable lane, the ones vLLM
        has not started first, then the newest running, until `excess` of the tokens g counts there are
        freed or none is left (vLLM aborts a request whose connection closes; the gateway sends it again
        later, from the start)."""
        freed = 0.0
        queued = [r for r in reversed(pod.queue) if r.deferrable and r.gw == g]
        running = [r for r in reversed(pod.running_order) if r.deferrable and r.gw == g]
        for request in queued + running:
            if freed >= excess:
                break
            self._retract(pod, request)
            freed += request.need

    def _dispatch(self, request: Request, pod: Replica) -> None:
        request.pod = pod
        self._sent += 1
        request.sent = self._sent
        pod.queue.append(request)
        pod.queued_tokens += request.need
        self.in_flight_audio_s += request.audio_s
        if request.deferrable:
            self.deferred_in_flight_audio_s += request.audio_s
            self.deferred_in_flight += 1
        else:
            self.held_audio_s -= request.audio_s

    def _expire(self, now: float) -> None:
        """Waiters past the timeout leave: the gateway answers 503, a caller gives up on vLLM's queue."""
        deadline = now - self.scenario.queue_timeout_s
        deferrable_deadline = now - self.scenario.deferrable_timeout_s

        def expired(request: Request) -> bool:
            return request.arrival <= (deferrable_deadline if request.deferrable else deadline)

        for held in (*self.held, *self.deferred):
            if held and min(r.arrival for r in held) <= deadline:
                kept_held = [r for r in held if not expired(r)]
                for request in held:
                    if expired(request):
                        if not request.deferrable:
                            self.held_audio_s -= request.audio_s
                        self._fail(request)
                held.clear()
                held.extend(kept_held)
        if self.routing != "service":
            return
        for pod in self.pods + self.draining:
            if not any(not r.admitted and expired(r) for r in pod.queue):
                continue
            kept: deque[Request] = deque()
            for request in pod.queue:
                if not request.admitted and expired(request):
                    pod.queued_tokens -= request.need
                    self.in_flight_audio_s -= request.audio_s
                    if request.deferrable:
                        self.deferred_in_flight_audio_s -= request.audio_s
                        self.deferred_in_flight -= 1
                    self._fail(request)
                else:
                    kept.append(request)
                pod.queue = kept

    def step(self, now: float, dt: float) -> None:
        for pod in self.pods:
            if pod.state == LOADING and pod.ready_at <= now:
                pod.state = READY
        if int(now) % TIMEOUT_SCAN_S == 0:
            self._expire(now)
        if self.take_back_on_waiting and int(now) % WAITING_READ_S == 0:
            self._take_back_for_waiting()
        if self.take_back_on_reads and int(now) % READS_S == 0:
            self._take_back_on_reads()
        if any(self.held) or any(self.deferred):
            self._route()
        engine, waits, done = self.engine, self.waits, self._done
        for pod in self.pods:
            if pod.running or pod.queue:
                pod.advance(engine, now, dt, waits, done)
        if self.draining:
            for pod in list(self.draining):
                if pod.running:
                    pod.advance(engine, now, dt, waits, done)
                if not pod.running or now >= pod.drain_deadline:
                    for request in pod.evict():  # cut at the drain deadline: sent again
                        self._resend(request)
                    self.draining.remove(pod)
                    self.spare_nodes.append(now + self.scenario.node_retention_s)
        if done:
            gateway = self.routing == "gateway"
            for request in done:
                self.in_flight_audio_s -= request.audio_s
                if gateway and request.pod is not None:
                    request.pod.gw_inflight[request.gw] -= 1
                    request.pod.gw_tokens[request.gw] -= request.need
                if request.deferrable:
                    self.deferred_in_flight_audio_s -= request.audio_s
                    self.deferred_in_flight -= 1
                    if not self.deferred_in_flight:
                        self.deferred_in_flight_audio_s = 0.0  # no float residue: nothing is in flight
                    figures = self.day(request.due - 1)
                    figures.batch_last_done = max(figures.batch_last_done, now + dt)
                    if now + dt <= request.due:
                        figures.batch_on_time += 1
            done.clear()
        if waits:
            for arrival, wait in waits:
                record_wait(self.day(arrival), arrival, wait)
            waits.clear()
        if self.spare_nodes:
            self.spare_nodes = [t for t in self.spare_nodes if t > now]
        figures = self.day(now)
        used = self.gpus_held()
        figures.gpu_s += used * dt
        ready = busy = 0
        for pod in self.pods:
            if pod.state == READY:
                ready += 1
                busy += 1 if pod.running else 0
        busy_reserved = min(busy * engine.gpus, self.reserved_gpus) * dt
        if self.reserved_gpus:
            figures.overflow_gpu_s += max(0, used - self.reserved_gpus) * dt
            figures.busy_reserved_s += busy_reserved
        hour = self.hours.get(int(now // HOUR))
        if hour is None:
            hour = self.hours[int(now // HOUR)] = [0.0, 0.0, 0.0]
        hour[0] += busy_reserved
        hour[1] += ready * dt
        hour[2] += sum(len(q) for q in self.deferred) * dt

    def finish(self, now: float) -> None:
        """Requests never started by the end are counted at their wait so far: a queue cannot hide."""
        pending = [r for held in self.held for r in held if not r.deferrable]
        for pod in self.pods + self.draining:
            pending.extend(r for r in pod.queue if not r.admitted and not r.deferrable)
        for request in pending:
            wait = now - request.arrival
            if wait >= self.scenario.queue_timeout_s:
                self._fail(request)
            else:
                record_wait(self.day(request.arrival), request.arrival, wait)


# ---------------------------------------------------------------------------------------------
# Policies: each reads what its system would see, when it would see it, and sets the replicas.


class SimPolicy(Protocol):
    def tick(self, cluster: Cluster, now: float) -> None: ...


@dataclass
class Static:
    """A fixed number of replicas: the fixed pool, and the invariants' tests."""

    replicas: int

    def tick(self, cluster: Cluster, now: float) -> None:
        if cluster.replicas != self.replicas:
            cluster.scale_to(self.replicas, now)


PROMETHEUS_SCRAPE_S = 15
HPA_SYNC_S = 15
HPA_TOLERANCE = 0.1
# HPA's scale-down stabilisation window: of 120, 300, 600, 900 and 1800 s, 900 s gave each HPA its
# best GPU-hours at equal wait in an earlier version of this simulation (not re-tuned here).
HPA_WINDOW_S = 900.0


@dataclass
class Hpa:
    """Kubernetes' HPA (autoscaling/v2) with an AverageValue target on one metric, read from Prometheus.

    Every 15 s: desired = ceil(ratio x pods) with a 10 % tolerance; pods without a metric (still
    loading) count as 0 when scaling up and as the target when scaling down; scale-up at most
    max(4 pods, 100 %) per period; scale-down to the highest recommendation of the stabilisation window.
    """

    metric: str  # "waiting" | "active" (running + waiting) | "kv"
    target: float
    window_s: float = HPA_WINDOW_S
    min_replicas: int = 1
    max_replicas: int = 24
    _scraped: tuple[list[float], float] = ((), 0.0)  # type: ignore[assignment]
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def _read(self, cluster: Cluster, now: float) -> tuple[list[float], float]:
        pods = cluster.pod_metrics()
        gateway = cluster.gateway_metrics(now)
        queued = gateway.queued if gateway else 0
        if self.metric == "kv":
            return [p.kv_cache_usage for p in pods], 0.0
        if self.metric == "waiting":
            return [float(p.waiting) for p in pods], float(queued)
        return [float(p.waiting + p.running) for p in pods], float(queued)

    def floor(self, now: float) -> int:
        return self.min_replicas

    def tick(self, cluster: Cluster, now: float) -> None:
        second = int(now)
        if second % PROMETHEUS_SCRAPE_S == 7:
            self._scraped = self._read(cluster, now)
        if second % HPA_SYNC_S:
            return
        values, extra = self._scraped
        values = list(values)
        current = cluster.replicas
        floor = self.floor(now)
        if not values:
            if current < floor:
                cluster.scale_to(floor, now)
            return
        if extra:  # the gateway's queue is one series: spread over the pods that report
            values = [v + extra / len(values) for v in values]
        missing = max(0, current - len(values))
        ratio = sum(values) / len(values) / self.target
        desired = current
        if missing:
            filled = values + [0.0 if ratio > 1 else self.target] * missing
            new_ratio = sum(filled) / len(filled) / self.target
            crossed = (ratio > 1) != (new_ratio > 1)
            if abs(new_ratio - 1) > HPA_TOLERANCE and not crossed:
                desired = math.ceil(new_ratio * len(filled))
        elif abs(ratio - 1) > HPA_TOLERANCE:
            desired = math.ceil(ratio * len(values))
        desired = min(max(desired, floor), self.max_replicas)
        self._recommendations.append((now, desired))
        while self._recommendations and self._recommendations[0][0] < now - self.window_s:
            self._recommendations.popleft()
        if desired < current:
            desired = max(floor, min(current, max(r for _, r in self._recommendations)))
        elif desired > current:
            desired = min(desired, max(current + 4, current * 2))
        if desired != current:
            cluster.scale_to(desired, now)


WORKING_HOURS = (7 * 3600, 19 * 3600)


@dataclass
class ScheduledHpa(Hpa):
    """A schedule floor for working hours (KEDA's cron trigger, Monday to Friday 07:00-19:00: a cron
    knows weekdays, not holidays) beside HPA on KV-cache usage."""

    working_floor: int = 1

    def floor(self, now: float) -> int:
        day, second = divmod(now, DAY)
        working = int(day) % 7 < 5 and WORKING_HOURS[0] <= second < WORKING_HOURS[1]
        return max(self.min_replicas, self.working_floor) if working else self.min_replicas


@dataclass
class KubeAi:
    """KubeAI's autoscaler: active requests (running + queued at its proxy) sampled every 10 s,
    averaged over 10 minutes; desired = ceil(average / targetRequests); scale-down only after
    `scaleDownDelaySeconds` (30 s) of lower recommendations."""

    target: float
    interval_s: int = 10
    window_s: int = 600
    scale_down_delay_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 24
    _samples: deque[float] = field(default_factory=deque)
    _lower_since: float | None = None

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % self.interval_s:
            return
        pods = cluster.pod_metrics()
        gateway = cluster.gateway_metrics(now)
        active = sum(p.running + p.waiting for p in pods) + (gateway.queued if gateway else 0)
        self._samples.append(active)
        while len(self._samples) > self.window_s // self.interval_s:
            self._samples.popleft()
        average = sum(self._samples) / len(self._samples)
        desired = min(max(math.ceil(average / self.target), self.min_replicas), self.max_replicas)
        current = cluster.replicas
        if desired > current:
            self._lower_since = None
            cluster.scale_to(desired, now)
        elif desired < current:
            self._lower_since = now if self._lower_since is None else self._lower_since
            if now - self._lower_since >= self.scale_down_delay_s:
                cluster.scale_to(desired, now)
                self._lower_since = None
        else:
            self._lower_since = None


@dataclass
class New:
    """voxtral_operator.autoscale.policy.decide, fed what the operator scrapes every 2 s (and the gateway's
    queue in audio-seconds when requests go through the gateway)."""

    limits: new_policy.Limits
    state: new_policy.State = field(default_factory=new_policy.State)
    interval_s: int = 2

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % self.interval_s:
            return
        pods = tuple(
            new_policy.PodSample(
                p.name, p.waiting, p.running, p.kv_cache_usage, p.prompt_tokens, p.generation_tokens, p.finished
            )
            for p in cluster.pod_metrics()
        )
        gateway = cluster.gateway_metrics(now)
        seen = new_policy.Observation(
            replicas=cluster.replicas,
            ready=len(pods),
            pods=pods,
            gateway=None
            if gateway is None
            else new_policy.GatewaySample(
                gateway.queued,
                gateway.queued_audio_s,
                gateway.in_flight_audio_s,
                gateway.since_last_request_s,
                gateway.deferrable_queued,
                gateway.deferrable_in_flight_audio_s,
                gateway.deferrable_in_flight,
            ),
        )
        decision = new_policy.decide(self.limits, seen, self.state, now)
        self.state = decision.state
        if decision.replicas != cluster.replicas:
            cluster.scale_to(decision.replicas, now)


def new_limits(
    scenario: Scenario,
    engine: Engine,
    target_utilization: float = new_policy.Limits(0, 1).target_utilization,
    policy: str = new_policy.WORKLOAD_POLICY,
    target_active_requests: float = new_policy.Limits(0, 1).target_active_requests,
) -> new_policy.Limits:
    """The operator's Limits for this endpoint, as autoscale/loop.py builds them from the spec."""
    return new_policy.Limits(
        min_replicas=scenario.min_replicas,
        max_replicas=scenario.max_replicas,
        policy=policy,
        target_active_requests=target_active_requests,
        max_num_seqs=engine.policy_max_num_seqs,
        prior_work_per_second=new_policy.prior_work_per_second(
            engine.weights_bytes, scenario.gpu_type, scenario.tensor_parallel_size, engine.policy_max_num_seqs
        ),
        cold_start_seconds=engine.startup_budget_s,
        target_utilization=target_utilization,
        node_retention_seconds=scenario.node_retention_s,
        scale_down_delay_seconds=float(DEFAULT_SCALE_DOWN_DELAY_SECONDS[AutoscalingPolicy(policy)]),
    )


ORACLE_BIN_S = 60


def oracle_need(rows: Sequence[Row], engine: Engine, start: float, end: float, utilization: float) -> list[int]:
    """Replicas each minute of [start, end) needs if every request were admitted on arrival: the KV
    cache its prompt and output hold while it runs (at a half-full replica's step time), over the
    share of a replica's cache the oracle allows itself."""
    return need_of(kv_token_seconds(rows, engine, start, end), engine, utilization)


def need_of(kv_seconds: Sequence[float], engine: Engine, utilization: float) -> list[int]:
    capacity = engine.kv_tokens * utilization * ORACLE_BIN_S
    return [math.ceil(k / capacity) for k in kv_seconds]


def kv_token_seconds(rows: Sequence[Row], engine: Engine, start: float, end: float) -> list[float]:
    """The KV cache token-seconds each minute of [start, end) holds if every request were admitted on
    arrival."""
    bins = math.ceil((end - start) / ORACLE_BIN_S) + 1
    kv_seconds = [0.0] * bins
    step = engine.weights_read_s + 0.5 * engine.kv_tokens * engine.kv_read_s_per_token
    first = bisect.bisect_left(rows, (start,))
    for arrival, audio, output in rows[first:]:
        if arrival >= end:
            break
        prompt = math.ceil(audio * AUDIO_TOKENS_PER_SECOND) + TEXT_PROMPT_TOKENS
        duration = prompt * engine.prefill_s_per_token + max(1, output) * step
        held = prompt + output / 2
        t, stop = arrival - start, arrival - start + duration
        while t < stop:
            index = int(t // ORACLE_BIN_S)
            if index >= bins:
                break
            edge = min(stop, (index + 1) * ORACLE_BIN_S)
            kv_seconds[index] += held * (edge - t)
            t = edge
    return kv_seconds


FORECAST_TWINS = 8  # draws of each day averaged into the forecast oracle's expected load


def expected_kv_token_seconds(setup: Setup, seed: int, engine: Engine, start: float, end: float) -> list[float]:
    """Each minute's KV token-seconds of [start, end) as the day's rate without its bursts makes them on
    average (FORECAST_TWINS draws): the forecast oracle's view ahead. Built-in days only."""
    peak = setup.scenario.peak_rate * setup.peak_scale
    total = kv_token_seconds([], engine, start, end)  # every minute at zero
    for day in range(max(0, int(start // DAY)), min(setup.days, math.ceil(end / DAY))):
        for rows in twin_days(seed, peak, day, day_kind(day, setup.holidays), FORECAST_TWINS):
            total = [a + b for a, b in zip(total, kv_token_seconds(rows, engine, start, end), strict=True)]
    return [t / FORECAST_TWINS for t in total]


@dataclass
class Oracle:
    """Clairvoyant: reads the trace ahead and has every replica a minute will need started one
    slowest cold start before it; keeps a replica while it is needed within that lead. It pays the
    cold starts and billing every policy pays; its utilisation is tuned to the same wait target.

    With `foresight` False it is the same rule told only the past (the `hindsight` oracle): the need of
    every minute already over, exact, and nothing ahead; it keeps the highest need of the last lead, the
    window the clairvoyant one looks ahead mirrored behind. What a reactive policy with a perfect
    measurement of the load could do with that rule: the gap between the two is what foresight buys.

    Given `expected` (the `forecast` oracle, `--foresight`), it is told the past as the hindsight oracle
    is and, ahead, each minute's expected need (the day's rate without its bursts, averaged over other
    draws of its requests), keeping the higher: what a perfect forecast of the load, not of the requests,
    adds to a perfect measurement."""

    need: list[int]
    start: float
    lead_s: float
    min_replicas: int = 1
    max_replicas: int = 24
    foresight: bool = True
    expected: list[int] | None = None

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % 10:
            return
        minute = int((now - self.start) // ORACLE_BIN_S)
        ahead = int((now + self.lead_s - self.start) // ORACLE_BIN_S) + 1  # the minutes to one lead from now
        if self.foresight:
            first, last = max(0, minute), ahead
        else:  # minutes over only: the current one is still arriving
            first = max(0, minute - math.ceil(self.lead_s / ORACLE_BIN_S))
            last = max(0, minute)
        window = self.need[first:last] or [0]
        if self.expected is not None:
            window = [*window, *self.expected[max(0, minute) : ahead]]
        desired = min(max(max(window), self.min_replicas), self.max_replicas)
        if desired != cluster.replicas:
            cluster.scale_to(desired, now)


# ---------------------------------------------------------------------------------------------
# The policies compared, their knob, and the values the tuning tries (the same budget for each)


@dataclass(frozen=True)
class PolicySpec:
    name: str
    knob: str
    values: tuple[float, ...]  # what bench/tune_policies.py tries first, five each; then two halvings
    default: float  # when bench/policy_constants.json has no value
    make: Callable[[Scenario, Engine, float, dict[str, float]], SimPolicy]
    whole: bool = False  # the knob takes whole numbers only (a CRD integer, a count of replicas)

    def label(self, value: float) -> str:
        return f"{self.knob} {value:g}"


POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec(
        "new",
        "targetActiveRequests",
        (3, 4, 6, 8, 10),
        new_policy.Limits(0, 1).target_active_requests,
        lambda s, e, v, c: New(new_limits(s, e, policy=new_policy.REQUESTS_POLICY, target_active_requests=v)),
        whole=True,  # targetActiveRequests is an integer in the CRD
    ),
    PolicySpec(
        "workload",
        "targetUtilization",
        (0.25, 0.3, 0.325, 0.35, 0.4),
        new_policy.Limits(0, 1).target_utilization,
        lambda s, e, v, c: New(new_limits(s, e, v)),
    ),
    PolicySpec(
        "hpa-kv",
        "kv_cache_usage_perc",
        (0.35, 0.4, 0.5, 0.55, 0.6),
        0.5,
        lambda s, e, v, c: Hpa("kv", v, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "hpa-active",
        "(running+waiting)/replica",
        (3, 4, 6, 8, 10),
        4,
        lambda s, e, v, c: Hpa("active", v, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "hpa-waiting",
        "waiting/replica",
        (0.1, 0.25, 0.5, 1, 2),
        0.5,
        lambda s, e, v, c: Hpa("waiting", v, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "kubeai",
        "targetRequests",
        (1, 2, 3, 4, 5),
        3,
        lambda s, e, v, c: KubeAi(v, max_replicas=s.max_replicas),
        whole=True,  # an int32 in KubeAI's Model CRD
    ),
    PolicySpec(
        "cron-hpa",
        "working-hours floor",
        (2, 3, 4, 6, 8),
        6,
        lambda s, e, v, c: ScheduledHpa("kv", c.get("hpa-kv", 0.5), max_replicas=s.max_replicas, working_floor=int(v)),
        whole=True,
    ),
    PolicySpec(
        "fixed",
        "replicas",
        (10, 11, 12, 13, 14),
        12,
        lambda s, e, v, c: Static(int(v)),
        whole=True,
    ),
)
POLICY_BY_NAME = {p.name: p for p in POLICIES}


# ---------------------------------------------------------------------------------------------
# Running


def percentile(histogram: dict[int, int], pct: float) -> float:
    """The wait at this percentile (upper edge of its bin)."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank, seen = math.ceil(total * pct / 100), 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return 0.0 if key == 0 else key * WAIT_BIN_S
    return max(histogram) * WAIT_BIN_S


@dataclass
class Run:
    days: dict[int, DayFigures]  # every simulated day, warm-up included
    peak_replicas: int
    resent: int
    preemptions: int
    hours: dict[int, list[float]] = field(default_factory=dict)  # Cluster.hours


def simulate(
    rows: Sequence[Row],
    scenario: Scenario,
    routing: str,
    policy: SimPolicy,
    seed: int,
    start: float,
    end: float,
    weights: str = "hub",
    reserved_gpus: int = 0,
    batch_rows: Sequence[Row] = (),
    lane_kv: bool = True,
    take_back: bool = True,
    draw: int = 0,
    take_back_on_waiting: bool = False,
    take_back_on_reads: bool = False,
    paired_draws: bool = False,
    scored_from: float = -math.inf,
) -> Run:
    """Replay `rows` and the deferrable `batch_rows` (arrivals in [start, end)) through one policy,
    one-second steps."""
    engine = Engine.of(scenario)
    cluster = Cluster(
        scenario,
        engine,
        routing,
        seed,
        start,
        scenario.min_replicas,
        weights,
        reserved_gpus,
        lane_kv,
        take_back,
        draw,
        take_back_on_waiting,
        take_back_on_reads,
        paired_draws,
        scored_from,
    )
    limit = min(scenario.max_model_len, engine.kv_tokens)
    lanes = [(rows, bisect.bisect_left(rows, (start,)), False)]
    if batch_rows:
        lanes.append((batch_rows, bisect.bisect_left(batch_rows, (start,)), True))
    indexes = [index for _, index, _ in lanes]
    now = start
    while now < end:
        for lane, (lane_rows, _, deferrable) in enumerate(lanes):
            index = indexes[lane]
            while index < len(lane_rows) and lane_rows[index][0] < now + 1:
                arrival, audio, output = lane_rows[index]
                index += 1
                if arrival >= end:
                    break
                request = Request(arrival, audio, output, deferrable)
                if request.need > limit:  # vLLM refuses what can never fit; a caller sees 400 at once
                    request = Request(arrival, audio, max(1, int(limit - request.prompt)), deferrable)
                if request.need <= limit:
                    cluster.arrive(request)
            indexes[lane] = index
        cluster.step(now, 1.0)
        policy.tick(cluster, now)
        now += 1.0
    cluster.finish(end)
    preemptions = sum(p.preemptions for p in cluster.pods + cluster.draining)
    return Run(cluster.days, cluster.peak, cluster.resent, preemptions, cluster.hours)


@dataclass(frozen=True)
class Setup:
    """What is simulated: the days, which of them are scored, the routing, the billing."""

    scenario: Scenario
    routing: str = "gateway"
    seeds: tuple[int, ...] = (1,)
    days: int = 9
    warmup_days: int = 5
    holidays: tuple[int, ...] = (8,)  # the Tuesday after the scored weekend
    trace: Path | None = None
    weights: str = "hub"
    reserved_gpus: int = 0
    peak_scale: float = 1.0
    window: tuple[float, float] | None = None  # (from, to) seconds of the first scored day only: --quick
    lead_in_s: float = 3600.0  # stateless policies start this long before the first scored day
    backlog: int = 0  # deferrable items added every evening to the built-in days
    bursts: bool = True  # False: the built-in days without their bursts (--no-bursts, a what-if)
    deferrable: bool = True  # False: the deferrable rows are left out (the run to compare against)
    lane_kv: bool = True  # the lane rule bounds deferrable work by the replica's KV cache too (False: slots only)
    take_back: bool = True  # an interactive request that does not fit takes back deferrable ones (False: never)
    take_back_on_waiting: bool = False  # the what-if: taking back on vLLM's reported wait, not the count
    take_back_on_reads: bool = True  # each gateway pod takes back on its reads of vLLM's waiting count (False: by
    # its count when an interactive request is sent, the gateway's --take-back-read-seconds 0)
    draw: int = 0  # which stream of cold starts and kube-proxy picks (0 unless a comparison asks for others)
    keep_pool_up: bool = False  # the operator's policy keeps the reserved pool up all day (minReplicas = the pool)
    # Picks and cold starts keyed, not drawn from one stream (Cluster): the runs compared (policy against
    # policy, with deferrable work against without) meet the same chance wherever they do the same thing.
    paired_draws: bool = True


def load_rows(setup: Setup, seed: int) -> tuple[list[Row], list[Row], int, int]:
    """(interactive rows, deferrable rows, first day, days) of the trace or the built-in days."""
    if setup.trace is not None:
        trace = read_trace(setup.trace)
        rows, batch = list(trace.rows), list(trace.batch_rows)
        arrivals = [r[0] for r in rows + batch]
        first = int(min(arrivals) // DAY) if arrivals else 0
        # Through the day the last deferrable row is due: a trace's last evening is scored too.
        last = int(max([*arrivals, *(due_by(r[0]) - 1 for r in batch)]) // DAY) if arrivals else 0
        days = last - first + 1
    else:
        peak = setup.scenario.peak_rate * setup.peak_scale
        rows = call_centre_days(seed, peak, setup.days, setup.holidays, setup.bursts)
        batch = overnight_backlog(seed, setup.days, setup.backlog)
        first, days = 0, setup.days
    return rows, batch if setup.deferrable else [], first, days


def scored_span(setup: Setup, first: int, days: int) -> tuple[float, float]:
    start = (first + setup.warmup_days) * DAY
    if setup.window is not None:
        return start + setup.window[0], start + setup.window[1]
    return start, (first + days) * DAY


@dataclass
class Score:
    """One policy at one setting over the scored days of every seed."""

    policy: str
    value: float
    days: list[DayFigures]  # every scored (seed, day)
    day_hours: float  # billed hours each scored day lasts
    reserved_gpus: int
    peak_replicas: int = 0
    preemptions: int = 0
    hours: dict[int, list[float]] = field(default_factory=dict)  # the first seed's, every simulated hour

    def billed_hours(self, day: DayFigures) -> float:
        if self.reserved_gpus:
            return self.reserved_gpus * self.day_hours + day.overflow_gpu_s / 3600
        return day.gpu_s / 3600

    @property
    def pooled(self) -> DayFigures:
        total = DayFigures()
        for day in self.days:
            total.add(day)
        return total

    def per_day(self, pct: float) -> list[float]:
        return [percentile(d.waits, pct) for d in self.days]

    def hours_by_day(self) -> list[float]:
        return [self.billed_hours(d) for d in self.days]

    def summary(self, seeds: int) -> dict[str, Any]:
        pooled = self.pooled
        hours = self.hours_by_day()
        busy = None
        if self.reserved_gpus:
            busy = round(pooled.busy_reserved_s / (self.reserved_gpus * self.day_hours * 3600 * len(self.days)), 3)
        done = round(pooled.batch_on_time / pooled.batch_items, 4) if pooled.batch_items else None
        summary: dict[str, Any] = {
            "gpu_hours": round(sum(hours) / seeds, 2),
            "p95_wait_s": percentile(pooled.waits, 95),
            "p99_wait_s": percentile(pooled.waits, 99),
            "failed": pooled.failed + pooled.batch_failed,
            "reserved_busy_fraction": busy,
            "batch_done_by_deadline": done,
        }
        if self.reserved_gpus:  # the bill split for chargeback: the pool paid whatever, overflow on demand
            summary["reserved_gpu_hours"] = round(self.reserved_gpus * self.day_hours * len(self.days) / seeds, 2)
            summary["overflow_gpu_hours"] = round(pooled.overflow_gpu_s / 3600 / seeds, 2)
        return summary


def evaluate(
    setup: Setup, seed: int, settings: Sequence[tuple[str, float]], constants: dict[str, float]
) -> list[Score]:
    """Every (policy, value) over this seed's scored days; the oracle is a setting like any other."""
    scenario = setup.scenario
    engine = Engine.of(scenario)
    rows, batch, first, days = load_rows(setup, seed)
    if days <= setup.warmup_days:
        raise SystemExit(f"{days} days simulated, {setup.warmup_days} of them warm-up: nothing left to score")
    start, end = scored_span(setup, first, days)
    scored = range(int(start // DAY), math.ceil(end / DAY))
    out = []
    forecast_kv: list[float] | None = None  # computed once for every forecast setting
    for name, value in settings:
        if name in ORACLES or name == FORECAST:
            lead = cold_start_range(engine, True, setup.weights)[1]
            need = oracle_need(rows, engine, start - setup.lead_in_s, end + lead, value)
            expected = None
            if name == FORECAST:
                if forecast_kv is None:
                    forecast_kv = expected_kv_token_seconds(setup, seed, engine, start - setup.lead_in_s, end + lead)
                expected = need_of(forecast_kv, engine, value)
            policy: SimPolicy = Oracle(
                need,
                start - setup.lead_in_s,
                lead,
                scenario.min_replicas,
                scenario.max_replicas,
                name == "oracle",
                expected,
            )
            begin = start - setup.lead_in_s
        else:
            policy = POLICY_BY_NAME[name].make(scenario, engine, value, constants)
            if isinstance(policy, New) and setup.reserved_gpus:
                reserved = setup.reserved_gpus // engine.gpus
                floor = max(policy.limits.min_replicas, reserved) if setup.keep_pool_up else policy.limits.min_replicas
                policy = replace(policy, limits=replace(policy.limits, reserved_replicas=reserved, min_replicas=floor))
            # The new policy learns from the warm-up days; the others keep no memory beyond minutes.
            learns = isinstance(policy, New) and setup.warmup_days > 0
            begin = first * DAY if learns else start - setup.lead_in_s
        run = simulate(
            rows,
            scenario,
            setup.routing,
            policy,
            seed,
            begin,
            end,
            setup.weights,
            setup.reserved_gpus,
            batch,
            setup.lane_kv,
            setup.take_back,
            setup.draw,
            setup.take_back_on_waiting,
            setup.take_back_on_reads,
            setup.paired_draws,
            start,
        )
        figures = [run.days.get(day, DayFigures()) for day in scored]
        out.append(
            Score(
                name,
                value,
                figures,
                (end - start) / 3600 / len(scored),
                setup.reserved_gpus,
                run.peak_replicas,
                run.preemptions,
                run.hours,
            )
        )
    return out


def _evaluate_task(task: tuple[Setup, int, tuple[tuple[str, float], ...], dict[str, float]]) -> list[Score]:
    return evaluate(*task)


def first_scores(
    tasks: Sequence[tuple[Setup, int, tuple[tuple[str, float], ...], dict[str, float]]], workers: int
) -> list[Score]:
    """The first setting's score of each task (one run of one seed), on up to `workers` processes."""
    if workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            return [r[0] for r in pool.map(_evaluate_task, tasks)]
    return [_evaluate_task(task)[0] for task in tasks]


def evaluate_seeds(
    setup: Setup, settings: Sequence[tuple[str, float]], constants: dict[str, float], workers: int = 1
) -> list[Score]:
    """Every setting over every seed of the setup, scored days pooled per setting."""
    # One task per seed and share of the settings, so that two workers help even with one seed.
    shares = max(1, min(len(settings), workers // len(setup.seeds) or 1))
    tasks = [
        (setup, seed, tuple(settings[share::shares]), constants) for seed in setup.seeds for share in range(shares)
    ]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_evaluate_task, tasks))
    else:
        results = [_evaluate_task(task) for task in tasks]
    by_setting: dict[tuple[str, float], list[Score]] = {}
    for task, result in zip(tasks, results, strict=True):
        for (name, value), score in zip(task[2], result, strict=True):
            by_setting.setdefault((name, value), []).append(score)
    merged = []
    for name, value in settings:
        scores = by_setting[(name, value)]
        merged.append(
            Score(
                name,
                value,
                [day for s in scores for day in s.days],
                scores[0].day_hours,
                setup.reserved_gpus,
                max(s.peak_replicas for s in scores),
                sum(s.preemptions for s in scores),
                scores[0].hours,
            )
        )
    return merged


@dataclass(frozen=True)
class Target:
    """The wait every scored day must meet: p95 and p99 of its requests, failures counted."""

    p95_wait_s: float = 10.0
    p99_wait_s: float = 60.0
    failed_share: float = 0.001

    def day_met(self, day: DayFigures) -> bool:
        return (
            percentile(day.waits, 95) <= self.p95_wait_s
            and percentile(day.waits, 99) <= self.p99_wait_s
            and day.failed <= self.failed_share * max(1, day.requests)
        )

    def met(self, score: Score, skip: Collection[int] = ()) -> bool:
        """Every scored day meets it (but the days at the indexes in `skip`)."""
        return all(self.day_met(d) for i, d in enumerate(score.days) if i not in skip)

    def distance(self, score: Score) -> float:
        """How far the worst day misses the target (0 when met): to pick the closest setting."""
        worst = 0.0
        for d in score.days:
            worst = max(
                worst,
                percentile(d.waits, 95) / self.p95_wait_s,
                percentile(d.waits, 99) / self.p99_wait_s,
                d.failed / max(1.0, self.failed_share * d.requests),
            )
        return worst


def choose(scores: Sequence[Score], target: Target, skip: Collection[int] = ()) -> tuple[Score, bool]:
    """The cheapest setting meeting the target on every day (but those in `skip`); else the one missing it
    least."""
    good = [s for s in scores if target.met(s, skip)]
    if good:
        return min(good, key=lambda s: sum(s.hours_by_day())), True
    return min(scores, key=lambda s: (target.distance(s), sum(s.hours_by_day()))), False


# Each oracle's utilisations tried. Told only the past, the rule needs headroom for the load that arrives
# within a cold start.
ORACLES = {"oracle": (0.55, 0.7, 0.8, 0.9), "hindsight": (0.2, 0.3, 0.35, 0.4, 0.45, 0.55, 0.7)}


def tune_oracles(setup: Setup, target: Target, workers: int) -> tuple[Score, Score, list[Score]]:
    """The oracle and the hindsight oracle, each at its highest utilisation meeting the target on the very
    days scored: each knows the trace (one ahead, one behind), so tuning it on them is its definition.
    Every utilisation's score comes too, to choose again on fewer days."""
    settings = [(name, u) for name, values in ORACLES.items() for u in values]
    grid = evaluate_seeds(setup, settings, {}, workers)
    oracle, hindsight = choose_oracles(grid, target)
    return oracle, hindsight, grid


def choose_oracles(grid: Sequence[Score], target: Target, skip: Collection[int] = ()) -> tuple[Score, Score]:
    oracle, _ = choose([s for s in grid if s.policy == "oracle"], target, skip)
    hindsight, _ = choose([s for s in grid if s.policy == "hindsight"], target, skip)
    return oracle, hindsight


# The forecast oracle (`--foresight`): the hindsight oracle's past and, ahead, the expected load. Its
# utilisations are the hindsight oracle's: the same budget.
FORECAST = "forecast"


def foresight_table(setup: Setup, target: Target, chosen: dict[str, float], workers: int) -> str:
    """What each kind of foresight buys, on the scored days: the clairvoyant oracle (every request ahead),
    the forecast oracle (the expected load ahead, the exact past), the hindsight oracle (the exact past
    only), each at its highest utilisation meeting the target there, beside the operator's policy at its
    tuned setting."""
    settings = [(name, u) for name, values in ORACLES.items() for u in values]
    settings += [(FORECAST, u) for u in ORACLES["hindsight"]] + [("new", chosen["new"])]
    grid = evaluate_seeds(setup, settings, chosen, workers)
    oracle, hindsight = choose_oracles(grid, target)
    forecast, _ = choose([s for s in grid if s.policy == FORECAST], target)
    oracle_hours = sum(oracle.hours_by_day())
    lines = [
        "| | what it knows | setting | GPU-h/day | vs oracle | p95 per day | p99 per day | failed | per-day target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    knows = {
        "oracle": "every request ahead",
        FORECAST: "the expected load ahead, the exact past",
        "hindsight": "the exact past",
        "new": "its own scrapes",
    }
    for score in (oracle, forecast, hindsight, grid[-1]):
        hours = score.hours_by_day()
        setting = (
            POLICY_BY_NAME[score.policy].label(score.value)
            if score.policy in POLICY_BY_NAME
            else f"{score.value:.0%} of the KV cache"
        )
        p95, p99 = score.per_day(95), score.per_day(99)
        lines.append(
            f"| {score.policy} | {knows[score.policy]} | {setting} | {sum(hours) / len(hours):.1f} | "
            f"{sum(hours) / oracle_hours if oracle_hours else math.nan:.2f} | {min(p95):.0f}-{max(p95):.0f} s | "
            f"{min(p99):.0f}-{max(p99):.0f} s | {score.pooled.failed:,} | {'met' if target.met(score) else 'not met'} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Constants and the report


def load_constants(path: Path = CONSTANTS_FILE) -> dict[str, Any]:
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def settings_for(scenario: str, routing: str, constants: dict[str, Any]) -> dict[str, float]:
    chosen = constants.get("settings", {}).get(scenario, {}).get(routing, {})
    return {spec.name: float(chosen.get(spec.name, spec.default)) for spec in POLICIES}


def target_from(constants: dict[str, Any]) -> Target:
    return Target(**constants["target"]) if "target" in constants else Target()


def paired_differences(new: Score, others: Sequence[Score]) -> list[str]:
    """`new`'s GPU-hours less each other policy's, day by day (the same seed-days, the same draws), so the
    spread of the difference is seen beside its mean: a gap of a few tenths in the pooled figures that
    swings by several GPU-hours from day to day is no evidence either way."""
    mine = new.hours_by_day()
    texts = []
    for other in others:
        diffs = [a - b for a, b in zip(mine, other.hours_by_day(), strict=True)]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        cheaper = sum(1 for x in diffs if x < 0)
        texts.append(f"{other.policy} {statistics.fmean(diffs):+.1f} ± {sd:.1f}, {cheaper}/{len(diffs)}")
    return texts


def ceiling_setting(scenario: Scenario) -> tuple[str, float]:
    """Every replica the endpoint may have (maxReplicas), up all day: a day this misses the target on is
    beyond what the endpoint can serve, a capacity question no autoscaler answers."""
    return ("fixed", float(scenario.max_replicas))


def day_name(setup: Setup, score: Score, index: int) -> str:
    per_seed = len(score.days) // len(setup.seeds)
    return f"seed {setup.seeds[index // per_seed]} day {setup.warmup_days + index % per_seed}"


def beyond_ceiling(
    setup: Setup, scores: Sequence[Score], ceiling: Score, target: Target, oracle_grid: Sequence[Score]
) -> list[str]:
    """Lines for the days even the ceiling misses the target on: which they are, and each policy's verdict
    and GPU-hours on the other days, the oracles' utilisations chosen again on them (empty when there are
    no such days)."""
    beyond = [i for i, day in enumerate(ceiling.days) if not target.day_met(day)]
    if not beyond:
        return []
    rest = len(ceiling.days) - len(beyond)
    named = ", ".join(
        f"{day_name(setup, ceiling, i)} ({ceiling.days[i].requests:,} requests, {ceiling.days[i].failed:,} failed)"
        for i in beyond
    )
    lines = [
        f"  beyond the endpoint's ceiling, {ceiling.value:g} replicas (maxReplicas) up all day missing the target: "
        f"{named}; on the other {rest} days:"
    ]
    verdicts = []
    oracle, hindsight = choose_oracles(oracle_grid, target, beyond)
    for score in [*scores, oracle, hindsight]:
        hours = [h for i, h in enumerate(score.hours_by_day()) if i not in beyond]
        p99 = max((p for i, p in enumerate(score.per_day(99)) if i not in beyond), default=0.0)
        met = "met" if target.met(score, skip=beyond) else f"MISSED (p99 up to {p99:.0f} s)"
        at = f" (utilization {score.value:g})" if score.policy in ORACLES else ""
        verdicts.append(f"{score.policy}{at} {statistics.fmean(hours) if hours else 0.0:.1f} GPU-h/day {met}")
    lines.extend("    " + "; ".join(verdicts[i : i + 3]) for i in range(0, len(verdicts), 3))
    return lines


def report(
    setup: Setup,
    scores: Sequence[Score],
    oracle: Score,
    hindsight: Score,
    target: Target,
    ceiling: Score | None = None,
    oracle_grid: Sequence[Score] = (),
) -> tuple[str, dict[str, Any]]:
    seeds = len(setup.seeds)
    lines = [
        f"  {'policy':<12}{'setting':<32}{'GPU-h/day':>10}{'± sd':>7}{'p95 pooled':>11}{'p99 pooled':>11}"
        f"{'p95 days':>15}{'p99 days':>15}{'failed':>8}{'target':>8}{'vs oracle':>10}"
    ]
    oracle_hours = oracle.summary(seeds)["gpu_hours"]
    policies: dict[str, Any] = {}
    for score in [*scores, oracle, hindsight]:
        hours = score.hours_by_day()
        mean = statistics.fmean(hours)
        sd = statistics.stdev(hours) if len(hours) > 1 else 0.0
        p95, p99 = score.per_day(95), score.per_day(99)
        summary = score.summary(seeds)
        met = target.met(score)
        label = (
            f"utilization {score.value:g}"
            if score.policy in ORACLES
            else POLICY_BY_NAME[score.policy].label(score.value)
        )
        ratio = summary["gpu_hours"] / oracle_hours if oracle_hours else math.nan
        lines.append(
            f"  {score.policy:<12}{label:<32}{mean:>10.1f}{sd:>7.1f}{summary['p95_wait_s']:>10.1f}s"
            f"{summary['p99_wait_s']:>10.1f}s{min(p95):>6.0f}-{max(p95):<7.0f}s{min(p99):>6.0f}-{max(p99):<7.0f}s"
            f"{summary['failed']:>8}{'met' if met else 'MISSED':>8}{ratio:>9.2f}x"
        )
        if score.policy not in ORACLES:
            policies[score.policy] = summary
    new = next(s for s in scores if s.policy == "new")
    baselines = [s for s in scores if s.policy not in ("new", "workload") and target.met(s)]
    best = min(baselines, key=lambda s: s.summary(seeds)["gpu_hours"], default=None)
    new_hours = policies["new"]["gpu_hours"]
    if best is None:
        lines.append("  no baseline met the target on every scored day")
    else:
        best_hours = policies[best.policy]["gpu_hours"]
        lines.append(
            f"  best baseline meeting the target: {best.policy} ({best_hours:.1f} GPU-h); new "
            f"{new_hours:.1f} GPU-h, {'meets' if target.met(new) else 'MISSES'} the target, "
            f"ratio {new_hours / best_hours:.2f}"
        )
    lines.append("  new minus each, day by day (GPU-h: mean ± sd over the scored days; days new is cheaper):")
    differences = paired_differences(new, [*(s for s in scores if s is not new), oracle, hindsight])
    lines.extend("    " + "; ".join(differences[i : i + 3]) for i in range(0, len(differences), 3))
    lines.append(
        f"  oracle {oracle_hours:.1f} GPU-h ({'meets' if target.met(oracle) else 'misses'} the target); "
        f"new / oracle = {new_hours / oracle_hours if oracle_hours else math.nan:.2f} (goal <= 1.15)"
    )
    hindsight_hours = hindsight.summary(seeds)["gpu_hours"]
    lines.append(
        f"  hindsight (the oracle's rule told only the past) {hindsight_hours:.1f} GPU-h "
        f"({'meets' if target.met(hindsight) else 'misses'} the target), "
        f"{hindsight_hours / oracle_hours if oracle_hours else math.nan:.2f}x the oracle: what foresight buys"
    )
    if ceiling is not None:
        lines.extend(beyond_ceiling(setup, scores, ceiling, target, oracle_grid or (oracle, hindsight)))
    if setup.reserved_gpus:
        split = ", ".join(
            f"{name} {p['reserved_gpu_hours']:.1f} + {p['overflow_gpu_hours']:.1f}" for name, p in policies.items()
        )
        lines.append(f"  GPU-h (all scored days, per seed), reserved + overflow: {split}")
    payload = {"policies": policies, "new": "new", "oracle": {"gpu_hours": oracle_hours}}
    return "\n".join(lines), payload


# ---------------------------------------------------------------------------------------------
# The reserved pool: busy on deferrable work, interactive tails kept


# Deferrable items an evening per reserved GPU: `bench/tune_policies.py --reserved-backlog` sizes it on the
# training seeds (the largest of BACKLOG_PER_GPU_VALUES every training night finishes by its deadline) and
# writes it to the constants file; this is the value before that.
RESERVED_BACKLOG_PER_GPU = 1400
BACKLOG_PER_GPU_VALUES = (1200, 1300, 1400, 1500, 1600)  # the sizing's budget: five values, as a policy's first round
RESERVED_POOL_UTILIZATION = 0.55  # the oracle's share of a replica's KV cache when sizing the pool
RESERVED_BUSY_TARGET = 0.8  # of the reserved GPU-seconds, over the scored days
RESERVED_DRAWS = 3  # draws of the simulation's own chance per seed, by default, for the reserved pool's tails
TAIL_TOLERANCE = 0.1  # interactive per-day p95 and p99 within this share of the run without deferrable work
PLOT_FILE = Path(__file__).with_name("reserved-pool.svg")


def reserved_pool_for(setup: Setup, utilization: float) -> int:
    """GPUs for the interactive p95 peak: the 95th percentile, over the scored minutes, of the
    replicas each minute's interactive KV-cache need asks for at this share of a replica's cache
    (the oracle's rule), the highest over the seeds."""
    engine = Engine.of(setup.scenario)
    sizes = []
    for seed in setup.seeds:
        rows, _, first, days = load_rows(replace(setup, deferrable=False), seed)
        start, end = scored_span(setup, first, days)
        need = oracle_need(rows, engine, start, end, utilization)[: int((end - start) // ORACLE_BIN_S)]
        sizes.append(sorted(need)[math.ceil(0.95 * len(need)) - 1])
    return max(sizes) * engine.gpus


def backlog_per_gpu(constants: dict[str, Any]) -> int:
    """Deferrable items an evening per reserved GPU, as sized on the training seeds."""
    return int(constants.get("reserved", {}).get("backlog_per_gpu", RESERVED_BACKLOG_PER_GPU))


def reserved_setup(setup: Setup, constants: dict[str, Any]) -> tuple[Setup, int]:
    """The reserved target's setup: a scored week after the warm-up when the days were not given, the pool
    sized for the seeds' interactive p95 peak unless given, and the backlog sized to the pool unless given;
    with the pool that sizing asked for."""
    if setup.days == Setup.days:  # not given: a working week to learn from, then a scored week
        setup = replace(setup, days=setup.warmup_days + 7)
    sized = reserved_pool_for(setup, RESERVED_POOL_UTILIZATION)
    if not setup.reserved_gpus:
        setup = replace(setup, reserved_gpus=sized)
    if not setup.backlog:
        setup = replace(setup, backlog=backlog_per_gpu(constants) * setup.reserved_gpus)
    return setup, sized


@dataclass(frozen=True)
class Night:
    """One scored morning's deferrable requests: how many were due, how many done by their deadline, and
    when the last was done, in minutes after the deadline (negative: before; None: none were due)."""

    seed: int
    day: int
    due: int
    on_time: int
    last_done_min: float | None


def last_done_after_deadline(day: int, figures: DayFigures) -> float | None:
    """When the last of the deferrable requests due on the morning of `day` was done, in minutes after their
    deadline (negative: before; infinite: none was done; None: none was due)."""
    if not figures.batch_items:
        return None
    done = figures.batch_last_done
    return (done - due_by(day * DAY - 1)) / 60 if math.isfinite(done) else math.inf


def nights(setup: Setup, scores: Sequence[Score]) -> list[Night]:
    """The scored mornings of one run per seed (`scores[i]` the run of `setup.seeds[i]`)."""
    out = []
    for seed, score in zip(setup.seeds, scores, strict=True):
        for index, day_figures in enumerate(score.days):
            day = setup.warmup_days + index
            last = last_done_after_deadline(day, day_figures)
            out.append(Night(seed, day, day_figures.batch_items, day_figures.batch_on_time, last))
    return out


def _kept(with_deferrable: float, without: float) -> bool:
    """Within the tolerance, or within the wait histogram's resolution of a wait of 0."""
    return with_deferrable <= without * (1 + TAIL_TOLERANCE) + WAIT_BIN_S


def _take_back_rule(setup: Setup) -> str:
    if not (setup.take_back and setup.lane_kv):
        return "nothing taken back"
    if setup.take_back_on_waiting:
        return "the what-if: taken back where vLLM reports an interactive request waiting"
    if setup.take_back_on_reads:
        return f"each gateway pod takes back on its reads of vLLM's waiting count, every {READS_S} s"
    return "taken back by each gateway pod's count when an interactive request is sent"


def _pooled(scores: Sequence[Score], index: int) -> DayFigures:
    """Day `index` of several draws of one seed, their figures added up."""
    day = DayFigures()
    for score in scores:
        day.add(score.days[index])
    return day


# The reserved target's runs, as --json names them.
LONG_WAIT_RUNS = {"with": "with_deferrable", "without": "without", "again": "other_draws_without"}


def backlog_hours(hour: int) -> bool:
    """From the backlog's first arrivals to its deadline: the hours of the day (18:00-08:00) in which it can
    touch interactive requests directly; the others are the working day's, which it reaches only through
    the replicas it leaves up or down."""
    return hour >= BACKLOG_HOURS[0] or hour < DEFERRABLE_DUE_HOUR


def long_waits_split(day: DayFigures) -> tuple[int, int]:
    """(in the backlog's hours, in the others) of a day's interactive requests that waited more than
    LONG_WAIT_S or failed."""
    during = sum(count for hour, count in enumerate(day.long_waits) if backlog_hours(hour))
    return during, sum(day.long_waits) - during


def _tails(day: DayFigures) -> tuple[float, float]:
    return percentile(day.waits, 95), percentile(day.waits, 99)


def _day_kept(with_day: DayFigures, without_day: DayFigures) -> bool:
    (p95_with, p99_with), (p95_without, p99_without) = _tails(with_day), _tails(without_day)
    return _kept(p95_with, p95_without) and _kept(p99_with, p99_without) and with_day.failed <= without_day.failed


def reserved_target(
    setup: Setup, value: float, constants: dict[str, float], workers: int, draws: int = 1
) -> tuple[str, dict[str, Any]]:
    """The operator's policy on a reserved pool with the deferrable backlog and without it, the same
    seeds and days, each over `draws` draws of the simulation's own chance (cold starts, kube-proxy's
    picks): the pool's busy share, the interactive tails of each day, deferrable work done. A second
    set of draws without deferrable work, judged against the first by the same rule, measures how
    often the rule is missed by chance alone. Each draw's runs with and without deferrable work are paired
    (`Setup.paired_draws`): they differ by what the deferrable work did, not by whose turn a draw was."""
    without = replace(setup, deferrable=False)
    runs = {
        "with": [replace(setup, draw=d) for d in range(draws)],
        "without": [replace(without, draw=d) for d in range(draws)],
        "again": [replace(without, draw=draws + d) for d in range(draws)],
    }
    tasks = [(run, seed, (("new", value),), constants) for kind in runs for run in runs[kind] for seed in setup.seeds]
    results = first_scores(tasks, workers)
    seeds = len(setup.seeds)
    # by_kind[kind][seed index] = that seed's scores, one per draw
    by_kind = {
        kind: [[results[(k * draws + d) * seeds + s] for d in range(draws)] for s in range(seeds)]
        for k, kind in enumerate(runs)
    }
    reserved = setup.reserved_gpus
    lines = [
        f"  {'seed':<6}{'day':<10}{'p95 without':>12}{'with':>8}{'p99 without':>13}{'with':>8}"
        f"{'busy without':>14}{'with':>7}{'deferrable due':>16}{'on time':>9}{'taken back':>12}{'kept':>6}"
        f"{'chance alone':>14}{'last done':>11}"
    ]
    missed = missed_by_chance = draw_days_missed = draw_days_missed_by_chance = 0
    busy_with = busy_without = 0.0
    items = on_time = failed = taken_back = 0
    long_waits = {kind: [0, 0] for kind in runs}  # (the backlog's hours, the others), over every day and draw
    days_out = []
    for s, seed in enumerate(setup.seeds):
        with_scores, without_scores, again_scores = (by_kind[kind][s] for kind in runs)
        for index in range(len(with_scores[0].days)):
            day = setup.warmup_days + index
            w, wo, again = (_pooled(scores, index) for scores in (with_scores, without_scores, again_scores))
            for kind, pooled_day in zip(runs, (w, wo, again), strict=True):
                long_waits[kind] = [a + b for a, b in zip(long_waits[kind], long_waits_split(pooled_day), strict=True)]
            kept, kept_by_chance = _day_kept(w, wo), _day_kept(again, wo)
            missed += not kept
            missed_by_chance += not kept_by_chance
            for d in range(draws):
                draw_days_missed += not _day_kept(with_scores[d].days[index], without_scores[d].days[index])
                draw_days_missed_by_chance += not _day_kept(again_scores[d].days[index], without_scores[d].days[index])
            pcts = [*_tails(wo), *_tails(w)]
            seconds = reserved * with_scores[0].day_hours * 3600 * draws
            busy = (wo.busy_reserved_s / seconds, w.busy_reserved_s / seconds)
            busy_without += wo.busy_reserved_s
            busy_with += w.busy_reserved_s
            items, on_time, failed = items + w.batch_items, on_time + w.batch_on_time, failed + w.batch_failed
            taken_back += w.batch_taken_back
            kind = day_kind(day, setup.holidays)
            last = last_done_after_deadline(day, w)
            lines.append(
                f"  {seed:<6}{f'{day} {kind[:3]}':<10}{pcts[0]:>11.1f}s{pcts[2]:>7.1f}s"
                f"{pcts[1]:>12.1f}s{pcts[3]:>7.1f}s{busy[0]:>14.0%}{busy[1]:>7.0%}"
                f"{w.batch_items:>16}{w.batch_on_time:>9}{w.batch_taken_back:>12}{'yes' if kept else 'NO':>6}"
                f"{'yes' if kept_by_chance else 'NO':>14}"
                f"{'-' if last is None or math.isinf(last) else f'{last:+.0f} min':>11}"
            )
            days_out.append(
                {
                    "seed": seed,
                    "day": day,
                    "kind": kind,
                    "p95_wait_s": [pcts[0], pcts[2]],
                    "p99_wait_s": [pcts[1], pcts[3]],
                    "failed": [wo.failed, w.failed],
                    "reserved_busy_fraction": [round(busy[0], 3), round(busy[1], 3)],
                    "batch_due": w.batch_items,
                    "batch_on_time": w.batch_on_time,
                    "batch_taken_back": w.batch_taken_back,
                    "batch_last_done_min_after_deadline": None if last is None or math.isinf(last) else round(last),
                    "tails_kept": kept,
                    "tails_kept_by_chance_alone": kept_by_chance,
                }
            )
    scored_days = len(days_out)
    total = reserved * by_kind["with"][0][0].day_hours * 3600 * scored_days * draws
    busy_share = busy_with / total
    done = on_time / items if items else None
    busy_met, tails_met, done_met = busy_share >= RESERVED_BUSY_TARGET, not missed, done == 1.0
    pooled = f"each day's waits pooled over {draws} draws of cold starts and kube-proxy picks" if draws > 1 else ""
    lines.append(
        f"  reserved GPUs busy over the scored days: {busy_share:.1%} (without deferrable work "
        f"{busy_without / total:.1%}); target >= {RESERVED_BUSY_TARGET:.0%}: {'met' if busy_met else 'NOT MET'}"
    )
    lines.append(
        f"  interactive per-day p95 and p99 within {TAIL_TOLERANCE:.0%} (or {WAIT_BIN_S:g} s) of the run "
        f"without deferrable work, no more failures, every day{f' ({pooled})' if pooled else ''}: "
        f"{'met' if tails_met else 'NOT MET'}, missed on {missed} of {scored_days} days"
    )
    lines.append(
        f"    by chance alone (other draws without deferrable work judged by the same rule): missed on "
        f"{missed_by_chance} of {scored_days} days; one draw against one draw: with deferrable work missed on "
        f"{draw_days_missed} of {scored_days * draws} draw-days, by chance alone on "
        f"{draw_days_missed_by_chance} of {scored_days * draws}"
    )
    threshold = f"{LONG_WAIT_S:g} s"
    lines.append(
        f"  interactive requests that waited more than {threshold} or failed, {scored_days * draws} draw-days: "
        f"arriving in the backlog's hours ({BACKLOG_HOURS[0]:02.0f}:00-{DEFERRABLE_DUE_HOUR:02d}:00) "
        f"{long_waits['with'][0]} with it, {long_waits['without'][0]} without it, {long_waits['again'][0]} in "
        f"other draws without it; arriving in the working day's {long_waits['with'][1]}, "
        f"{long_waits['without'][1]}, {long_waits['again'][1]}"
    )
    if items:
        lines.append(
            f"  deferrable requests done by their deadline: {on_time} of {items} ({failed} failed): "
            f"{'met' if done_met else 'NOT MET'}; taken back for interactive requests {taken_back} times "
            f"({_take_back_rule(setup)})"
        )
    else:
        lines.append("  no deferrable requests due on the scored days")
    payload = {
        "reserved_gpus": reserved,
        "draws": draws,
        "reserved_busy_fraction": round(busy_share, 4),
        "reserved_busy_fraction_without_deferrable": round(busy_without / total, 4),
        "batch_done_by_deadline": done,
        "batch_taken_back": taken_back,
        "targets_met": {"busy": busy_met, "tails": tails_met, "deadline": done_met if items else None},
        "tail_days_missed": {"with_deferrable": missed, "by_chance_alone": missed_by_chance, "of": scored_days},
        "long_waits": {
            "threshold_s": LONG_WAIT_S,
            "backlog_hours": {LONG_WAIT_RUNS[kind]: long_waits[kind][0] for kind in runs},
            "working_day": {LONG_WAIT_RUNS[kind]: long_waits[kind][1] for kind in runs},
        },
        "tail_draw_days_missed": {
            "with_deferrable": draw_days_missed,
            "by_chance_alone": draw_days_missed_by_chance,
            "of": scored_days * draws,
        },
        "days": days_out,
    }
    return "\n".join(lines), payload | {"_plot": (by_kind["with"][0][0], by_kind["without"][0][0])}


def plot_reserved(path: Path, setup: Setup, with_score: Score, without_score: Score) -> None:
    """An SVG of the first seed's scored hours: the reserved pool's busy share and the replicas up,
    with the deferrable backlog and without it."""
    start = setup.warmup_days * 24
    hours = range(start, start + 24 * len(with_score.days))
    reserved = max(1, setup.reserved_gpus)

    def series(score: Score, index: int, scale: float) -> list[float]:
        return [score.hours.get(h, [0.0, 0.0, 0.0])[index] / 3600 / scale for h in hours]

    busy_with, busy_without = series(with_score, 0, reserved), series(without_score, 0, reserved)
    up_with, up_without = series(with_score, 1, 1), series(without_score, 1, 1)
    width, left, right, panel, gap, top = 900, 60, 20, 180, 50, 30
    plot_w = width - left - right
    height = top + 2 * panel + gap + 40

    def x(i: int) -> float:
        return left + plot_w * i / max(1, len(busy_with))

    def line(values: list[float], y0: float, ymax: float, color: str) -> str:
        """Each hour a level step."""
        ys = [y0 + panel * (1 - min(v, ymax) / ymax) for v in values]
        points = " ".join(f"{x(i):.1f},{y:.1f} {x(i + 1):.1f},{y:.1f}" for i, y in enumerate(ys))
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>'
    ]
    top_max = max([*up_with, *up_without, reserved]) * 1.1
    for y0, title, ymax in (
        (top, "reserved GPUs busy (hourly share)", 1.0),
        (top + panel + gap, f"replicas up (reserved pool {reserved} GPUs dashed)", top_max),
    ):
        parts.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel}" fill="none" stroke="#999"/>')
        for tick in (0.0, 0.5, 1.0):
            y = y0 + panel * (1 - tick)
            parts.append(
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick * ymax:.{0 if ymax > 2 else 1}f}</text>'
            )
    y_busy, y_up = top, top + panel + gap

    def dashed(y: float) -> str:
        return (
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" stroke-dasharray="4 3"/>'
        )

    parts.append(dashed(y_busy + panel * (1 - RESERVED_BUSY_TARGET)))
    parts.append(line(busy_without, y_busy, 1.0, "#999"))
    parts.append(line(busy_with, y_busy, 1.0, "#1f5fbf"))
    parts.append(dashed(y_up + panel * (1 - reserved / top_max)))
    parts.append(line(up_without, y_up, top_max, "#999"))
    parts.append(line(up_with, y_up, top_max, "#1f5fbf"))
    for d in range(len(with_score.days)):
        day = setup.warmup_days + d
        parts.append(f'<line x1="{x(24 * d):.1f}" x2="{x(24 * d):.1f}" y1="{top}" y2="{y_up + panel}" stroke="#ddd"/>')
        label = f"day {day} {day_kind(day, setup.holidays)}"
        parts.append(f'<text x="{x(24 * d) + 4:.1f}" y="{y_up + panel + 16}">{label}</text>')
    legend_y = y_up + panel + 34
    parts.append(
        f'<text x="{left}" y="{legend_y}"><tspan fill="#1f5fbf">&#9644; with the overnight deferrable backlog</tspan>'
        f'<tspan dx="20" fill="#999">&#9644; without it</tspan>'
        f'<tspan dx="20" fill="#c00">- - target 80 % / pool size</tspan></text>'
    )
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="small-h100")
    parser.add_argument("--seeds", type=int, default=3, help="held-out seeds first-seed..first-seed+N-1")
    parser.add_argument("--first-seed", type=int, default=1, help="held-out seeds start here (training: 101 on)")
    parser.add_argument("--routing", choices=("service", "gateway"), default="gateway")
    parser.add_argument("--days", type=int, default=9, help="built-in days from a Monday (default 9)")
    parser.add_argument("--warmup-days", type=int, default=5, help="days lived through, not scored (default 5)")
    parser.add_argument("--holidays", default="8", help="comma-separated day numbers (day 0 a Monday)")
    parser.add_argument("--trace", type=Path, help="CSV arrival_s,audio_s,output_tokens[,class]")
    parser.add_argument(
        "--weights",
        choices=tuple(WEIGHTS_BYTES_PER_S),
        default="hub",
        help="where a new replica reads weights: hub (ColdDownload), cache (SharedCache), local (LocalCache)",
    )
    parser.add_argument("--reserved-gpus", type=int, default=0, help="GPUs paid all day; beyond them on demand")
    parser.add_argument("--backlog", type=int, default=0, help="deferrable items every evening (built-in days)")
    parser.add_argument(
        "--foresight",
        action="store_true",
        help="what foresight buys: the oracle, a forecast oracle (the expected load ahead, the exact past) and the "
        "hindsight oracle, each at its highest utilisation meeting the target, beside the operator's policy",
    )
    parser.add_argument(
        "--no-bursts",
        dest="bursts",
        action="store_false",
        help="a what-if: the built-in days without their bursts (the same levels, timing and slow noise): how much "
        "of the gap to the oracle is the bursts no policy sees coming",
    )
    parser.add_argument(
        "--lane-slots-only",
        dest="lane_kv",
        action="store_false",
        help="the lane rule bounds deferrable work by in-flight slots alone, not also by KV cache (for comparison)",
    )
    parser.add_argument(
        "--no-take-back",
        dest="take_back",
        action="store_false",
        help="an interactive request never takes back deferrable requests in flight (for comparison)",
    )
    parser.add_argument(
        "--take-back-on-waiting",
        action="store_true",
        help="a what-if the gateway does not implement: take back where vLLM reports an interactive request "
        f"waiting for KV blocks (read every {WAITING_READ_S} s), any gateway pod's deferrable requests",
    )
    parser.add_argument(
        "--take-back-by-count",
        dest="take_back_on_reads",
        action="store_false",
        help="an interactive request takes back deferrable ones when it is sent, by its gateway pod's count of KV "
        f"tokens (the gateway's --take-back-read-seconds 0), instead of on reads of vLLM's waiting count every "
        f"{READS_S} s (for comparison)",
    )
    parser.add_argument(
        "--reserved-target",
        action="store_true",
        help="a week on a reserved pool sized for the interactive p95 peak, with an overnight backlog and without",
    )
    parser.add_argument(
        "--keep-pool-up",
        action="store_true",
        help="the operator's policy keeps the reserved pool's replicas up all day (minReplicas = the pool: a pool "
        "not lent to other work), not only while deferrable work waits",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=RESERVED_DRAWS,
        help="with --reserved-target: draws of cold starts and kube-proxy picks per seed, each day's waits pooled",
    )
    parser.add_argument(
        "--draw",
        type=int,
        default=0,
        help="the comparison's draw of cold starts and kube-proxy picks (0 by default): what another draw of the "
        "simulation's own chance changes, on the same days",
    )
    parser.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="POLICY=V1,V2",
        help="the comparison at these settings in place of the tuned ones (repeatable), with each setting's mean "
        "per-day p95 and p99: what a policy costs at another's tails, on the same days (it chooses nothing)",
    )
    parser.add_argument(
        "--plot", type=Path, help=f"with --reserved-target: write the SVG here (e.g. bench/{PLOT_FILE.name})"
    )
    parser.add_argument("--policies", default=",".join(p.name for p in POLICIES), help="comma-separated")
    parser.add_argument("--constants", type=Path, default=CONSTANTS_FILE)
    parser.add_argument("--write-trace", type=Path, help="write the first seed's built-in days as a CSV and exit")
    parser.add_argument("--quick", action="store_true", help="two morning hours of one light day: a smoke test")
    parser.add_argument("--json", action="store_true", help="end with one JSON line (the scored days)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, not {args.draws}")
    if args.draw < 0 or (args.draw and args.reserved_target):
        parser.error("--draw is a draw number (0 on) for the comparison; --reserved-target takes --draws")

    scenario = SCENARIOS[args.scenario]
    holidays = tuple(int(d) for d in args.holidays.split(",") if d.strip())
    if args.write_trace:
        rows = call_centre_days(args.first_seed, scenario.peak_rate, args.days, holidays, args.bursts)
        write_trace(args.write_trace, rows)
        return 0
    setup = Setup(
        scenario,
        args.routing,
        tuple(range(args.first_seed, args.first_seed + args.seeds)),
        args.days,
        args.warmup_days,
        holidays,
        args.trace,
        args.weights,
        args.reserved_gpus,
        backlog=args.backlog,
        bursts=args.bursts,
        lane_kv=args.lane_kv,
        take_back=args.take_back,
        take_back_on_waiting=args.take_back_on_waiting,
        take_back_on_reads=args.take_back_on_reads,
        keep_pool_up=args.keep_pool_up,
        draw=args.draw,
    )
    if not args.bursts and args.trace:
        parser.error("--no-bursts takes the bursts out of the built-in days, not out of a --trace")
    if args.keep_pool_up and not (args.reserved_gpus or args.reserved_target):
        parser.error("--keep-pool-up needs a reserved pool (--reserved-gpus or --reserved-target)")
    at = settings_at(args.at, parser)
    if args.foresight and (args.trace or args.reserved_target or args.json or at):
        parser.error(
            "--foresight prints its own table of the built-in days: not with --trace, --reserved-target, --json or --at"
        )
    if at and (args.reserved_target or args.json):
        parser.error("--at prints its own table: not with --reserved-target or --json")
    if args.reserved_target:
        return run_reserved_target(args, setup)
    if args.quick:
        setup = replace(
            setup, seeds=(args.first_seed,), days=1, warmup_days=0, peak_scale=0.5, window=(7 * 3600, 9 * 3600)
        )
    constants = load_constants(args.constants)
    target = target_from(constants)
    chosen = settings_for(scenario.name, setup.routing, constants)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if "new" not in names:
        names.insert(0, "new")
    settings = [(name, chosen[name]) for name in names]
    started = time.perf_counter()
    workers = 1 if args.quick else args.workers
    if at:
        print(matched_tails(evaluate_seeds(setup, at, chosen, workers)))
        print(f"  {time.perf_counter() - started:.0f}s")
        return 0
    if args.foresight:
        bursts = "" if setup.bursts else ", without their bursts"
        print(
            f"what foresight buys: {scenario.name}, routing {setup.routing}, weights from {setup.weights}, "
            f"seeds {setup.seeds[0]}-{setup.seeds[-1]}{bursts}, days {setup.warmup_days}+ scored"
        )
        print(foresight_table(setup, target, chosen, workers))
        print(f"  {time.perf_counter() - started:.0f}s")
        return 0
    ceiling_run = ceiling_setting(scenario)
    runs = list(dict.fromkeys([*settings, ceiling_run]))  # the ceiling once, even when it is a setting compared
    by_run = dict(zip(runs, evaluate_seeds(setup, runs, chosen, workers), strict=True))
    scores, ceiling = [by_run[s] for s in settings], by_run[ceiling_run]
    oracle, hindsight, oracle_grid = tune_oracles(setup, target, workers)
    text, payload = report(setup, scores, oracle, hindsight, target, ceiling, oracle_grid)
    elapsed = time.perf_counter() - started
    engine = Engine.of(scenario)
    if setup.trace is not None:
        trace = read_trace(setup.trace)
        source = f"trace {setup.trace} ({len(trace.rows)} interactive rows"
        source += f", {trace.batch} deferrable rows)" if trace.batch else ")"
    else:
        source = (
            f"built-in days 0-{setup.days - 1} from a Monday, holidays {list(setup.holidays)}, "
            f"seeds {setup.seeds[0]}-{setup.seeds[-1]}{'' if setup.bursts else ', without their bursts'}"
        )
    billing = f"{setup.reserved_gpus} reserved GPUs, the rest on demand" if setup.reserved_gpus else "on demand"
    print(f"scenario {scenario.name}: {scenario.model} on {scenario.gpu_type}, routing {setup.routing}; {source}")
    print(
        f"  scored: days {setup.warmup_days}+ ({len(scores[0].days)} seed-days); billing {billing}; weights from "
        f"{setup.weights}; vLLM max-num-seqs {engine.max_num_seqs}, KV {engine.kv_tokens} tokens; "
        f"target per day p95 <= {target.p95_wait_s:g} s, p99 <= {target.p99_wait_s:g} s, "
        f"failed <= {target.failed_share:.1%}"
    )
    if setup.backlog:
        rule = "slots + KV cache" if setup.lane_kv else "slots"
        print(f"  {setup.backlog} deferrable items every evening, the lane rule: {rule}")
    print(f"  cold starts: {cold_start_paths(engine)}" + (f"; draw {setup.draw} of them" if setup.draw else ""))
    trained = constants.get("training", {}).get(scenario.name, {}).get(setup.routing, {}).get("weights", "hub")
    tuned = f" (tuned with weights from {trained})" if trained != setup.weights else ""
    print(
        f"  settings from {args.constants.name if args.constants.exists() else 'the defaults'}{tuned}; {elapsed:.0f}s"
    )
    print(text)
    if args.json:
        print(json.dumps(payload))
    return 0


def settings_at(given: Sequence[str], parser: argparse.ArgumentParser) -> list[tuple[str, float]]:
    """`--at new=4,5,6 --at kubeai=3`: each policy at each of its values, in the order given."""
    settings = []
    for item in given:
        name, _, values = item.partition("=")
        if name not in POLICY_BY_NAME or not values:
            parser.error(f"--at {item!r}: expected POLICY=V1,V2 with POLICY one of {', '.join(POLICY_BY_NAME)}")
        try:
            settings += [(name, float(v)) for v in values.split(",")]
        except ValueError:
            parser.error(f"--at {item!r}: the values must be numbers")
    return settings


def matched_tails(scores: Sequence[Score]) -> str:
    """Each setting's GPU-hours beside its tails, pooled and as the mean of the per-day figures."""
    lines = [
        "| policy | setting | GPU-h/day | p99 pooled | failed | p95 per day (mean) | p99 per day (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for score in scores:
        hours, pooled = score.hours_by_day(), score.pooled
        p95, p99 = score.per_day(95), score.per_day(99)
        lines.append(
            f"| {score.policy} | {POLICY_BY_NAME[score.policy].label(score.value)} | {sum(hours) / len(hours):.1f} | "
            f"{percentile(pooled.waits, 99):.1f} s | {pooled.failed:,} | {sum(p95) / len(p95):.1f} s | "
            f"{sum(p99) / len(p99):.1f} s |"
        )
    return "\n".join(lines)


def run_reserved_target(args: argparse.Namespace, setup: Setup) -> int:
    """The reserved pool measured: by default a scored week after a working week of warm-up."""
    constants = load_constants(args.constants)
    chosen = settings_for(setup.scenario.name, setup.routing, constants)
    started = time.perf_counter()
    backlog_given = bool(setup.backlog)
    setup, sized = reserved_setup(setup, constants)
    text, payload = reserved_target(setup, chosen["new"], chosen, args.workers, args.draws)
    with_score, without_score = payload.pop("_plot")
    payload = {"backlog": setup.backlog, "keep_pool_up": setup.keep_pool_up} | payload
    scenario = setup.scenario
    print(
        f"reserved pool: {scenario.model} on {scenario.gpu_type}, routing {setup.routing}; built-in days "
        f"0-{setup.days - 1}, holidays {list(setup.holidays)}, seeds {setup.seeds[0]}-{setup.seeds[-1]}, "
        f"days {setup.warmup_days}+ scored"
    )
    print(
        f"  {setup.reserved_gpus} reserved GPUs (the interactive p95 peak: {sized}, at "
        f"{RESERVED_POOL_UTILIZATION:.0%} of each replica's KV cache); {setup.backlog} deferrable items "
        f"({'given' if backlog_given else f'{backlog_per_gpu(constants)} per reserved GPU, sized on training seeds'}; "
        f"10-30 minute recordings) every evening 18:00-22:00, due 08:00; the lane rule "
        f"{'slots + KV cache' if setup.lane_kv else 'slots'}; "
        f"policy new at {POLICY_BY_NAME['new'].label(chosen['new'])}"
        f"{', the pool kept up all day (minReplicas at its size)' if setup.keep_pool_up else ''}; "
        f"{time.perf_counter() - started:.0f}s"
    )
    print(text)
    if args.plot:
        plot_reserved(args.plot, setup, with_score, without_score)
        print(f"  plot: {args.plot}")
    if args.json:
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
