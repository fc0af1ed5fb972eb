"""The console's routes: its two pages and their static files."""

from aiohttp import web

from memsvc.appkeys import CONSOLE_FILES
from memsvc.console.files import FOREVER, REVALIDATE, STATIC
from memsvc.declare import Operation, Reply, RouteTable
from memsvc.errors import RouteNotFound

console = RouteTable()
"""The console's routes: open (the files hold no data), and not in the API's OpenAPI document."""
_PAGE = {200: Reply(None, 'the page', media_type='text/html')}


@console.get('/console', Operation('console', 'The console', _PAGE, store=False, open=True))
async def console_page(request: web.Request) -> web.Response:
    return request.app[CONSOLE_FILES].pages['/console'].response(request, REVALIDATE)


@console.get('/console/api', Operation('consoleApi', 'The API reference', _PAGE, store=False, open=True))
async def api_page(request: web.Request) -> web.Response:
    return request.app[CONSOLE_FILES].pages['/console/api'].response(request, REVALIDATE)


@console.get(
    STATIC + '/{version:[A-Za-z0-9]+}/{name:[^/]+}',
    Operation(
        'consoleStatic',
        "A script, style sheet or icon of the console's pages",
        {200: Reply(None, 'the file', media_type='text/javascript')},
        errors=(404,),
        store=False,
        open=True,
    ),
)
async def static_file(request: web.Request) -> web.Response:
    """Any version answers the current file (a page from the release before still loads), kept for good only
    under the current one."""
    files = request.app[CONSOLE_FILES]
    asset = files.static.get(request.match_info['name'])
    if asset is None:
        raise RouteNotFound(request.path)
    current = request.match_info['version'] == files.version
    return asset.response(request, FOREVER if current else REVALIDATE)
