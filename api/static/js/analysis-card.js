/* The analysis card: renders one analysis as the API returned it (timeline, outcome, the
   disposition, result, model, documents state, feedback list). Clinical wording (advice,
   uncertainty levels, weights banners, the result's notice, dispositions and their reasons)
   comes from the API's responses: the page keeps no copy of any rule. Output from weights that
   are not trained is neutral (never green or red) and carries the untrained mark. */

import { $, el, fact } from "./dom.js";
import { label, num, pct, when } from "./format.js";
import { state } from "./state.js";
import { renderImages } from "./viewer.js";
import { dispositionClass, meaningful, untrainedMark, weightsBanner } from "./weights.js";
import { dispositionText, reasonText, sentence } from "./words.js";

export const FINAL = new Set(["succeeded", "rejected", "failed", "canceled"]);

const STAGES = {
  segmentation: "segmenting the lesion",
  classification: "classifying",
  reporting: "writing the report",
};
const FINAL_TITLES = {
  succeeded: "Result",
  rejected: "Rejected",
  failed: "Failed",
  canceled: "Canceled",
};

function renderTimeline(analysis) {
  const status = analysis.status;
  const steps = { queued: $("timeline").querySelector('[data-step="queued"]'),
                  processing: $("timeline").querySelector('[data-step="processing"]'),
                  final: $("timeline").querySelector('[data-step="final"]') };
  for (const li of Object.values(steps)) li.className = "";
  $("stage").textContent = "";
  $("final-label").textContent = FINAL.has(status) ? FINAL_TITLES[status] : "Result";
  if (status === "queued") {
    steps.queued.className = "current";
  } else if (status === "processing") {
    steps.queued.className = "done";
    steps.processing.className = "current";
    $("stage").textContent = analysis.stage ? `(${STAGES[analysis.stage] || analysis.stage})` : "";
  } else {
    steps.queued.className = "done";
    steps.processing.className = analysis.started_at ? "done" : "";
    // A result from weights that are not trained is not a success to colour green.
    steps.final.className = status === "succeeded" && !meaningful(weightsOf(analysis)) ? "final-neutral" : `final-${status}`;
  }
  for (const [name, li] of Object.entries(steps)) {
    if (li.classList.contains("current")) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
    li.dataset.state = li.className || "pending";
    li.dataset.name = name;
  }
}

/** The weights status of the model that ran: beside the result, or in its provenance. */
const weightsOf = (analysis) => analysis.weights || (analysis.model || {}).weights || null;

function statusSentence(analysis) {
  switch (analysis.status) {
    case "queued": return "Queued — waiting for a free analysis worker.";
    case "processing": return `Processing — ${STAGES[analysis.stage] || "working"}…`;
    case "succeeded": return `Finished ${when(analysis.completed_at)}.`;
    case "rejected": return "The photo was rejected by a quality gate.";
    case "failed": return "The analysis failed.";
    case "canceled": return "The analysis was canceled.";
    default: return analysis.status;
  }
}

function renderOutcome(analysis) {
  const box = $("outcome");
  box.className = `outcome ${analysis.status}`;
  let advice = "";
  if (analysis.status === "rejected" && analysis.rejection) {
    $("outcome-title").textContent = `Photo rejected: ${label(analysis.rejection.code)}`;
    $("outcome-detail").textContent = analysis.rejection.detail || "";
    advice = analysis.rejection.advice || "";
    box.hidden = false;
  } else if (analysis.status === "failed") {
    const error = analysis.error || {};
    $("outcome-title").textContent = `Analysis failed${error.code ? `: ${label(error.code)}` : ""}`;
    $("outcome-detail").textContent = error.detail || "";
    advice = error.advice || "";
    box.hidden = false;
  } else if (analysis.status === "canceled") {
    $("outcome-title").textContent = "Analysis canceled";
    $("outcome-detail").textContent = analysis.cancel_reason ? `Reason: ${label(analysis.cancel_reason)}.` : "No result was produced.";
    box.hidden = false;
  } else {
    box.hidden = true;
  }
  $("outcome-advice").textContent = advice;
  $("outcome-advice").hidden = !advice;
}

