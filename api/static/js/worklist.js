/* The open batch's worklist, in the API's triage order: grouped by disposition (urgent
   referral, clinician review, routine, then none), highest risk first within a group. Filters,
   a keyboard cursor, and opening a case, which remembers the filtered list for case-nav.js.
   Rows from weights that are not trained are neutral and carry the untrained mark. */

import { $, el } from "./dom.js";
import { label, pct } from "./format.js";
import { state } from "./state.js";
import { dispositionClass, meaningful, untrainedMark } from "./weights.js";
import { dispositionText } from "./words.js";

function filtered() {
  const items = state.batch ? state.batch.items : [];
  if (state.filter === "review") return items.filter((item) => item.needs_review);
  if (state.filter === "rejected") return items.filter((item) => item.status === "rejected");
  return items;
}

function worklistRow(item, index) {
  const neutral = item.status === "succeeded" && !meaningful(item.weights);
  const li = el("li", {
    id: `case-${item.analysis_id}`,
    class: "case",
    role: "option",
    "data-id": item.analysis_id,
    "data-index": String(index),
    "data-status": item.status,
    "data-disposition": item.disposition || "",
    "data-neutral": String(neutral),
    "aria-selected": String(index === state.cursor),
  });
  li.append(el("span", { class: "rank" }, `#${item.rank}`));
  const main = el("span", { class: "case-main" });
  main.append(el("span", { class: "what" }, item.external_id || `Analysis ${item.analysis_id.slice(0, 8)}`));
  const detail = el("span", { class: "case-detail" });
  if (item.status === "succeeded") {
    detail.textContent = `${item.diagnosis} · ${pct(item.probability)} ± ${pct(item.uncertainty || 0)}`
      + (item.skin_group ? ` · ${item.skin_group}` : "");
  } else if (item.status === "rejected") {
    detail.textContent = `Rejected: ${label(item.rejection_code)}${item.rejection_detail ? ` — ${item.rejection_detail}` : ""}`;
  } else if (item.status === "failed") {
    detail.textContent = `Failed: ${label(item.error_code)}`;
  } else {
    detail.textContent = item.status;
  }
  main.append(detail);
  if (item.retake_advice) main.append(el("span", { class: "case-advice" }, item.retake_advice));
  li.append(main);
  const tags = el("span", { class: "case-tags" });
  if (item.status === "succeeded") {
    tags.append(el("span", { class: dispositionClass(item.disposition, item.weights), "data-disposition": item.disposition || "" },
      dispositionText(item.disposition)));
    const mark = untrainedMark(item.weights);
    if (mark) tags.append(mark);
  }
  if (item.status === "succeeded" && item.risk_band) {
    tags.append(el("span", { class: neutral ? "risk-pill risk-neutral" : `risk-pill risk-${item.risk_band}`, "data-neutral": String(neutral) }, item.risk_band));
  } else {
    tags.append(el("span", { class: neutral ? "pill pill-neutral" : `pill pill-${item.status}` }, item.status));
  }
  if (item.needs_review) {
    tags.append(el("span", { class: "flag", title: label(item.review_reason || "") }, `Review: ${label((item.review_reason || "").replace(/;/g, ", "))}`));
  }
  li.append(tags);
  li.addEventListener("click", () => {
    state.cursor = index;
    openCase();
  });
  return li;
}

export function renderWorklist() {
  const items = filtered();
  const all = state.batch ? state.batch.items : [];
  $("count-all").textContent = `(${all.length})`;
  $("count-review").textContent = `(${all.filter((i) => i.needs_review).length})`;
  $("count-rejected").textContent = `(${all.filter((i) => i.status === "rejected").length})`;
  for (const button of document.querySelectorAll("[data-filter]")) {
    button.setAttribute("aria-checked", String(button.dataset.filter === state.filter));
  }
  if (state.cursor >= items.length) state.cursor = Math.max(0, items.length - 1);
  $("worklist").replaceChildren(...grouped(items));
  $("worklist-empty").hidden = items.length > 0;
  markCursor(false);
}

/** The rows, each group of one disposition under a heading (presentational: every row names
    its own disposition, for screen readers and filters). */
function grouped(items) {
  const nodes = [];
  let group;
  items.forEach((item, index) => {
    const key = item.disposition || "";
    if (index === 0 || key !== group) {
      group = key;
      const count = items.filter((other) => (other.disposition || "") === key).length;
      const heading = key ? dispositionText(key) : "No disposition";
      nodes.push(el("li", { class: "group-head", role: "presentation", "aria-hidden": "true", "data-group": key },
        `${heading} (${count})`));
    }
    nodes.push(worklistRow(item, index));
  });
  return nodes;
}

const caseRows = () => $("worklist").querySelectorAll(".case");

export function clearWorklist() {
  $("worklist").replaceChildren();
}

function markCursor(scroll = true) {
  const rows = caseRows();
  for (const row of rows) row.setAttribute("aria-selected", String(Number(row.dataset.index) === state.cursor));
  const row = rows[state.cursor];
  if (row) {
    $("worklist").setAttribute("aria-activedescendant", row.id);
    if (scroll) row.scrollIntoView({ block: "nearest" });
  } else {
    $("worklist").removeAttribute("aria-activedescendant");
  }
}

export function moveCursor(step) {
  const count = filtered().length;
  if (!count) return;
  state.cursor = Math.max(0, Math.min(count - 1, state.cursor + step));
  markCursor();
}

export function openCase() {
  const items = filtered();
  const item = items[state.cursor];
  if (!item) return;
  state.worklist = { batchId: state.batch.id, ids: items.map((i) => i.analysis_id) };
  location.hash = `#/analyses/${encodeURIComponent(item.analysis_id)}`;
}

export function bindWorklist() {
  for (const button of document.querySelectorAll("[data-filter]")) {
    button.addEventListener("click", () => {
      state.filter = button.dataset.filter;
      state.cursor = 0;
      renderWorklist();
      $("worklist").focus({ preventScroll: true });
    });
  }
}
