/* The error banner (#problem): an API problem's title and detail, or any other error. */

import { ApiProblem } from "./api.js";
import { $ } from "./dom.js";

export function showProblem(error) {
  const problem = error instanceof ApiProblem
    ? error.problem
    : { title: "Something went wrong", detail: String(error && error.message ? error.message : error) };
  $("problem-title").textContent = problem.title;
  $("problem-detail").textContent = problem.detail;
  $("problem").hidden = false;
}

export function clearProblem() {
  $("problem").hidden = true;
}

export function bindProblem() {
  $("problem-close").addEventListener("click", clearProblem);
}
