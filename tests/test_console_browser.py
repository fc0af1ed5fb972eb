"""The console in a real headless Chromium (Debian's), driven by Playwright, against real `memsvc serve`
processes: the page talks to the API as a person's browser would.

One browser for the whole module, and two servers started side by side: `in_memory` with API keys, one tenant
per test, so each test sees only its own sessions (and the tenant scoping with them); and `chroma` without
keys, for search and for the page that never asks for a key. Each test has a browser context of its own
(its own sessionStorage). The browser is module-scoped rather than session-scoped: Playwright's blocking API
keeps its event loop marked as running while a browser is open, which the suite's asyncio tests in other
modules cannot share; every browser test is in this module, so they all share the one browser.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests import console_shots
from tests.browser import Api, MemsvcServer, assistant, launch_chromium, tool_call, tool_result, user
from tests.console_shots import KEY_STORAGE

KEYS = {f'tenant-{n}': f'key-of-tenant-{n}-0123456789' for n in range(16)}
"""The keyed server's tenants: each test that uses `console` takes one of its own."""
TIMEOUT_MS = 20_000
"""How long an expectation waits for the page: generous, for a loaded 2-core machine."""


@pytest.fixture(scope='module')
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MemsvcServer]]:
    keys = ','.join(f'{tenant}={key}' for tenant, key in KEYS.items())
    started = {
        'keys': MemsvcServer(port=0, directory=tmp_path_factory.mktemp('memsvc'), env={'MEMSVC_API_KEYS': keys}),
        'chroma': MemsvcServer(
            port=0,
            directory=tmp_path_factory.mktemp('chroma'),
            env={'MEMORY_TYPE': 'chroma', 'MEMSVC_CHROMA_TIMEOUT': '60'},
        ),
    }
    try:
        for server in started.values():
            server.port = server.port or _free_port()
            server.spawn()
        for server in started.values():
            server.wait_until_answering()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _free_port() -> int:
    from tests.servers import free_port

    return free_port()


@pytest.fixture(scope='module')
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


@pytest.fixture(autouse=True)
def _patient_expectations() -> None:
    expect.set_options(timeout=TIMEOUT_MS)


class Console:
    """One test's view of the keyed server: its tenant's API client and pages opened with its key."""

    def __init__(self, server: MemsvcServer, browser: Browser, key: str) -> None:
        self.url, self.browser, self.key = server.url, browser, key
        self.api = Api(server.url, self.key)
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def page(self, path: str = '/console', *, key: str | None = '', **options: Any) -> Page:
        """A new tab (context) at `path`, holding `key` in its sessionStorage ('' this tenant's key; None none)."""
        context = self.browser.new_context(**options)
        self.contexts.append(context)
        key = self.key if key == '' else key
        if key is not None:  # as if entered before: set before the page's scripts run
            context.add_init_script(f'sessionStorage.setItem({KEY_STORAGE!r}, {key!r})')
        page = context.new_page()
        page.on('pageerror', lambda error: self.errors.append(str(error)))
        page.goto(self.url + path)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        assert self.errors == [], 'the page raised'


@pytest.fixture(scope='module')
def unused_keys() -> Iterator[str]:
    return iter(KEYS.values())


@pytest.fixture
def console(servers: dict[str, MemsvcServer], browser: Browser, unused_keys: Iterator[str]) -> Iterator[Console]:
    opened = Console(servers['keys'], browser, next(unused_keys))
    yield opened
    opened.close()


def session_ids(page: Page) -> list[str]:
    return page.locator('table.sessions a.session-link').all_inner_texts()


# --- the sessions ------------------------------------------------------------------------------


