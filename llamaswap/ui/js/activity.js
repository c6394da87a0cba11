// Activity: the store's requests page by page from GET /api/metrics/activity (filters: model,
// API key name, time range; sorting on the server), a tokens-per-second chart over the range
// (GET /api/activity/speed: the store's means per time bucket, over every matching row), the
// requests in flight with a Cancel button each (the /api/events in-flight table), and a
// capture viewer.

import {
  apiUrl, bytesToText, decodeBase64, formatCount, formatDuration, formatRate, formatTime, h,
  replaceChildren, throttled,
} from "./dom.js";
import { colorFor, legend, lineChart, widthOf } from "./charts.js";
import { store, subscribe } from "./events.js";

const tok = (e, k) => (e.tokens ? e.tokens[k] : undefined);

// `sort`: the server's sort key (GET /api/metrics/activity?sort=)
const COLUMNS = [
  { key: "id", sort: "id", label: "ID", cell: (e) => String(e.id), num: true },
  { key: "time", sort: "time", label: "Time", cell: (e) => formatTime(e.timestamp) },
  { key: "model", sort: "model", label: "Model", cell: (e) => e.model },
  { key: "key", sort: "key", label: "Key", title: "API key name", cell: (e) => e.key ?? "-" },
  { key: "path", sort: "req_path", label: "Path", cell: (e) => e.req_path },
  { key: "status", sort: "resp_status_code", label: "Status", num: true,
    cell: (e) => h("span", { class: e.resp_status_code === 200 ? "ok" : "bad", title: e.error_msg || null },
      String(e.resp_status_code)) },
  { key: "in", sort: "prompt", label: "In", title: "prompt tokens",
    cell: (e) => formatCount(tok(e, "input_tokens")), num: true },
  { key: "out", sort: "generated", label: "Out", title: "generated tokens",
    cell: (e) => formatCount(tok(e, "output_tokens")), num: true },
  { key: "cached", sort: "cached", label: "Cached", title: "cached prompt tokens",
    cell: (e) => formatCount(tok(e, "cache_tokens")), num: true },
  { key: "pps", sort: "prompt_speed", label: "Prompt", title: "prompt processing speed",
    cell: (e) => formatRate(tok(e, "prompt_per_second")), num: true },
  { key: "tps", sort: "gen_speed", label: "Gen", title: "generation speed",
    cell: (e) => formatRate(tok(e, "tokens_per_second")), num: true },
  { key: "duration", sort: "duration", label: "Duration",
    cell: (e) => formatDuration(e.duration_ms), num: true },
];

const RANGES = [
  { id: "all", label: "all time", ms: 0 },
  { id: "15m", label: "last 15 min", ms: 15 * 60000 },
  { id: "1h", label: "last hour", ms: 3600000 },
  { id: "24h", label: "last 24 h", ms: 24 * 3600000 },
  { id: "7d", label: "last 7 days", ms: 7 * 24 * 3600000 },
  { id: "custom", label: "from … to …", ms: 0 },
];

// What the page shows survives page switches.
const view = { sortKey: "id", sortDesc: true, page: 1, limit: 25, model: "", key: "", range: "all", from: "", to: "" };

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

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

// [start, end] in ms for the range chosen (null: unbounded).
function rangeBounds() {
  const r = RANGES.find((x) => x.id === view.range) || RANGES[0];
  if (r.id === "custom") {
    const a = Date.parse(view.from);
    const b = Date.parse(view.to);
    return [Number.isNaN(a) ? null : a, Number.isNaN(b) ? null : b];
  }
  return r.ms ? [Date.now() - r.ms, null] : [null, null];
}

function query(extra) {
  const q = new URLSearchParams();
  const [start, end] = rangeBounds();
  if (start !== null) q.set("start", new Date(start).toISOString());
  if (end !== null) q.set("end", new Date(end).toISOString());
  if (view.model) q.append("model", view.model);
  if (view.key) q.append("key", view.key);
  for (const [k, v] of Object.entries(extra || {})) q.set(k, String(v));
  return q;
}

