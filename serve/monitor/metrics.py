"""Prometheus metrics, per version: requests, errors by type, TTFT, inter-token latency, end-to-end, in flight.

Each app gets its own registry (several gateways can live in one test process). Label children are bound
once per version so the hot path does no label lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass
class VersionMetrics:
    ttft: object
    itl: object
    e2e: object
    in_flight: object
    tokens: object


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("aligngate_requests", "Requests answered, by version, endpoint and status",
                                ["version", "endpoint", "status"], registry=r)
        self.errors = Counter("aligngate_errors", "Errors by version and type", ["version", "type"], registry=r)
        self._ttft = Histogram("aligngate_ttft_seconds", "Time to first token", ["version"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self._itl = Histogram("aligngate_inter_token_latency_seconds", "Gap between streamed chunks", ["version"],
                              buckets=ITL_BUCKETS, registry=r)
        self._e2e = Histogram("aligngate_e2e_latency_seconds", "Request end to end", ["version"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self._in_flight = Gauge("aligngate_in_flight", "Requests in flight", ["version"], registry=r)
        self._tokens = Counter("aligngate_completion_tokens", "Completion tokens generated", ["version"], registry=r)
        self.engine_unfinished = Gauge("aligngate_engine_unfinished_requests",
                                       "Sequences still held by the in-process engine (read at scrape time)",
                                       ["version"], registry=r)
        self._per_version: dict[str, VersionMetrics] = {}

    def version(self, name: str) -> VersionMetrics:
        vm = self._per_version.get(name)
        if vm is None:
            vm = VersionMetrics(self._ttft.labels(name), self._itl.labels(name), self._e2e.labels(name),
                                self._in_flight.labels(name), self._tokens.labels(name))
            self._per_version[name] = vm
        return vm

    def forget(self, name: str) -> None:
        """A removed version: its series leave /metrics (a request that outlived the drain updates children no
        longer exported)."""
        self._per_version.pop(name, None)
        for m in (self.requests, self.errors, self._ttft, self._itl, self._e2e, self._in_flight, self._tokens,
                  self.engine_unfinished):
            m.remove_by_labels({"version": name})

    def render(self) -> bytes:
        return generate_latest(self.registry)
