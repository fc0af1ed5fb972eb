"""A short run of the fault soak (tests/soak.py; `make soak` runs the long one)."""

from dataclasses import asdict
from pathlib import Path

from tests.soak import run

ALLOWED = {'GET 200', 'GET 404', 'POST 201', 'GET 503', 'POST 503', 'GET connection error', 'POST connection error'}


def test_no_acknowledged_write_is_lost_or_duplicated_through_a_redis_restart_and_a_replica_restart(
    tmp_path: Path,
) -> None:
    report = run(seconds=10, workdir=tmp_path, sessions=20, concurrency=16)
    print({k: v for k, v in asdict(report).items() if k != 'latency_ms'})  # shown when the test fails
    assert report.acknowledged > 100, report
    assert report.lost == 0, report
    assert report.duplicated == 0, report
    assert report.given_up == 0, report
    assert report.replica_exit_status == 0, "the SIGTERM'd replica drained and exited 0"
    assert set(report.statuses) <= ALLOWED, 'no error but 503, and refused connections while a replica restarts'
    assert report.ok()
    assert report.statuses.get('POST 503', 0) + report.statuses.get('POST connection error', 0) > 0, (
        'the faults did happen while writes were under way'
    )
