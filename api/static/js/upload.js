/* The "New analysis" form: photo preview, and the multipart POST /v1/analyses. */

import { ApiProblem, request } from "./api.js";
import { open } from "./analysis.js";
import { renderCaseNav } from "./case-nav.js";
import { $ } from "./dom.js";
import { clearProblem, showProblem } from "./problem.js";
import { loadRecent } from "./recent.js";
import { state } from "./state.js";

function showPreview() {
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
}

async function submit(event) {
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
}

export function bindUpload() {
  $("image").addEventListener("change", showPreview);
  $("submit-form").addEventListener("submit", submit);
}
