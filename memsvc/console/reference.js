// The API reference (`/console/api`): the OpenAPI document this server serves (`/api/v1/openapi.json`, read
// with the key like any other call), every operation with its parameters, body and answers, the schemas,
// and a "try it" form per operation that sends a real request from this tab.

import {ROOT, authorized, errorOf} from './api.js';
import {errorBox, h, indentJson, pretty, replace} from './dom.js';
import {componentAnchor, example, schemaView} from './schema.js';

const METHODS = ['get', 'post', 'put', 'patch', 'delete'];
const GROUPS = [
  ['/api/v1/chat', 'Chat API, under /api/v1/chat'],
  ['/v1', "OpenAI's Conversations API, under /v1"],
  ['', 'Operations'],
];

function group(path) {
  return GROUPS.find(([prefix]) => path.startsWith(`${prefix}/`))?.[0] ?? '';
}
const SHOWN_HEADERS = ['content-type', 'etag', 'location', 'link', 'retry-after', 'x-request-id'];
const STREAM_READ_MS = 3000;
const MAX_SHOWN_CHARS = 200_000;

async function start() {
  const main = document.getElementById('main');
  document.querySelector('nav [data-nav="api"]').setAttribute('aria-current', 'page');
  try {
    const response = await authorized(new URL('api/v1/openapi.json', ROOT));
    if (!response.ok) throw await errorOf(response);
    render(main, await response.json());
  } catch (error) {
    replace(main, h('h1', null, 'API reference'), errorBox('Could not read the OpenAPI document:', error));
    if (error.status === undefined) throw error;
  }
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

function operations(spec) {
  const found = [];
  for (const [path, item] of Object.entries(spec.paths ?? {})) {
    for (const method of METHODS) if (item[method]) found.push({path, method, operation: item[method]});
  }
  return found;
}

function render(main, spec) {
  const ops = operations(spec);
  const components = spec.components?.schemas ?? {};
  const filter = h('input', {id: 'op-filter', type: 'search', placeholder: 'path or words', oninput: () => narrow(filter.value)});
  const sections = ops.map((op) => operationView(op, components, spec));
  const toc = h(
    'nav',
    {class: 'toc', 'aria-label': 'Operations'},
    h('label', {for: 'op-filter'}, 'Filter'),
    ' ',
    filter,
    GROUPS.map(([prefix, title]) => {
      const members = ops.map((op, index) => [op, index]).filter(([op]) => group(op.path) === prefix);
      if (!members.length) return null;
      return [
        h('h2', {class: 'small'}, title),
        h('ul', null, members.map(([op, index]) => h('li', {'data-op': index}, h('a', {href: `#${anchor(op)}`}, h('span', {class: `method ${op.method}`}, op.method.toUpperCase()), ' ', op.path.slice(prefix.length) || '/')))),
      ];
    }),
    h('p', null, h('a', {href: '#schemas'}, 'Schemas')),
  );
  const narrow = (text) => {
    const words = text.toLowerCase().split(/\s+/).filter(Boolean);
    ops.forEach((op, index) => {
      const haystack = `${op.method} ${op.path} ${op.operation.summary ?? ''} ${op.operation.operationId ?? ''}`.toLowerCase();
      const shown = words.every((word) => haystack.includes(word));
      sections[index].hidden = !shown;
      toc.querySelector(`[data-op="${index}"]`).hidden = !shown;
    });
  };
  const info = spec.info ?? {};
  replace(
    main,
    h('h1', null, `${info.title ?? 'API'} ${info.version ?? ''} — API reference`),
    h('p', null, info.description ?? '', ' ', `OpenAPI ${spec.openapi}: ${ops.length} operations. `, h('a', {href: '../api/v1/openapi.json'}, 'The document as JSON'), ' (it needs the key too).'),
    spec.security?.length ? h('p', {class: 'note'}, 'Operations need Authorization: Bearer <key> unless marked “no key”; “try it” sends the key this tab holds.') : null,
    h(
      'div',
      {class: 'ref'},
      toc,
      h(
        'div',
        null,
        sections,
        h(
          'section',
          {id: 'schemas', 'aria-labelledby': 'schemas-title'},
          h('h2', {id: 'schemas-title'}, 'Schemas'),
          Object.entries(components).map(([name, schema]) =>
            h('section', {class: 'op', id: componentAnchor(name), 'aria-label': `schema ${name}`}, h('h3', null, name), h('div', {class: 'schema'}, schemaView(schema))),
          ),
        ),
      ),
    ),
  );
}

function anchor(op) {
  return `op-${op.operation.operationId ?? `${op.method}-${op.path}`}`;
}

function operationView(op, components, spec) {
  const {path, method, operation} = op;
  const open = Array.isArray(operation.security) && operation.security.length === 0 && spec.security?.length;
  const params = operation.parameters ?? [];
  const body = operation.requestBody?.content?.['application/json']?.schema;
  const title = `${anchor(op)}-title`;
  return h(
    'section',
    {class: 'op', id: anchor(op), 'aria-labelledby': title},
    h('h3', {id: title}, h('span', {class: `method ${method}`}, method.toUpperCase()), h('code', null, path), open && h('span', {class: 'badge'}, 'no key')),
    h('p', null, operation.summary ?? ''),
    operation.description && h('p', {class: 'muted content'}, operation.description),
    params.length > 0 && [
      h('h4', null, 'Parameters'),
      h(
        'table',
        {class: 'params'},
        h('thead', null, h('tr', null, ['Name', 'In', 'Schema', 'Description'].map((name) => h('th', {scope: 'col'}, name)))),
        h(
          'tbody',
          null,
          params.map((param) =>
            h(
              'tr',
              null,
              h('td', {'data-label': 'Name'}, h('code', null, param.name), param.required ? h('strong', {title: 'required'}, '*') : ''),
              h('td', {'data-label': 'In'}, param.in),
              h('td', {'data-label': 'Schema', class: 'schema'}, schemaView(param.schema)),
              h('td', {'data-label': 'Description'}, param.description ?? ''),
            ),
          ),
        ),
      ),
    ],
    body && [h('h4', null, operation.requestBody.required ? 'Body (JSON)' : 'Body (JSON, optional)'), h('div', {class: 'schema'}, schemaView(body))],
    h('h4', null, 'Answers'),
    h(
      'ul',
      {class: 'answers'},
      Object.entries(operation.responses ?? {}).map(([status, reply]) => {
        const [type, content] = Object.entries(reply.content ?? {})[0] ?? [];
        return h('li', null, h('strong', null, status), ` ${reply.description ?? ''}`, type ? h('span', {class: 'muted'}, ` (${type})`) : '', content?.schema && Number(status) < 400 ? h('div', {class: 'schema'}, schemaView(content.schema)) : '');
      }),
    ),
    tryIt(op, body, components),
  );
}

function tryIt(op, bodySchema, components) {
  const {path, method, operation} = op;
  const id = anchor(op);
  const params = (operation.parameters ?? []).filter((param) => ['path', 'query', 'header'].includes(param.in));
  const inputs = params.map((param) => h('input', {id: `${id}-${param.in}-${param.name}`, name: param.name, required: param.in === 'path', placeholder: param.schema?.default !== undefined ? String(param.schema.default) : ''}));
  const body = bodySchema && h('textarea', {id: `${id}-body`, rows: 6, spellcheck: 'false'});
  if (body) body.value = pretty(example(bodySchema, components) ?? {});
  const output = h('pre', {class: 'answer', 'aria-live': 'polite'});
  output.hidden = true;
  const send = async (event) => {
    event.preventDefault();
    output.hidden = false;
    output.textContent = 'Sending…';
    let target = path;
    const url = new URL('.', ROOT);
    const headers = new Headers();
    params.forEach((param, index) => {
      const value = inputs[index].value;
      if (param.in === 'path') target = target.replace(`{${param.name}}`, encodeURIComponent(value));
      else if (value === '') return;
      else if (param.in === 'query') url.searchParams.append(param.name, value);
      else headers.set(param.name, value);
    });
    url.pathname = new URL(target.replace(/^\//, ''), ROOT).pathname;
    const init = {method: method.toUpperCase(), headers};
    if (body && body.value.trim()) {
      headers.set('Content-Type', 'application/json');
      init.body = body.value;
    }
    output.textContent = await exchange(url, init);
  };
  return h(
    'details',
    {class: 'try'},
    h('summary', null, 'Try it'),
    h(
      'form',
      {onsubmit: send, 'aria-label': `Try ${method.toUpperCase()} ${path}`},
      params.map((param, index) => [h('label', {for: inputs[index].id}, `${param.name} (${param.in})`), inputs[index]]),
      body && [h('label', {for: body.id, class: 'full'}, 'Body'), h('div', {class: 'full'}, body)],
      h('div', {class: 'full'}, h('button', {type: 'submit', class: 'primary'}, `Send ${method.toUpperCase()}`)),
    ),
    output,
  );
}

/** Send one request and describe its answer as text: status, the telling headers, the body (JSON indented). */
async function exchange(url, init) {
  const stop = new AbortController();
  let response;
  try {
    response = await authorized(url, {...init, signal: stop.signal});
  } catch (error) {
    return `no answer: ${error.message}`;
  }
  const lines = [`${response.status} ${response.statusText}`];
  for (const name of SHOWN_HEADERS) if (response.headers.has(name)) lines.push(`${name}: ${response.headers.get(name)}`);
  let text = '';
  if ((response.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    setTimeout(() => stop.abort(), STREAM_READ_MS); // a stream does not end: show what its first seconds bring
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        text += value;
      }
    } catch {
      text += `\n(stopped reading after ${STREAM_READ_MS / 1000} s)`;
    }
  } else {
    text = await response.text();
    text = indentJson(text) ?? text; // not JSON: shown as it came
  }
  if (text.length > MAX_SHOWN_CHARS) text = `${text.slice(0, MAX_SHOWN_CHARS)}\n… (${text.length - MAX_SHOWN_CHARS} more characters)`;
  return `${lines.join('\n')}\n\n${text}`;
}

start();
