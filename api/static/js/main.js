/* DermaSentinel web app: no framework, no build step, nothing loaded from elsewhere.
   ES modules under /static/js/, loaded by index.html as one <script type="module"> (the
   Content-Security-Policy allows same-origin scripts only, nothing inline). Every API call
   carries the key from sessionStorage (api.js); API errors are RFC 7807 problems, whose
   `detail` is shown as is (problem.js). Untrusted text is only ever set with textContent.
   Clinical wording (advice, uncertainty levels, weights banners, review rules) comes from the
   API's responses: the page keeps no copy of any clinical rule.

   This module only wires the panels together; each panel's module binds its own controls. */

import { bindAnalysis, closeAnalysis, poll } from "./analysis.js";
import { closeBatch } from "./batch.js";
import { bindBatches, clearBatches } from "./batches.js";
import { bindCaseNav } from "./case-nav.js";
import { bindDocuments } from "./documents.js";
import { bindFeedback } from "./feedback.js";
import { bindKeyboard } from "./keyboard.js";
import { bindKeyForm } from "./keyform.js";
import { bindProblem } from "./problem.js";
import { bindQuestions } from "./questions.js";
import { bindRecent, clearRecent, loadRecent } from "./recent.js";
import { bindRouter, route } from "./router.js";
import { state } from "./state.js";
import { bindUpload } from "./upload.js";
import { bindViewer } from "./viewer.js";
import { bindWorklist } from "./worklist.js";

function bind() {
  bindKeyForm({
    onSaved() {
      loadRecent();
      route();
    },
    onForgotten() {
      closeAnalysis();
      closeBatch();
      state.worklist = null;
      clearRecent();
      clearBatches();
    },
  });
  bindProblem();
  bindUpload();
  bindAnalysis();
  bindDocuments();
  bindViewer();
  bindQuestions();
  bindFeedback(poll);
  bindRecent();
  bindBatches();
  bindWorklist();
  bindCaseNav();
  bindKeyboard();
  bindRouter();

  loadRecent();
  route();
}

document.addEventListener("DOMContentLoaded", bind);
