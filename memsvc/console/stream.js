// A session's event stream (GET …/sessions/{id}/events, Server-Sent Events) read with fetch: EventSource
// cannot send the Authorization header, and the key never goes into a URL.

import {CHAT, authorized, errorOf, sessionPath} from './api.js';

const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 10_000;

/**
 * Follow the stream of `sessionId` from after message `lastId` (Last-Event-ID, so that nothing written after
 * the page read the messages is missed, and nothing comes twice). After a drop it reconnects from the last
 * message id it saw. `on`: status(state, error?), message(m), change(type, data), deleted(), gone(error).
 * Answers a function that stops it.
 */
export function follow(sessionId, lastId, on) {
  const stop = new AbortController();
  let last = lastId;
  const run = async () => {
    let delay = FIRST_RETRY_MS;
    while (!stop.signal.aborted) {
      try {
        const url = new URL(sessionPath(sessionId, 'events'), CHAT);
        const headers = {'Last-Event-ID': String(last), Accept: 'text/event-stream'};
        const response = await authorized(url, {headers, signal: stop.signal});
        if (response.status === 404) return on.gone(await errorOf(response));
        if (!response.ok) throw await errorOf(response);
        on.status('live');
        delay = FIRST_RETRY_MS;
        for await (const event of events(response.body)) {
          if (event.type === 'message') {
            const message = JSON.parse(event.data);
            last = Math.max(last, message.id);
            on.message(message);
          } else if (event.type === 'deleted') {
            return on.deleted();
          } else {
            on.change(event.type, event.data ? JSON.parse(event.data) : {});
          }
        }
        on.status('reconnecting'); // the server ended the stream (a restart, a drain): resume after `last`
      } catch (error) {
        if (stop.signal.aborted) return;
        on.status('reconnecting', error);
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, LAST_RETRY_MS);
    }
  };
  run();
  return () => stop.abort();
}

/** The events of an SSE body, as {type, data}: comments skipped, `data:` lines joined, `id:` left to the data. */
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let type = '';
  let data = [];
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (type || data.length) yield {type: type || 'message', data: data.join('\n')};
          type = '';
          data = [];
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') type = text;
          else if (field === 'data') data.push(text);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