async function getJSON(path) {
  const resp = await fetch(apiUrl(path), { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) {
    let msg = (await resp.text()).trim();
    try {
      const j = JSON.parse(msg);
      msg = (j.error && (j.error.message || j.error)) || msg;
    } catch {
      // text
    }
    throw new Error(`${resp.status} ${msg}`);
  }
  return resp.json();
}

// Generation speed over time: each model's mean t/s per bucket (about 60 across the range),
// computed by the store (GET /api/activity/speed) over every matching row.
export function speedSeries(got, models) {
  return got.series.map((se) => ({
    name: se.model, color: colorFor(models.indexOf(se.model)),
    points: se.points.map(([t, mean]) => [t * 1000, mean]),
  }));
}

export function mount(root) {
  const modelSelect = h("select", { id: "activity-model", "aria-label": "Model" });
  const keyInput = h("input", { type: "search", id: "activity-key", placeholder: "key name", "aria-label": "API key name", list: "activity-keys", value: view.key });
  const keyList = h("datalist", { id: "activity-keys" });
  const rangeSelect = h("select", { id: "activity-range", "aria-label": "Time range" },
    RANGES.map((r) => h("option", { value: r.id }, r.label)));
  rangeSelect.value = view.range;
  const fromInput = h("input", { type: "datetime-local", id: "activity-from", "aria-label": "From", value: view.from });
  const toInput = h("input", { type: "datetime-local", id: "activity-to", "aria-label": "To", value: view.to });
  const custom = h("span", { class: "custom-range" }, fromInput, " – ", toInput);
  const count = h("span", { class: "muted", id: "activity-count" });
  const headRow = h("tr");
  const body = h("tbody", { id: "activity-rows" });
  const empty = h("p", { class: "muted empty" }, "No requests yet. They appear here as they finish.");
  const error = h("div", { class: "error-text", role: "alert", id: "activity-error" });
  const prev = h("button", { class: "btn small", id: "activity-prev" }, "‹ Newer");
  const next = h("button", { class: "btn small", id: "activity-next" }, "Older ›");
  const pageInfo = h("span", { class: "muted", id: "activity-page" });
  const limitSelect = h("select", { id: "activity-limit", "aria-label": "Rows per page" },
    [25, 50, 100, 250].map((n) => h("option", { value: String(n) }, `${n} per page`)));
  limitSelect.value = String(view.limit);
  const chartBox = h("div", { class: "speed-chart", id: "activity-chart" });
  const chartNote = h("span", { class: "muted" });
  const flightBody = h("tbody", { id: "inflight-rows" });
  const flightHead = h("thead", {}, h("tr", {}, ["ID", "Model", "Path", "Key", "Elapsed", "Bytes", ""].map((x) => h("th", {}, x))));
  const flightEmpty = h("p", { class: "muted empty", id: "inflight-empty" }, "Nothing in flight.");

  root.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Activity"), count, h("span", { class: "spacer" }),
      h("label", { class: "field" }, "Model ", modelSelect),
      h("label", { class: "field" }, "Key ", keyInput, keyList),
      h("label", { class: "field" }, "Range ", rangeSelect), custom),
    error,
    h("section", { class: "card", id: "inflight-card" },
      h("h2", {}, "In flight"),
      h("div", { class: "table-wrap" }, h("table", { class: "grid inflight" },
        flightHead,
        flightBody)),
      flightEmpty),
    h("section", { class: "card chart-card" },
      h("div", { class: "perf-head" }, h("h2", {}, "Generation speed (tokens/s)"), chartNote), chartBox),
    h("section", { class: "card" },
      h("div", { class: "table-wrap" },
        h("table", { class: "grid activity" }, h("thead", {}, headRow), body)),
      empty,
      h("div", { class: "pager" }, prev, pageInfo, next, h("span", { class: "spacer" }), limitSelect)),
  );

  let alive = true;
  let total = 0;
  let pages = 1;
  let seq = 0; // answers to older requests are dropped

  function sortBy(col) {
    if (view.sortKey === col.key) view.sortDesc = !view.sortDesc;
    else {
      view.sortKey = col.key;
      view.sortDesc = col.num || col.key === "time"; // numbers and times: biggest/newest first
    }
    view.page = 1;
    renderHead();
    load();
  }

  function renderHead() {
    replaceChildren(headRow, COLUMNS.map((col) => {
      const active = col.key === view.sortKey;
      return h("th", {
        class: `${col.num ? "num " : ""}sortable`,
        title: col.title ? `${col.title} (click to sort)` : "click to sort",
        "aria-sort": active ? (view.sortDesc ? "descending" : "ascending") : "none",
        "data-key": col.key,
        tabindex: "0",
        onclick: () => sortBy(col),
        onkeydown: (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            sortBy(col);
          }
        },
      }, col.label, active ? (view.sortDesc ? " ▾" : " ▴") : "");
    }), h("th", {}, "Capture"));
  }

  async function load() {
    const mine = ++seq;
    const col = COLUMNS.find((c) => c.key === view.sortKey) || COLUMNS[0];
    const q = query({ page: view.page, limit: view.limit, sort: col.sort, order: view.sortDesc ? "desc" : "asc" });
    let got;
    try {
      got = await getJSON(`/api/metrics/activity?${q}`);
    } catch (err) {
      if (mine === seq) error.textContent = `Could not load activity: ${err.message}`;
      return;
    }
    if (mine !== seq || !alive) return;
    error.textContent = "";
    total = got.total;
    pages = Math.max(1, got.total_pages);
    if (view.page > pages) {
      view.page = pages;
      load();
      return;
    }
    replaceChildren(body, got.data.map((e) => h("tr", { "data-id": String(e.id) },
      COLUMNS.map((c) => h("td", { class: c.num ? "num" : null, "data-label": c.label }, c.cell(e))),
      h("td", { "data-label": "Capture" }, e.has_capture
        ? h("button", { class: "btn small", onclick: () => openCapture(e.id) }, "View")
        : h("span", { class: "muted" }, "-")))));
    for (const e of got.data) addKey(e.key);
    empty.hidden = got.data.length > 0;
    count.textContent = `${total.toLocaleString()} request${total === 1 ? "" : "s"}`;
    pageInfo.textContent = `page ${view.page} of ${pages}`;
    prev.disabled = view.page <= 1;
    next.disabled = view.page >= pages;
  }

  const keysSeen = new Set();
  function addKey(k) {
    if (!k || keysSeen.has(k)) return;
    keysSeen.add(k);
    keyList.append(h("option", { value: k }));
  }

  let chartSeq = 0; // as seq, for the chart's answers
  // how soon new requests redraw the chart: a tenth of a bucket, 1 s to a minute (a week's
  // chart over a big store costs the proxy a second of CPU; its buckets are hours wide)
  let chartEvery = 1000;
  async function loadChart() {
    const mine = ++chartSeq;
    try {
      const got = await getJSON(`/api/activity/speed?${query({ buckets: 60 })}`);
      if (!alive || mine !== chartSeq) return;
      chartEvery = Math.min(60000, Math.max(1000, got.bucket_s * 100));
      const t0 = got.start * 1000;
      const t1 = Math.max(got.end * 1000, t0 + 60000);
      const series = speedSeries(got, store.models.map((m) => m.id));
      chartNote.textContent = `${got.count.toLocaleString()} request${got.count === 1 ? "" : "s"} with a speed`;
      replaceChildren(chartBox, lineChart({
        t0, t1, series, width: Math.min(widthOf(chartBox, 800), 1400), height: 170,
        gap: got.bucket_s * 1000 * 3, label: "generation speed",
        empty: "No request with a generation speed in this range.",
      }), legend(series));
    } catch (err) {
      if (mine === chartSeq) chartNote.textContent = `could not load the chart: ${err.message}`;
    }
  }

  function renderModels() {
    const ids = store.models.map((m) => m.id);
    if (view.model && !ids.includes(view.model)) ids.push(view.model);
    const sig = ids.join("\n");
    if (modelSelect.dataset.sig === sig) return;
    modelSelect.dataset.sig = sig;
    replaceChildren(modelSelect, h("option", { value: "" }, "all models"), ids.map((id) => h("option", { value: id }, id)));
    modelSelect.value = view.model;
  }

  function renderFlight() {
    const rows = [...store.inflightTable.values()].sort((a, b) => String(a.id).localeCompare(String(b.id)));
    replaceChildren(flightBody, rows.map((r) => {
      const cancel = h("button", { class: "btn small danger", "data-cancel": r.id }, "Cancel");
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try {
          const resp = await fetch(apiUrl(`/api/inflight/${encodeURIComponent(r.id)}/cancel`), { method: "POST" });
          if (!resp.ok && resp.status !== 404) error.textContent = `cancel failed: ${resp.status}`;
        } catch (err) {
          error.textContent = `cancel failed: ${err.message || err}`;
        }
      });
      return h("tr", { "data-inflight": r.id },
        h("td", { "data-label": "ID" }, h("code", {}, String(r.id))),
        h("td", { "data-label": "Model" }, r.model),
        h("td", { "data-label": "Path" }, `${r.method || ""} ${r.req_path || ""}`),
        h("td", { "data-label": "Key" }, r.key ?? "-"),
        h("td", { "data-label": "Elapsed", class: "num", "data-elapsed": String(r.elapsed_ms ?? 0) },
          formatDuration((r.elapsed_ms || 0) + (Date.now() - (r._seen || Date.now())))),
        h("td", { "data-label": "Bytes", class: "num" }, formatCount(r.resp_bytes)),
        h("td", { class: "actions" }, cancel));
    }));
    flightEmpty.hidden = rows.length > 0;
    flightHead.hidden = rows.length === 0;
  }

  function filtersChanged() {
    view.page = 1;
    custom.hidden = view.range !== "custom";
    load();
    loadChart();
  }

  modelSelect.addEventListener("change", () => {
    view.model = modelSelect.value;
    filtersChanged();
  });
  keyInput.addEventListener("change", () => {
    view.key = keyInput.value.trim();
    filtersChanged();
  });
  rangeSelect.addEventListener("change", () => {
    view.range = rangeSelect.value;
    if (view.range === "custom" && !view.from) {
      view.from = fromInput.value = localInput(Date.now() - 3600000);
      view.to = toInput.value = localInput(Date.now() + 60000);
    }
    filtersChanged();
  });
  for (const input of [fromInput, toInput]) {
    input.addEventListener("change", () => {
      view.from = fromInput.value;
      view.to = toInput.value;
      filtersChanged();
    });
  }
  prev.addEventListener("click", () => {
    view.page = Math.max(1, view.page - 1);
    load();
  });
  next.addEventListener("click", () => {
    view.page = Math.min(pages, view.page + 1);
    load();
  });
  limitSelect.addEventListener("change", () => {
    view.limit = Number(limitSelect.value);
    view.page = 1;
    load();
  });

  custom.hidden = view.range !== "custom";
  renderHead();
  renderModels();
  renderFlight();
  const reloadSoon = throttled(load);
  let chartTimer = null;
  const off = subscribe((what) => {
    if (what === "activity" || what === "reset") {
      // a new row: the first page of a range that reaches now changes
      const [, end] = rangeBounds();
      if (what === "reset" || (view.page === 1 && end === null)) reloadSoon();
      if (!chartTimer) chartTimer = setTimeout(() => { chartTimer = null; loadChart(); }, chartEvery);
    } else if (what === "metrics") {
      for (const e of payload || []) addKey(e.key); // a key name to pick, as rows finish
    } else if (what === "models") {
      renderModels();
    } else if (what === "inflight") {
      renderFlight();
    }
  });
  const ticker = setInterval(() => {
    if (store.inflightTable.size) renderFlight();
  }, 1000);
  if (store.connection === "open") {
    load();
    loadChart();
  }
  return () => {
    alive = false;
    off();
    clearInterval(ticker);
    clearTimeout(chartTimer);
    if (dialog && dialog.open) dialog.close();
  };
}
