/* The batches page: the tenant's batches, newest first, with "Load more". */

import { apiKey, getJson } from "./api.js";
import { $, el } from "./dom.js";
import { when } from "./format.js";
import { showProblem } from "./problem.js";

let batchesCursor = null;

function batchItem(batch) {
  const li = el("li");
  const link = el("a", { href: `#/batches/${encodeURIComponent(batch.id)}`, class: "batch-link", "data-id": batch.id });
  link.append(el("span", { class: "what" }, batch.name || `Batch ${batch.id.slice(0, 8)}`));
  link.append(el("span", { class: `pill pill-${batch.state}` }, batch.state));
  const counts = batch.counts || {};
  const done = ["succeeded", "rejected", "failed", "canceled"].reduce((sum, s) => sum + (counts[s] || 0), 0);
  link.append(el("span", { class: "when" }, `${done} of ${batch.total} done · created ${when(batch.created_at)}`));
  li.append(link);
  return li;
}

export async function loadBatches(more = false) {
  if (!apiKey()) {
    $("batches").replaceChildren();
    $("batches-empty").hidden = false;
    $("batches-empty").textContent = "Set an API key to see this tenant's batches.";
    return;
  }
  const params = new URLSearchParams({ limit: "20" });
  if (more && batchesCursor) params.set("cursor", batchesCursor);
  let page;
  try {
    page = await getJson(`/v1/batches?${params}`);
  } catch (error) {
    showProblem(error);
    return;
  }
  if (!more) $("batches").replaceChildren();
  for (const batch of page.data) $("batches").append(batchItem(batch));
  batchesCursor = page.next_cursor;
  $("batches-more").hidden = !page.next_cursor;
  $("batches-empty").hidden = $("batches").children.length > 0;
  $("batches-empty").textContent = "No batches yet for this tenant.";
}

/** Empty the list (the key was forgotten). */
export function clearBatches() {
  $("batches").replaceChildren();
}

export function bindBatches() {
  $("refresh-batches").addEventListener("click", () => loadBatches());
  $("batches-more").addEventListener("click", () => loadBatches(true));
}
