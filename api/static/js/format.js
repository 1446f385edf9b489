/* Formatting of numbers, codes, times and durations for display. */

export const pct = (value) => `${(value * 100).toFixed(1)}%`;
export const num = (value, digits = 2) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
export const label = (code) => String(code || "").replace(/_/g, " ");

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return null;
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.round((seconds - hours * 3600) / 60)} min`;
}
