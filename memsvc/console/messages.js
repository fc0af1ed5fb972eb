// One conversation's messages as a list, kept as the API changes them. A tool result is shown next to the
// call it answers (inside the assistant message that made the call), not further down on its own.

import {h, indentJson, pretty, prettyArguments, replace, when} from './dom.js';

export class MessageList {
  /**
   * `element`: the <ol> to fill. `actions(message)`: the buttons of a message's header.
   */
  constructor(element, actions) {
    this.element = element;
    this.actions = actions;
    this.messages = new Map(); // id -> message, in id order
    this.slots = new Map(); // tool call id -> the element its result goes into
    this.coveredThrough = 0; // the summary's through_id
  }

  get lastId() {
    let last = 0;
    for (const id of this.messages.keys()) last = Math.max(last, id);
    return last;
  }

  get firstId() {
    return this.messages.size ? Math.min(...this.messages.keys()) : 0;
  }

  get size() {
    return this.messages.size;
  }

  /** Show exactly `messages` (oldest first). */
  reset(messages) {
    this.messages.clear();
    this.slots.clear();
    this.element.replaceChildren();
    for (const message of messages) this.add(message);
  }

  /** Add one message after the others; one already shown is left as it is (a stream may resend nothing twice). */
  add(message) {
    if (this.messages.has(message.id)) return;
    this.messages.set(message.id, message);
    const slot = message.role === 'tool' ? this.slots.get(message.tool_call_id) : undefined;
    if (slot && !slot.dataset.id) {
      slot.dataset.id = message.id;
      slot.classList.remove('pending');
      replace(slot, this.article(message));
      return;
    }
    this.element.append(h('li', null, this.article(message)));
  }

  /** Remove the messages `gone(message)` says, showing the rest anew. */
  removeWhere(gone) {
    this.reset([...this.messages.values()].filter((message) => !gone(message)));
  }

  /**
   * Mark the messages a summary covers (through `throughId`; 0: none): those the context window leaves out for
   * it, which are not the leading system/developer messages (always in the window).
   */
  cover(throughId) {
    this.coveredThrough = throughId;
    for (const article of this.element.querySelectorAll('article.msg')) article.classList.toggle('covered', this.covers(Number(article.dataset.id)));
  }

  covers(id) {
    if (id > this.coveredThrough) return false;
    for (const message of this.messages.values()) {
      if (message.role !== 'system' && message.role !== 'developer') return true; // past the leading run
      if (message.id === id) return false;
    }
    return true;
  }

  article(message) {
    const title = `m-${message.id}-title`;
    const covered = this.covers(message.id);
    const calls = Array.isArray(message.tool_calls) ? message.tool_calls : [];
    return h(
      'article',
      {
        class: `msg role-${message.role}${covered ? ' covered' : ''}`,
        id: `m-${message.id}`,
        'data-id': message.id,
        tabindex: 0,
        'aria-labelledby': title,
      },
      h(
        'header',
        {class: 'msg-head'},
        h('h3', {id: title}, h('span', {class: 'role'}, message.role), ' ', h('span', {class: 'msg-id'}, `#${message.id}`)),
        when(message.timestamp),
        message.name !== undefined && h('span', {class: 'badge'}, `name: ${message.name}`),
        message.tool_call_id !== undefined && h('span', {class: 'badge'}, `answers ${message.tool_call_id}`),
        h('span', {class: 'badge summarised'}, 'covered by the summary'),
        h('span', {class: 'msg-actions'}, this.actions(message)),
      ),
      message.content !== '' || !calls.length ? content(message.content, message.role === 'tool') : null,
      calls.length ? h('div', {class: 'tool-calls'}, calls.map((call) => this.toolCall(call))) : null,
      message.metadata !== undefined &&
        h('details', {class: 'meta', open: true}, h('summary', null, 'metadata'), h('pre', null, pretty(message.metadata))),
    );
  }

  toolCall(call) {
    const fn = call?.function ?? {};
    const name = fn.name ?? call?.name ?? '(no name)';
    const slot = h('div', {class: 'tool-result pending'}, h('p', {class: 'muted'}, 'no result stored for this call'));
    if (call?.id !== undefined) this.slots.set(call.id, slot);
    return h(
      'section',
      {class: 'tool-pair', 'aria-label': `tool call ${name}`},
      h(
        'div',
        {class: 'tool-call'},
        h('div', {class: 'tool-head'}, h('span', {class: 'badge call'}, 'call'), ' ', h('code', null, name), ' ', h('span', {class: 'muted'}, call?.id ?? '')),
        h('pre', {class: 'args'}, fn.arguments !== undefined ? prettyArguments(fn.arguments) : pretty(call)),
      ),
      slot,
    );
  }
}

/** A message's text; a tool result that is a JSON object or array is shown indented. */
function content(text, isResult) {
  if (text === '') return h('p', {class: 'content empty muted'}, '(no text)');
  if (typeof text !== 'string') return h('pre', {class: 'content'}, pretty(text));
  const indented = isResult && /^\s*[[{]/.test(text) ? indentJson(text) : null;
  if (indented !== null) return h('pre', {class: 'content json', title: 'indented for reading; stored as sent'}, indented);
  return h('div', {class: 'content'}, text);
}
