// One conversation (`/console?session=<id>`): the session, its summary, its messages, live from the event
// stream, and the actions on it (fork at a message, truncate after one, clear, delete), each confirmed first.

import {ApiError, call, conversationHref, sessionPath} from './api.js';
import {confirmDialog} from './dialogs.js';
import {arrowKeys, errorBox, h, pretty, replace, when} from './dom.js';
import {MessageList} from './messages.js';
import {follow} from './stream.js';

const PAGE = 200;
const MAX_PAGES_TO_A_HIT = 50;

export async function conversationView(main, id, live) {
  document.title = `${id} · memsvc console`;
  const [session, page, summary] = await Promise.all([
    call('GET', sessionPath(id), {query: [['include_messages', 'false']]}),
    call('GET', sessionPath(id, 'messages'), {query: [['limit', PAGE]]}),
    call('GET', sessionPath(id, 'summary')).catch((error) => {
      if (error.code === 'summary_not_found') return null;
      throw error;
    }),
  ]);
  const view = new Conversation(main, session.data, live);
  view.render(page.data, summary?.data ?? null);
  await view.showHit();
  view.follow();
}

class Conversation {
  constructor(main, session, live) {
    this.main = main;
    this.session = session;
    this.id = session.id;
    this.live = live;
    this.notice = h('div', {class: 'notices', 'aria-live': 'polite'});
    this.updated = h('dd', null, when(session.updated_at));
    this.count = h('dd');
    this.summary = h('section', {class: 'summary', 'aria-labelledby': 'summary-title'});
    this.older = h('button', {type: 'button', class: 'older', onclick: () => this.loadOlder()}, 'Load older messages');
    this.list = new MessageList(h('ol', {class: 'messages', 'aria-labelledby': 'messages-title'}), (message) => [
      h('button', {type: 'button', class: 'small', onclick: () => this.truncateAfter(message)}, 'Truncate after'),
      h('button', {type: 'button', class: 'small', onclick: () => this.forkAt(message)}, 'Fork here'),
    ]);
    arrowKeys(this.list.element, 'article.msg');
  }

  render(messages, summary) {
    const session = this.session;
    const forked = session.forked_from;
    replace(
      this.main,
      h('h1', null, 'Session ', h('code', null, session.id)),
      h(
        'div',
        {class: 'overview'},
        h(
          'dl',
          {class: 'facts'},
          h('dt', null, 'Created'),
          h('dd', null, when(session.created_at)),
          h('dt', null, 'Updated'),
          this.updated,
          h('dt', null, 'Messages'),
          this.count,
          forked && [
            h('dt', null, 'Forked from'),
            h(
              'dd',
              null,
              h('a', {href: conversationHref(forked.session_id, forked.message_id), class: 'forked-from'}, forked.session_id),
              forked.message_id ? ` at message #${forked.message_id}` : ' (which had no messages)',
            ),
          ],
        ),
        h(
          'section',
          {'aria-labelledby': 'metadata-title'},
          h('h2', {id: 'metadata-title'}, 'Metadata'),
          h('pre', {class: 'meta'}, pretty(session.metadata)),
        ),
      ),
      this.summary,
      h(
        'div',
        {class: 'actions', role: 'group', 'aria-label': 'Session actions'},
        h('button', {type: 'button', onclick: () => this.forkAt(null)}, 'Fork…'),
        h('button', {type: 'button', onclick: () => this.clear()}, 'Clear messages…'),
        h('button', {type: 'button', class: 'danger', onclick: () => this.delete()}, 'Delete session…'),
      ),
      this.notice,
      h('h2', {id: 'messages-title'}, 'Messages'),
      this.older,
      this.list.element,
    );
    this.list.reset(messages);
    this.older.hidden = messages.length < PAGE;
    this.showSummary(summary);
    this.counted();
  }

  showSummary(summary) {
    this.summaryThrough = summary?.through_id ?? 0;
    this.list.cover(this.summaryThrough);
    this.summary.hidden = !summary;
    if (!summary) return replace(this.summary);
    replace(
      this.summary,
      h('h2', {id: 'summary-title'}, 'Summary'),
      h(
        'p',
        {class: 'muted'},
        'Covers the messages through ',
        h('a', {href: `#m-${summary.through_id}`}, `#${summary.through_id}`),
        ' (the context window leaves them out); updated ',
        when(summary.updated_at),
        '.',
      ),
      h('div', {class: 'content'}, summary.content),
    );
  }

  counted() {
    const more = !this.older.hidden;
    replace(this.count, more ? `the newest ${this.list.size} are shown` : String(this.list.size));
  }

  async loadOlder() {
    const {data} = await call('GET', sessionPath(this.id, 'messages'), {query: [['limit', PAGE], ['before', this.list.firstId]]});
    this.list.reset([...data, ...this.list.messages.values()]);
    this.older.hidden = data.length < PAGE;
    this.counted();
    return data.length;
  }

