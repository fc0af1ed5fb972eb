"""Prometheus metrics: requests by route template, latency, requests in flight, store operations.

One `Metrics` per application, with a registry of its own. With `--workers N`, the parent sets
`PROMETHEUS_MULTIPROC_DIR` before it starts the workers: every worker then writes its samples to
files in that directory, and `/metrics` in any worker answers for all of them.

Requests and store operations are tallied in plain Python first and added to the prometheus_client
metrics in batches: at every `/metrics` answer of this process and once a second (`flush`). Calling
prometheus_client per request takes a lock per counter and a loop over the buckets per histogram (and a
memory-mapped file write each with `--workers`), a noticeable share of what memsvc adds to a request on top
of aiohttp; the tally costs a dict lookup and two additions. Other workers' samples are at most a
second old; this process's are exact.
"""

import os
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = 'PROMETHEUS_MULTIPROC_DIR'
CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_SECONDS = 1.0
# From about one loopback round trip up to the store timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Tally = list[float]
"""[sum of seconds, then the number of observations per bucket, the last one +Inf]."""


def _new_tally() -> _Tally:
    return [0.0] * (len(LATENCY_BUCKETS) + 2)


def _observe(tally: _Tally, seconds: float) -> None:
    tally[0] += seconds
    tally[bisect_left(LATENCY_BUCKETS, seconds) + 1] += 1  # the first bucket whose bound is >= seconds


def _add(histogram: Histogram, tally: _Tally) -> None:
    """Add a tally to a labelled histogram, as `observe` once per observation would have.

    prometheus_client has no call to add many observations at once, so this adds to the child's bucket and
    sum values (`_buckets`, `_sum`: what `observe` itself updates, one bucket per upper bound and +Inf last).
    tests/test_metrics.py compares the result with `observe`, so a change there fails a test."""
    histogram._sum.inc(tally[0])
    for bucket, count in zip(histogram._buckets, tally[1:], strict=True):
        if count:
            bucket.inc(count)


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
        self._in_flight = Gauge(
            'memsvc_requests_in_flight', 'requests being handled', registry=registry, multiprocess_mode='livesum'
        )
        self._open_streams = Gauge(
            'memsvc_open_streams', 'event streams open', registry=registry, multiprocess_mode='livesum'
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
        self.in_flight = 0
        """Requests being handled now; `endpoint.py` counts them."""
        self.open_streams: Callable[[], int] = lambda: 0
        """The event streams open now: the app points it at its hub's count."""
        self._requests: dict[tuple[str, str, int], _Tally] = {}
        self._store: dict[str, _Tally] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        tally = self._requests.get((route, method, status))
        if tally is None:
            tally = self._requests[route, method, status] = _new_tally()
        _observe(tally, seconds)

    def observe_store(self, operation: str, seconds: float) -> None:
        tally = self._store.get(operation)
        if tally is None:
            tally = self._store[operation] = _new_tally()
        _observe(tally, seconds)

    def flush(self) -> None:
        """Add what was tallied since the last flush to the prometheus_client metrics."""
        requests, self._requests = self._requests, {}
        for (route, method, status), tally in requests.items():
            self.requests.labels(route, method, str(status)).inc(sum(tally[1:]))
            _add(self.latency.labels(route, method), tally)
        store, self._store = self._store, {}
        for operation, tally in store.items():
            _add(self.store_latency.labels(operation), tally)
        self._in_flight.set(self.in_flight)
        self._open_streams.set(self.open_streams())

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self._collector_registry)


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (requests in flight) from the shared files."""
    if MULTIPROC_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