function renderResult(analysis) {
  const result = analysis.result;
  if (analysis.status !== "succeeded" || !result) {
    $("result").hidden = true;
    return;
  }
  $("result").hidden = false;
  const weights = weightsOf(analysis);
  const neutral = !meaningful(weights);
  renderDisposition(result, weights);

  const diagnosis = $("diagnosis");
  diagnosis.textContent = result.diagnosis;
  diagnosis.className = neutral ? "diagnosis neutral" : `diagnosis ${result.diagnosis}`;
  diagnosis.dataset.neutral = String(neutral);
  const mark = untrainedMark(weights, result.notice);
  $("diagnosis-mark").replaceChildren(...(mark ? [mark] : []));
  $("result-notice").textContent = result.notice || "";
  $("result-notice").hidden = !result.notice;
  $("probability").textContent = pct(result.probability);
  $("probability").dataset.probability = String(result.probability);
  $("uncertainty").textContent = result.uncertainty < 0.0005 ? "<0.1%" : pct(result.uncertainty);
  $("uncertainty").dataset.uncertainty = String(result.uncertainty);
  const views = `mean ± SD of ${(result.tta_probabilities || []).length} views`;
  $("uncertainty-level").textContent = result.uncertainty_level ? `${result.uncertainty_level} uncertainty (${views})` : views;
  const band = $("risk-band");
  band.textContent = result.risk_band;
  band.className = neutral ? "risk risk-neutral" : `risk risk-${result.risk_band}`;
  band.dataset.neutral = String(neutral);

  const concepts = result.concepts || {};
  const abcd = $("concepts");
  abcd.replaceChildren();
  fact(abcd, "Asymmetry", num(concepts.asymmetry), concepts.asymmetry);
  fact(abcd, "Border irregularity", num(concepts.border), concepts.border);
  fact(abcd, "Colour variegation", num(concepts.color), concepts.color);
  let diameter = concepts.diameter_px === undefined || concepts.diameter_px === null ? "—" : `${Math.round(concepts.diameter_px)} px`;
  if (concepts.diameter_mm !== undefined && concepts.diameter_mm !== null) diameter += ` (${num(concepts.diameter_mm, 1)} mm)`;
  fact(abcd, "Diameter", diameter);
  if (result.segmentation) fact(abcd, "Lesion coverage", pct(result.segmentation.coverage));

  const equity = result.equity || {};
  const eq = $("equity");
  eq.replaceChildren();
  fact(eq, "ITA", equity.ita_degrees === undefined ? "—" : `${num(equity.ita_degrees, 1)}°`);
  fact(eq, "Skin group", equity.skin_group || "—");
  fact(eq, "Bias warning", equity.bias_warning ? "Yes" : "No");
  if (result.quality) fact(eq, "Blur score", num(result.quality.blur_score, 0));
  $("bias-warning").hidden = !equity.bias_warning;

  $("scribe-note").textContent = result.scribe_note || "The scribe note is not available for this analysis.";
}

/** What should happen next: the disposition, why (each reason in the API's words), and for
    routine the safety netting; neutral and marked from weights that are not trained. */
function renderDisposition(result, weights) {
  const code = result.disposition || null;
  const box = $("disposition");
  box.dataset.disposition = code || "";
  box.dataset.neutral = String(!meaningful(weights));
  box.className = meaningful(weights) && code ? `disposition disposition-${code}` : "disposition disposition-neutral";
  const text = $("disposition-text");
  text.textContent = dispositionText(code);
  text.className = dispositionClass(code, weights);
  const mark = untrainedMark(weights, result.notice);
  $("disposition-mark").replaceChildren(...(mark ? [mark] : []));
  const note = !meaningful(weights) ? sentence("not_assessable") : code ? "" : sentence("not_recorded");
  $("disposition-note").textContent = note;
  $("disposition-note").hidden = !note;
  const reasons = $("disposition-reasons");
  reasons.replaceChildren(...(result.disposition_reasons || []).map(
    (reason) => el("li", { "data-reason": reason }, reasonText(reason)),
  ));
  $("safety-netting-text").textContent = result.safety_netting || "";
  $("safety-netting").hidden = !result.safety_netting;
}

