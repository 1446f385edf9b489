/* Live progress from the API's Server-Sent Events streams (…/events), read with fetch() so
   the API key travels in the Authorization header: EventSource cannot send one, and a key must
   never go in a URL. A dropped connection is resumed with Last-Event-ID; when the stream cannot
   be had the caller is told, and polls instead. */

import { apiKey } from "./api.js";

const NETWORK_RETRIES = 3;

/** Follow the stream at `path`: `onEvent(type, data, id)` for each event (`data` parsed from
    JSON), `onFail(error)` when it cannot tell more (an error answer, the network gone after a
    few tries, or nothing left after the last event seen). The stream is over after an event
    whose data says `final`. Returns `stop()`. */
export function follow(path, { onEvent, onFail }) {
  const controller = new AbortController();
  let lastId = null;
  let retryMs = 2000;
  let failures = 0;
  let finished = false;
  let stopped = false;

  function dispatch(event) {
    if (event.id !== null) lastId = event.id;
    if (!event.data.length) return;
    const data = JSON.parse(event.data.join("\n"));
    if (data.final) finished = true;
    onEvent(event.type, data, event.id);
  }

  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || stopped) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          dispatch(event);
          event = { type: "message", data: [], id: null };
          if (stopped) return;
          continue;
        }
        if (line.startsWith(":")) continue; // a heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") event.data.push(text);
        else if (field === "event") event.type = text;
        else if (field === "id") event.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) retryMs = Number(text);
      }
    }
  }

  // A network error: reconnect after retryMs (when `again`), until NETWORK_RETRIES in a row.
  function retryOrFail(error, again) {
    failures += 1;
    if (failures > NETWORK_RETRIES) onFail(error);
    else if (again) setTimeout(connect, retryMs);
  }

  async function connect() {
    const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    } catch (error) {
      if (!stopped) retryOrFail(error, true);
      return;
    }
    if (response.status === 204) { // resumed after the final event: the caller reads the outcome itself
      onFail(new Error("the stream has ended"));
      return;
    }
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      onFail(new Error(`HTTP ${response.status}`));
      return;
    }
    failures = 0;
    try {
      await read(response.body);
    } catch (error) {
      if (!stopped) retryOrFail(error, !finished);
      return;
    }
    // The server ends a stream after its final event, or after a while (then: resume).
    if (!stopped && !finished) setTimeout(connect, retryMs);
  }

  connect();
  return () => {
    stopped = true;
    controller.abort();
  };
}
