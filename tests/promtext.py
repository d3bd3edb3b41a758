"""Read one Prometheus series (summed over matching label sets) from a live /metrics endpoint."""

from __future__ import annotations

import re

import httpx


def metric(base_url: str, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(base_url + "/metrics", timeout=10).text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total