function renderModel(analysis) {
  const model = analysis.model || {};
  const banner = analysis.status === "succeeded" || model.weights ? weightsBanner(analysis.model) : null;
  $("untrained-badge").hidden = !banner;
  $("untrained-text").textContent = banner ? `${banner} · NOT FOR CLINICAL USE` : "";
  $("untrained-badge").dataset.weights = model.weights || "";
  const parts = [];
  for (const part of ["scalpel", "fusion"]) {
    const checkpoint = model[part];
    if (checkpoint) {
      const digest = checkpoint.sha256 ? ` sha256 ${checkpoint.sha256.slice(0, 12)}…` : "";
      parts.push(`${checkpoint.name} ${checkpoint.version || ""}${digest}`.trim());
    }
  }
  const weights = model.weights ? `weights: ${model.weights}` : "";
  const segmenter = model.segmenter ? `segmenter: ${model.segmenter}` : "";
  const backend = model.backend ? `backend: ${model.backend}` : "";
  $("model-info").textContent = ["Model", ...parts, weights, segmenter, backend].filter(Boolean).join(" · ");
  $("segmenter").textContent = model.segmenter ? `(${model.segmenter} segmenter)` : "";
}

function renderDocs(analysis) {
  const ready = Boolean(analysis.report && analysis.report.ready);
  $("open-report").disabled = !ready;
  $("open-fhir").disabled = !ready;
  if (analysis.status !== "succeeded") {
    $("docs-state").textContent = "";
  } else if (ready) {
    $("docs-state").textContent = `Report ready ${when(analysis.report.created_at)}.`;
  } else if (Date.now() < state.reportDeadline) {
    $("docs-state").textContent = "Preparing the report…";
  } else {
    $("docs-state").textContent = "The report is not ready yet; reopen this analysis later.";
  }
}

function renderFeedback(analysis) {
  $("feedback").hidden = analysis.status !== "succeeded";
  const list = $("feedback-list");
  list.replaceChildren();
  for (const item of analysis.feedback || []) {
    const li = el("li", { class: item.agrees ? "agrees" : "disagrees" });
    li.append(el("strong", {}, item.agrees ? "Agrees with the AI assessment" : "Disagrees with the AI assessment"));
    const details = [];
    if (item.final_diagnosis) details.push(`Final diagnosis: ${item.final_diagnosis}`);
    if (item.histopathology) details.push(`Histopathology: ${item.histopathology}`);
    for (const line of details) li.append(el("span", { class: "fb-line" }, line));
    if (item.notes) li.append(el("span", { class: "fb-line fb-notes" }, `Notes: ${item.notes}`));
    li.append(el("span", { class: "when" }, when(item.created_at)));
    list.append(li);
  }
}

export function render(analysis) {
  $("analysis-empty").hidden = true;
  $("analysis-body").hidden = false;
  $("analysis-body").dataset.status = analysis.status;
  $("analysis-id").textContent = analysis.id;
  $("analysis-ref").textContent = analysis.external_id ? `Ref ${analysis.external_id}` : "";
  const inputs = analysis.inputs || {};
  $("analysis-inputs").textContent = [
    inputs.age !== null && inputs.age !== undefined ? `${inputs.age} y` : "age unknown",
    inputs.sex && inputs.sex !== "unknown" ? inputs.sex : "sex unknown",
    inputs.site && inputs.site !== "unknown" ? inputs.site : "site unknown",
  ].join(" · ");
  renderTimeline(analysis);
  $("status").textContent = statusSentence(analysis);
  $("status").dataset.status = analysis.status;
  $("cancel").hidden = FINAL.has(analysis.status);
  renderOutcome(analysis);
  renderModel(analysis);
  renderResult(analysis);
  renderImages(analysis);
  renderDocs(analysis);
  renderFeedback(analysis);
  for (const button of $("recent").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.id === analysis.id));
  }
}

/** Back to the empty card (no analysis open). */
export function clearCard() {
  $("analysis-body").hidden = true;
  $("analysis-empty").hidden = false;
}
