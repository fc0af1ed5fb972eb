// The console's entry point: the view comes from the query string, so each has its own URL —
// `?session=<id>` one conversation (`#m-<id>` marks a message), `?view=search` search, otherwise the sessions.

import {conversationView} from './conversation.js';
import {errorBox, h, replace} from './dom.js';
import {searchView} from './search.js';
import {sessionsView} from './sessions.js';

const LIVE_TEXT = {live: '● live', reconnecting: 'reconnecting…'};

/** The header's live indicator (a status region: a screen reader announces its changes). */
const live = {
  element: document.getElementById('live'),
  show(state) {
    this.element.textContent = LIVE_TEXT[state] ?? '';
    this.element.dataset.state = state;
  },
};

async function start() {
  const main = document.getElementById('main');
  const params = new URLSearchParams(location.search);
  const session = params.get('session');
  const view = session !== null ? 'conversation' : params.get('view') === 'search' ? 'search' : 'sessions';
  for (const link of document.querySelectorAll('nav [data-nav]')) {
    if (link.dataset.nav === view || (view === 'conversation' && link.dataset.nav === 'sessions')) {
      link.setAttribute('aria-current', 'page');
    }
  }
  try {
    if (view === 'conversation') await conversationView(main, session, live);
    else if (view === 'search') await searchView(main, params);
    else await sessionsView(main, params);
  } catch (error) {
    const what = view === 'conversation' ? `Could not show the session “${session}”:` : 'Could not load this page:';
    replace(main, h('h1', null, 'memsvc console'), errorBox(what, error), h('p', null, h('a', {href: location.pathname}, 'All sessions')));
    if (error.status === undefined) throw error; // a bug of ours: also to the browser's console
  }
}

start();
