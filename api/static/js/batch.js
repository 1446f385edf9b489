/* One batch's page: progress, ETA, counts per status and per disposition, weights warning and
   equity summary, followed live until the batch ends (its event stream; polling if the stream
   cannot be had). The worklist below it is worklist.js's. */

import { getJson } from "./api.js";
import { $, el } from "./dom.js";
import { duration, num, pct, when } from "./format.js";
import { follow } from "./live.js";
import { showProblem } from "./problem.js";
import { state } from "./state.js";
import { meaningful, untrainedMark } from "./weights.js";
import { dispositionOrder, dispositionText, loadWords } from "./words.js";
import { clearWorklist, renderWorklist } from "./worklist.js";

const BATCH_POLL_MS = 3000;
// While the stream reports progress, the items (worklist, summary) are read again at most this often.
const ITEMS_REFRESH_MS = 3000;

let batchTimer = null;
let stopLive = null; // ends the open batch's event stream, while one is followed
let pollOnlyFor = null; // a batch whose event stream could not be had: polled instead

export function stopBatchPolling() {
  clearTimeout(batchTimer);
  batchTimer = null;
  if (stopLive) stopLive();
  stopLive = null;
}

/** Progress as the API streams it: the header at once, the items at most every few seconds. */
function followBatch(id) {
  const page = $("view-batch");
  page.dataset.live = "sse";
  stopLive = follow(`/v1/batches/${encodeURIComponent(id)}/events`, {
    onEvent: (type, data, eventId) => {
      if (type !== "progress" || !state.batch || state.batch.id !== id || page.hidden) return;
      page.dataset.eventId = eventId;
      state.batch.header = data;
      renderBatch();
      if (data.final) {
        stopBatchPolling();
        refreshBatch(id);
      } else if (!batchTimer) {
        batchTimer = setTimeout(() => {
          batchTimer = null;
          refreshBatch(id);
        }, ITEMS_REFRESH_MS);
      }
    },
    onFail: () => {
      stopLive = null;
      pollOnlyFor = id;
      page.dataset.live = "polling";
      if (state.batch && state.batch.id === id) refreshBatch(id);
    },
  });
}

export async function openBatch(id) {
  stopBatchPolling();
  if (!state.batch || state.batch.id !== id) {
    state.batch = { id, header: null, items: [], summary: null };
    state.cursor = 0;
    state.filter = "all";
    clearWorklist();
    $("batch-heading").textContent = "Batch";
  }
  await refreshBatch(id, true);
}

/** No batch open (the key was forgotten). */
export function closeBatch() {
  stopBatchPolling();
  state.batch = null;
  clearWorklist();
}

// How a sealed batch ends (the API's `state`): polling stops at any of them.
const FINAL_STATES = new Set(["completed", "canceled", "expired"]);

async function refreshBatch(id, focus = false) {
  let body;
  try {
    await loadWords();
    body = await getJson(`/v1/batches/${encodeURIComponent(id)}/results?format=json&order=risk`);
  } catch (error) {
    showProblem(error);
    return;
  }
  if (!state.batch || state.batch.id !== id || $("view-batch").hidden) return;
  state.batch.header = body.batch;
  state.batch.items = body.items;
  state.batch.summary = body.summary;
  renderBatch();
  if (focus) $("worklist").focus({ preventScroll: true });
  if (!FINAL_STATES.has(body.batch.state)) {
    if (pollOnlyFor === id) batchTimer = setTimeout(() => refreshBatch(id), BATCH_POLL_MS);
    else if (!stopLive) followBatch(id);
  }
}

function batchNeutral() {
  // Any item whose weights are not "trained" makes the ranking not meaningful for it.
  return (state.batch.items || []).some((item) => item.status === "succeeded" && !meaningful(item.weights));
}

/** Succeeded results per disposition, most urgent first; neutral and marked when any result
    came from weights that are not trained. */
