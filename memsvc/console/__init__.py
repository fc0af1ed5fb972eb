"""The console: web pages over the API, served from the files of this package.

`GET /console` is the console (the sessions, one conversation with `?session=<id>`, search with `?view=search`:
one page whose view comes from its query string, so every view has a URL to bookmark and send), and
`GET /console/api` the API reference, which renders the OpenAPI document. Both are plain ES modules, CSS
and an HTML shell, written by hand: nothing is built, bundled or fetched from elsewhere at run time, and
Node is needed neither to install nor to run memsvc.

The files hold no data: the page reads everything through the API, with the key a person gives it (kept in the
tab's `sessionStorage`), so they are served without a key. Every link and script reference in them is
relative, so the console also works behind a proxy that serves memsvc under a path prefix.

The files are read once, when the app is built. The scripts, styles and icon are served under
`/console/static/<version>/`, where the version is a digest of all of them, so a browser may keep them for
good (`immutable`) and a new release is a new URL; the two pages are revalidated on every load (`ETag`).
Each file is also kept gzipped, for a client that takes it.

Every answer carries the same security headers: a Content-Security-Policy that allows only this origin's
scripts and styles (no inline script or style, no `eval`, no plugins, no framing) and requires Trusted Types,
so that an assignment of a string to `innerHTML` throws instead of parsing it (the scripts never do one:
untrusted text reaches the page through `textContent` and text nodes only); `nosniff`; no referrer.
"""
