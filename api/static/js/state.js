/* What the panels share: the open analysis, the open batch and its worklist position.
   State private to one panel (timers, page cursors) lives in that panel's module. */

export const state = {
  current: null, // id of the analysis on show
  reportDeadline: 0, // until when the open analysis keeps polling for its report
  batch: null, // { id, header, items, summary } on the batch page
  filter: "all", // worklist filter: all | review | rejected
  cursor: 0, // index into the filtered worklist
  worklist: null, // { batchId, ids } when a case was opened from a batch
};
