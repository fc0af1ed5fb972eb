"""The console's files as they are sent: read from this package once, each with its ETag and gzipped copy,
and the security headers of every answer (see the package's docstring)."""

import gzip
import hashlib
import posixpath
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

PAGES = {'/console': ('memsvc console', 'console.js'), '/console/api': ('memsvc API reference', 'reference.js')}
"""Each page's path, title and entry module. Both are `page.html`, the same shell; the entry module draws the
page (the console's view comes from the query string)."""
SHELL = 'page.html'
_IMPORT = re.compile(r"^import [^;]* from '\./([a-z]+\.js)';$", re.MULTILINE)
STATIC = '/console/static'
CONTENT_TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.svg': 'image/svg+xml',
}
CSP = '; '.join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    'Content-Security-Policy': CSP,
    'X-Content-Type-Options': 'nosniff',
    'X-Frame-Options': 'DENY',
    'Referrer-Policy': 'no-referrer',
    'Cross-Origin-Opener-Policy': 'same-origin',
}
FOREVER = 'public, max-age=31536000, immutable'
REVALIDATE = 'no-cache'


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as it is sent: its bytes, gzipped too when that is smaller, and its ETag."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> 'Asset':
        packed = gzip.compress(body, 9, mtime=0)
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        return cls(body, packed if len(packed) < len(body) else None, content_type, etag)

    def response(self, request: web.Request, cache_control: str) -> web.Response:
        headers = {**SECURITY_HEADERS, 'Cache-Control': cache_control, 'ETag': self.etag}
        if self.gzipped is not None:
            headers['Vary'] = 'Accept-Encoding'
        if self.etag in request.headers.get('If-None-Match', ''):
            return web.Response(status=304, headers=headers)
        headers['Content-Type'] = self.content_type
        if self.gzipped is not None and _takes_gzip(request.headers.get('Accept-Encoding', '')):
            headers['Content-Encoding'] = 'gzip'
            return web.Response(body=self.gzipped, headers=headers)
        return web.Response(body=self.body, headers=headers)


def _takes_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.lower().split(','):
        coding, _, params = part.partition(';')
        if coding.strip() in ('gzip', '*'):
            return params.replace(' ', '') not in ('q=0', 'q=0.0', 'q=0.00', 'q=0.000')
    return False


@dataclass(frozen=True, slots=True)
class ConsoleFiles:
    """The pages by path and the static files by name, with the version their URLs carry."""

    pages: dict[str, Asset]
    static: dict[str, Asset]
    version: str

    @classmethod
    def load(cls) -> 'ConsoleFiles':
        """Read the files of this package. In each page, `%STATIC%` becomes the relative URL of the static files
        and `%ROOT%` that of the site's root (`/`), as seen from the page's own path."""
        package = resources.files('memsvc.console')
        found = {}
        for file in package.iterdir():
            suffix = posixpath.splitext(file.name)[1]
            if suffix in CONTENT_TYPES and suffix != '.html':
                found[file.name] = file.read_bytes()
        digest = hashlib.sha256()
        for name in sorted(found):
            digest.update(name.encode() + b'\0' + found[name] + b'\0')
        version = digest.hexdigest()[:12]
        static = {name: Asset.of(body, CONTENT_TYPES[posixpath.splitext(name)[1]]) for name, body in found.items()}
        shell = (package / SHELL).read_text(encoding='utf-8')
        pages = {}
        for path, (title, entry) in PAGES.items():
            imported = _imported(entry, found)
            preloads = ''.join(f'<link rel="modulepreload" href="%STATIC%/{name}">\n' for name in imported)
            html = shell.replace('%TITLE%', title).replace('%ENTRY%', entry).replace('%PRELOADS%\n', preloads)
            base = posixpath.dirname(path) or '/'
            html = html.replace('%STATIC%', posixpath.relpath(f'{STATIC}/{version}', base))
            html = html.replace('%ROOT%', posixpath.relpath('/', base))
            pages[path] = Asset.of(html.encode(), CONTENT_TYPES['.html'])
        return cls(pages, static, version)


def _imported(entry: str, sources: dict[str, bytes]) -> list[str]:
    """The modules `entry` imports, directly or not, in the order a browser meets them: each is preloaded with
    the page, so the imports do not wait for one another."""
    found: list[str] = []

    def visit(name: str) -> None:
        for imported in _IMPORT.findall(sources[name].decode()):
            if imported not in found:
                found.append(imported)
                visit(imported)

    visit(entry)
    return found
