// The UI's own small chart module: time axes, line charts and segmented bars in SVG, with
// a hover read-out. No library: a few hundred lines cover what the pages draw.

import { h, replaceChildren } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Colours that read on the light and the dark background alike; series keep theirs by index.
export const PALETTE = ["#4f8ff7", "#e8803a", "#3fb07a", "#c45bd6", "#d9b526", "#3cb6c9",
  "#e0566b", "#8d7df0", "#9aa84a", "#b07a4f"];

export function colorFor(i) {
  return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
  21600, 43200, 86400].map((x) => x * 1000);

// Tick times (ms) between t0 and t1 on a round step, at most about maxTicks of them.
export function timeTicks(t0, t1, maxTicks) {
  const span = Math.max(1, t1 - t0);
  const step = TIME_STEPS.find((st) => span / st <= maxTicks) || TIME_STEPS[TIME_STEPS.length - 1];
  // round in local time, so hourly ticks land on the hour where the zone is not whole hours
  const offset = new Date(t0).getTimezoneOffset() * 60000;
  const first = Math.ceil((t0 - offset) / step) * step + offset;
  const out = [];
  for (let t = first; t <= t1; t += step) out.push(t);
  return { ticks: out, step };
}

export function clockLabel(t, step) {
  const d = new Date(t);
  const hh = String(d.getHours()).padStart(2, "0");
  const mm = String(d.getMinutes()).padStart(2, "0");
  if (step >= 60000) return `${hh}:${mm}`;
  return `${hh}:${mm}:${String(d.getSeconds()).padStart(2, "0")}`;
}

// 1234567 -> "1.2M": axis labels stay narrow whatever the values.
export function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(0)}k`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(a < 10 && a % 1 ? 1 : 0)}`;
}

// A round upper bound and tick step for values up to max.
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { max: 1, step: 0.25 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  return { max: Math.ceil(max / step) * step, step };
}

// Index of the last element of sorted `arr` (by key(x)) that is <= t, or -1.
export function bisect(arr, t, key) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(arr[mid]) <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

const M = { left: 48, right: 12, top: 10, bottom: 24 };

