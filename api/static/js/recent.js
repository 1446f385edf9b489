/* The recent analyses list (left column), newest first, with "Load more". */

import { apiKey, getJson } from "./api.js";
import { $, el } from "./dom.js";
import { label, pct, when } from "./format.js";
import { showProblem } from "./problem.js";
import { state } from "./state.js";

let recentCursor = null;

function recentItem(analysis) {
  const li = el("li");
  const button = el("button", { type: "button", "data-id": analysis.id });
  const result = analysis.result;
  let what = analysis.external_id || `Analysis ${analysis.id.slice(0, 8)}`;
  if (result) what += ` — ${result.diagnosis} ${pct(result.probability)}`;
  else if (analysis.rejection) what += ` — ${label(analysis.rejection.code)}`;
  button.append(el("span", { class: "what" }, what));
  button.append(el("span", { class: `pill pill-${analysis.status}` }, analysis.status));
  const site = analysis.inputs && analysis.inputs.site && analysis.inputs.site !== "unknown" ? ` · ${analysis.inputs.site}` : "";
  button.append(el("span", { class: "when" }, `${when(analysis.created_at)}${site}`));
  button.setAttribute("aria-current", String(analysis.id === state.current));
  button.addEventListener("click", () => {
    state.worklist = null;
    location.hash = `#/analyses/${encodeURIComponent(analysis.id)}`;
  });
  li.append(button);
  return li;
}

export async function loadRecent(more = false) {
  if (!apiKey()) return;
  const params = new URLSearchParams({ limit: "10" });
  if (more && recentCursor) params.set("cursor", recentCursor);
  let page;
  try {
    page = await getJson(`/v1/analyses?${params}`);
  } catch (error) {
    showProblem(error);
    return;
  }
  if (!more) $("recent").replaceChildren();
  for (const analysis of page.data) $("recent").append(recentItem(analysis));
  recentCursor = page.next_cursor;
  $("recent-more").hidden = !page.next_cursor;
  $("recent-empty").hidden = $("recent").children.length > 0;
  $("recent-empty").textContent = "No analyses yet for this tenant.";
}

/** Empty the list (the key was forgotten). */
export function clearRecent() {
  $("recent").replaceChildren();
  $("recent-more").hidden = true;
  $("recent-empty").hidden = false;
  $("recent-empty").textContent = "Set an API key to see this tenant's analyses.";
}

export function bindRecent() {
  $("refresh-recent").addEventListener("click", () => loadRecent());
  $("recent-more").addEventListener("click", () => loadRecent(true));
}
