/* The open analysis' documents: PDF report and FHIR bundle, fetched with the key and shown
   from a blob: URL. */

import { request } from "./api.js";
import { $, el } from "./dom.js";
import { clearProblem, showProblem } from "./problem.js";
import { state } from "./state.js";

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

export function bindDocuments() {
  $("open-report").addEventListener("click", () => {
    if (state.current) openBlob(`/v1/analyses/${encodeURIComponent(state.current)}/report.pdf`, `dermasentinel-${state.current}.pdf`);
  });
  $("open-fhir").addEventListener("click", () => {
    if (state.current) openBlob(`/v1/analyses/${encodeURIComponent(state.current)}/fhir`, `dermasentinel-${state.current}.fhir.json`);
  });
}
