"""The ceiling: a bare aiohttp app on the same event loop as `memsvc serve`, to measure the framework's limit.

Every route answers a constant JSON object; a request with a body has it parsed by orjson first, so a
POST costs what reading and parsing the body costs. Nothing else: no routing table of memsvc, no
request-id or metrics wrapper, no validation, no store. `python -m bench.ceiling --port N` serves it.
"""

import argparse

import orjson
from aiohttp import web

from memsvc.cli import _new_loop

ANSWER = orjson.dumps({'ok': True})


async def answer(request: web.Request) -> web.Response:
    if request.body_exists:
        orjson.loads(await request.read())
    return web.Response(body=ANSWER, content_type='application/json')


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--port', type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host='127.0.0.1', port=args.port, access_log=None, print=None, loop=_new_loop())


if __name__ == '__main__':
    main()