def test_the_list_shows_sessions_newest_first_and_pages(console: Console) -> None:
    for n in range(5):
        console.api.append(f'chat-{n}', *[user(f'message {i}') for i in range(n + 1)])
    page = console.page('/console?limit=2')
    expect(page.locator('table.sessions a.session-link')).to_have_text(['chat-4', 'chat-3'])
    first = page.locator('table.sessions tbody tr').first
    expect(first.locator('td[data-label="Messages"]')).to_have_text('5')
    expect(first.locator('td[data-label="Created"] time')).to_have_attribute('datetime', re.compile(r'^\d{4}-.*Z$'))
    expect(first.locator('td[data-label="Updated"] time')).to_have_attribute('datetime', re.compile(r'^\d{4}-.*Z$'))

    page.get_by_role('link', name='Next page').click()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['chat-2', 'chat-1'])
    page.get_by_role('link', name='Next page').click()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['chat-0'])
    expect(page.get_by_role('link', name='Next page')).to_have_count(0)
    page.get_by_role('link', name='First page').click()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['chat-4', 'chat-3'])

    # keyboard: the arrow keys move between the sessions, Enter opens one, at a URL of its own
    page.locator('a.session-link').first.focus()
    page.keyboard.press('ArrowDown')
    expect(page.locator('a.session-link').nth(1)).to_be_focused()
    page.keyboard.press('Enter')
    expect(page.get_by_role('heading', level=1)).to_have_text('Session chat-3')
    assert page.url == f'{console.url}/console?session=chat-3'
    again = console.page('/console?session=chat-3')  # bookmarked, or sent to a colleague
    expect(again.locator('article.msg')).to_have_count(4)


def test_a_filter_by_an_indexed_key_narrows_the_list_and_a_key_not_indexed_is_refused_visibly(
    console: Console,
) -> None:
    console.api.create('alice-old', user_id='alice')
    console.api.create('bob-1', user_id='bob')
    console.api.create('alice-new', user_id='alice')
    page = console.page()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['alice-new', 'bob-1', 'alice-old'])

    form = page.get_by_role('search', name='Filter by metadata')
    form.get_by_label('Metadata key').fill('user_id')
    form.get_by_label('is').fill('alice')
    form.get_by_role('button', name='Filter').click()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['alice-new', 'alice-old'])
    expect(page.locator('p.filters')).to_contain_text('user_id = alice')
    assert page.url.endswith('metadata.user_id=alice')  # the filter is in the URL, to bookmark; the key never
    assert console.key not in page.url
    again = console.page('/console?metadata.user_id=alice')
    expect(again.locator('table.sessions a.session-link')).to_have_text(['alice-new', 'alice-old'])

    page.get_by_role('link', name='All sessions').click()
    expect(page.locator('table.sessions a.session-link')).to_have_text(['alice-new', 'bob-1', 'alice-old'])
    assert 'metadata.' not in page.url

    form.get_by_label('Metadata key').fill('color')
    form.get_by_label('is').fill('red')
    form.get_by_role('button', name='Filter').click()
    alert = page.locator('main [role="alert"]')
    expect(alert).to_contain_text('400 invalid_parameter')
    expect(alert).to_contain_text('user_id')  # the message names the indexed keys
    expect(page.locator('table.sessions')).to_have_count(0)
    expect(form.get_by_label('Metadata key')).to_have_value('color')  # the form stays, to change the filter
    assert page.url.endswith('metadata.color=red')


# --- one conversation --------------------------------------------------------------------------


