// The public REST API, and the tab's session. The token lives in sessionStorage (this tab only,
// gone when it closes) and travels in the Authorization header, never in a URL.

const TOKEN = "sn.token";
const USER = "sn.user";
const ADMIN = "sn.admin";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN);
  },
  get userId() {
    return sessionStorage.getItem(USER);
  },
  get loggedIn() {
    return Boolean(sessionStorage.getItem(TOKEN) && sessionStorage.getItem(USER));
  },
  logIn(userId, token) {
    sessionStorage.setItem(USER, userId);
    sessionStorage.setItem(TOKEN, token);
  },
  logOut() {
    sessionStorage.removeItem(USER);
    sessionStorage.removeItem(TOKEN);
  },
  get adminToken() {
    return sessionStorage.getItem(ADMIN);
  },
  set adminToken(value) {
    if (value) sessionStorage.setItem(ADMIN, value);
    else sessionStorage.removeItem(ADMIN);
  },
};

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// Every call: JSON in, JSON out, the server's {"message"} as the error text.
export async function api(method, path, { body, token = session.token, text = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, "the server cannot be reached");
  }
  const raw = await response.text();
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = JSON.parse(raw).message || message;
    } catch {
      /* not JSON: keep the status */
    }
    if (response.status === 401 && token && token === session.token) {
      window.dispatchEvent(new CustomEvent("sn:unauthorized", { detail: message }));
    }
    throw new ApiError(response.status, message, response.headers.get("Retry-After"));
  }
  if (text) return raw;
  return raw ? JSON.parse(raw) : null;
}

export const query = (params) => new URLSearchParams(params).toString();

// Profiles are looked up by id for every author shown; one request per id per page load.
const profiles = new Map();

export function profile(userId) {
  if (!profiles.has(userId)) {
    const pending = api("GET", `/user/get/${encodeURIComponent(userId)}`).catch((error) => {
      profiles.delete(userId);
      throw error;
    });
    profiles.set(userId, pending);
  }
  return profiles.get(userId);
}

export const fullName = (user) => `${user.first_name} ${user.second_name}`;