  /** `#m-<id>` in the URL (a search hit, a fork's origin, a link): load back to it, scroll to it, mark it. */
  async showHit() {
    const wanted = Number(/^#m-(\d+)$/.exec(location.hash)?.[1]);
    if (!wanted) return;
    for (let pages = 0; pages < MAX_PAGES_TO_A_HIT && !this.list.messages.has(wanted) && !this.older.hidden; pages++) {
      await this.loadOlder();
    }
    const target = document.getElementById(`m-${wanted}`);
    if (!target) return this.say(`Message #${wanted} is not stored in this session (any more).`);
    target.classList.add('hit');
    target.setAttribute('aria-current', 'true');
    target.scrollIntoView({block: 'center'});
    target.focus({preventScroll: true});
  }

  follow() {
    const stop = follow(this.id, this.list.lastId, {
      status: (state) => this.live.show(state),
      message: (message) => {
        const atBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
        this.list.add(message);
        replace(this.updated, when(message.timestamp));
        this.counted();
        if (atBottom) window.scrollTo({top: document.documentElement.scrollHeight});
      },
      change: (type, data) => {
        if (type === 'message_deleted') this.list.removeWhere((message) => message.id === data.id);
        else if (type === 'truncated') this.truncated(data.after);
        else if (type === 'cleared') this.cleared();
        this.counted();
      },
      deleted: () => this.gone('This session was deleted.'),
      gone: (error) => this.gone(`This session is gone (${error.code}).`),
    });
    window.addEventListener('pagehide', stop, {once: true});
    this.stop = stop;
  }

  gone(text) {
    this.live.show('');
    this.say(text);
    for (const button of this.main.querySelectorAll('button')) button.disabled = true;
  }

  say(text, role = 'status') {
    this.notice.append(h('p', {class: role === 'alert' ? 'error' : 'notice', role}, text));
  }

  truncated(after) {
    this.list.removeWhere((message) => message.id > after);
    if (this.summaryThrough > after) this.showSummary(null); // a truncation below the summary removes it
  }

  cleared() {
    this.list.reset([]);
    this.older.hidden = true;
    this.showSummary(null);
  }

  async act(what, work) {
    try {
      await work();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.notice.append(errorBox(`${what} failed:`, error));
    }
  }

  async truncateAfter(message) {
    const after = [...this.list.messages.keys()].filter((id) => id > message.id).length;
    const answer = await confirmDialog({
      title: `Remove the messages after #${message.id}?`,
      text: `The ${after} shown message(s) after #${message.id} (and any others written meanwhile) are deleted for good. Ids are never given again.`,
      confirm: 'Truncate',
      danger: true,
    });
    if (!answer) return;
    await this.act('Truncating', async () => {
      const {data} = await call('DELETE', sessionPath(this.id, 'messages'), {query: [['after', message.id]]});
      this.truncated(message.id);
      this.counted();
      this.say(`Removed ${data.deleted} message(s) after #${message.id}.`);
    });
  }

  async forkAt(message) {
    const through = message?.id ?? this.list.lastId;
    const answer = await confirmDialog({
      title: message ? `Fork at message #${message.id}?` : 'Fork this session?',
      text: `A new session gets a copy of the messages through #${through || '–'} and this session's metadata; this one stays as it is.`,
      confirm: 'Fork',
      fields: [{name: 'id', label: 'Id of the new session (empty: a new uuid)', placeholder: `${this.id}-fork`}],
    });
    if (!answer) return;
    await this.act('Forking', async () => {
      const body = message ? {through_id: message.id} : {};
      if (answer.id) body.id = answer.id;
      const {data} = await call('POST', sessionPath(this.id, 'fork'), {body, query: [['include_messages', 'false']]});
      location.assign(conversationHref(data.id));
    });
  }

  async clear() {
    const answer = await confirmDialog({
      title: 'Clear every message?',
      text: `All messages of “${this.id}” and its summary are deleted for good; the session and its metadata stay.`,
      confirm: 'Clear messages',
      danger: true,
    });
    if (!answer) return;
    await this.act('Clearing', async () => {
      await call('DELETE', sessionPath(this.id, 'messages'));
      this.cleared();
      this.counted();
    });
  }

  async delete() {
    const answer = await confirmDialog({
      title: 'Delete this session?',
      text: `“${this.id}”, its messages, summary and metadata are deleted for good.`,
      confirm: 'Delete session',
      danger: true,
    });
    if (!answer) return;
    await this.act('Deleting', async () => {
      this.stop?.();
      await call('DELETE', sessionPath(this.id));
      location.assign(`?deleted=${encodeURIComponent(this.id)}`);
    });
  }
}
