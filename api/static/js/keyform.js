/* The API key form in the top bar: use a key, forget it, show which one is set. */

import { ApiProblem, apiKey, forgetApiKey, saveApiKey } from "./api.js";
import { $ } from "./dom.js";
import { clearProblem, showProblem } from "./problem.js";

export function showKeyState() {
  const key = apiKey();
  $("key-state").textContent = key ? `Key set (…${key.slice(-4)})` : "No key set";
  $("api-key").value = "";
  $("api-key").placeholder = key ? "Paste a new key to replace" : "dsk_…";
}

/** onSaved runs after a key is stored, onForgotten after it is removed (to clear the panels). */
export function bindKeyForm({ onSaved, onForgotten }) {
  showKeyState();

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showProblem(new ApiProblem({ title: "No API key", detail: "Paste the key (it starts with dsk_) into the API key box." }));
      return;
    }
    saveApiKey(key);
    clearProblem();
    showKeyState();
    onSaved();
  });

  $("forget-key").addEventListener("click", () => {
    forgetApiKey();
    onForgotten();
    showKeyState();
  });
}
