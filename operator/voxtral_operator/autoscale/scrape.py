"""Pure: the two numbers the autoscaler reads from a vLLM /metrics page."""

from __future__ import annotations

import math
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"


@dataclass(frozen=True)
class QueueSample:
    waiting: float
    running: float


def parse_queue_metrics(text: str) -> QueueSample | None:
    """Sum the waiting and running gauges over engines; None when the page has neither.

    Everything else on the page (help lines, histograms, python_*/process_* series, other
    vllm: series whose names merely start the same) is skipped.
    """
    totals = {WAITING: 0.0, RUNNING: 0.0}
    seen = set()
    for line in text.splitlines():
        if not line.startswith("vllm:num_requests_"):
            continue
        name_end = len(line)
        for separator in ("{", " "):
            index = line.find(separator)
            if index != -1:
                name_end = min(name_end, index)
        name = line[:name_end]
        if name not in totals:
            continue
        rest = line[name_end:]
        if rest.startswith("{"):
            rest = rest[rest.rfind("}") + 1 :]
        try:
            value = float(rest.split()[0])  # a timestamp may follow the value
        except (IndexError, ValueError):
            continue
        if math.isnan(value):
            continue
        totals[name] += value
        seen.add(name)
    if WAITING not in seen:
        return None
    return QueueSample(waiting=totals[WAITING], running=totals[RUNNING])
