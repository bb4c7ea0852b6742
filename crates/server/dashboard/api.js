// The dashboard's one way to the server: the public HTTP API under /v1,
// authenticated by the session cookie the login sets.

/** An error the API answered, with its stable code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called when the API says the session is missing or over. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    code = body.error.code;
    message = body.error.message;
  } catch {
    // Not an API error body: the status says it.
  }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, code, message);
}

/** A request to the API; its JSON answer (or null for no content). */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('json') ? response.json() : response.text();
}

/**
 * The first `limit` bytes of a file the API serves, read no further (a
 * workspace's file may be of any size), and whether there was more.
 */
export async function getBytes(path, limit) {
  const response = await fetch(path, { credentials: 'same-origin' });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { bytes: concat(chunks, size), more: false };
    chunks.push(value);
    size += value.length;
    if (size > limit) {
      await reader.cancel();
      return { bytes: concat(chunks, limit), more: true };
    }
  }
}

function concat(chunks, size) {
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    const part = chunk.subarray(0, size - at);
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const del = (path) => api('DELETE', path);

/** Logs in with the server's token; throws ApiError on a wrong one. */
export async function login(token) {
  await api('POST', '/v1/session', { token });
}

export async function logout() {
  await api('DELETE', '/v1/session');
}

/** The WebSocket URL of an API path on this server. */
export function socketUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

/**
 * Calls `refresh` now, when the stream of the API's list changes
 * (`/v1/events`) opens (and opens again after a drop), and whenever one of `lists`
 * ('workspaces', 'jobs', 'nodes') changed. One refresh runs at a time;
 * changes told meanwhile make one more. Returns what stops it.
 */
export function onListChange(lists, refresh) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try {
      do {
        again = false;
        await refresh();
      } while (again);
    } finally {
      running = false;
    }
  };
  const source = new EventSource('/v1/events', { withCredentials: true });
  source.addEventListener('ready', () => {
    // Marked for whoever waits for the page to be live (its tests).
    document.body.dataset.live = 'on';
    run();
  });
  for (const list of lists) source.addEventListener(list, run);
  run();
  return () => {
    source.close();
    delete document.body.dataset.live;
  };
}
