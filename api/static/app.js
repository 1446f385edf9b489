/* DermaSentinel web app: no framework, no build step, nothing loaded from elsewhere.
   Every API call carries the key from sessionStorage; API errors are RFC 7807 problems,
   whose `detail` is shown as is. Untrusted text is only ever set with textContent.
   Clinical wording (advice, uncertainty levels, weights banners, review rules) comes from
   the API's responses: the page keeps no copy of any clinical rule. */
"use strict";

(() => {
  const KEY_STORAGE = "dermasentinel.apiKey";
  const FINAL = new Set(["succeeded", "rejected", "failed", "canceled"]);
  const POLL_MS = 1000;
  const REPORT_POLL_MS = 2000;
  const REPORT_WAIT_MS = 120000;
  const BATCH_POLL_MS = 3000;
  const MODEL_ANSWER_POLL_MS = 1500;
  const MODEL_ANSWER_WAIT_MS = 120000;

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

  const $ = (id) => document.getElementById(id);
  const state = {
    current: null,
    pollTimer: null,
    reportDeadline: 0,
    recentCursor: null,
    batchesCursor: null,
    batch: null, // { id, header, items, summary, weights }
    batchTimer: null,
    filter: "all",
    cursor: 0, // index into the filtered worklist
    worklist: null, // { batchId, ids } when a case was opened from a batch
    questionsTimer: null,
    questionsDeadline: 0,
  };

  // ------------------------------------------------------------------ key

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function showKeyState() {
    const key = apiKey();
    $("key-state").textContent = key ? `Key set (…${key.slice(-4)})` : "No key set";
    $("api-key").value = "";
    $("api-key").placeholder = key ? "Paste a new key to replace" : "dsk_…";
  }

  // ------------------------------------------------------------------ HTTP

  class ApiProblem extends Error {
    constructor(problem) {
      super(problem.detail || problem.title || "request failed");
      this.problem = problem;
    }
  }

  async function problemFrom(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_ignored) {
      body = null;
    }
    if (body && (body.detail || body.title)) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      return { status: response.status, title: body.title || `HTTP ${response.status}`, detail };
    }
    return { status: response.status, title: `HTTP ${response.status}`, detail: response.statusText || "the server gave no reason" };
  }

  async function request(path, options = {}) {
    const key = apiKey();
    if (!key) {
      throw new ApiProblem({ status: 401, title: "No API key", detail: "Paste your API key (dsk_…) at the top of the page first." });
    }
    const headers = Object.assign({ Authorization: `Bearer ${key}` }, options.headers || {});
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (error) {
      throw new ApiProblem({ status: 0, title: "Network error", detail: `The API could not be reached (${error.message}). Check your connection and try again.` });
    }
    if (!response.ok) {
      const problem = await problemFrom(response);
      if (problem.status === 401) {
        problem.detail += " — check the API key at the top of the page.";
      }
      throw new ApiProblem(problem);
    }
    return response;
  }

  async function getJson(path) {
    return (await request(path)).json();
  }

  async function postJson(path, body) {
    const response = await request(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return response.json();
  }

  function showProblem(error) {
    const problem = error instanceof ApiProblem
      ? error.problem
      : { title: "Something went wrong", detail: String(error && error.message ? error.message : error) };
    $("problem-title").textContent = problem.title;
    $("problem-detail").textContent = problem.detail;
    $("problem").hidden = false;
  }

  function clearProblem() {
    $("problem").hidden = true;
  }

  // ------------------------------------------------------------------ formatting

  const pct = (value) => `${(value * 100).toFixed(1)}%`;
  const num = (value, digits = 2) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
  const label = (code) => String(code || "").replace(/_/g, " ");

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return null;
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    const hours = Math.floor(seconds / 3600);
    return `${hours} h ${Math.round((seconds - hours * 3600) / 60)} min`;
  }

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fact(list, name, value, bar) {
    list.append(el("dt", {}, name));
    const dd = el("dd", {}, value);
    if (bar !== undefined && bar !== null) {
      const track = el("span", { class: "bar", "aria-hidden": "true" });
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(1, bar)) * 100}%`;
      track.append(fill);
      dd.append(track);
    }
    list.append(dd);
  }

  // Only trained weights give output a clinician may act on: anything else is shown neutral.
  const meaningful = (weights) => weights === "trained";

  function weightsBanner(model) {
    if (!model || meaningful(model.weights)) return null;
    return model.banner || `MODEL WEIGHTS ${String(model.weights || "unknown").toUpperCase()} — output is not clinically meaningful`;
  }

  function isTyping(event) {
    const target = event.target;
    return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  }

  // ------------------------------------------------------------------ views and routing

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

  function route() {
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
        if (parts[1] !== state.current || !state.pollTimer) open(parts[1]);
        // One column on narrow screens: bring the case into view, past the upload form.
        if (window.matchMedia("(max-width: 900px)").matches) $("analysis").scrollIntoView();
      } else {
        state.worklist = null;
        renderCaseNav(null);
      }
    }
  }

  // ------------------------------------------------------------------ analysis rendering

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
      steps.final.className = `final-${status}`;
    }
    for (const [name, li] of Object.entries(steps)) {
      if (li.classList.contains("current")) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
      li.dataset.state = li.className || "pending";
      li.dataset.name = name;
    }
  }

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
    const neutral = !meaningful((analysis.model || {}).weights);

    const diagnosis = $("diagnosis");
    diagnosis.textContent = result.diagnosis;
    diagnosis.className = neutral ? "diagnosis neutral" : `diagnosis ${result.diagnosis}`;
    diagnosis.dataset.neutral = String(neutral);
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

  function setImage(img, url) {
    if (url) {
      // Presigned URLs change on every poll; keep the loaded picture unless the object changed.
      const base = url.split("?")[0];
      if (img.dataset.base !== base) {
        img.dataset.base = base;
        img.src = url;
      }
      img.hidden = false;
    } else {
      img.hidden = true;
      img.removeAttribute("src");
      delete img.dataset.base;
    }
  }

  function renderImages(analysis) {
    const artifacts = analysis.artifacts || {};
    setImage($("original"), artifacts.image);
    setImage($("mask-layer"), artifacts.mask);
    const link = $("overlay-link");
    if (artifacts.overlay) {
      link.href = artifacts.overlay;
      link.hidden = false;
    } else {
      link.hidden = true;
    }
  }

  function setOverlayMode(mode) {
    $("viewer-stage").dataset.mode = mode;
    for (const id of ["overlay-outline", "overlay-fill"]) {
      const button = $(id);
      button.setAttribute("aria-checked", String(button.dataset.mode === mode));
    }
    $("viewer-caption").firstChild.textContent = mode === "outline"
      ? "Submitted photo with the segmented lesion outlined. "
      : "Submitted photo with the segmented lesion filled. ";
  }

  function setOverlayOpacity(percent) {
    $("mask-layer").style.opacity = String(percent / 100);
    $("overlay-opacity-value").textContent = `${percent}%`;
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

  function render(analysis) {
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

  // ------------------------------------------------------------------ polling

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function poll(id) {
    clearTimeout(state.pollTimer);
    let analysis;
    try {
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
      state.pollTimer = setTimeout(() => poll(id), POLL_MS);
    } else {
      if (state.recentLoadedFor !== id) {
        state.recentLoadedFor = id;
        loadRecent();
        loadQuestions(id);
      }
      state.pollTimer = waitingForReport ? setTimeout(() => poll(id), REPORT_POLL_MS) : null;
    }
  }

  function open(id) {
    clearProblem();
    stopQuestionPolling();
    state.current = id;
    state.reportDeadline = Date.now() + REPORT_WAIT_MS;
    state.recentLoadedFor = null;
    $("qa-list").replaceChildren();
    $("feedback-form").reset();
    $("feedback-state").textContent = "";
    poll(id);
  }

  // ------------------------------------------------------------------ questions

  function stopQuestionPolling() {
    clearTimeout(state.questionsTimer);
    state.questionsTimer = null;
  }

  function qaItem(entry) {
    const li = el("li", { class: "qa", "data-id": entry.id });
    li.append(el("p", { class: "qa-question" }, entry.question));
    const grounded = el("div", { class: `qa-answer${entry.answer.outside_scope ? " outside" : ""}` });
    grounded.append(el("span", { class: "qa-source" }, entry.answer.outside_scope ? "Outside what was measured" : "Grounded answer"));
    grounded.append(el("p", { class: "qa-text" }, entry.answer.text));
    if (entry.answer.cited && entry.answer.cited.length) {
      const cited = el("p", { class: "qa-cited" }, "Based on: ");
      for (const field of entry.answer.cited) cited.append(el("code", {}, field));
      grounded.append(cited);
    }
    li.append(grounded);
    const model = entry.model_answer;
    if (model) {
      const box = el("div", { class: `qa-model qa-model-${model.status}` });
      box.append(el("span", { class: "qa-source" }, `${model.model || "Vision-language model"} — ${model.label}`));
      const text = model.status === "pending" ? "The model is still answering…"
        : model.status === "failed" ? (model.detail || "The model could not answer.")
        : model.text || "(no answer)";
      box.append(el("p", { class: "qa-text" }, text));
      li.append(box);
    }
    li.append(el("span", { class: "when" }, when(entry.created_at)));
    return li;
  }

  function renderQuestions(entries) {
    $("qa-list").replaceChildren(...entries.slice().reverse().map(qaItem));
  }

  async function loadQuestions(id) {
    stopQuestionPolling();
    let page;
    try {
      page = await getJson(`/v1/analyses/${encodeURIComponent(id)}/questions`);
    } catch (error) {
      if (state.current === id) showProblem(error);
      return;
    }
    if (state.current !== id) return;
    renderQuestions(page.data);
    const pending = page.data.some((entry) => entry.model_answer && entry.model_answer.status === "pending");
    if (pending && Date.now() < state.questionsDeadline) {
      state.questionsTimer = setTimeout(() => loadQuestions(id), MODEL_ANSWER_POLL_MS);
    }
  }

  async function ask(event) {
    event.preventDefault();
    const id = state.current;
    const question = $("question").value.trim();
    if (!id) return;
    if (!question) {
      showProblem(new ApiProblem({ title: "No question", detail: "Type a question about this result first." }));
      $("question").focus();
      return;
    }
    clearProblem();
    $("ask").disabled = true;
    try {
      const entry = await postJson(`/v1/analyses/${encodeURIComponent(id)}/questions`, { question });
      if (state.current !== id) return;
      $("qa-list").prepend(qaItem(entry));
      $("question").value = "";
      if (entry.model_answer && entry.model_answer.status === "pending") {
        state.questionsDeadline = Date.now() + MODEL_ANSWER_WAIT_MS;
        state.questionsTimer = setTimeout(() => loadQuestions(id), MODEL_ANSWER_POLL_MS);
      }
    } catch (error) {
      showProblem(error);
    } finally {
      $("ask").disabled = false;
    }
  }

  // ------------------------------------------------------------------ feedback

  async function sendFeedback(event) {
    event.preventDefault();
    const id = state.current;
    const choice = document.querySelector('input[name="agrees"]:checked');
    if (!id) return;
    if (!choice) {
      showProblem(new ApiProblem({ title: "Agree or disagree?", detail: "Choose Agree or Disagree before saving the feedback." }));
      $("agrees-yes").focus();
      return;
    }
    const body = { agrees: choice.value === "true" };
    for (const [elementId, name] of [["final-diagnosis", "final_diagnosis"], ["histopathology", "histopathology"], ["feedback-notes", "notes"]]) {
      const value = $(elementId).value.trim();
      if (value) body[name] = value;
    }
    clearProblem();
    $("feedback-submit").disabled = true;
    try {
      await postJson(`/v1/analyses/${encodeURIComponent(id)}/feedback`, body);
      $("feedback-form").reset();
      $("feedback-state").textContent = "Feedback saved.";
      if (state.current === id) poll(id);
    } catch (error) {
      showProblem(error);
    } finally {
      $("feedback-submit").disabled = false;
    }
  }

  // ------------------------------------------------------------------ recent analyses

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

  async function loadRecent(more = false) {
    if (!apiKey()) return;
    const params = new URLSearchParams({ limit: "10" });
    if (more && state.recentCursor) params.set("cursor", state.recentCursor);
    let page;
    try {
      page = await getJson(`/v1/analyses?${params}`);
    } catch (error) {
      showProblem(error);
      return;
    }
    if (!more) $("recent").replaceChildren();
    for (const analysis of page.data) $("recent").append(recentItem(analysis));
    state.recentCursor = page.next_cursor;
    $("recent-more").hidden = !page.next_cursor;
    $("recent-empty").hidden = $("recent").children.length > 0;
    $("recent-empty").textContent = "No analyses yet for this tenant.";
  }

  // ------------------------------------------------------------------ batches list

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

  async function loadBatches(more = false) {
    if (!apiKey()) {
      $("batches").replaceChildren();
      $("batches-empty").hidden = false;
      $("batches-empty").textContent = "Set an API key to see this tenant's batches.";
      return;
    }
    const params = new URLSearchParams({ limit: "20" });
    if (more && state.batchesCursor) params.set("cursor", state.batchesCursor);
    let page;
    try {
      page = await getJson(`/v1/batches?${params}`);
    } catch (error) {
      showProblem(error);
      return;
    }
    if (!more) $("batches").replaceChildren();
    for (const batch of page.data) $("batches").append(batchItem(batch));
    state.batchesCursor = page.next_cursor;
    $("batches-more").hidden = !page.next_cursor;
    $("batches-empty").hidden = $("batches").children.length > 0;
    $("batches-empty").textContent = "No batches yet for this tenant.";
  }

  // ------------------------------------------------------------------ batch page and worklist

  function stopBatchPolling() {
    clearTimeout(state.batchTimer);
    state.batchTimer = null;
  }

  async function openBatch(id) {
    stopBatchPolling();
    if (!state.batch || state.batch.id !== id) {
      state.batch = { id, header: null, items: [], summary: null };
      state.cursor = 0;
      state.filter = "all";
      $("worklist").replaceChildren();
      $("batch-heading").textContent = "Batch";
    }
    await refreshBatch(id, true);
  }

  async function refreshBatch(id, focus = false) {
    let body;
    try {
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
    if (body.batch.state !== "completed") {
      state.batchTimer = setTimeout(() => refreshBatch(id), BATCH_POLL_MS);
    }
  }

  function batchNeutral() {
    // Any item whose weights are not "trained" makes the ranking not meaningful for it.
    return (state.batch.items || []).some((item) => item.status === "succeeded" && !meaningful(item.weights));
  }

  function renderBatch() {
    const { header, summary } = state.batch;
    $("batch-heading").textContent = header.name || `Batch ${header.id.slice(0, 8)}`;
    const percent = Math.round(header.percent_done || 0);
    $("batch-progress-fill").style.width = `${percent}%`;
    $("batch-progressbar").setAttribute("aria-valuenow", String(percent));
    $("batch-progress-text").textContent = `${header.done} of ${header.total} done (${percent}%) · ${header.state}`;
    const eta = duration(header.eta_seconds);
    const rate = header.throughput_per_minute ? ` · ${num(header.throughput_per_minute, 1)} per minute` : "";
    $("batch-eta").textContent = header.state === "completed" || header.eta_seconds === 0
      ? `All items finished${header.completed_at ? ` ${when(header.completed_at)}` : ""}.`
      : eta ? `About ${eta} left (ETA ${when(header.eta_at)})${rate}.` : "ETA not known yet: nothing has finished in the last minutes.";
    const counts = $("batch-counts");
    counts.replaceChildren();
    for (const [status, n] of Object.entries(header.counts || {})) {
      if (!n) continue;
      counts.append(el("dt", { class: `pill pill-${status}` }, status));
      counts.append(el("dd", {}, String(n)));
    }

    const banner = $("batch-weights");
    const warning = summary.weights_warning || (batchNeutral() ? "Results in this batch come from weights that are not trained: the risk order is not clinically meaningful." : null);
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
    if (item.status === "succeeded" && item.risk_band) {
      tags.append(el("span", { class: neutral ? "risk-pill risk-neutral" : `risk-pill risk-${item.risk_band}`, "data-neutral": String(neutral) }, item.risk_band));
    } else {
      tags.append(el("span", { class: `pill pill-${item.status}` }, item.status));
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

  function renderWorklist() {
    const items = filtered();
    const all = state.batch ? state.batch.items : [];
    $("count-all").textContent = `(${all.length})`;
    $("count-review").textContent = `(${all.filter((i) => i.needs_review).length})`;
    $("count-rejected").textContent = `(${all.filter((i) => i.status === "rejected").length})`;
    for (const button of document.querySelectorAll("[data-filter]")) {
      button.setAttribute("aria-checked", String(button.dataset.filter === state.filter));
    }
    if (state.cursor >= items.length) state.cursor = Math.max(0, items.length - 1);
    $("worklist").replaceChildren(...items.map(worklistRow));
    $("worklist-empty").hidden = items.length > 0;
    markCursor(false);
  }

  function markCursor(scroll = true) {
    const rows = $("worklist").children;
    for (const row of rows) row.setAttribute("aria-selected", String(Number(row.dataset.index) === state.cursor));
    const row = rows[state.cursor];
    if (row) {
      $("worklist").setAttribute("aria-activedescendant", row.id);
      if (scroll) row.scrollIntoView({ block: "nearest" });
    } else {
      $("worklist").removeAttribute("aria-activedescendant");
    }
  }

  function moveCursor(step) {
    const count = filtered().length;
    if (!count) return;
    state.cursor = Math.max(0, Math.min(count - 1, state.cursor + step));
    markCursor();
  }

  function openCase() {
    const items = filtered();
    const item = items[state.cursor];
    if (!item) return;
    state.worklist = { batchId: state.batch.id, ids: items.map((i) => i.analysis_id) };
    location.hash = `#/analyses/${encodeURIComponent(item.analysis_id)}`;
  }

  function renderCaseNav(id) {
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

  function stepCase(step) {
    const list = state.worklist;
    if (!list || !state.current) return;
    const index = list.ids.indexOf(state.current) + step;
    if (index < 0 || index >= list.ids.length) return;
    state.cursor = index;
    location.hash = `#/analyses/${encodeURIComponent(list.ids[index])}`;
  }

  function onKey(event) {
    if (event.altKey || event.ctrlKey || event.metaKey || isTyping(event)) return;
    // Enter on a button or link is that control's own click.
    if (event.key === "Enter" && event.target.closest && event.target.closest("button, a")) return;
    if (!$("view-batch").hidden) {
      if (event.key === "j" || event.key === "ArrowDown") {
        moveCursor(1);
      } else if (event.key === "k" || event.key === "ArrowUp") {
        moveCursor(-1);
      } else if (event.key === "Enter") {
        openCase();
      } else {
        return;
      }
      event.preventDefault();
    } else if (!$("view-analyses").hidden && state.worklist) {
      if (event.key === "j") stepCase(1);
      else if (event.key === "k") stepCase(-1);
      else if (event.key === "Escape") location.hash = $("case-back").getAttribute("href");
      else return;
      event.preventDefault();
    }
  }

  // ------------------------------------------------------------------ documents

  async function openBlob(path, filename) {
    clearProblem();
    // A new window opened synchronously keeps the user's click from being blocked as a popup.
    const target = window.open("", "_blank");
    try {
      const blob = await (await request(path)).blob();
      const url = URL.createObjectURL(blob);
      if (target) {
        target.location.href = url;
      } else {
        const link = el("a", { href: url, download: filename });
        document.body.append(link);
        link.click();
        link.remove();
      }
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      if (target) target.close();
      showProblem(error);
    }
  }

  // ------------------------------------------------------------------ wiring

  function bind() {
    showKeyState();

    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        showProblem(new ApiProblem({ title: "No API key", detail: "Paste the key (it starts with dsk_) into the API key box." }));
        return;
      }
      sessionStorage.setItem(KEY_STORAGE, key);
      clearProblem();
      showKeyState();
      loadRecent();
      route();
    });

    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      stopPolling();
      stopBatchPolling();
      stopQuestionPolling();
      state.current = null;
      state.batch = null;
      state.worklist = null;
      showKeyState();
      $("recent").replaceChildren();
      $("recent-more").hidden = true;
      $("recent-empty").hidden = false;
      $("recent-empty").textContent = "Set an API key to see this tenant's analyses.";
      $("analysis-body").hidden = true;
      $("analysis-empty").hidden = false;
      $("batches").replaceChildren();
      $("worklist").replaceChildren();
    });

    $("problem-close").addEventListener("click", clearProblem);

    $("image").addEventListener("change", () => {
      const file = $("image").files[0];
      const preview = $("preview");
      if (preview.src) URL.revokeObjectURL(preview.src);
      if (file) {
        preview.src = URL.createObjectURL(file);
        preview.hidden = false;
      } else {
        preview.hidden = true;
        preview.removeAttribute("src");
      }
    });

    $("submit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      clearProblem();
      const file = $("image").files[0];
      if (!file) {
        showProblem(new ApiProblem({ title: "No photo selected", detail: "Choose a JPEG or PNG photo of the lesion first." }));
        $("image").focus();
        return;
      }
      const form = new FormData();
      form.append("image", file, file.name);
      for (const [id, name] of [["age", "age"], ["sex", "sex"], ["site", "site"], ["external-id", "external_id"]]) {
        const value = $(id).value.trim();
        if (value !== "") form.append(name, value);
      }
      const button = $("submit");
      button.disabled = true;
      button.textContent = "Uploading…";
      try {
        const response = await request("/v1/analyses", { method: "POST", body: form });
        const analysis = await response.json();
        $("submit-form").reset();
        $("preview").hidden = true;
        state.worklist = null;
        open(analysis.id);
        history.replaceState(null, "", `#/analyses/${encodeURIComponent(analysis.id)}`);
        renderCaseNav(null);
        loadRecent();
        $("analysis-heading").focus?.();
      } catch (error) {
        showProblem(error);
      } finally {
        button.disabled = false;
        button.textContent = "Analyse photo";
      }
    });

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

    $("open-report").addEventListener("click", () => {
      if (state.current) openBlob(`/v1/analyses/${encodeURIComponent(state.current)}/report.pdf`, `dermasentinel-${state.current}.pdf`);
    });
    $("open-fhir").addEventListener("click", () => {
      if (state.current) openBlob(`/v1/analyses/${encodeURIComponent(state.current)}/fhir`, `dermasentinel-${state.current}.fhir.json`);
    });

    for (const id of ["overlay-outline", "overlay-fill"]) {
      $(id).addEventListener("click", () => setOverlayMode($(id).dataset.mode));
    }
    $("overlay-opacity").addEventListener("input", () => setOverlayOpacity(Number($("overlay-opacity").value)));
    setOverlayMode("outline");
    setOverlayOpacity(Number($("overlay-opacity").value));

    $("question-form").addEventListener("submit", ask);
    $("feedback-form").addEventListener("submit", sendFeedback);

    $("refresh-recent").addEventListener("click", () => loadRecent());
    $("recent-more").addEventListener("click", () => loadRecent(true));
    $("refresh-batches").addEventListener("click", () => loadBatches());
    $("batches-more").addEventListener("click", () => loadBatches(true));
    for (const button of document.querySelectorAll("[data-filter]")) {
      button.addEventListener("click", () => {
        state.filter = button.dataset.filter;
        state.cursor = 0;
        renderWorklist();
        $("worklist").focus({ preventScroll: true });
      });
    }
    $("case-prev").addEventListener("click", () => stepCase(-1));
    $("case-next").addEventListener("click", () => stepCase(1));
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);

    loadRecent();
    route();
  }

  document.addEventListener("DOMContentLoaded", bind);
})();