def test_a_conversation_shows_tool_calls_next_to_their_results(console: Console) -> None:
    calls = [tool_call('call_w', 'get_weather', {'city': 'Vienna'}), tool_call('call_t', 'get_time', {'tz': 'CET'})]
    console.api.append(
        'trip',
        {'role': 'system', 'content': 'You are a travel assistant.'},
        user('Weather and time in Vienna?', metadata={'client': 'web-7'}),
        assistant('', tool_calls=calls),
        tool_result('call_t', '14:05'),  # answered in the other order
        tool_result('call_w', '{"rain": "light", "celsius": 12.0}'),
        assistant('Light rain, 12 degrees, and it is 14:05.'),
    )
    console.api.ok('PUT', 'sessions/trip/summary', {'content': 'Asked about Vienna.', 'through_id': 2})
    console.api.ok('POST', 'sessions/trip/fork', {'id': 'trip-b', 'through_id': 3})
    page = console.page('/console?session=trip')

    weather = page.get_by_role('region', name='tool call get_weather')
    expect(weather.locator('.tool-call pre')).to_have_text('{\n  "city": "Vienna"\n}')
    expect(weather.locator('.tool-result article')).to_have_attribute('id', 'm-5')
    # a JSON result indented, its numbers as written (12.0, not 12)
    expect(weather.locator('.tool-result .content')).to_have_text('{\n  "rain": "light",\n  "celsius": 12.0\n}')
    clock = page.get_by_role('region', name='tool call get_time')
    expect(clock.locator('.tool-result article')).to_have_attribute('id', 'm-4')
    expect(clock.locator('.tool-result .content')).to_have_text('14:05')
    expect(page.locator('ol.messages > li')).to_have_count(4)  # the results are not shown a second time

    expect(page.locator('#m-2 details.meta pre')).to_have_text('{\n  "client": "web-7"\n}')
    expect(page.locator('#m-2 time')).to_have_attribute('datetime', re.compile(r'Z$'))
    expect(page.locator('.summary')).to_contain_text('Asked about Vienna.')
    expect(page.locator('.summary')).to_contain_text('through #2')
    expect(page.locator('article.covered')).to_have_count(1)  # #2; the system prompt stays in every window
    page.locator('#m-3').focus()  # the arrow keys move between messages, tool results included
    page.keyboard.press('ArrowDown')
    expect(page.locator('#m-5')).to_be_focused()  # get_weather's result, next to its call
    page.keyboard.press('ArrowDown')
    expect(page.locator('#m-4')).to_be_focused()
    page.keyboard.press('k')
    expect(page.locator('#m-5')).to_be_focused()

    page.goto(f'{console.url}/console?session=trip-b')
    page.locator('a.forked-from').click()
    expect(page.get_by_role('heading', level=1)).to_have_text('Session trip')
    expect(page.locator('#m-3')).to_have_class(re.compile(r'\bhit\b'))
    assert page.url.endswith('/console?session=trip#m-3')


def test_a_message_appended_through_the_api_appears_without_a_reload(console: Console) -> None:
    console.api.append('live', user('Is it raining?'), assistant('', tool_calls=[tool_call('c1', 'weather', {})]))
    page = console.page('/console?session=live')
    expect(page.locator('#live')).to_have_text('● live')
    page.evaluate('window.loadedOnce = true')

    console.api.append('live', tool_result('c1', 'sunny'), assistant('No, it is sunny.'))
    expect(page.locator('#m-4 .content')).to_have_text('No, it is sunny.')
    expect(page.get_by_role('region', name='tool call weather').locator('.tool-result .content')).to_have_text('sunny')
    console.api.ok('DELETE', 'sessions/live/messages?after=2')
    expect(page.locator('article.msg')).to_have_count(2)
    assert page.evaluate('window.loadedOnce') is True, 'the page was not reloaded'


def test_html_in_content_metadata_and_arguments_is_shown_as_text_and_runs_nothing(console: Console) -> None:
    image = '<img src=x onerror="window.pwned = 1">'
    script = '<script>window.pwned = 2</script>'
    console.api.create('hostile', note=script)
    console.api.append(
        'hostile',
        user(image, metadata={'html': script}),
        assistant('', tool_calls=[tool_call('c1', image, {'q': script})]),
        tool_result('c1', script),
    )
    console.api.ok('PUT', 'sessions/hostile/summary', {'content': image, 'through_id': 1})
    listing = console.page()
    expect(listing.locator('table.sessions code.meta-inline')).to_have_text('{"note":"' + script + '"}')
    page = console.page('/console?session=hostile')
    expect(page.locator('#m-1 .content')).to_have_text(image)
    expect(page.locator('#m-1 details.meta pre')).to_contain_text(script)
    expect(page.locator('.tool-call code')).to_have_text(image)
    expect(page.locator('.tool-call pre')).to_contain_text(script)
    expect(page.locator('#m-3 .content')).to_have_text(script)
    expect(page.locator('.summary .content')).to_have_text(image)
    for opened in (listing, page):
        assert opened.locator('main img, main script').count() == 0
        assert opened.evaluate('window.pwned') is None


