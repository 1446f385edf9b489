/* The dispositions and their reason codes in words, as the API words them (GET
   /v1/dispositions, the reports' own sentences): results carry stable codes, the page shows
   these. Loaded once per page; until it has loaded (or when it cannot be), a code is shown
   as itself with spaces. The page keeps no copy of any clinical sentence. */

import { getJson } from "./api.js";
import { label } from "./format.js";

let words = null;
let loading = null;

/** Load the words (once; a failed load is tried again next time). Never throws. */
export function loadWords() {
  if (words) return Promise.resolve(words);
  if (!loading) {
    loading = getJson("/v1/dispositions")
      .then((body) => {
        words = body;
        return body;
      })
      .catch(() => {
        loading = null;
        return null;
      });
  }
  return loading;
}

function find(list, code) {
  const entry = words && (words[list] || []).find((item) => item.code === code);
  return entry ? entry.text : null;
}

/** "Urgent referral" for urgent_referral; "No disposition recorded" for none. */
export function dispositionText(code) {
  if (!code) return "No disposition recorded";
  return find("dispositions", code) || label(code);
}

export function reasonText(code) {
  return find("reasons", code) || label(code);
}

/** Said of every result from weights that are not trained, or of one with no disposition. */
export function sentence(kind) {
  return (words && words[kind]) || "";
}

/** The dispositions in triage order (most urgent first). */
export function dispositionOrder() {
  return words ? words.dispositions.map((item) => item.code) : ["urgent_referral", "clinician_review", "routine"];
}
