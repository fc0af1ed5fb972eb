// Talking to the API: the key, errors, calls. The console's files hold no data and need no key; everything
// it shows comes through the API, with the key a person enters when the API answers 401. The key is kept in
// this tab's sessionStorage (gone when the tab closes; never localStorage, never in a URL) and sent in the
// Authorization header, on the event stream too.

import {keyDialog} from './dialogs.js';

const KEY = 'memsvc-api-key';
/** The site's root: this module is served at <root>console/static/<version>/api.js (a proxy may add a prefix). */
export const ROOT = new URL('../../../', import.meta.url);
/** The chat API's base, `<root>api/v1/chat/`. */
export const CHAT = new URL('api/v1/chat/', ROOT);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

let asking = null;

/** Ask for a key, once for all the requests that are waiting for one; rejects when the person cancels. */
function askForKey(refused) {
  asking ??= keyDialog(refused).then((key) => {
    asking = null;
    if (key === null) throw new ApiError(401, 'unauthorized', 'memsvc needs an API key, and none was given');
    sessionStorage.setItem(KEY, key);
  });
  return asking;
}

function withKey(headers) {
  const out = new Headers(headers);
  const key = apiKey();
  if (key) out.set('Authorization', `Bearer ${key}`);
  return out;
}

/** fetch() with the key. On 401 it asks for a key (saying the last one was refused) and sends the request again. */
export async function authorized(url, init = {}) {
  for (;;) {
    const sent = apiKey();
    let response;
    try {
      response = await fetch(url, {...init, headers: withKey(init.headers), cache: 'no-store'});
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, 'network_error', `memsvc did not answer (${error.message})`);
    }
    if (response.status !== 401) return response;
    await response.body?.cancel();
    if (apiKey() === sent) await askForKey(sent !== null); // else another request's prompt gave a new key: try it
  }
}

/** The ApiError of an answer that is not 2xx, from our JSON error body when it has one. */
export async function errorOf(response) {
  try {
    const body = await response.json();
    if (body?.error?.code) return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    // not our JSON: described by its status below
  }
  return new ApiError(response.status, `http_${response.status}`, response.statusText || 'an unexpected answer');
}

/**
 * One call of the chat API: `path` relative to /api/v1/chat/, `query` a list of [name, value] pairs (empty
 * values left out), `body` sent as JSON. Answers {data, response}; throws an ApiError for any other than 2xx.
 */
export async function call(method, path, {query, body, signal, base = CHAT} = {}) {
  const url = new URL(path, base);
  for (const [name, value] of query ?? []) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.append(name, value);
  }
  const init = {method, headers: new Headers(), signal};
  if (body !== undefined) {
    init.headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(body);
  }
  const response = await authorized(url, init);
  if (!response.ok) throw await errorOf(response);
  return {data: await response.json(), response};
}

/** `sessions/<id>/...`, the id percent-encoded. */
export function sessionPath(id, ...rest) {
  return ['sessions', encodeURIComponent(id), ...rest].join('/');
}

/** The console's own URL of a conversation (relative to /console), optionally at one message. */
export function conversationHref(id, messageId) {
  return `?session=${encodeURIComponent(id)}${messageId ? `#m-${messageId}` : ''}`;
}
