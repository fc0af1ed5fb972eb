"""Screenshots of the console for the README: `make screenshots` (`python -m tests.console_shots docs`) writes
docs/console-sessions.png, docs/console-conversation.png and docs/console-phone.png from a demo that it writes
into a memsvc of its own; the browser tests run the same code into a temporary directory.
"""

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from tests.browser import Api, MemsvcServer, assistant, launch_chromium, tool_call, tool_result, user

DESKTOP = ViewportSize(width=1280, height=1000)
PHONE = ViewportSize(width=390, height=844)
CONVERSATION = 'support-7f3a'
KEY_STORAGE = 'memsvc-api-key'
"""Where the console keeps the key, in the tab's sessionStorage (memsvc/console/api.js)."""
Check = Callable[[Page], None]


def seed(api: Api) -> str:
    """A few sessions, one of them a support conversation with a tool call, its result, a summary and a fork;
    answers the id of the conversation to show."""
    for n, (person, text) in enumerate([('u-311', 'Reset my password'), ('u-204', 'Which plan includes SSO?')]):
        api.create(f'chat-{n + 1}', user_id=person, channel='web')
        api.append(f'chat-{n + 1}', user(text), assistant('Sure, let me look at that.'))
    api.create(CONVERSATION, user_id='u-102', channel='app', plan='team')
    api.append(
        CONVERSATION,
        {'role': 'system', 'content': 'You are the support assistant of Acme Cloud. Be brief and exact.'},
        user('My invoice for November looks too high. Can you check it?', metadata={'locale': 'en-GB'}),
        assistant('', tool_calls=[tool_call('call_inv_11', 'get_invoice', {'customer': 'u-102', 'month': '2026-11'})]),
        tool_result('call_inv_11', '{"total": 412.80, "seats": 12, "seats_last_month": 8}'),
        assistant('Your team grew from 8 to 12 seats in November, which explains the higher total of 412.80.'),
        user('Ah, right. Can I get the invoice as a PDF?'),
    )
    api.ok(
        'PUT',
        f'sessions/{CONVERSATION}/summary',
        {'content': 'The customer asked about a high invoice.', 'through_id': 2},
    )
    api.ok('POST', f'sessions/{CONVERSATION}/fork', {'id': f'{CONVERSATION}-retry', 'through_id': 5})
    return CONVERSATION


def take(
    browser: Browser, url: str, conversation: str, out: Path, *, key: str | None = None, check: Check | None = None
) -> list[Path]:
    """The sessions view and the conversation at desktop width, and the conversation at phone width, with `key` in
    the tab's sessionStorage (for a server with keys). `check(page)` runs before each screenshot."""
    shots = [
        (out / 'console-sessions.png', DESKTOP, '/console', 'table.sessions'),
        (out / 'console-conversation.png', DESKTOP, f'/console?session={conversation}', '.tool-result article'),
        (out / 'console-phone.png', PHONE, f'/console?session={conversation}', '.tool-result article'),
    ]
    for path, viewport, page_path, ready in shots:
        context = browser.new_context(viewport=viewport, color_scheme='light')
        if key is not None:
            context.add_init_script(f'sessionStorage.setItem({KEY_STORAGE!r}, {key!r})')
        try:
            page = context.new_page()
            page.goto(url + page_path)
            page.locator(ready).first.wait_for()
            page.locator('#live[data-state="live"]').or_(page.locator('table.sessions')).first.wait_for()
            if check is not None:
                check(page)
            page.screenshot(path=str(path))
        finally:
            context.close()
    return [path for path, *_ in shots]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('out', type=Path, help='the directory to write the PNGs into')
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        server = MemsvcServer.start(Path(directory))
        try:
            conversation = seed(Api(server.url))
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for path in take(browser, server.url, conversation, out):
                    print(path)
                browser.close()
        finally:
            server.stop()


if __name__ == '__main__':
    main()