// A time series chart. spec: {t0, t1 (ms), series: [{name, color, points: [[t, v]...]}],
// format(v) for the axis and read-out, yMax (a floor for the scale), height, gap (ms: a
// longer pause between points breaks the line), empty (text when there is nothing)}.
// Returns the element; call again with a new spec to redraw (charts are cheap to rebuild).
export function lineChart(spec) {
  const width = Math.max(200, spec.width || 600);
  const height = spec.height || 180;
  const fmt = spec.format || compact;
  const series = spec.series.filter((se) => se.points.length);
  let top = spec.yMax || 0;
  for (const se of series) for (const p of se.points) if (p[1] > top) top = p[1];
  const scale = niceScale(top);
  const x = (t) => M.left + ((t - spec.t0) / Math.max(1, spec.t1 - spec.t0)) * (width - M.left - M.right);
  const y = (v) => M.top + (1 - v / scale.max) * (height - M.top - M.bottom);

  const grid = [];
  for (let v = 0; v <= scale.max + scale.step / 2; v += scale.step) {
    grid.push(s("line", { x1: M.left, x2: width - M.right, y1: y(v), y2: y(v), class: "grid-line" }));
    grid.push(s("text", { x: M.left - 6, y: y(v) + 4, class: "axis-label", "text-anchor": "end" }, fmt(v)));
  }
  const { ticks, step } = timeTicks(spec.t0, spec.t1, Math.max(2, Math.floor(width / 90)));
  for (const t of ticks) {
    grid.push(s("line", { x1: x(t), x2: x(t), y1: height - M.bottom, y2: height - M.bottom + 4, class: "axis-tick" }));
    grid.push(s("text", { x: x(t), y: height - 6, class: "axis-label", "text-anchor": "middle" }, clockLabel(t, step)));
  }
  const lines = series.map((se) => {
    let d = "";
    const runs = []; // each unbroken stretch of points; a lone point is drawn as a dot
    for (const [t, v] of se.points) {
      if (t < spec.t0 - (spec.gap || 0) || t > spec.t1 + (spec.gap || 0)) continue;
      const run = runs[runs.length - 1];
      if (!run || (spec.gap && t - run[run.length - 1][0] > spec.gap)) runs.push([[t, v]]);
      else run.push([t, v]);
    }
    const dots = [];
    for (const run of runs) {
      run.forEach(([t, v], i) => {
        d += `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      });
      if (run.length === 1) dots.push(s("circle", { cx: x(run[0][0]).toFixed(1), cy: y(run[0][1]).toFixed(1), r: 2.5, fill: se.color }));
    }
    return s("g", {}, s("path", { d, fill: "none", stroke: se.color, "stroke-width": 1.6, "stroke-linejoin": "round" }), dots);
  });
  const cursor = s("line", { class: "cursor", y1: M.top, y2: height - M.bottom, visibility: "hidden" });
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg", role: "img",
    "aria-label": spec.label || "chart" }, grid,
  s("line", { x1: M.left, x2: width - M.right, y1: height - M.bottom, y2: height - M.bottom, class: "axis-line" }),
  lines, cursor);
  const readout = h("div", { class: "chart-readout", hidden: true });
  const box = h("div", { class: "chart" }, svg, readout);
  if (!series.length) {
    box.append(h("div", { class: "chart-empty muted" }, spec.empty || "No data in this range."));
  }
  svg.addEventListener("mousemove", (ev) => {
    const rect = svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * width;
    if (px < M.left || px > width - M.right || !series.length) {
      cursor.setAttribute("visibility", "hidden");
      readout.hidden = true;
      return;
    }
    const t = spec.t0 + ((px - M.left) / (width - M.left - M.right)) * (spec.t1 - spec.t0);
    const rows = [];
    for (const se of series) {
      let i = bisect(se.points, t, (p) => p[0]);
      if (i < se.points.length - 1 && (i < 0 || t - se.points[i][0] > se.points[i + 1][0] - t)) i += 1;
      if (i < 0) continue;
      const p = se.points[i];
      if (spec.gap && Math.abs(p[0] - t) > spec.gap) continue;
      rows.push(h("div", {}, swatch(se.color),
        `${se.name}: `, h("b", {}, fmt(p[1]))));
    }
    cursor.setAttribute("x1", px);
    cursor.setAttribute("x2", px);
    cursor.setAttribute("visibility", "visible");
    replaceChildren(readout, h("div", { class: "muted" }, clockLabel(t, 1000)), rows);
    readout.hidden = false;
    const left = (px / width) * rect.width;
    readout.style.left = `${Math.min(left + 12, rect.width - readout.offsetWidth - 4)}px`;
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.hidden = true;
  });
  return box;
}

// A colour square. Colours go in through the CSSOM: the page's CSP refuses style attributes.
export function swatch(color) {
  const el = h("span", { class: "swatch" });
  el.style.background = color;
  return el;
}

export function legend(series) {
  return h("div", { class: "legend" }, series.map((se) =>
    h("span", { class: "legend-item" }, swatch(se.color), se.name)));
}

// A horizontal bar split into segments [{label, value, color, title, hatch, cls}] out of
// total (a `cls` segment takes its colour from the stylesheet).
export function segmentBar(segments, total, { height = 18, label } = {}) {
  const width = 1000; // scaled to the container by CSS
  let at = 0;
  const parts = [];
  for (const seg of segments) {
    if (!(seg.value > 0)) continue;
    const w = (Math.min(seg.value, Math.max(0, total - at)) / total) * width;
    if (w <= 0) continue;
    parts.push(s("rect", { x: (at / total) * width, y: 0, width: w, height, fill: seg.color,
      class: `seg${seg.hatch ? " hatch" : ""}${seg.cls ? ` ${seg.cls}` : ""}`, "data-label": seg.label },
    s("title", {}, seg.title || seg.label)));
    at += seg.value;
  }
  return s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "segbar",
    role: "img", "aria-label": label || "bar" },
  s("rect", { x: 0, y: 0, width, height, class: "segbar-bg" }), parts);
}

// Width available to a chart inside `el` (its content box), for crisp SVG text.
export function widthOf(el, fallback = 600) {
  const w = el.clientWidth;
  return w > 0 ? w : fallback;
}
