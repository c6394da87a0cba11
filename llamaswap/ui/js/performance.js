// Performance: CPU, RAM and, per GPU, utilisation, memory, temperature and power over the
// last hour, from GET /api/performance (polled with ?after= for what is new). The page is
// listed only when the proxy samples (performance.disabled hides it, as upstream).

import { apiUrl, h, replaceChildren, throttled } from "./dom.js";
import { colorFor, legend, lineChart, widthOf } from "./charts.js";

const SPANS = [5, 15, 60];
const POLL_MS = 5000; // the sampler's shortest interval
const HOUR = 3600 * 1000;

export const NOT_SAMPLING = "Performance monitoring is disabled (performance.disabled in the config).";

// Whether the proxy samples: 200 from /api/performance (503 when disabled).
export async function available() {
  try {
    const resp = await fetch(apiUrl("/api/performance?after=" + encodeURIComponent(new Date().toISOString())),
      { cache: "no-store" });
    if (resp.body) resp.body.cancel().catch(() => {});
    return resp.ok;
  } catch {
    return false;
  }
}

let spanMin = Number(localStorage.getItem("llamaswap.performance.span")) || 5;
if (!SPANS.includes(spanMin)) spanMin = 5;

const mean = (xs) => (xs && xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
const fmtPct = (v) => `${Math.round(v)}%`;
// Memory charts count in GiB (or MiB below 2 GiB), so the axis gets round numbers.
function memAxis(totalMB) {
  if (totalMB >= 2048) return { div: 1024, format: (v) => `${+v.toFixed(v < 10 && v % 1 ? 1 : 0)} GiB` };
  return { div: 1, format: (v) => `${Math.round(v)} MiB` };
}
const fmtMB = (v) => (v >= 1024 ? `${(v / 1024).toFixed(v >= 10240 ? 0 : 1)} GiB` : `${Math.round(v)} MiB`);

export function mount(root) {
  const spanButtons = SPANS.map((m) => h("button", {
    class: "btn seg-btn", "data-span": String(m), "aria-pressed": String(m === spanMin),
    onclick: () => {
      spanMin = m;
      localStorage.setItem("llamaswap.performance.span", String(m));
      for (const b of spanButtons) b.setAttribute("aria-pressed", String(Number(b.dataset.span) === m));
      render();
    },
  }, `${m} min`));
  const status = h("span", { class: "muted", id: "perf-status" });
  const body = h("div", { id: "perf-body" });
  root.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Performance"), status, h("span", { class: "spacer" }),
      h("div", { class: "seg-group", role: "group", "aria-label": "Time range" }, spanButtons)),
    body);

  let sys = [];
  let gpu = [];
  let last = null; // the newest sample's timestamp text, for ?after=
  let alive = true;
  let timer = null;
  let disabled = false;

  async function poll() {
    try {
      const q = last ? `?after=${encodeURIComponent(last)}` : "";
      const resp = await fetch(apiUrl(`/api/performance${q}`), { cache: "no-store" });
      if (resp.status === 503) {
        disabled = true;
        render();
        return;
      }
      if (!resp.ok) throw new Error(`${resp.status}`);
      const got = await resp.json();
      disabled = false;
      const add = (list, items) => list.concat((items || []).map((x) => ({ ...x, t: Date.parse(x.timestamp) })));
      sys = add(sys, got.sys_stats);
      gpu = add(gpu, got.gpu_stats);
      const cut = Date.now() - HOUR;
      sys = sys.filter((x) => x.t >= cut);
      gpu = gpu.filter((x) => x.t >= cut);
      const newest = [...(got.sys_stats || []), ...(got.gpu_stats || [])]
        .map((x) => x.timestamp).sort((a, b) => Date.parse(a) - Date.parse(b)).pop();
      if (newest) last = newest;
      status.textContent = sys.length ? `${sys.length} samples` : "waiting for the first sample…";
      render();
    } catch (err) {
      status.textContent = `could not read /api/performance: ${err.message || err}`;
    }
    if (alive && !disabled) timer = setTimeout(poll, POLL_MS);
  }

  function card(title, headline, chart, extra) {
    return h("section", { class: "card perf-card" },
      h("div", { class: "perf-head" }, h("h2", {}, title), h("span", { class: "perf-now" }, headline)),
      h("div", { class: "perf-chart" }, chart), extra || null);
  }

  const render = throttled(() => {
    if (disabled) {
      replaceChildren(body, h("p", { class: "muted empty card" }, NOT_SAMPLING));
      return;
    }
    const t1 = Date.now();
    const t0 = t1 - spanMin * 60000;
    const width = Math.min(widthOf(body, 600), 1400);
    const half = width >= 900 ? Math.floor((width - 14) / 2) - 2 : width - 2;
    const gap = 3 * POLL_MS;
    const inView = sys.filter((x) => x.t >= t0 - gap);
    const cards = [];
    const cur = sys[sys.length - 1];

    const cpu = [{ name: "CPU (all cores)", color: colorFor(0), points: inView.map((x) => [x.t, mean(x.cpu_util_per_core)]) }];
    cards.push(card("CPU", cur ? `${fmtPct(mean(cur.cpu_util_per_core))} · load ${cur.load_avg_1.toFixed(2)}` : "",
      lineChart({ t0, t1, series: cpu, yMax: 100, format: fmtPct, width: half, height: 170, gap, label: "CPU use" })));
    const memTotal = cur ? cur.mem_total_mb : 0;
    const ax = memAxis(memTotal);
    const mem = [
      { name: "used", color: colorFor(1), points: inView.map((x) => [x.t, x.mem_used_mb / ax.div]) },
      { name: "swap used", color: colorFor(3), points: inView.map((x) => [x.t, x.swap_used_mb / ax.div]).filter((p) => p[1] > 0) },
    ];
    cards.push(card("RAM", cur ? `${fmtMB(cur.mem_used_mb)} of ${fmtMB(memTotal)}` : "",
      lineChart({ t0, t1, series: mem, yMax: memTotal / ax.div, format: ax.format, width: half, height: 170, gap, label: "RAM used" }),
      legend(mem.filter((se) => se.points.length))));

    const byId = new Map();
    for (const g of gpu) {
      if (!byId.has(g.id)) byId.set(g.id, []);
      byId.get(g.id).push(g);
    }
    const quarter = width >= 900 ? Math.floor((width - 14) / 2) - 2 : width - 2;
    for (const [id, list] of [...byId.entries()].sort((a, b) => a[0] - b[0])) {
      const g = list.filter((x) => x.t >= t0 - gap);
      const now = list[list.length - 1];
      const one = (name, key, color, yMax, format, div = 1) => lineChart({
        t0, t1, series: [{ name, color, points: g.map((x) => [x.t, x[key] / div]) }], yMax, format,
        width: quarter, height: 130, gap, label: `GPU ${id} ${name}`,
      });
      cards.push(h("section", { class: "card perf-gpu", "data-gpu": String(id) },
        h("div", { class: "perf-head" }, h("h2", {}, `GPU ${id} · ${now.name}`),
          h("span", { class: "perf-now" },
            `${fmtPct(now.gpu_util_pct)} · ${fmtMB(now.mem_used_mb)} / ${fmtMB(now.mem_total_mb)} · ${now.temp_c} °C · ${Math.round(now.power_draw_w)} W`)),
        h("div", { class: "perf-grid" },
          h("div", {}, h("h3", {}, "Utilisation"), one("utilisation", "gpu_util_pct", colorFor(0), 100, fmtPct)),
          h("div", {}, h("h3", {}, "Memory"), one("memory", "mem_used_mb", colorFor(1),
            now.mem_total_mb / memAxis(now.mem_total_mb).div, memAxis(now.mem_total_mb).format, memAxis(now.mem_total_mb).div)),
          h("div", {}, h("h3", {}, "Temperature"), one("temperature", "temp_c", colorFor(6), 90, (v) => `${Math.round(v)} °C`)),
          h("div", {}, h("h3", {}, "Power"), one("power", "power_draw_w", colorFor(4), 0, (v) => `${Math.round(v)} W`)))));
    }
    if (!byId.size) {
      cards.push(h("p", { class: "muted perf-nogpu" }, "No GPU reported (nvidia-smi is not on the PATH, or it found none)."));
    }
    replaceChildren(body, h("div", { class: "perf-cards" }, cards));
  });

  let seenWidth = 0;
  const ro = new ResizeObserver(() => {
    if (body.clientWidth !== seenWidth) {
      seenWidth = body.clientWidth;
      render();
    }
  });
  ro.observe(body);
  const tick = setInterval(render, POLL_MS); // the window moves on between samples
  poll();
  return () => {
    alive = false;
    clearTimeout(timer);
    clearInterval(tick);
    ro.disconnect();
  };
}
