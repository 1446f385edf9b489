/* Which model output a clinician may act on. The banner wording comes from the API. */

// Only trained weights give output a clinician may act on: anything else is shown neutral.
export const meaningful = (weights) => weights === "trained";

export function weightsBanner(model) {
  if (!model || meaningful(model.weights)) return null;
  return model.banner || `MODEL WEIGHTS ${String(model.weights || "unknown").toUpperCase()} — output is not clinically meaningful`;
}
