"""The console's files as the server sends them: the pages, their headers, caching, and what the files may not
hold. What the pages do is tested in a real browser (test_console_browser.py)."""

import gzip
import re
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from yarl import URL

from memsvc.app import create_app
from memsvc.console.files import ConsoleFiles
from memsvc.settings import Settings

FILES = Path(__file__).parent.parent / 'memsvc' / 'console'
KEY = 'console-key-123'
ASSET = re.compile(r'(?:src|href)="([^"]*static/[^"]+)"')
LINK = re.compile(r'<a [^>]*href="([^"#]+)"')


async def _client(aiohttp_client: AiohttpClient, **settings: Any) -> Any:
    return await aiohttp_client(create_app(Settings(**settings)))


@pytest.mark.parametrize('path', ['/console', '/console/api'])
async def test_the_pages_are_served_without_a_key_with_strict_headers(aiohttp_client: AiohttpClient, path: str) -> None:
    client = await _client(aiohttp_client, api_key=KEY)
    async with client.get(path, allow_redirects=False) as response:
        assert response.status == 200  # the page itself, no redirect
        assert response.content_type == 'text/html'
        html = await response.text()
        headers = response.headers
    csp = dict(part.strip().split(' ', 1) for part in headers['Content-Security-Policy'].split(';'))
    assert csp['script-src'] == "'self'"
    assert 'unsafe-inline' not in headers['Content-Security-Policy']
    assert 'unsafe-eval' not in headers['Content-Security-Policy']
    assert csp['frame-ancestors'] == "'none'"
    assert csp['default-src'] == "'none'"
    assert csp['require-trusted-types-for'] == "'script'"
    assert headers['X-Content-Type-Options'] == 'nosniff'
    assert headers['Cache-Control'] == 'no-cache'
    assert '<script>' not in html, 'no inline script'
    assert 'style=' not in html, 'no inline style'
    page = client.make_url(path)
    links = {str(page.join(URL(link)).relative()) for link in LINK.findall(html)}
    assert links == {'/console', '/console?view=search', '/console/api'}, 'relative links, resolved against the page'
    for reference in ASSET.findall(html):  # every file the page loads is there, relative, and sent with its type
        assert not reference.startswith(('/', 'http')), reference
        async with client.get(page.join(URL(reference)).path) as asset:
            assert asset.status == 200, reference
            assert asset.headers['X-Content-Type-Options'] == 'nosniff'
            if reference.endswith('.js'):
                assert asset.content_type == 'text/javascript'
    async with client.get('/api/v1/chat/sessions') as response:
        assert response.status == 401, 'the data is not open'


async def test_static_files_are_kept_for_good_under_their_version_gzipped_and_revalidated(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await _client(aiohttp_client)
    version = ConsoleFiles.load().version
    path = f'/console/static/{version}/conversation.js'
    async with client.get(path, headers={'Accept-Encoding': 'gzip'}, auto_decompress=False) as response:
        assert response.status == 200
        assert response.headers['Cache-Control'] == 'public, max-age=31536000, immutable'
        assert response.headers['Content-Encoding'] == 'gzip'
        assert gzip.decompress(await response.read()) == (FILES / 'conversation.js').read_bytes()
        etag = response.headers['ETag']
    async with client.get(path, headers={'If-None-Match': etag}) as response:
        assert response.status == 304
    async with client.get('/console/static/0123abcd/conversation.js', headers={'Accept-Encoding': 'identity'}) as old:
        assert old.status == 200, 'a page of the release before still gets its scripts'
        assert old.headers['Cache-Control'] == 'no-cache'
        assert 'Content-Encoding' not in old.headers
    async with client.get(f'/console/static/{version}/nothing.js') as response:
        assert response.status == 404
        assert (await response.json())['error']['code'] == 'not_found'


async def test_memsvc_console_false_removes_it(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client, console=False)
    for path in ('/console', '/console/api', f'/console/static/{ConsoleFiles.load().version}/console.js'):
        async with client.get(path) as response:
            assert response.status == 404, path


def test_the_files_parse_no_html_store_nothing_and_load_nothing_from_elsewhere() -> None:
    """Untrusted text reaches the page through textContent and text nodes only; the key stays in sessionStorage;
    nothing comes from a CDN (the one URL is the SVG namespace, which is never fetched)."""
    scripts = sorted(FILES.glob('*.js'))
    assert len(scripts) >= 8
    for script in scripts:
        text = re.sub(r'/\*.*?\*/|^\s*//.*$|^\s*\*.*$', '', script.read_text(), flags=re.DOTALL | re.MULTILINE)
        for banned in ('innerHTML', 'outerHTML', 'insertAdjacentHTML', 'document.write', 'eval(', 'Function(',
                       'localStorage', 'DOMParser', 'createContextualFragment', 'import('):  # fmt: skip
            assert banned not in text, f'{script.name} uses {banned}'
    for path in FILES.iterdir():
        if path.suffix in ('.js', '.css', '.html', '.svg'):
            urls = re.findall(r'(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}', path.read_text())
            assert set(urls) <= {'http://www.w3.org'}, (path.name, urls)


def test_the_first_paint_is_small() -> None:
    """What /console loads before it shows anything, as sent gzipped: under 100 KB (the browser test measures the
    real transfer, headers included)."""
    files = ConsoleFiles.load()
    page = files.pages['/console']
    html = page.body.decode()
    names = [reference.rsplit('/', 1)[1] for reference in ASSET.findall(html)]
    sent = [files.static[name] for name in names]
    size = len(page.gzipped or page.body) + sum(len(asset.gzipped or asset.body) for asset in sent)
    assert size < 100_000, size
    assert {'console.js', 'console.css', 'api.js', 'dom.js'} <= set(names)
