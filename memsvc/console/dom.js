// Building the page. Everything the API answers is untrusted (message content, metadata, tool arguments,
// summaries): it reaches the DOM only as text nodes or through textContent, never as HTML. Nothing in the
// console parses HTML, and the page's Content-Security-Policy requires Trusted Types, so an innerHTML
// assignment would throw rather than parse.

/**
 * An element: `h('a', {href: '?x', class: 'k'}, 'text', child)`. Attributes named `on<event>` become
 * listeners, `text` sets textContent; children are nodes or strings (strings become text nodes).
 */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'text') element.textContent = String(value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

/** Append nodes and strings (as text) to `element`, skipping null, undefined and false. */
export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** Replace the children of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

/** A timestamp as the API gives it (RFC 3339, UTC), shown in UTC to the second. */
export function when(iso) {
  if (!iso) return h('span', {class: 'muted'}, '—');
  const shown = String(iso).replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC');
  return h('time', {datetime: iso, title: iso}, shown);
}

/** A JSON value, indented, as text. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

const JSON_TOKEN = /"(?:[^"\\]|\\.)*"|[{}[\],:]|[^\s{}[\],:"]+/g;

/**
 * JSON text indented, every string and number kept as written (parsing and writing it again would turn 412.80
 * into 412.8 and round integers past 2^53); null when `text` is not JSON. For tool arguments and results.
 */
export function indentJson(text) {
  try {
    JSON.parse(text);
  } catch {
    return null;
  }
  let out = '';
  let depth = 0;
  const line = () => `\n${'  '.repeat(depth)}`;
  const tokens = text.match(JSON_TOKEN) ?? [];
  tokens.forEach((token, index) => {
    const next = tokens[index + 1];
    if (token === '{' || token === '[') {
      const empty = next === (token === '{' ? '}' : ']');
      depth += 1;
      out += token + (empty ? '' : line());
    } else if (token === '}' || token === ']') {
      depth -= 1;
      const empty = tokens[index - 1] === (token === '}' ? '{' : '[');
      out += (empty ? '' : line()) + token;
    } else if (token === ',') out += `,${line()}`;
    else if (token === ':') out += ': ';
    else out += token;
  });
  return out;
}

/** A tool call's arguments (a JSON string by the API's shape) indented when they are JSON, as sent otherwise. */
export function prettyArguments(text) {
  if (typeof text !== 'string') return pretty(text);
  return indentJson(text) ?? text;
}

/** `text` with the words of `query` (3 characters or more) marked, as text nodes and <mark> elements. */
export function marked(text, query) {
  const words = (query.match(/[\p{L}\p{N}]{3,}/gu) ?? []).map((word) => word.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  if (!words.length) return [text];
  const parts = String(text).split(new RegExp(`(${words.join('|')})`, 'giu'));
  return parts.map((part, index) => (index % 2 ? h('mark', null, part) : part)).filter((part) => part !== '');
}

/**
 * Arrow keys (and Home, End, j, k) move the focus between the elements of `container` that match
 * `selector`, as a list's items: keyboard navigation between sessions and between messages.
 */
export function arrowKeys(container, selector) {
  container.addEventListener('keydown', (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest('input, textarea, select, [contenteditable]')) return;
    const items = [...container.querySelectorAll(selector)];
    const at = items.indexOf(event.target.closest(selector));
    const step = {ArrowDown: 1, j: 1, ArrowUp: -1, k: -1}[event.key];
    let next;
    if (step !== undefined) next = at < 0 ? 0 : Math.min(Math.max(at + step, 0), items.length - 1);
    else if (event.key === 'Home') next = 0;
    else if (event.key === 'End') next = items.length - 1;
    else return;
    if (!items[next]) return;
    event.preventDefault();
    items[next].focus();
  });
}

/** An error alert: what failed, the API's code and its message (or the network's). */
export function errorBox(what, error) {
  const detail = error?.code ? `${error.status} ${error.code}: ${error.message}` : String(error?.message ?? error);
  return h('div', {class: 'error', role: 'alert'}, h('strong', null, what), ' ', detail);
}