function renderDispositionCounts(dispositions, neutral) {
  const list = $("batch-dispositions");
  list.replaceChildren();
  list.dataset.neutral = String(neutral);
  for (const code of dispositionOrder()) {
    const n = dispositions[code] || 0;
    if (!n) continue;
    list.append(el("dt", { class: neutral ? "disp disp-neutral" : `disp disp-${code}`, "data-disposition": code },
      dispositionText(code)));
    list.append(el("dd", { "data-disposition": code }, String(n)));
  }
  if (neutral && list.children.length) {
    const weights = (state.batch.items || []).find((item) => item.status === "succeeded" && !meaningful(item.weights));
    list.append(untrainedMark(weights ? weights.weights : null));
  }
  list.hidden = list.children.length === 0;
}

function renderBatch() {
  const { header, summary } = state.batch;
  $("batch-heading").textContent = header.name || `Batch ${header.id.slice(0, 8)}`;
  const percent = Math.round(header.percent_done || 0);
  $("batch-progress-fill").style.width = `${percent}%`;
  $("batch-progressbar").setAttribute("aria-valuenow", String(percent));
  // Issue 25: a canceled or expired batch is not "done": its canceled items never ran.
  const canceled = (header.counts || {}).canceled || 0;
  const ran = header.done - canceled;
  $("batch-progress-text").textContent = header.state === "canceled" || header.state === "expired"
    ? `${ran} of ${header.total} analysed, ${canceled} canceled · ${header.state}`
    : `${header.done} of ${header.total} done (${percent}%) · ${header.state}`;
  $("batch-progress-text").dataset.state = header.state;
  const eta = duration(header.eta_seconds);
  const rate = header.throughput_per_minute ? ` · ${num(header.throughput_per_minute, 1)} per minute` : "";
  $("batch-eta").textContent = header.state === "canceled"
    ? `Canceled${header.canceled_at ? ` ${when(header.canceled_at)}` : ""}: ${canceled} unfinished items were canceled and not analysed.`
    : header.state === "expired"
      ? `Expired: its deadline${header.deadline_at ? ` (${when(header.deadline_at)})` : ""} canceled ${canceled} unfinished items; they were not analysed.`
      : header.state === "completed" || header.eta_seconds === 0
        ? `All items finished${header.completed_at ? ` ${when(header.completed_at)}` : ""}.`
        : eta ? `About ${eta} left (ETA ${when(header.eta_at)})${rate}.` : "ETA not known yet: nothing has finished in the last minutes.";
  const neutral = batchNeutral();
  const counts = $("batch-counts");
  counts.replaceChildren();
  for (const [status, n] of Object.entries(header.counts || {})) {
    if (!n) continue;
    // Results from weights that are not trained are no success to colour green.
    const pill = status === "succeeded" && neutral ? "pill pill-neutral" : `pill pill-${status}`;
    counts.append(el("dt", { class: pill }, status));
    counts.append(el("dd", {}, String(n)));
  }
  renderDispositionCounts(summary.dispositions || header.dispositions || {}, neutral);

  const banner = $("batch-weights");
  const warning = summary.weights_warning || (neutral ? "Results in this batch come from weights that are not trained: the risk order is not clinically meaningful." : null);
  banner.hidden = !warning;
  banner.textContent = warning ? `${warning} · NOT FOR CLINICAL USE` : "";

  const tbody = $("equity-table").querySelector("tbody");
  tbody.replaceChildren();
  for (const group of summary.equity || []) {
    const tr = el("tr", { "data-group": group.skin_group });
    tr.append(el("th", { scope: "row" }, group.skin_group));
    tr.append(el("td", {}, String(group.items)));
    tr.append(el("td", {}, `${group.high_risk} (${pct(group.high_risk_share)})`));
    tr.append(el("td", {}, `${group.suspicious} (${pct(group.suspicious_share)})`));
    tr.append(el("td", {}, String(group.needs_review)));
    tr.append(el("td", {}, group.bias_warning ? "Yes" : "No"));
    tbody.append(tr);
  }
  $("equity-empty").hidden = (summary.equity || []).length > 0;
  $("review-rule").textContent = summary.review_rule ? `Review rule: ${summary.review_rule}.` : "";
  renderWorklist();
}
