/* DermaSentinel web app: no framework, no build step, nothing loaded from elsewhere.
   Every API call carries the key from sessionStorage; API errors are RFC 7807 problems,
   whose `detail` is shown as is. Untrusted text is only ever set with textContent. */
"use strict";

(() => {
  const KEY_STORAGE = "dermasentinel.apiKey";
  const FINAL = new Set(["succeeded", "rejected", "failed", "canceled"]);
  const POLL_MS = 1000;
  const REPORT_POLL_MS = 2000;
  const REPORT_WAIT_MS = 120000;

  const STAGES = {
    segmentation: "segmenting the lesion",
    classification: "classifying",
    reporting: "writing the report",
  };
  const REJECTION_ADVICE = {
    blurry: "Retake the photo in focus: hold the camera steady, tap to focus on the lesion, use good light, then submit again.",
    no_lesion: "No lesion was found. Centre the lesion so it fills about a third of the frame, avoid glare and shadows, then submit again.",
    unreadable_image: "The file could not be read as a photo. Export it again as a JPEG or PNG and submit it again.",
  };
  const FINAL_TITLES = {
    succeeded: "Result",
    rejected: "Rejected",
    failed: "Failed",
    canceled: "Canceled",
  };

  const $ = (id) => document.getElementById(id);
  const state = { current: null, pollTimer: null, reportDeadline: 0, recentCursor: null };

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

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function uncertaintyLevel(std) {
    if (std >= 0.15) return "high uncertainty: the model's views disagree";
    if (std >= 0.08) return "moderate uncertainty";
    return "low uncertainty";
  }

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fact(list, label, value, bar) {
    list.append(el("dt", {}, label));
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

  // ------------------------------------------------------------------ rendering

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
      $("stage").textContent = analysis.stage ? `· ${STAGES[analysis.stage] || analysis.stage}` : "";
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
    if (analysis.status === "rejected" && analysis.rejection) {
      $("outcome-title").textContent = `Photo rejected: ${analysis.rejection.code.replace(/_/g, " ")}`;
      $("outcome-detail").textContent = analysis.rejection.detail || "";
      $("outcome-advice").textContent = REJECTION_ADVICE[analysis.rejection.code] || "Take a new photo and submit it again.";
      box.hidden = false;
    } else if (analysis.status === "failed") {
      const error = analysis.error || {};
      $("outcome-title").textContent = `Analysis failed${error.code ? `: ${error.code.replace(/_/g, " ")}` : ""}`;
      $("outcome-detail").textContent = error.detail || "";
      $("outcome-advice").textContent = `This was a system error, not a problem with the photo. Submit it again later; if it keeps failing, contact support quoting analysis ${analysis.id}.`;
      box.hidden = false;
    } else if (analysis.status === "canceled") {
      $("outcome-title").textContent = "Analysis canceled";
      $("outcome-detail").textContent = "No result was produced.";
      $("outcome-advice").textContent = "Submit the photo again if you still need an assessment.";
      box.hidden = false;
    } else {
      box.hidden = true;
    }
  }

  function renderResult(analysis) {
    const result = analysis.result;
    if (analysis.status !== "succeeded" || !result) {
      $("result").hidden = true;
      return;
    }
    $("result").hidden = false;

    const diagnosis = $("diagnosis");
    diagnosis.textContent = result.diagnosis;
    diagnosis.className = `diagnosis ${result.diagnosis}`;
    $("probability").textContent = pct(result.probability);
    $("probability").dataset.probability = String(result.probability);
    $("uncertainty").textContent = result.uncertainty < 0.0005 ? "<0.1%" : pct(result.uncertainty);
    $("uncertainty").dataset.uncertainty = String(result.uncertainty);
    $("uncertainty-level").textContent =
      `${uncertaintyLevel(result.uncertainty)} (mean ± SD of ${(result.tta_probabilities || []).length} views)`;
    const band = $("risk-band");
    band.textContent = result.risk_band;
    band.className = `risk risk-${result.risk_band}`;

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

  function renderImages(analysis) {
    const artifacts = analysis.artifacts || {};
    for (const [id, url] of [["overlay", artifacts.overlay], ["original", artifacts.image]]) {
      const img = $(id);
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
  }

  function renderModel(analysis) {
    const model = analysis.model || {};
    $("untrained-badge").hidden = model.weights !== "untrained";
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
    $("model-info").textContent = ["Model", ...parts, weights, segmenter].filter(Boolean).join(" · ");
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
    stopPolling();
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
      }
      if (waitingForReport) state.pollTimer = setTimeout(() => poll(id), REPORT_POLL_MS);
    }
  }

  function open(id) {
    clearProblem();
    state.current = id;
    state.reportDeadline = Date.now() + REPORT_WAIT_MS;
    state.recentLoadedFor = null;
    poll(id);
  }

  // ------------------------------------------------------------------ recent analyses

  function recentItem(analysis) {
    const li = el("li");
    const button = el("button", { type: "button", "data-id": analysis.id });
    const result = analysis.result;
    let what = analysis.external_id || `Analysis ${analysis.id.slice(0, 8)}`;
    if (result) what += ` — ${result.diagnosis} ${pct(result.probability)}`;
    else if (analysis.rejection) what += ` — ${analysis.rejection.code.replace(/_/g, " ")}`;
    button.append(el("span", { class: "what" }, what));
    button.append(el("span", { class: `pill pill-${analysis.status}` }, analysis.status));
    const site = analysis.inputs && analysis.inputs.site && analysis.inputs.site !== "unknown" ? ` · ${analysis.inputs.site}` : "";
    button.append(el("span", { class: "when" }, `${when(analysis.created_at)}${site}`));
    button.setAttribute("aria-current", String(analysis.id === state.current));
    button.addEventListener("click", () => open(analysis.id));
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
    });

    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      stopPolling();
      state.current = null;
      showKeyState();
      $("recent").replaceChildren();
      $("recent-more").hidden = true;
      $("recent-empty").hidden = false;
      $("recent-empty").textContent = "Set an API key to see this tenant's analyses.";
      $("analysis-body").hidden = true;
      $("analysis-empty").hidden = false;
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
        open(analysis.id);
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

    $("refresh-recent").addEventListener("click", () => loadRecent());
    $("recent-more").addEventListener("click", () => loadRecent(true));

    loadRecent();
  }

  document.addEventListener("DOMContentLoaded", bind);
})();
