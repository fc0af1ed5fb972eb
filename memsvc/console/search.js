// Search (`/console?view=search&q=…`): semantic search over message content, which only the Chroma store can
// do; on the others the page says so. Each hit links to its conversation at the message, marked there.

import {call, conversationHref, sessionPath} from './api.js';
import {errorBox, h, marked, replace, when} from './dom.js';

const ROLES = ['', 'system', 'developer', 'user', 'assistant', 'tool'];
const LIMIT = '20';

export async function searchView(main, params) {
  document.title = 'Search · memsvc console';
  const q = params.get('q')?.trim() ?? '';
  const sessionId = params.get('session_id')?.trim() ?? '';
  const role = params.get('role') ?? '';
  const results = h('section', {class: 'results', 'aria-label': 'Search results', 'aria-live': 'polite'});
  replace(main, h('h1', null, 'Search'), form(q, sessionId, role), results);
  const path = sessionId ? sessionPath(sessionId, 'search') : 'search';
  try {
    // Without a text, one search of one hit tells whether this server can search at all.
    const query = [['q', q || 'hello'], ['limit', q ? LIMIT : '1'], ['role', role]];
    const {data} = await call('GET', path, {query});
    if (q) replace(results, hits(data, q));
  } catch (error) {
    if (error.code !== 'not_supported') return replace(results, errorBox('The search failed:', error));
    replace(
      results,
      h(
        'p',
        {class: 'note', role: 'note'},
        h('strong', null, 'Search needs the Chroma store. '),
        'Start memsvc with MEMORY_TYPE=chroma to search messages by meaning; this server said: ',
        h('q', null, error.message),
      ),
    );
    for (const control of main.querySelectorAll('form input, form select, form button')) control.disabled = true;
  }
}

function form(q, sessionId, role) {
  return h(
    'form',
    {class: 'search', method: 'get', role: 'search', 'aria-label': 'Search the messages'},
    h('input', {type: 'hidden', name: 'view', value: 'search'}),
    h('label', {for: 'search-q'}, 'Text'),
    h('input', {id: 'search-q', type: 'search', name: 'q', value: q, required: true, maxlength: 2000}),
    h('label', {for: 'search-session'}, 'Only the session'),
    h('input', {id: 'search-session', name: 'session_id', value: sessionId, size: 14, placeholder: 'any'}),
    h('label', {for: 'search-role'}, 'Role'),
    h(
      'select',
      {id: 'search-role', name: 'role'},
      ROLES.map((name) => h('option', {value: name, selected: name === role}, name || 'any')),
    ),
    h('button', {type: 'submit', class: 'primary'}, 'Search'),
  );
}

function hits(found, q) {
  if (!found.length) return h('p', {class: 'empty'}, 'Nothing found.');
  return h(
    'ol',
    {class: 'hits'},
    found.map((hit) =>
      h(
        'li',
        null,
        h(
          'p',
          {class: 'hit-head'},
          h('a', {href: conversationHref(hit.session_id, hit.message.id), class: 'hit-link'}, `${hit.session_id} · #${hit.message.id}`),
          ' ',
          h('span', {class: 'role'}, hit.message.role),
          ' ',
          when(hit.message.timestamp),
          ' ',
          h('span', {class: 'score', title: 'score: 1 − cosine distance, higher is closer'}, `score ${hit.score.toFixed(3)}`),
        ),
        h('div', {class: 'content'}, marked(hit.message.content, q)),
      ),
    ),
  );
}
