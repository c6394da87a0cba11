// Timeline: one row per model with its states over time (starting, ready, sleeping, stopping,
// backoff) and each request as a tick, swaps labelled with their load time and what they
// evicted and why. History from GET /api/timeline, then live from /api/events. Drawn on one
// canvas: with 20 000 requests in view a frame draws at most one tick per pixel column.

import { apiUrl, formatDuration, h, replaceChildren, throttled } from "./dom.js";
import { bisect, clockLabel, timeTicks } from "./charts.js";
import { store, subscribe } from "./events.js";

const SPANS = [1, 5, 15, 60]; // minutes (1: a swap up close, its load a band you can see)
const FETCH_SPAN = 60 * 60 * 1000; // history is fetched an hour at a time
const ROW_H = 36;
const AXIS_H = 22;
const LIVE_REFRESH_MS = 500;
// row layout: a lane for labels, the state band, the request ticks
const LABEL_Y = 11;
const BAND_Y = 14;
const BAND_H = 10;
const TICK_Y = 26;
const TICK_H = 8;

const STATE_VARS = {
  starting: "--tl-starting", ready: "--tl-ready", sleeping: "--tl-sleeping",
  stopping: "--tl-stopping", backoff: "--tl-backoff",
};
export const REASON_TEXT = {
  group: "swap group", matrix: "matrix", memory: "memory", ttl: "TTL", unload: "unload",
  crash: "crash", exit: "exited", health: "health watch", maxwait: "max wait",
  profile: "profile", sleep: "sleep", shutdown: "shutdown", retire: "config reload",
  swap: "swap", "start-failed": "start failed", restart: "restart",
};

function reasonText(r) {
  return REASON_TEXT[r] || r;
}

let spanMin = Number(localStorage.getItem("llamaswap.timeline.span")) || 15;
if (!SPANS.includes(spanMin)) spanMin = 15;

// Everything the page knows, kept across page switches; dropped on reconnect.
const data = {
  loaded: false,
  from: 0, // ms: the history is loaded from here to now
  historySince: 0, // ms: how far back the server's state history reaches
  initial: {}, // model -> state at `from`
  changes: new Map(), // seq -> change (t in ms)
  reqs: new Map(), // model -> rows sorted by start time (row[1], ms)
  reqIds: new Set(),
  models: [],
  fetching: null,
  truncatedBefore: 0, // ms: the store had more rows than one answer carries before this
  early: [], // live activity entries that came while the first history was loading
  version: 0, // bumped whenever changes, initial or from change: derive() rebuilds then
};

function resetData() {
  Object.assign(data, {
    loaded: false, from: 0, historySince: 0, initial: {}, changes: new Map(), reqs: new Map(),
    reqIds: new Set(), models: [], fetching: null, truncatedBefore: 0, early: [],
    version: data.version + 1,
  });
}

function addRow(row) {
  if (data.reqIds.has(row[0])) return false;
  data.reqIds.add(row[0]);
  let list = data.reqs.get(row[3]);
  if (!list) data.reqs.set(row[3], (list = []));
  if (!list.length || list[list.length - 1][1] <= row[1]) list.push(row);
  else list.splice(bisect(list, row[1], (r) => r[1]) + 1, 0, row);
  return true;
}

function addChange(c) {
  data.changes.set(c.seq, { ...c, t: c.t * 1000 });
  data.version += 1;
}

// What the state history implies, rebuilt only when it changes: a frame no longer sorts and
// walks every change (that made a frame 35-141 ms with 20 000 of them in the history).
// {models: seen in the history, bandMap: model -> bands by time (an open band's t1 is
// Infinity: it lasts until now), nextOf / prevOf: seq -> the same model's next / previous
// change}.
let derived = null;

function derive() {
  if (derived && derived.version === data.version) return derived;
  const changes = Array.from(data.changes.values()).sort((a, b) => a.seq - b.seq);
  const nextOf = new Map();
  const prevOf = new Map();
  const lastOf = new Map();
  for (const c of changes) {
    const prev = lastOf.get(c.model);
    if (prev) {
      nextOf.set(prev.seq, c);
      prevOf.set(c.seq, prev);
    }
    lastOf.set(c.model, c);
  }
  const models = new Set([...Object.keys(data.initial), ...lastOf.keys()]);
  derived = {
    version: data.version, models: [...lastOf.keys()], nextOf, prevOf,
    bandMap: bands([...models], data.initial, changes, data.from, Infinity),
  };
  return derived;
}

