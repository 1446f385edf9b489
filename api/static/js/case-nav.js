/* Previous/next through the worklist a case was opened from, above the analysis card. */

import { $ } from "./dom.js";
import { state } from "./state.js";

export function renderCaseNav(id) {
  const nav = $("case-nav");
  const list = state.worklist;
  if (!list || !id) {
    nav.hidden = true;
    return;
  }
  const index = list.ids.indexOf(id);
  nav.hidden = false;
  $("case-back").href = `#/batches/${encodeURIComponent(list.batchId)}`;
  $("case-position").textContent = `Case ${index + 1} of ${list.ids.length}`;
  $("case-prev").disabled = index <= 0;
  $("case-next").disabled = index >= list.ids.length - 1;
}

export function stepCase(step) {
  const list = state.worklist;
  if (!list || !state.current) return;
  const index = list.ids.indexOf(state.current) + step;
  if (index < 0 || index >= list.ids.length) return;
  state.cursor = index;
  location.hash = `#/analyses/${encodeURIComponent(list.ids[index])}`;
}

export function bindCaseNav() {
  $("case-prev").addEventListener("click", () => stepCase(-1));
  $("case-next").addEventListener("click", () => stepCase(1));
}
