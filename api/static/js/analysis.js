/* The open analysis: open one, poll it until it is final (and until its report is ready),
   cancel it. Rendering is analysis-card.js's. */

import { getJson, request } from "./api.js";
import { FINAL, clearCard, render } from "./analysis-card.js";
import { $ } from "./dom.js";
import { resetFeedbackForm } from "./feedback.js";
import { clearProblem, showProblem } from "./problem.js";
import { loadQuestions, resetQuestions, stopQuestionPolling } from "./questions.js";
import { loadRecent } from "./recent.js";
import { state } from "./state.js";
import { loadWords } from "./words.js";

const POLL_MS = 1000;
const REPORT_POLL_MS = 2000;
const REPORT_WAIT_MS = 120000;

let pollTimer = null;
let recentLoadedFor = null; // the final analysis the recent list and questions were loaded for

export function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
}

export const isPolling = () => Boolean(pollTimer);

export async function poll(id) {
  clearTimeout(pollTimer);
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
    pollTimer = setTimeout(() => poll(id), POLL_MS);
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
