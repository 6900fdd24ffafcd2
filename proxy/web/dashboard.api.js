// The operator's API as the dashboard calls it: the admin credential, JSON calls that
// turn the proxy's error body into an exception, and the live tail read from a fetch
// stream (EventSource cannot send an Authorization header).

const KEY_STORAGE = "transcription-proxy.admin-key";

// The credential lives in sessionStorage only: it goes when the tab closes, is never
// written to localStorage, a cookie or a URL, and is sent only as a header.
export const credential = {
  get() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return ""; // storage turned off: the key lasts as long as the page
    }
  },
  set(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // nothing to do: see get()
    }
  },
};

/** A refusal or failure from the API, with the proxy's error body when it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the proxy answered ${status}`);
    this.status = status;
    this.code = error.code || error.type || null;
    this.param = error.param || null;
  }

  /** Whether the credential is what was refused (ask for another). */
  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

function headers(extra) {
  const key = credential.get();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** A query string from an object; arrays become repeated parameters, empties are left out. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(name, String(item));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Call the API: the answer's JSON (null for 204), or an ApiError. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { error: { message: `cannot reach the proxy: ${error.message}` } });
  }
  if (response.status === 204) return null;
  const document = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, document);
  return document;
}

/**
 * Follow `GET /api/logs/stream` until `signal` aborts: `onRow` gets each row written.
 * Server-sent events are parsed here: `data:` lines make an event, a blank line ends it,
 * lines starting with ":" are the server's keepalives. Resolves when the stream ends.
 */
export async function tail(params, onRow, signal) {
  const response = await fetch(`/api/logs/stream${query(params)}`, {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    const lines = buffered.split(/\r\n|\r|\n/);
    buffered = lines.pop(); // an unfinished line waits for the rest
    for (const line of lines) {
      if (line === "") {
        if (data.length) deliver(data.join("\n"), onRow);
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      // ":" comments (keepalives) and other fields are ignored.
    }
  }
}

function deliver(text, onRow) {
  let row;
  try {
    row = JSON.parse(text);
  } catch {
    return; // not a row: nothing to show
  }
  if (row && typeof row === "object") onRow(row);
}

/** The list in a listing's answer: the answer itself, or its `name` (or `data`) member. */
export function listOf(body, name) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body[name])) return body[name];
  if (body && Array.isArray(body.data)) return body.data;
  return [];
}
