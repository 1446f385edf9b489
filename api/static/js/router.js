/* Hash routing between the three views: #/ (and #/analyses/{id}), #/batches, #/batches/{id}.
   Leaving a view stops its polling. */

import { isPolling, open, stopPolling } from "./analysis.js";
import { openBatch, stopBatchPolling } from "./batch.js";
import { loadBatches } from "./batches.js";
import { renderCaseNav } from "./case-nav.js";
import { $ } from "./dom.js";
import { clearProblem } from "./problem.js";
import { stopQuestionPolling } from "./questions.js";
import { state } from "./state.js";

const VIEWS = ["view-analyses", "view-batches", "view-batch"];

function showView(name) {
  for (const view of VIEWS) $(view).hidden = view !== name;
  $("tab-analyses").setAttribute("aria-current", String(name === "view-analyses"));
  $("tab-batches").setAttribute("aria-current", String(name !== "view-analyses"));
  if (name !== "view-batch") stopBatchPolling();
  if (name !== "view-analyses") {
    stopPolling();
    stopQuestionPolling();
  }
}

export function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  clearProblem();
  if (parts[0] === "batches" && parts[1]) {
    showView("view-batch");
    openBatch(parts[1]);
  } else if (parts[0] === "batches") {
    showView("view-batches");
    loadBatches();
  } else {
    showView("view-analyses");
    if (parts[0] === "analyses" && parts[1]) {
      if (!state.worklist || !state.worklist.ids.includes(parts[1])) state.worklist = null;
      renderCaseNav(parts[1]);
      if (parts[1] !== state.current || !isPolling()) open(parts[1]);
      // One column on narrow screens: bring the case into view, past the upload form.
      if (window.matchMedia("(max-width: 900px)").matches) $("analysis").scrollIntoView();
    } else {
      state.worklist = null;
      renderCaseNav(null);
    }
  }
}

export function bindRouter() {
  window.addEventListener("hashchange", route);
}
