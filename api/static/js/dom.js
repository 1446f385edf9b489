/* DOM helpers. Untrusted text is only ever set with textContent, never as markup. */

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** One <dt>/<dd> pair in a <dl class="facts">, with an optional 0..1 bar. */
export function fact(list, name, value, bar) {
  list.append(el("dt", {}, name));
  const dd = el("dd", {}, value);
  if (bar !== undefined && bar !== null) {
    const track = el("span", { class: "bar", "aria-hidden": "true" });
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, bar)) * 100}%`;
    track.append(fill);
    dd.append(track);
  }
  list.append(dd);
}

/** True when a key press goes to a text field, where single-letter shortcuts must not fire. */
export function isTyping(event) {
  const target = event.target;
  return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
