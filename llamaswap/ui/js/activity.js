// Activity: the live request table (from SSE `metrics`), sortable, with a capture viewer.

import {
  apiUrl, bytesToText, decodeBase64, formatCount, formatDuration, formatRate, formatTime, h,
  replaceChildren, throttled,
} from "./dom.js";
import { store, subscribe } from "./events.js";

const tok = (e, k) => (e.tokens ? e.tokens[k] : undefined);

const COLUMNS = [
  { key: "id", label: "ID", value: (e) => e.id, cell: (e) => String(e.id), num: true },
  { key: "time", label: "Time", value: (e) => Date.parse(e.timestamp) || 0,
    cell: (e) => formatTime(e.timestamp) },
  { key: "model", label: "Model", value: (e) => e.model || "", cell: (e) => e.model },
  { key: "path", label: "Path", value: (e) => e.req_path || "", cell: (e) => e.req_path },
  { key: "status", label: "Status", value: (e) => e.resp_status_code, num: true,
    cell: (e) => h("span", { class: e.resp_status_code === 200 ? "ok" : "bad" },
      String(e.resp_status_code)) },
  { key: "in", label: "In", title: "prompt tokens", value: (e) => tok(e, "input_tokens"),
    cell: (e) => formatCount(tok(e, "input_tokens")), num: true },
  { key: "out", label: "Out", title: "generated tokens", value: (e) => tok(e, "output_tokens"),
    cell: (e) => formatCount(tok(e, "output_tokens")), num: true },
  { key: "cached", label: "Cached", title: "cached prompt tokens",
    value: (e) => tok(e, "cache_tokens"), cell: (e) => formatCount(tok(e, "cache_tokens")),
    num: true },
  { key: "pps", label: "Prompt", title: "prompt processing speed",
    value: (e) => tok(e, "prompt_per_second"), cell: (e) => formatRate(tok(e, "prompt_per_second")),
    num: true },
  { key: "tps", label: "Gen", title: "generation speed", value: (e) => tok(e, "tokens_per_second"),
    cell: (e) => formatRate(tok(e, "tokens_per_second")), num: true },
  { key: "duration", label: "Duration", value: (e) => e.duration_ms,
    cell: (e) => formatDuration(e.duration_ms), num: true },
];

let sortKey = "id";
let sortDesc = true;

function compare(col) {
  return (a, b) => {
    const va = col.value(a);
    const vb = col.value(b);
    const r = typeof va === "string" ? va.localeCompare(vb) : (va ?? -Infinity) - (vb ?? -Infinity);
    return sortDesc ? -r : r;
  };
}

function isSSE(text, contentType) {
  return (contentType || "").toLowerCase().includes("event-stream") || /^\s*data:/.test(text);
}

// The text a streamed chat answer adds up to (OpenAI and Anthropic chunk shapes).
function assembleSSE(text) {
  let content = "";
  let reasoning = "";
  for (const line of text.split("\n")) {
    const m = /^data:\s?(.*)$/.exec(line.trim());
    if (!m || m[1] === "[DONE]") continue;
    let chunk;
    try {
      chunk = JSON.parse(m[1]);
    } catch {
      continue;
    }
    const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
    content += delta.content || (chunk.delta && chunk.delta.text) || "";
    reasoning += delta.reasoning_content || delta.reasoning || "";
  }
  return { content, reasoning };
}

function prettyBody(text, contentType) {
  if (isSSE(text, contentType)) return text.split("\n").filter((l) => l.trim() !== "").join("\n");
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function headerValue(headers, name) {
  if (!headers) return "";
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name);
  return key ? headers[key] : "";
}

function headersTable(headers) {
  if (!headers) return h("p", { class: "muted" }, "not captured");
  const keys = Object.keys(headers).sort();
  return h("table", { class: "kv" }, h("tbody", {}, keys.map((k) =>
    h("tr", {}, h("th", {}, k), h("td", {}, String(headers[k]))))));
}

function bodyView(b64, headers, label) {
  if (b64 === null || b64 === undefined) return h("p", { class: "muted" }, "not captured");
  let bytes;
  try {
    bytes = decodeBase64(b64);
  } catch {
    return h("p", { class: "error-text" }, "body is not valid base64");
  }
  if (bytes.length === 0) return h("p", { class: "muted" }, "empty");
  const ct = headerValue(headers, "content-type");
  if (/^image\/(png|jpeg|gif|webp)/i.test(ct)) {
    return h("img", { class: "capture-img", alt: label, src: `data:${ct.split(";")[0]};base64,${b64}` });
  }
  const text = bytesToText(bytes);
  const body = h("pre", { class: "code capture-body" }, prettyBody(text, ct));
  if (!isSSE(text, ct)) return body;
  const { content, reasoning } = assembleSSE(text);
  return h("div", {},
    reasoning ? h("div", { class: "assembled" }, h("b", {}, "Reasoning: "), reasoning) : null,
    content ? h("div", { class: "assembled" }, h("b", {}, "Streamed answer: "), content) : null,
    body);
}

