/* The clinician feedback form of the open analysis. (The saved feedback list is part of the
   analysis card.) */

import { ApiProblem, postJson } from "./api.js";
import { $ } from "./dom.js";
import { clearProblem, showProblem } from "./problem.js";
import { state } from "./state.js";

export function resetFeedbackForm() {
  $("feedback-form").reset();
  $("feedback-state").textContent = "";
}

/** reload(id) fetches the analysis again after feedback is saved, to show it in the card. */
export function bindFeedback(reload) {
  $("feedback-form").addEventListener("submit", async (event) => {
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
      if (state.current === id) reload(id);
    } catch (error) {
      showProblem(error);
    } finally {
      $("feedback-submit").disabled = false;
    }
  });
}
