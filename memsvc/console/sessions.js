// The sessions (`/console`): newest first, a page at a time, optionally filtered by indexed metadata keys
// (`?metadata.user_id=123`, the API's own query shape). The page's URL carries the filter and the cursor.

import {call, conversationHref} from './api.js';
import {arrowKeys, errorBox, h, replace, when} from './dom.js';

const PAGE = '25';
const FILTER = 'metadata.';

export async function sessionsView(main, params) {
  document.title = 'Sessions · memsvc console';
  const limit = params.get('limit') || PAGE;
  const filters = [...params].filter(([name]) => name.startsWith(FILTER));
  const cursor = params.get('cursor');
  const query = [['limit', limit], ['include_messages', 'false'], ['include_message_count', 'true'], ...filters];
  let answer;
  try {
    answer = await call('GET', 'sessions', {query: [...query, ['cursor', cursor]]});
  } catch (error) {
    if (error.status !== 400 || filters.length === 0) throw error;
    // a key that is not indexed (or a bad value): the refusal, with the form to change the filter
    replace(
      main,
      h('h1', null, 'Sessions'),
      h('div', {class: 'tools'}, filterForm(filters, limit), openForm()),
      errorBox('Could not filter the sessions:', error),
    );
    return;
  }
  const {data, response} = answer;
  const next = nextCursor(response.headers.get('Link'));

  const deleted = params.get('deleted');
  replace(
    main,
    h('h1', null, 'Sessions'),
    deleted && h('p', {class: 'notice', role: 'status'}, `Deleted the session “${deleted}”.`),
    h('div', {class: 'tools'}, filterForm(filters, limit), openForm()),
    filters.length > 0 && h('p', {class: 'filters'}, 'Only sessions whose metadata has ', filters.map(([name, value], i) => [i ? ' and ' : '', chip(params, name, value)])),
    data.length ? table(data, cursor, filters) : h('p', {class: 'empty'}, filters.length ? 'No session matches.' : 'No sessions yet.'),
    pager(params, cursor, next),
  );
}

/** The cursor of the next page, from the Link header (an origin-relative URL). */
function nextCursor(link) {
  const target = /<([^>]*)>\s*;\s*rel="next"/.exec(link ?? '')?.[1];
  return target ? new URL(target, location.origin).searchParams.get('cursor') : null;
}

function withParams(params, changes) {
  const out = new URLSearchParams(params);
  out.delete('deleted');
  for (const [name, value] of Object.entries(changes)) {
    if (value === null) out.delete(name);
    else out.set(name, value);
  }
  const text = out.toString();
  return text ? `?${text}` : location.pathname;
}

function table(sessions, cursor, filters) {
  const body = h(
    'tbody',
    null,
    sessions.map((session) =>
      h(
        'tr',
        null,
        h(
          'th',
          {scope: 'row', 'data-label': 'Session'},
          h('a', {class: 'session-link', href: conversationHref(session.id)}, session.id),
          session.forked_from && h('span', {class: 'badge', title: `forked from ${session.forked_from.session_id}`}, 'fork'),
        ),
        h('td', {'data-label': 'Created'}, when(session.created_at)),
        h('td', {'data-label': 'Updated'}, when(session.updated_at)),
        h('td', {'data-label': 'Messages', class: 'num'}, session.message_count ?? '—'),
        h('td', {'data-label': 'Metadata'}, h('code', {class: 'meta-inline'}, JSON.stringify(session.metadata))),
      ),
    ),
  );
  arrowKeys(body, 'a.session-link');
  const what = filters.length ? 'matching sessions' : 'sessions';
  return h(
    'table',
    {class: 'sessions'},
    h('caption', null, `${sessions.length} ${what}${cursor ? ' on this page' : ''}, the most recently updated first (arrow keys move between them)`),
    h(
      'thead',
      null,
      h('tr', null, ['Session', 'Created', 'Updated', 'Messages', 'Metadata'].map((name) => h('th', {scope: 'col'}, name))),
    ),
    body,
  );
}

function pager(params, cursor, next) {
  if (!cursor && !next) return null;
  return h(
    'nav',
    {class: 'pager', 'aria-label': 'Pages'},
    cursor && h('a', {href: withParams(params, {cursor: null}), rel: 'first'}, '« First page'),
    next && h('a', {href: withParams(params, {cursor: next}), rel: 'next'}, 'Next page »'),
  );
}

function chip(params, name, value) {
  const key = name.slice(FILTER.length);
  return h(
    'span',
    {class: 'chip'},
    h('code', null, `${key} = ${value}`),
    ' ',
    h('a', {href: withParams(params, {[name]: null, cursor: null}), 'aria-label': `remove the filter ${key}`}, '×'),
  );
}

function filterForm(filters, limit) {
  const [first] = filters;
  const key = h('input', {id: 'filter-key', name: 'key', value: first ? first[0].slice(FILTER.length) : 'user_id', required: true, size: 10});
  const value = h('input', {id: 'filter-value', name: 'value', value: first?.[1] ?? '', required: true, size: 14});
  const submit = (event) => {
    event.preventDefault();
    const out = new URLSearchParams([['limit', limit], [`${FILTER}${key.value.trim()}`, value.value]]);
    location.assign(`?${out}`);
  };
  return h(
    'form',
    {class: 'inline', role: 'search', 'aria-label': 'Filter by metadata', onsubmit: submit},
    h('label', {for: 'filter-key'}, 'Metadata key'),
    key,
    h('label', {for: 'filter-value'}, 'is'),
    value,
    h('button', {type: 'submit'}, 'Filter'),
    filters.length > 0 && h('a', {href: location.pathname}, 'All sessions'),
  );
}

function openForm() {
  const id = h('input', {id: 'open-id', name: 'session', required: true, size: 14, spellcheck: 'false'});
  return h(
    'form',
    {class: 'inline', method: 'get', 'aria-label': 'Open a session by id'},
    h('label', {for: 'open-id'}, 'Session id'),
    id,
    h('button', {type: 'submit'}, 'Open'),
  );
}