let dialog = null;

export async function openCapture(id) {
  if (!dialog) {
    dialog = h("dialog", { class: "capture", id: "capture-dialog" });
    document.body.appendChild(dialog);
    dialog.addEventListener("click", (ev) => {
      if (ev.target === dialog) dialog.close();
    });
  }
  const content = h("div", { class: "capture-content" }, h("p", { class: "muted" }, "Loading…"));
  const closeBtn = h("button", { class: "btn", onclick: () => dialog.close() }, "Close");
  replaceChildren(dialog,
    h("div", { class: "capture-head" }, h("h2", {}, `Capture #${id}`),
      h("span", { class: "spacer" }), closeBtn),
    content);
  if (!dialog.open) dialog.showModal();
  let cap;
  try {
    const resp = await fetch(apiUrl(`/api/captures/${encodeURIComponent(id)}`));
    if (resp.status === 404) {
      replaceChildren(content, h("p", { class: "muted" }, "No capture for this request (it may have been evicted)."));
      return;
    }
    if (!resp.ok) throw new Error(`${resp.status} ${(await resp.text()).trim()}`);
    cap = await resp.json();
  } catch (err) {
    replaceChildren(content, h("p", { class: "error-text" }, `Could not load capture: ${err.message}`));
    return;
  }
  replaceChildren(content,
    h("p", {}, h("code", {}, cap.req_path || "")),
    h("details", { open: true }, h("summary", {}, "Request body"),
      bodyView(cap.req_body, cap.req_headers, "request body")),
    h("details", { open: true }, h("summary", {}, "Response body"),
      bodyView(cap.resp_body, cap.resp_headers, "response body")),
    h("details", {}, h("summary", {}, "Request headers"), headersTable(cap.req_headers)),
    h("details", {}, h("summary", {}, "Response headers"), headersTable(cap.resp_headers)),
  );
}

export function mount(root) {
  const filter = h("input", {
    type: "search", id: "activity-filter", placeholder: "Filter by model or path…",
    "aria-label": "Filter",
  });
  const count = h("span", { class: "muted" });
  const headRow = h("tr");
  const body = h("tbody", { id: "activity-rows" });
  const empty = h("p", { class: "muted empty" }, "No requests yet. They appear here as they finish.");

  root.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Activity"), count, h("span", { class: "spacer" }),
      filter),
    h("section", { class: "card" },
      h("div", { class: "table-wrap" },
        h("table", { class: "grid activity" }, h("thead", {}, headRow), body)),
      empty),
  );

  function sortBy(col) {
    if (sortKey === col.key) sortDesc = !sortDesc;
    else {
      sortKey = col.key;
      sortDesc = col.num || col.key === "time"; // numbers and times: biggest/newest first
    }
    renderHead();
    render();
  }

  function renderHead() {
    replaceChildren(headRow, COLUMNS.map((col) => {
      const active = col.key === sortKey;
      return h("th", {
        class: `${col.num ? "num " : ""}sortable`,
        title: col.title ? `${col.title} (click to sort)` : "click to sort",
        "aria-sort": active ? (sortDesc ? "descending" : "ascending") : "none",
        "data-key": col.key,
        tabindex: "0",
        onclick: () => sortBy(col),
        onkeydown: (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            sortBy(col);
          }
        },
      }, col.label, active ? (sortDesc ? " ▾" : " ▴") : "");
    }), h("th", {}, "Capture"));
  }

  const render = throttled(() => {
    const needle = filter.value.trim().toLowerCase();
    let rows = store.metrics;
    if (needle) {
      rows = rows.filter((e) => `${e.model} ${e.req_path} ${e.resp_status_code}`.toLowerCase()
        .includes(needle));
    }
    const col = COLUMNS.find((c) => c.key === sortKey) || COLUMNS[0];
    rows = rows.slice().sort(compare(col));
    replaceChildren(body, rows.map((e) => h("tr", { "data-id": String(e.id) },
      COLUMNS.map((c) => h("td", { class: c.num ? "num" : null, "data-label": c.label }, c.cell(e))),
      h("td", { "data-label": "Capture" }, e.has_capture
        ? h("button", { class: "btn small", onclick: () => openCapture(e.id) }, "View")
        : h("span", { class: "muted" }, "-")))));
    empty.hidden = rows.length > 0;
    count.textContent = `${store.metrics.length} request${store.metrics.length === 1 ? "" : "s"}`;
  });

  filter.addEventListener("input", render);
  renderHead();
  render();
  const off = subscribe((what) => {
    if (what === "metrics" || what === "reset") render();
  });
  return () => {
    off();
    if (dialog && dialog.open) dialog.close();
  };
}
