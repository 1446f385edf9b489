/* The open analysis: open one, follow its progress live until it is final (its event stream;
   polling if the stream cannot be had), then poll until its report is ready; cancel it.
   Rendering is analysis-card.js's. */

import { getJson, request } from "./api.js";
import { FINAL, clearCard, render } from "./analysis-card.js";
import { $ } from "./dom.js";
import { resetFeedbackForm } from "./feedback.js";
import { follow } from "./live.js";
import { clearProblem, showProblem } from "./problem.js";
import { loadQuestions, resetQuestions, stopQuestionPolling } from "./questions.js";
import { loadRecent } from "./recent.js";
import { state } from "./state.js";
import { loadWords } from "./words.js";

const POLL_MS = 1000;
const REPORT_POLL_MS = 2000;
const REPORT_WAIT_MS = 120000;

let pollTimer = null;
let stopLive = null; // ends the open analysis' event stream, while one is followed
let pollOnlyFor = null; // an analysis whose event stream could not be had: polled instead
let recentLoadedFor = null; // the final analysis the recent list and questions were loaded for

export function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
  if (stopLive) stopLive();
  stopLive = null;
}

export const isPolling = () => Boolean(pollTimer || stopLive);

const LIVE_RANK = { queued: 0, processing: 1, final: 2 };

/** Each state change as the API streams it; the final one is read in full with GET. */
function followLive(id, shown) {
  const body = $("analysis-body");
  let current = shown;
  // The stream starts with the whole history; what came before the state already shown is
  // not news (showing it would walk the page back, e.g. processing -> queued -> processing).
  let caughtUp = false;
  body.dataset.live = "sse";
  stopLive = follow(`/v1/analyses/${encodeURIComponent(id)}/events`, {
    onEvent: (type, data, eventId) => {
      if (state.current !== id || type !== "state") return;
      body.dataset.eventId = eventId;
      if (data.final) {
        stopPolling();
        poll(id);
        return;
      }
      if (!caughtUp) {
        const rank = (status) => LIVE_RANK[status] ?? LIVE_RANK.final;
        if (data.status === shown.status && (data.stage || null) === (shown.stage || null)) {
          caughtUp = true;
          return;
        }
        if (rank(data.status) <= rank(shown.status)) return;
        caughtUp = true;
      }
      current = Object.assign({}, current, { status: data.status, stage: data.stage });
      if (data.status === "processing" && !current.started_at) current.started_at = data.at;
      render(current);
    },
    onFail: () => {
      stopLive = null;
      pollOnlyFor = id;
      body.dataset.live = "polling";
      if (state.current === id) poll(id);
    },
  });
}

export async function poll(id) {
  clearTimeout(pollTimer);
  pollTimer = null;
  let analysis;
  try {
    await loadWords();
    analysis = await getJson(`/v1/analyses/${encodeURIComponent(id)}`);
  } catch (error) {
    if (state.current === id) showProblem(error);
    return;
  }
  if (state.current !== id) return;
  render(analysis);
  const waitingForReport = analysis.status === "succeeded" && !(analysis.report && analysis.report.ready)
    && Date.now() < state.reportDeadline;
  if (!FINAL.has(analysis.status)) {
    if (pollOnlyFor === id) pollTimer = setTimeout(() => poll(id), POLL_MS);
    else if (!stopLive) followLive(id, analysis);
  } else {
    if (recentLoadedFor !== id) {
      recentLoadedFor = id;
      loadRecent();
      loadQuestions(id);
    }
    pollTimer = waitingForReport ? setTimeout(() => poll(id), REPORT_POLL_MS) : null;
  }
}

export function open(id) {
  stopPolling();
  clearProblem();
  resetQuestions();
  state.current = id;
  state.reportDeadline = Date.now() + REPORT_WAIT_MS;
  recentLoadedFor = null;
  resetFeedbackForm();
  poll(id);
}

/** No analysis open (the key was forgotten). */
export function closeAnalysis() {
  stopPolling();
  stopQuestionPolling();
  state.current = null;
  clearCard();
}

export function bindAnalysis() {
  $("cancel").addEventListener("click", async () => {
    if (!state.current) return;
    try {
      const analysis = await (await request(`/v1/analyses/${encodeURIComponent(state.current)}/cancel`, { method: "POST" })).json();
      render(analysis);
      loadRecent();
    } catch (error) {
      showProblem(error);
    }
  });
}
