/* Which model output a clinician may act on, and how output that is not is marked. The banner
   wording comes from the API (`model.banner`, `result.notice`). */

import { el } from "./dom.js";

// Only trained weights give output a clinician may act on: anything else is shown neutral
// (never green or red) and carries the untrained mark.
export const meaningful = (weights) => weights === "trained";

export function weightsBanner(model) {
  if (!model || meaningful(model.weights)) return null;
  return model.banner || `MODEL WEIGHTS ${String(model.weights || "unknown").toUpperCase()} — output is not clinically meaningful`;
}

/** The mark beside every diagnosis, band or disposition from weights that are not trained
    (null for trained weights); `notice` is the API's sentence for it, when it gave one. */
export function untrainedMark(weights, notice) {
  if (meaningful(weights)) return null;
  const status = String(weights || "unknown");
  const text = notice || weightsBanner({ weights: status });
  return el("span", { class: "untrained-mark", "data-weights": status, title: text, "aria-label": text },
    `${status.toUpperCase()} MODEL`);
}

/** The class that colours a disposition: its own for trained weights, neutral otherwise. */
export function dispositionClass(code, weights) {
  return meaningful(weights) && code ? `disp disp-${code}` : "disp disp-neutral";
}
