/* The API: the key kept in sessionStorage, authenticated fetch, and RFC 7807 problems,
   whose `detail` is shown as is. */

const KEY_STORAGE = "dermasentinel.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function saveApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
  }
}

async function problemFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_ignored) {
    body = null;
  }
  if (body && (body.detail || body.title)) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return { status: response.status, title: body.title || `HTTP ${response.status}`, detail };
  }
  return { status: response.status, title: `HTTP ${response.status}`, detail: response.statusText || "the server gave no reason" };
}

export async function request(path, options = {}) {
  const key = apiKey();
  if (!key) {
    throw new ApiProblem({ status: 401, title: "No API key", detail: "Paste your API key (dsk_…) at the top of the page first." });
  }
  const headers = Object.assign({ Authorization: `Bearer ${key}` }, options.headers || {});
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    throw new ApiProblem({ status: 0, title: "Network error", detail: `The API could not be reached (${error.message}). Check your connection and try again.` });
  }
  if (!response.ok) {
    const problem = await problemFrom(response);
    if (problem.status === 401) {
      problem.detail += " — check the API key at the top of the page.";
    }
    throw new ApiProblem(problem);
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postJson(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}