async function fetchWindow(start, end) {
  const q = `start=${encodeURIComponent(new Date(start).toISOString())}` +
    `&end=${encodeURIComponent(new Date(end).toISOString())}`;
  const resp = await fetch(apiUrl(`/api/timeline?${q}`), { cache: "no-store" });
  if (!resp.ok) throw new Error(`${resp.status} ${(await resp.text()).trim()}`);
  return resp.json();
}

// Load [start, data.from) (or the last hour at first) and merge it in.
async function loadBefore(start) {
  if (data.fetching) return data.fetching;
  const first = !data.loaded;
  const end = first ? Date.now() : data.from;
  data.fetching = (async () => {
    const got = await fetchWindow(start, end);
    if (first) data.models = got.models;
    for (const c of got.changes) addChange(c);
    const fields = got.requests.fields;
    const idx = Object.fromEntries(fields.map((f, i) => [f, i]));
    for (const r of got.requests.rows) {
      // the page's row shape, whatever order the server lists its fields in
      addRow([r[idx.id], r[idx.t] * 1000, r[idx.ms], r[idx.model], r[idx.status], r[idx.path],
        r[idx.in], r[idx.out], r[idx.tps], r[idx.key]]);
    }
    if (got.truncated && got.requests.rows.length) {
      data.truncatedBefore = Math.max(data.truncatedBefore, got.requests.rows[0][idx.t] * 1000);
    }
    data.initial = got.initial;
    data.from = got.start * 1000;
    data.version += 1;
    data.historySince = got.history_since * 1000;
    data.loaded = true;
  })();
  try {
    await data.fetching;
  } finally {
    data.fetching = null;
  }
}

function addLiveEntry(e) {
  const end = Date.parse(e.timestamp);
  if (Number.isNaN(end)) return false;
  const tok = e.tokens || {};
  return addRow([e.id, end - (e.duration_ms || 0), e.duration_ms || 0, e.model, e.resp_status_code,
    e.req_path, tok.input_tokens, tok.output_tokens, tok.tokens_per_second, e.key ?? "-"]);
}

// Per model: [{t0, t1, state, change}] from the state at data.from and the changes after.
export function bands(models, initial, changes, from, now) {
  const out = new Map(models.map((m) => [m, []]));
  const open = new Map();
  for (const m of models) {
    const st = initial[m] || "stopped";
    open.set(m, { t0: from, state: st, change: null });
  }
  for (const c of changes) {
    if (!out.has(c.model)) {
      out.set(c.model, []);
      open.set(c.model, { t0: from, state: "stopped", change: null });
    }
    const cur = open.get(c.model);
    if (c.t < cur.t0) continue;
    if (cur.state !== "stopped") out.get(c.model).push({ ...cur, t1: c.t });
    open.set(c.model, { t0: c.t, state: c.state, change: c });
  }
  for (const [m, cur] of open) {
    if (cur.state !== "stopped" && cur.state !== "shutdown") out.get(m).push({ ...cur, t1: now });
  }
  return out;
}

function swapLabel(change, next) {
  const parts = [];
  if (change.reason === "restart") parts.push(`restart (${change.detail})`);
  if (next && next.state === "ready" && next.load_s !== undefined) {
    parts.push(`${change.from === "sleeping" ? "woke" : "loaded"} in ${formatDuration(next.load_s * 1000)}`);
  } else if (next && next.state === "stopped") {
    parts.push("load failed");
  } else if (!next) {
    parts.push("loading…");
  }
  if (change.evicted && change.evicted.length) {
    const gone = change.evicted.filter((e) => !e.asleep);
    const slept = change.evicted.filter((e) => e.asleep);
    const list = (es) => es.map((e) => `${e.model} (${reasonText(e.reason)})`).join(", ");
    if (gone.length) parts.push(`evicted ${list(gone)}`);
    if (slept.length) parts.push(`put ${list(slept)} to sleep`);
  }
  return parts.join(" · ");
}

function stopLabel(change) {
  const why = reasonText(change.reason);
  return change.for ? `${why} → ${change.for}` : why;
}

function statusClass(status) {
  if (status >= 500 || status === 0) return "err";
  if (status >= 400) return "warn";
  return "ok";
}

