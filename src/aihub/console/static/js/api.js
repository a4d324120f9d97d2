// The console's only way to the server: the same /api/* the rest of the world uses, same origin.
//
// Tokens live in this module's memory only: never in localStorage, sessionStorage, a cookie or
// a URL. A reload (or a new tab) therefore asks to sign in again; in exchange a script that
// some day slips past the CSP finds nothing stored to carry away, and there are no ambient
// credentials for a cross-site request to ride on (which is why no CSRF token is needed: every
// state change carries an Authorization header that only this page can set).

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || `HTTP_${status}`;
    this.details = body && body.details;
    this.requestId = body && body.requestId;
  }
}

const session = { access: null, refresh: null, me: null, timer: null, refreshing: null };
const listeners = new Set();

export function onSessionChange(fn) { listeners.add(fn); }
function changed() { for (const fn of listeners) fn(session.me); }

export function me() { return session.me; }
export function signedIn() { return session.access !== null; }

/** Whether the signed-in user holds a permission (admin's "*" holds every one). The API checks anyway. */
export function can(permission) {
  const perms = (session.me && session.me.permissions) || [];
  return perms.includes("*") || perms.includes(permission);
}

function keep(pair) {
  session.access = pair.accessToken;
  session.refresh = pair.refreshToken;
  clearTimeout(session.timer);
  // Renew a minute before expiry (or half-way through a short life) so calls rarely meet a 401.
  const lifetime = Math.max(10, Number(pair.expiresIn) || 900);
  const ahead = Math.min(60, lifetime / 2);
  session.timer = setTimeout(() => { renew().catch(() => expire()); }, (lifetime - ahead) * 1000);
}

function expire() {
  clearTimeout(session.timer);
  session.access = session.refresh = session.me = null;
  changed();
}

async function renew() {
  if (!session.refresh) throw new ApiError(401, { code: "UNAUTHORIZED", message: "Please sign in again" });
  // One renewal at a time: parallel calls that met a 401 wait for the same new pair.
  session.refreshing ||= (async () => {
    try {
      const pair = await raw("POST", "/api/auth/refresh", { body: { refreshToken: session.refresh }, auth: false });
      keep(pair);
    } finally {
      session.refreshing = null;
    }
  })();
  return session.refreshing;
}

export async function signIn(email, password) {
  const pair = await raw("POST", "/api/auth/login", { body: { email, password }, auth: false });
  keep(pair);
  session.me = await raw("GET", "/api/auth/me");
  changed();
  return session.me;
}

/** Finish Google sign-in: spend the one-time code the callback put in the console's URL. */
export async function signInWithCode(code) {
  const pair = await raw("POST", "/api/auth/oauth/exchange", { body: { code }, auth: false });
  keep(pair);
  session.me = await raw("GET", "/api/auth/me");
  changed();
  return session.me;
}

/** A call that needs no session (reset request, token pages, the console's config). */
export function publicCall(method, path, body) {
  return raw(method, path, { body, auth: false });
}

export async function signOut() {
  try {
    if (session.access) await raw("POST", "/api/auth/logout", { body: { refreshToken: session.refresh } });
  } catch (_) {
    // Signing out locally is what matters; the tokens are dropped either way.
  }
  expire();
}

function url(path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

async function raw(method, path, { body, query, auth = true, headers = {}, as = "json" } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "omit", cache: "no-store" };
  if (auth && session.access) init.headers.Authorization = `Bearer ${session.access}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON: keep the status */ }
    throw new ApiError(response.status, data);
  }
  if (as === "response") return response;
  if (response.status === 204) return null;
  if (as === "blob") return response.blob();
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

const RENEWABLE = new Set(["TOKEN_EXPIRED", "INVALID_TOKEN", "UNAUTHORIZED"]);

/** Call the API as the signed-in user; an expired access token is renewed once, transparently. */
export async function api(method, path, options = {}) {
  try {
    return await raw(method, path, options);
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401 || !RENEWABLE.has(err.code) || !session.refresh) {
      if (err instanceof ApiError && err.status === 401 && err.code !== "INVALID_CREDENTIALS") expire();
      throw err;
    }
    try {
      await renew();
    } catch (renewErr) {
      expire();
      throw renewErr;
    }
    return raw(method, path, options);
  }
}

export const get = (path, query, options = {}) => api("GET", path, { ...options, query });
export const post = (path, body, options = {}) => api("POST", path, { ...options, body });
export const put = (path, body, options = {}) => api("PUT", path, { ...options, body });
export const patch = (path, body, options = {}) => api("PATCH", path, { ...options, body });
export const del = (path, options = {}) => api("DELETE", path, options);

/** A fresh Idempotency-Key for one money-moving submission (a retry of the same click reuses it). */
export function idempotencyKey() {
  return crypto.randomUUID();
}

/** Whether an API is there at all: a 404 from the gateway or the service means "not built/configured". */
export function absent(err) {
  return err instanceof ApiError && err.status === 404 && (err.code === "NOT_FOUND" || err.code === "HTTP_404");
}

/** Fetch a file with the token (no token in the URL) and hand it to the browser as a download. */
export async function download(path, query, fallbackName) {
  const response = await api("GET", path, { query, as: "response", headers: { Accept: "*/*" } });
  if (response.status === 202) return response.json(); // a background job: the caller polls it
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  saveBlob(await response.blob(), match ? match[1] : fallbackName);
  return null;
}

export function saveBlob(blob, filename) {
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
}