def test_the_page_asks_for_the_key_and_a_wrong_one_shows_an_error(console: Console) -> None:
    console.api.create('mine')
    page = console.page(key=None)
    dialog = page.get_by_role('dialog', name='API key')
    expect(dialog).to_contain_text('needs an API key')
    dialog.get_by_label('Key').fill('not-the-key')
    dialog.get_by_label('Key').press('Enter')  # Enter sends the key (Cancel is not the form's default button)
    expect(dialog.get_by_role('alert')).to_contain_text('refused the key')  # an error, not a blank page
    dialog.get_by_label('Key').fill(console.key)
    dialog.get_by_role('button', name='Use this key').click()
    expect(page.locator('a.session-link')).to_have_text(['mine'])  # this tenant's sessions only
    assert page.evaluate(f'sessionStorage.getItem({KEY_STORAGE!r})') == console.key
    assert page.evaluate('localStorage.length') == 0
    assert console.key not in page.url

    wrong = console.page(key='stale-key')
    expect(wrong.get_by_role('dialog', name='API key').get_by_role('alert')).to_contain_text('refused the key')
    wrong.keyboard.press('Escape')
    expect(wrong.locator('main [role="alert"]')).to_contain_text('401')


# --- actions -------------------------------------------------------------------------------------


def test_delete_asks_and_then_removes_the_session(console: Console) -> None:
    console.api.append('doomed', user('bye'))
    console.api.append('kept', user('hello'))
    page = console.page('/console?session=doomed')
    page.get_by_role('button', name='Delete session…').click()
    dialog = page.get_by_role('dialog', name='Delete this session?')
    expect(dialog).to_be_visible()
    dialog.get_by_role('button', name='Cancel').click()
    expect(dialog).to_have_count(0)
    assert console.api.call('GET', 'sessions/doomed')[0] == 200, 'cancelled: nothing happened'

    page.get_by_role('button', name='Delete session…').click()
    page.get_by_role('dialog', name='Delete this session?').get_by_role('button', name='Delete session').click()
    expect(page.get_by_role('status').filter(has_text='Deleted the session')).to_be_visible()
    expect(page.locator('a.session-link')).to_have_text(['kept'])
    assert console.api.call('GET', 'sessions/doomed')[0] == 404


def test_truncate_fork_and_clear_ask_first(console: Console) -> None:
    console.api.append('draft', user('one'), assistant('two'), user('three'), assistant('four'))
    page = console.page('/console?session=draft')
    page.locator('#m-2').get_by_role('button', name='Truncate after').click()
    page.get_by_role('dialog').get_by_role('button', name='Truncate').click()
    expect(page.locator('article.msg')).to_have_count(2)
    assert [m['id'] for m in console.api.ok('GET', 'sessions/draft/messages')] == [1, 2]

    page.locator('#m-1').get_by_role('button', name='Fork here').click()
    dialog = page.get_by_role('dialog', name='Fork at message #1?')
    dialog.get_by_label('Id of the new session').fill('draft-b')
    dialog.get_by_role('button', name='Fork').click()
    expect(page.get_by_role('heading', level=1)).to_have_text('Session draft-b')
    expect(page.locator('a.forked-from')).to_have_text('draft')
    expect(page.locator('article.msg')).to_have_count(1)

    page.get_by_role('button', name='Clear messages…').click()
    page.get_by_role('dialog').get_by_role('button', name='Clear messages').click()
    expect(page.locator('article.msg')).to_have_count(0)
    assert console.api.ok('GET', 'sessions/draft-b/messages') == []
    assert len(console.api.ok('GET', 'sessions/draft/messages')) == 2


# --- search --------------------------------------------------------------------------------------


