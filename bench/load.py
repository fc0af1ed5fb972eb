"""`make load`: locust, headless and time-bounded, against a memsvc that this script starts and stops.

    python -m bench.load [--memory-type in_memory|redis] [--users 32] [--time 60]

Everything stays on loopback: memsvc listens on a free 127.0.0.1 port (and, for `redis`, a
redis-server of its own without persistence). locust stops after `--time` seconds and prints its
summary; the server is stopped after it, also when locust fails.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.servers import BENCH, start_memsvc
from tests.servers import RedisServer


def main() -> int:
    parser = argparse.ArgumentParser(prog='python -m bench.load', description=__doc__.split('\n\n')[0])
    parser.add_argument('--memory-type', choices=['in_memory', 'redis'], default='in_memory')
    parser.add_argument('--users', type=int, default=32, help='concurrent simulated gateway workers')
    parser.add_argument('--spawn-rate', type=float, default=8, help='users started per second')
    parser.add_argument('--time', type=int, default=60, help='seconds of load, then locust stops')
    args = parser.parse_args()
    locust = shutil.which('locust', path=str(Path(sys.executable).parent)) or shutil.which('locust')
    if locust is None:
        sys.exit('bench.load: locust is not installed (pip install -e ".[bench]")')
    with tempfile.TemporaryDirectory(prefix='memsvc-load-') as tmp:
        workdir = Path(tmp)
        redis_server = None
        env: dict[str, str] = {}
        if args.memory_type == 'redis':
            redis_server = RedisServer.start(workdir / 'redis', extra_args=['--appendonly', 'no', '--save', ''])
            env['REDIS_URL'] = redis_server.url
        try:
            server = start_memsvc(args.memory_type, workdir, env=env, cpus='0')
            try:
                command = [
                    locust, '-f', str(BENCH / 'locustfile.py'), '--headless', '--only-summary',
                    '--users', str(args.users), '--spawn-rate', str(args.spawn_rate), '--run-time', f'{args.time}s',
                    '--stop-timeout', '5', '--host', server.url,
                ]  # fmt: skip
                print(f'memsvc ({args.memory_type}) on {server.url}; {args.users} users for {args.time} s', flush=True)
                status = subprocess.run(['taskset', '-c', '1', *command], timeout=args.time + 60).returncode
            finally:
                server.stop()
        finally:
            if redis_server is not None:
                redis_server.stop(kill=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
