"""Reading a component's Prometheus page in the end-to-end tests: by name and labels, parsed by the
client library's own parser rather than by splitting lines."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def samples(url: str, name: str, timeout: float = 10.0, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` on the page at `url` whose labels include `labels`: (labels, value)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        page = response.read().decode()
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