def test_search_on_chroma_finds_and_marks_the_hit_in_its_conversation(
    servers: dict[str, MemsvcServer], browser: Browser
) -> None:
    api = Api(servers['chroma'].url)  # a server without keys: the page never asks for one
    api.append('pets', user('My cat refuses to eat her dinner.'), assistant('Try another brand of food.'))
    api.append('trip', user('Hello!'), user('Which train goes from Munich to Vienna in the morning?'))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f'{servers["chroma"].url}/console?view=search&q=train+to+Vienna')
        first = page.locator('ol.hits > li').first
        expect(first.locator('a.hit-link')).to_have_text('trip · #2')
        expect(first.locator('mark')).to_have_text(['train', 'Vienna'])
        first.locator('a.hit-link').click()
        expect(page.locator('#m-2')).to_have_class(re.compile(r'\bhit\b'))
        expect(page.locator('#m-2')).to_be_focused()
        expect(page.get_by_role('dialog')).to_have_count(0)
    finally:
        context.close()


def test_search_on_another_store_says_it_needs_chroma(console: Console) -> None:
    page = console.page('/console?view=search')
    expect(page.get_by_role('note')).to_contain_text('Search needs the Chroma store')
    expect(page.get_by_role('button', name='Search')).to_be_disabled()


# --- the API reference -----------------------------------------------------------------------------


def test_the_api_reference_renders_every_operation_and_tries_one(console: Console) -> None:
    document = console.api.ok('GET', '/api/v1/openapi.json')
    operations = [
        (m, p) for p, item in document['paths'].items() for m in item if m in ('get', 'post', 'put', 'patch', 'delete')
    ]
    page = console.page('/console/api')
    expect(page.locator('section.op h3 .method')).to_have_count(len(operations))
    section = page.locator('#op-getMessage')
    expect(section.locator('h3')).to_contain_text('/api/v1/chat/sessions/{session_id}/messages/{message_id}')
    console.api.append('ref', user('from the reference'))
    section.get_by_text('Try it').click()
    section.get_by_label('session_id (path)').fill('ref')
    section.get_by_label('message_id (path)').fill('1')
    section.get_by_role('button', name='Send GET').click()
    expect(section.locator('pre.answer')).to_contain_text('200 OK')
    expect(section.locator('pre.answer')).to_contain_text('"content": "from the reference"')


# --- narrow windows, screenshots, weight -----------------------------------------------------------


def test_a_phone_width_window_reads_without_scrolling_sideways_and_the_screenshots(
    console: Console, tmp_path: Path
) -> None:
    """The screenshots of the README, made by the helper `make screenshots` runs, at desktop and phone widths."""

    def fits(page: Page) -> None:
        assert page.evaluate('document.documentElement.scrollWidth <= window.innerWidth'), page.url

    conversation = console_shots.seed(console.api)
    shots = console_shots.take(console.browser, console.url, conversation, tmp_path, key=console.key, check=fits)
    assert [path.name for path in shots] == ['console-sessions.png', 'console-conversation.png', 'console-phone.png']
    assert all(path.stat().st_size > 10_000 for path in shots)
    listing = console.page(viewport=console_shots.PHONE)
    expect(listing.locator('a.session-link')).to_have_count(4)
    fits(listing)


def test_the_first_paint_is_under_100_kb(console: Console) -> None:
    """Every byte the sessions view takes until it shows the sessions (headers included), but the API's answers."""
    console.api.append('one', user('hi'))
    sizes: dict[str, int] = {}
    context = console.browser.new_context()
    context.add_init_script(f'sessionStorage.setItem({KEY_STORAGE!r}, {console.key!r})')
    try:
        page = context.new_page()
        page.on('response', lambda response: _record(sizes, response))
        page.goto(f'{console.url}/console', wait_until='load')
        expect(page.locator('a.session-link')).to_have_text(['one'])
        assert len(sizes) >= 8, sizes
        assert sum(sizes.values()) < 100_000, sizes
    finally:
        context.close()


def _record(sizes: dict[str, int], response: Any) -> None:
    """The bytes a file of the page took, headers included (the API's answers are data, not the page)."""
    if '/api/' not in response.url:
        taken = response.request.sizes()
        sizes[response.url] = int(taken['responseHeadersSize'] + taken['responseBodySize'])
