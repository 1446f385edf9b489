/* Keyboard shortcuts: j/k/arrows/Enter on the worklist, j/k/Escape on a case opened from it. */

import { stepCase } from "./case-nav.js";
import { $, isTyping } from "./dom.js";
import { state } from "./state.js";
import { moveCursor, openCase } from "./worklist.js";

function onKey(event) {
  if (event.altKey || event.ctrlKey || event.metaKey || isTyping(event)) return;
  // Enter on a button or link is that control's own click.
  if (event.key === "Enter" && event.target.closest && event.target.closest("button, a")) return;
  if (!$("view-batch").hidden) {
    if (event.key === "j" || event.key === "ArrowDown") {
      moveCursor(1);
    } else if (event.key === "k" || event.key === "ArrowUp") {
      moveCursor(-1);
    } else if (event.key === "Enter") {
      openCase();
    } else {
      return;
    }
    event.preventDefault();
  } else if (!$("view-analyses").hidden && state.worklist) {
    if (event.key === "j") stepCase(1);
    else if (event.key === "k") stepCase(-1);
    else if (event.key === "Escape") location.hash = $("case-back").getAttribute("href");
    else return;
    event.preventDefault();
  }
}

export function bindKeyboard() {
  document.addEventListener("keydown", onKey);
}
