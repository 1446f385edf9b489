/* The recent analyses list (left column), newest first, with "Load more". A row with a result
   shows its disposition; from weights that are not trained it is neutral and carries the
   untrained mark. */

import { apiKey, getJson } from "./api.js";
import { $, el } from "./dom.js";
import { label, pct, when } from "./format.js";
import { showProblem } from "./problem.js";
import { state } from "./state.js";
import { dispositionClass, meaningful, untrainedMark } from "./weights.js";
import { dispositionText, loadWords } from "./words.js";

let recentCursor = null;

function recentItem(analysis) {
  const li = el("li");
  const result = analysis.result;
  // A result from weights that are not trained: neutral (no green or red) and marked.
  const neutral = Boolean(result) && !meaningful(analysis.weights);
  const button = el("button", { type: "button", "data-id": analysis.id, "data-neutral": String(neutral) });
  let what = analysis.external_id || `Analysis ${analysis.id.slice(0, 8)}`;
  if (result) what += ` — ${result.diagnosis} ${pct(result.probability)}`;
  else if (analysis.rejection) what += ` — ${label(analysis.rejection.code)}`;
  button.append(el("span", { class: "what" }, what));
  button.append(el("span", { class: neutral ? "pill pill-neutral" : `pill pill-${analysis.status}` }, analysis.status));
  if (result) {
    const outcome = el("span", { class: "outcome-line" });
    outcome.append(el("span", { class: dispositionClass(result.disposition, analysis.weights),
      "data-disposition": result.disposition || "" }, dispositionText(result.disposition)));
    const mark = untrainedMark(analysis.weights, result.notice);
    if (mark) outcome.append(mark);
    button.append(outcome);
  }
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
    await loadWords();
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
