"""GET /metrics: Prometheus text with requests by route template, latency, in-flight requests and
store operations; a deadline on every store operation."""

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from tests.conformance import CheckedClient, Conformance
from tests.conftest import make_settings
from tests.helpers import API
from tests.servers import RedisServer


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name`, keyed by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def request_counts(text: str) -> dict[tuple[str, str, str], float]:
    """memsvc_requests_total by (route, method, status)."""
    return {
        (labels['route'], labels['method'], labels['status']): value
        for key, value in samples(text, 'memsvc_requests_total').items()
        for labels in [dict(key)]
    }


async def test_requests_are_counted_by_route_template_method_and_status(client: CheckedClient) -> None:
    for n in range(3):
        await client.post(f'{API}/sessions/s{n}/messages', json={'role': 'user', 'content': 'x'})
    await client.get(f'{API}/sessions/s0/messages?limit=2')
    await client.get(f'{API}/sessions/nope')
    await client.get('/no/such/route')
    reply = await client.get('/metrics')
    assert reply.status == 200
    assert reply.headers['Content-Type'].startswith('text/plain')
    text = reply.body.decode()
    counts = request_counts(text)
    assert counts[(f'{API}/sessions/{{session_id}}/messages', 'POST', '201')] == 3
    assert counts[(f'{API}/sessions/{{session_id}}/messages', 'GET', '200')] == 1
    assert counts[(f'{API}/sessions/{{session_id}}', 'GET', '404')] == 1
    assert counts[('(unmatched)', 'GET', '404')] == 1
    post = (('method', 'POST'), ('route', f'{API}/sessions/{{session_id}}/messages'))
    assert samples(text, 'memsvc_request_duration_seconds_count')[post] == 3
    assert 0 < samples(text, 'memsvc_request_duration_seconds_sum')[post] < 3 * 10
    buckets = sorted(
        (float(dict(key)['le']), value)
        for key, value in samples(text, 'memsvc_request_duration_seconds_bucket').items()
        if dict(key)['method'] == 'POST' and dict(key)['route'] == f'{API}/sessions/{{session_id}}/messages'
    )
    cumulative = [value for _, value in buckets]
    assert cumulative == sorted(cumulative)
    assert buckets[-1] == (float('inf'), 3)
    store = samples(text, 'memsvc_store_operation_duration_seconds_count')
    assert store[(('operation', 'append_messages'),)] == 3
    assert store[(('operation', 'get_messages'),)] == 1
    assert store[(('operation', 'get_session'),)] == 1
    assert samples(text, 'memsvc_requests_in_flight') == {(): 1.0}, 'the /metrics request itself'


@pytest.mark.parametrize('operation', ['get_messages', 'append_messages', 'get_session'])
async def test_a_store_past_its_deadline_is_503_and_counted(
    operation: str, redis_server: RedisServer, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    """A Redis that hangs longer than MEMSVC_STORE_TIMEOUT_SECONDS (here shorter than the socket timeout). All
    three are sent in batches with one deadline for the batch (`Coalescer`)."""
    settings = make_settings('redis', request, store_timeout_seconds=0.3, redis_socket_timeout=30)
    client = CheckedClient(await aiohttp_client(create_app(settings)), Conformance.for_settings(settings))
    assert (await client.post(f'{API}/sessions/s/messages', json={'role': 'user', 'content': 'x'})).status == 201
    redis_server.pause()
    try:
        if operation == 'append_messages':
            reply = await client.post(f'{API}/sessions/s/messages', json={'role': 'user', 'content': 'y'})
        else:
            reply = await client.get(f'{API}/sessions/s' + ('/messages' if operation == 'get_messages' else ''))
    finally:
        redis_server.resume()
    assert reply.status == 503
    assert reply.headers['Retry-After'] == '1'
    assert 'did not answer within 0.3 s' in reply.json()['error']['message']
    errors = samples((await client.get('/metrics')).body.decode(), 'memsvc_store_errors_total')
    assert errors == {(('error', 'timeout'), ('operation', operation)): 1.0}
    # It recovers, and each request gets its own reply: the late one to the request that timed out is not read.
    appended = await client.post(f'{API}/sessions/s/messages', json={'role': 'assistant', 'content': 'z'})
    assert appended.status == 201
    assert appended.json()['content'] == 'z'
    messages = (await client.get(f'{API}/sessions/s/messages')).json()
    assert [m['content'] for m in messages] in (['x', 'z'], ['x', 'y', 'z'])  # the timed-out append may have landed


def test_metrics_route_is_open_without_an_api_key(settings: Any) -> None:
    from memsvc.openapi import build_openapi

    assert build_openapi(settings)['paths']['/metrics']['get']['security'] == []


def test_tallied_observations_are_exposed_as_prometheus_client_would_have_observed_them() -> None:
    """Requests are tallied and added in batches; the exposed histogram must equal one `observe` per request."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from memsvc.metrics import LATENCY_BUCKETS, Metrics

    durations = [0.0001, 0.0005, 0.0006, 0.003, 0.003, 2.0, 10.0, 11.0]
    metrics = Metrics()
    registry = CollectorRegistry()
    name = 'memsvc_request_duration_seconds'
    reference = Histogram(name, '', ['route', 'method'], buckets=LATENCY_BUCKETS, registry=registry)
    for seconds in durations[:4]:
        metrics.observe_request('/r', 'GET', 200, seconds)
        reference.labels('/r', 'GET').observe(seconds)
    metrics.flush()
    for seconds in durations[4:]:
        metrics.observe_request('/r', 'GET', 404 if seconds > 5 else 200, seconds)
        reference.labels('/r', 'GET').observe(seconds)
    text = metrics.render().decode()
    expected = generate_latest(registry).decode()
    for suffix in ('_bucket', '_count', '_sum'):
        assert samples(text, name + suffix) == pytest.approx(samples(expected, name + suffix)), suffix
    assert request_counts(text) == {('/r', 'GET', '200'): 6, ('/r', 'GET', '404'): 2}
