"""Prometheus metrics: requests by route template, latency, requests in flight, store operations.

One `Metrics` per application, with a registry of its own. With `--workers N`, the parent sets
`PROMETHEUS_MULTIPROC_DIR` before it starts the workers: every worker then writes its samples to
files in that directory, and `/metrics` in any worker answers for all of them.
"""

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = 'PROMETHEUS_MULTIPROC_DIR'
CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a loopback round trip (~0.2 ms) up to the store timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        multiprocess = MULTIPROC_ENV in os.environ
        self._collector_registry = self.registry
        if multiprocess:  # samples go to files; a registry of its own collects them from every worker
            self._collector_registry = CollectorRegistry()
            MultiProcessCollector(self._collector_registry)  # type: ignore[no-untyped-call]
        registry = self.registry
        self.requests = Counter(
            'memsvc_requests', 'HTTP requests answered', ['route', 'method', 'status'], registry=registry
        )
        self.latency = Histogram(
            'memsvc_request_duration_seconds',
            'time from the request reaching memsvc to its answer',
            ['route', 'method'],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            'memsvc_requests_in_flight', 'requests being handled', registry=registry, multiprocess_mode='livesum'
        )
        self.store_latency = Histogram(
            'memsvc_store_operation_duration_seconds',
            'time of one store operation',
            ['operation'],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            'memsvc_store_errors', 'store operations that failed', ['operation', 'error'], registry=registry
        )
        # The labelled children, looked up once: `labels()` costs ~2 µs a call, on every request.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._store_children: dict[str, Histogram] = {}

    def render(self) -> bytes:
        return generate_latest(self._collector_registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, method, status))
        if children is None:
            children = self.requests.labels(route, method, str(status)), self.latency.labels(route, method)
            self._request_children[route, method, status] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_store(self, operation: str, seconds: float) -> None:
        child = self._store_children.get(operation)
        if child is None:
            child = self._store_children[operation] = self.store_latency.labels(operation)
        child.observe(seconds)


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (requests in flight) from the shared files."""
    if MULTIPROC_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
