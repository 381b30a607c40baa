// The box's JSON API: the session cookie goes along (same origin), every state change carries
// the session's CSRF token, a 401 sends the user back to the login screen, other errors are
// shown in the toast in the current language.

import { toast } from "./dom.js";
import { pickDetail, t } from "./i18n.js";

export const KIOSK = "/api/v1/kiosk";
export const SESSION = "/api/v1/session";
export const ROLES = { cashier: 1, supervisor: 2, technician: 3 };

// Who is logged in (from POST/GET /api/v1/session) and what the box is (GET bootstrap).
export const session = { user: null, role: null, csrf: null, boot: null };

let unauthorized = () => {};

export function onUnauthorized(fn) {
  unauthorized = fn;
}

export function can(role) {
  return (ROLES[session.role] || 0) >= ROLES[role];
}

export class ApiError extends Error {
  constructor(status, detail, text) {
    super(text);
    this.status = status;
    this.detail = detail;
  }
}

function errorText(status, detail) {
  const text = pickDetail(detail);
  if (text) return text;
  if (status === 404) return t("error.not_found");
  if (status >= 500) return t("error.server", { status });
  return t("error.http", { status });
}

export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, null, t("error.network"));
  }
  let data = null;
  if (res.status !== 204) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const detail = data && typeof data === "object" ? data.detail : null;
    throw new ApiError(res.status, detail, errorText(res.status, detail));
  }
  return data ?? {};
}

// A 401 ends the session on screen; anything else is said in the toast.
export function report(err) {
  if (err instanceof ApiError && err.status === 401) unauthorized(err);
  else toast(err instanceof ApiError ? err.message : t("error.unexpected"));
  if (!(err instanceof ApiError)) console.error(err);
}

// For the screens: the answer, or null once the error has been reported.
export async function act(method, path, body) {
  try {
    return await request(method, path, body);
  } catch (err) {
    report(err);
    return null;
  }
}

export const get = (path) => act("GET", KIOSK + path);
export const post = (path, body) => act("POST", KIOSK + path, body ?? {});