export function mount(root) {
  const canvas = h("canvas", { id: "timeline-canvas", tabindex: "0", "aria-label": "Model timeline" });
  const tip = h("div", { class: "tl-tip", id: "timeline-tip", hidden: true, role: "tooltip" });
  const wrap = h("div", { class: "tl-wrap" }, canvas, tip);
  const spanButtons = SPANS.map((m) => h("button", {
    class: "btn seg-btn", "data-span": String(m), "aria-pressed": String(m === spanMin),
    onclick: () => setSpan(m),
  }, `${m} min`));
  const earlier = h("button", { class: "btn", id: "tl-earlier", title: "Earlier (drag or Shift+wheel)" }, "◀");
  const later = h("button", { class: "btn", id: "tl-later", title: "Later" }, "▶");
  const liveBtn = h("button", { class: "btn", id: "tl-live" }, "Live");
  const status = h("span", { class: "muted", id: "tl-status" });
  const note = h("p", { class: "muted tl-note", id: "tl-note" });
  const legendBox = h("div", { class: "legend tl-legend" },
    ["starting", "ready", "sleeping", "stopping", "backoff"].map((st) =>
      h("span", { class: "legend-item" }, h("span", { class: `swatch band-${st}` }), st)),
    h("span", { class: "legend-item" }, h("span", { class: "swatch tick-ok" }), "request ok"),
    h("span", { class: "legend-item" }, h("span", { class: "swatch tick-warn" }), "4xx"),
    h("span", { class: "legend-item" }, h("span", { class: "swatch tick-err" }), "5xx / failed"));

  root.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Timeline"), status, h("span", { class: "spacer" }),
      h("div", { class: "seg-group", role: "group", "aria-label": "Time range" }, spanButtons),
      h("span", { class: "tl-nav" }, earlier, later, liveBtn)), // kept together on a phone
    h("section", { class: "card tl-card" }, wrap, legendBox),
    note,
  );

  let live = true;
  let endT = Date.now(); // right edge when not live
  let alive = true;
  let hoverAt = null; // [x, y] in CSS pixels
  let colors = null;
  let layout = null; // what the last draw placed, for hover
  const stats = (window.__timeline = { draws: 0, drawMs: [], shownAfterMs: {} });

  function span() {
    return spanMin * 60000;
  }

  function view() {
    const t1 = live ? Date.now() : endT;
    return [t1 - span(), t1];
  }

  function readColors() {
    const cs = getComputedStyle(document.documentElement);
    const v = (name) => cs.getPropertyValue(name).trim();
    colors = {
      text: v("--text"), muted: v("--muted"), border: v("--border"), panel2: v("--panel-2"),
      ok: v("--tl-tick-ok"), warn: v("--warn"), err: v("--danger"), now: v("--accent"),
      states: Object.fromEntries(Object.entries(STATE_VARS).map(([k, name]) => [k, v(name)])),
    };
  }

  // Local models (peers' requests are not drawn), and any model the history names (one a
  // reload removed keeps its row while its changes are in view).
  function rowsModels() {
    const local = store.models.length
      ? store.models.filter((m) => !m.peerID).map((m) => m.id) : data.models;
    return Array.from(new Set([...local, ...derive().models])).sort();
  }

  function draw() {
    if (!alive) return;
    const began = performance.now();
    if (!colors) readColors();
    const dpr = window.devicePixelRatio || 1;
    const W = Math.max(240, wrap.clientWidth);
    const models = rowsModels();
    const H = AXIS_H + Math.max(1, models.length) * ROW_H + 6;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr);
      canvas.height = Math.round(H * dpr);
      canvas.style.width = `${W}px`;
      canvas.style.height = `${H}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const labelW = Math.min(170, Math.max(80, Math.round(W * 0.2)));
    const [t0, t1] = view();
    const plotW = W - labelW - 8;
    const x = (t) => labelW + ((t - t0) / (t1 - t0)) * plotW;
    const tAt = (px) => t0 + ((px - labelW) / plotW) * (t1 - t0);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "alphabetic";

    // time axis and grid
    const { ticks, step } = timeTicks(t0, t1, Math.max(2, Math.floor(plotW / 90)));
    ctx.fillStyle = colors.muted;
    ctx.strokeStyle = colors.border;
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    ctx.beginPath();
    for (const t of ticks) {
      const px = Math.round(x(t)) + 0.5;
      ctx.moveTo(px, AXIS_H - 4);
      ctx.lineTo(px, H - 4);
      const text = clockLabel(t, step);
      const half = ctx.measureText(text).width / 2;
      if (px - half >= labelW && px + half <= W - 2) ctx.fillText(text, px, AXIS_H - 8); // never clipped
    }
    ctx.stroke();
    // history before this point is not known to the server
    const unknownTo = Math.max(data.historySince, 0);
    if (data.loaded && unknownTo > t0) {
      ctx.fillStyle = colors.panel2;
      ctx.fillRect(labelW, AXIS_H, Math.min(plotW, x(unknownTo) - labelW), H - AXIS_H - 4);
    }

    const { bandMap, nextOf } = derive();
    const now = Date.now();
    const runs = new Map(); // state -> the row's bands of that state: a path, the open run
    const placed = { labelW, t0, t1, plotW, rows: [], x, tAt };
    let inView = 0;
    models.forEach((m, i) => {
      const y = AXIS_H + i * ROW_H;
      const rowInfo = { model: m, y, bands: [], labels: [], reqs: data.reqs.get(m) || [] };
      placed.rows.push(rowInfo);
      // row separator and name
      ctx.strokeStyle = colors.border;
      ctx.beginPath();
      ctx.moveTo(0, y + ROW_H - 0.5);
      ctx.lineTo(W, y + ROW_H - 0.5);
      ctx.stroke();
      ctx.fillStyle = colors.text;
      ctx.textAlign = "left";
      ctx.font = "600 12px system-ui, sans-serif";
      ctx.fillText(fit(ctx, m, labelW - 12), 8, y + 23);
      ctx.font = "11px system-ui, sans-serif";
      ctx.save();
      ctx.beginPath();
      ctx.rect(labelW, y, plotW, ROW_H);
      ctx.clip();
      // bands: a model's bands follow each other, so the ones in view (and the labels of
      // those that began up to a span earlier) are a slice found by bisection
      const all = bandMap.get(m) || [];
      const first = Math.max(0, bisect(all, t0 - span(), (b) => b.t0));
      const last = bisect(all, t1, (b) => b.t0);
      const near = [];
      for (let k = first; k <= last; k++) {
        const b = all[k];
        const bt1 = Math.min(b.t1, now);
        near.push(b);
        if (bt1 < t0) continue;
        const bx = Math.max(labelW - 2, x(b.t0));
        const ex = Math.min(W, x(bt1));
        // under a pixel wide and the next band starts in the same pixel: that one is drawn
        // over it anyway (with thousands of swaps in view this skips most of them)
        if (ex - bx < 1 && k < last && x(all[k + 1].t0) - ex < 1) continue;
        const bw = Math.max(2, ex - bx);
        // one path per state and row, touching bands of a state merged into one rectangle
        let run = runs.get(b.state);
        if (!run) runs.set(b.state, (run = { path: new Path2D(), x0: bx, x1: bx }));
        if (bx > run.x1 + 0.5) {
          if (run.x1 > run.x0) run.path.rect(run.x0, y + BAND_Y, run.x1 - run.x0, BAND_H);
          run.x0 = bx;
        }
        run.x1 = Math.max(run.x1, bx + bw);
        rowInfo.bands.push({ ...b, t1: bt1, x0: bx, x1: bx + bw });
      }
      for (const [state, run] of runs) {
        run.path.rect(run.x0, y + BAND_Y, run.x1 - run.x0, BAND_H);
        ctx.fillStyle = colors.states[state] || colors.muted;
        ctx.globalAlpha = state === "backoff" || state === "sleeping" ? 0.55 : 1;
        ctx.fill(run.path);
      }
      ctx.globalAlpha = 1;
      runs.clear();
      // labels: swaps on their start, stops on theirs; one never covers the previous
      let freeFrom = labelW;
      for (const b of near) {
        const c = b.change;
        if (!c || b.t0 < t0 - span() || b.t0 > t1) continue;
        if (freeFrom > x(b.t0) + 40) continue; // the previous label covers this band's place
        let text = "";
        if (b.state === "starting") text = swapLabel(c, nextOf.get(c.seq));
        else if ((b.state === "stopping" || b.state === "sleeping") && c.reason) text = stopLabel(c);
        else if (b.state === "backoff") text = `backoff (${reasonText(c.reason) || "failure"})`;
        if (!text) continue;
        // at the band's start, or pulled left so it ends at the right edge (a swap just now)
        const full = ctx.measureText(text).width;
        const right = labelW + plotW - 2;
        const lx = Math.max(freeFrom, Math.min(Math.max(x(b.t0), labelW + 2), right - full));
        if (lx > x(b.t0) + 40) continue; // the previous label covers this band's place
        const shown = fit(ctx, text, right - lx);
        if (!shown) continue;
        ctx.fillStyle = b.state === "starting" ? colors.text : colors.muted;
        ctx.fillText(shown, lx, y + LABEL_Y);
        const width = ctx.measureText(shown).width;
        rowInfo.labels.push({ x0: lx, x1: lx + width, band: b, text });
        // how long after the change its label was first drawn (tests report it)
        if (!(c.seq in stats.shownAfterMs)) stats.shownAfterMs[c.seq] = Date.now() - c.t;
        freeFrom = lx + width + 8;
      }
      // request ticks: at most one per pixel column and colour, drawn as runs of columns;
      // durations as the union of their spans
      const reqs = rowInfo.reqs;
      const lo = Math.max(0, bisect(reqs, t0 - span() * 0.02, (r) => r[1]));
      const hi = bisect(reqs, t1, (r) => r[1]);
      const cols = Math.ceil(W) + 1;
      const marks = { ok: new Uint8Array(cols), warn: new Uint8Array(cols), err: new Uint8Array(cols) };
      const spans = [];
      let spanFrom = -1;
      let spanTo = -1;
      const pxPerMs = plotW / (t1 - t0);
      for (let k = lo; k <= hi; k++) {
        const r = reqs[k];
        const px = labelW + (r[1] - t0) * pxPerMs;
        if (px < labelW - 1) continue;
        inView += 1;
        marks[statusClass(r[4])][Math.max(0, Math.round(px))] = 1;
        const pe = px + r[2] * pxPerMs;
        if (pe - px < 3) continue;
        if (px > spanTo) {
          if (spanTo > spanFrom) spans.push(spanFrom, spanTo);
          spanFrom = px;
          spanTo = pe;
        } else if (pe > spanTo) spanTo = pe;
      }
      if (spanTo > spanFrom) spans.push(spanFrom, spanTo);
      if (spans.length) {
        ctx.fillStyle = colors.muted;
        ctx.globalAlpha = 0.35;
        for (let k = 0; k < spans.length; k += 2) {
          ctx.fillRect(spans[k], y + TICK_Y + TICK_H / 2 - 0.5, spans[k + 1] - spans[k], 1);
        }
        ctx.globalAlpha = 1;
      }
      for (const cls of ["ok", "warn", "err"]) {
        const col = marks[cls];
        ctx.fillStyle = colors[cls];
        ctx.beginPath();
        for (let px = 0; px < cols; px++) {
          if (!col[px]) continue;
          let end = px;
          while (end + 1 < cols && col[end + 1]) end++;
          ctx.rect(px - 0.5, y + TICK_Y, end - px + 1.5, TICK_H);
          px = end;
        }
        ctx.fill();
      }
      ctx.restore();
    });
    if (!models.length) {
      ctx.fillStyle = colors.muted;
      ctx.textAlign = "left";
      ctx.fillText(data.loaded ? "No models configured." : "Loading…", labelW, AXIS_H + 20);
    }
    // now
    if (live) {
      const nx = Math.round(x(Date.now())) - 0.5;
      ctx.strokeStyle = colors.now;
      ctx.beginPath();
      ctx.moveTo(nx, AXIS_H - 4);
      ctx.lineTo(nx, H - 4);
      ctx.stroke();
    }
    layout = placed;
    stats.layout = placed; // what tests inspect: rows, bands, labels, the time scale
    stats.changes = data.changes.size;
    status.textContent = data.loaded
      ? `${inView.toLocaleString()} request${inView === 1 ? "" : "s"} in view` : "loading…";
    renderNote(t0);
    if (hoverAt) showTip(hoverAt[0], hoverAt[1]);
    stats.draws += 1;
    stats.drawMs.push(performance.now() - began);
    if (stats.drawMs.length > 600) stats.drawMs.splice(0, stats.drawMs.length - 600);
  }

  const redraw = throttled(draw);

  function renderNote(t0) {
    const parts = [];
    if (data.loaded && data.historySince > t0) {
      parts.push(`State history starts at ${clockLabel(data.historySince, 1000)}` +
        " (the proxy started, or older changes were dropped); requests go back as far as the activity store.");
    }
    if (data.truncatedBefore > t0) {
      parts.push(`Too many requests to show before ${clockLabel(data.truncatedBefore, 1000)}.`);
    }
    note.textContent = parts.join(" ");
    note.hidden = !parts.length;
  }

  function setSpan(m) {
    spanMin = m;
    localStorage.setItem("llamaswap.timeline.span", String(m));
    for (const b of spanButtons) b.setAttribute("aria-pressed", String(Number(b.dataset.span) === m));
    ensureLoaded();
    redraw();
  }

  function setLive(on) {
    live = on;
    liveBtn.classList.toggle("primary", on);
    liveBtn.setAttribute("aria-pressed", String(on));
    later.disabled = on;
  }

  function pan(ms) {
    const [, t1] = view();
    const now = Date.now();
    const target = t1 + ms;
    if (target >= now) {
      setLive(true);
    } else {
      setLive(false);
      endT = target;
    }
    ensureLoaded();
    redraw();
  }

  function ensureLoaded() {
    const [t0] = view();
    if (!data.loaded || data.fetching || t0 >= data.from) return;
    loadBefore(Math.min(t0, data.from - FETCH_SPAN)).then(redraw, (err) => {
      note.textContent = `Could not load earlier history: ${err.message}`;
      note.hidden = false;
    });
  }

  function fit(ctx, text, room) {
    if (room < 12) return "";
    if (ctx.measureText(text).width <= room) return text;
    let lo = 0;
    let hi = text.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (ctx.measureText(text.slice(0, mid) + "…").width <= room) lo = mid;
      else hi = mid - 1;
    }
    return lo > 0 ? text.slice(0, lo) + "…" : "";
  }

  // ---- hover

  function showTip(px, py) {
    const L = layout;
    if (!L) return;
    const row = L.rows.find((r) => py >= r.y && py < r.y + ROW_H);
    let content = null;
    if (row && px >= L.labelW) {
      const rel = py - row.y;
      if (rel >= TICK_Y - 3) content = requestTip(row, px);
      if (!content && rel < BAND_Y) {
        const lab = row.labels.find((l) => px >= l.x0 && px <= l.x1);
        if (lab) content = bandTip(row.model, lab.band);
      }
      if (!content) {
        const b = row.bands.find((bb) => px >= bb.x0 - 1 && px <= bb.x1 + 1);
        if (b) content = bandTip(row.model, b);
      }
    }
    if (!content) {
      tip.hidden = true;
      return;
    }
    replaceChildren(tip, content);
    tip.hidden = false;
    const wrapW = wrap.clientWidth;
    tip.style.left = `${Math.max(4, Math.min(px + 14, wrapW - tip.offsetWidth - 4))}px`;
    tip.style.top = `${py + 16}px`;
  }

  function requestTip(row, px) {
    const L = layout;
    const reqs = row.reqs;
    const t = L.tAt(px);
    const tol = (4 / L.plotW) * (L.t1 - L.t0);
    let i = bisect(reqs, t + tol, (r) => r[1]);
    let best = null;
    for (; i >= 0 && reqs[i][1] >= t - tol; i--) {
      if (!best || Math.abs(reqs[i][1] - t) < Math.abs(best[1] - t)) best = reqs[i];
    }
    if (!best) return null;
    const [id, start, ms, model, st, path, tin, tout, tps, key] = best;
    const cls = statusClass(st);
    return h("div", { "data-request": String(id) },
      h("div", { class: "tip-title" }, h("span", { class: cls === "ok" ? "ok" : "bad" }, String(st)), " ", path),
      h("div", {}, `${model} · #${id} · ${clockLabel(start, 1000)}`),
      h("div", {}, `duration ${formatDuration(ms)}`),
      h("div", {}, `tokens ${tin >= 0 ? tin : "-"} in / ${tout >= 0 ? tout : "-"} out` +
        (tps > 0 ? ` · ${tps.toFixed(1)} t/s` : "")),
      h("div", {}, `key ${key}`));
  }

  function bandTip(model, b) {
    const c = b.change;
    const now = Date.now();
    const t1 = Math.min(b.t1, now); // an open band lasts until now
    const lines = [h("div", { class: "tip-title" }, `${model}: ${b.state}`),
      h("div", {}, `${clockLabel(b.t0, 1000)} – ${t1 >= now - 1000 ? "now" : clockLabel(t1, 1000)}` +
        ` (${formatDuration(t1 - b.t0)})`)];
    const start = c && b.state === "ready" ? derive().prevOf.get(c.seq) : null;
    if (c && b.state === "starting") {
      lines.push(h("div", {}, swapLabel(c, derive().nextOf.get(c.seq))));
    } else if (start && start.state === "starting") {
      lines.push(h("div", {}, swapLabel(start, c))); // how it got ready: a load, or a wake
    } else if (c && c.reason) {
      lines.push(h("div", {}, `reason: ${reasonText(c.reason)}` + (c.for ? ` (to start ${c.for})` : "")));
    }
    if (c && c.detail && c.reason !== "restart") lines.push(h("div", { class: "muted" }, c.detail));
    return h("div", { "data-band": b.state }, lines);
  }

  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    hoverAt = [ev.clientX - r.left, ev.clientY - r.top];
    if (!drag) showTip(hoverAt[0], hoverAt[1]);
  });
  canvas.addEventListener("mouseleave", () => {
    hoverAt = null;
    tip.hidden = true;
  });

  // ---- panning: drag, Shift+wheel or a horizontal wheel, arrow keys, buttons

  let drag = null;
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, moved: 0 };
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drag || !layout) return;
    const dx = ev.clientX - drag.x;
    drag.x = ev.clientX;
    drag.moved += Math.abs(dx);
    pan((-dx / layout.plotW) * span());
  });
  const endDrag = () => {
    drag = null;
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("wheel", (ev) => {
    const dx = ev.shiftKey ? ev.deltaY || ev.deltaX : ev.deltaX;
    if (!dx || !layout) return;
    ev.preventDefault();
    pan((dx / layout.plotW) * span());
  }, { passive: false });
  canvas.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowLeft") pan(-span() / 4);
    else if (ev.key === "ArrowRight") pan(span() / 4);
    else if (ev.key === "End") setLive(true);
    else return;
    ev.preventDefault();
    redraw();
  });
  earlier.addEventListener("click", () => pan(-span() / 2));
  later.addEventListener("click", () => pan(span() / 2));
  liveBtn.addEventListener("click", () => {
    setLive(true);
    redraw();
  });

  // ---- data

  function start() {
    if (data.loaded || data.fetching) {
      redraw();
      return;
    }
    status.textContent = "loading…";
    loadBefore(Date.now() - Math.max(FETCH_SPAN, span())).then(() => {
      for (const c of store.timeline) addChange(c); // what arrived while the history loaded
      for (const e of data.early.splice(0)) addLiveEntry(e);
      redraw();
    }, (err) => {
      status.textContent = `could not load the timeline: ${err.message}`;
    });
  }

  const off = subscribe((what, payload) => {
    if (what === "timeline" && data.loaded) {
      addChange(payload);
      redraw();
    } else if (what === "metrics" && Array.isArray(payload)) {
      if (!data.loaded) {
        data.early.push(...payload); // finished while the history loads: added after it
        return;
      }
      let added = false;
      for (const e of payload) added = addLiveEntry(e) || added;
      if (added) redraw();
    } else if (what === "reset") {
      resetData();
      start();
    } else if (what === "models") {
      redraw();
    }
  });
  const timer = setInterval(() => {
    if (live && !document.hidden) redraw();
  }, LIVE_REFRESH_MS);
  const ro = new ResizeObserver(redraw);
  ro.observe(wrap);
  const scheme = window.matchMedia("(prefers-color-scheme: dark)");
  const onScheme = () => {
    colors = null;
    redraw();
  };
  scheme.addEventListener("change", onScheme);
  setLive(true);
  if (store.connection === "open") start(); // else the connection's "reset" starts it

  return () => {
    alive = false;
    off();
    clearInterval(timer);
    ro.disconnect();
    scheme.removeEventListener("change", onScheme);
  };
}
