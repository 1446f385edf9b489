/* Questions about the open analysis: grounded answers, and a vision-language model's answer
   polled while it is pending. */

import { ApiProblem, getJson, postJson } from "./api.js";
import { $, el } from "./dom.js";
import { when } from "./format.js";
import { clearProblem, showProblem } from "./problem.js";
import { state } from "./state.js";

const MODEL_ANSWER_POLL_MS = 1500;
const MODEL_ANSWER_WAIT_MS = 120000;

let questionsTimer = null;
let questionsDeadline = 0;

export function stopQuestionPolling() {
  clearTimeout(questionsTimer);
  questionsTimer = null;
}

/** Empty the list for a newly opened analysis. */
export function resetQuestions() {
  stopQuestionPolling();
  $("qa-list").replaceChildren();
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

export async function loadQuestions(id) {
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
  if (pending && Date.now() < questionsDeadline) {
    questionsTimer = setTimeout(() => loadQuestions(id), MODEL_ANSWER_POLL_MS);
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
      questionsDeadline = Date.now() + MODEL_ANSWER_WAIT_MS;
      questionsTimer = setTimeout(() => loadQuestions(id), MODEL_ANSWER_POLL_MS);
    }
  } catch (error) {
    showProblem(error);
  } finally {
    $("ask").disabled = false;
  }
}

export function bindQuestions() {
  $("question-form").addEventListener("submit", ask);
}
