// Models: every model with its live state (sleeping, restart backoff and why), requests in
// flight, Load / Unload / Unload all; memory per device (GET /api/memory), the active profile
// with a switcher (GET/PUT /api/profiles), selectors (GET /v1/models) and peers. The extra
// cards appear only where the proxy answers for them.

import { apiUrl, formatDuration, h, modelPath, replaceChildren, throttled } from "./dom.js";
import { colorFor, segmentBar, swatch } from "./charts.js";
import { store, subscribe } from "./events.js";
import { REASON_TEXT } from "./timeline.js";

const pending = new Map(); // id -> "load" | "unload"
const errors = new Map(); // id -> message
let showUnlisted = false;
let rerender = () => {};

async function errorText(resp) {
  let text = "";
  try {
    text = (await resp.text()).trim();
    const body = JSON.parse(text);
    text = (body.error && (body.error.message || body.error)) || text;
  } catch {
    // plain text body
  }
  return `${resp.status} ${text || resp.statusText}`.trim();
}

async function run(id, kind, doFetch) {
  pending.set(id, kind);
  errors.delete(id);
  rerender();
  try {
    const resp = await doFetch();
    if (!resp.ok) errors.set(id, `${kind} failed: ${await errorText(resp)}`);
    else if (resp.body) resp.body.cancel().catch(() => {});
  } catch (err) {
    errors.set(id, `${kind} failed: ${err.message || err}`);
  } finally {
    pending.delete(id);
    rerender();
  }
}

// The same request upstream's UI makes: a GET to the model's root through /upstream
// loads the model (swapping others out as configured) and answers once it is ready.
export function loadModel(id) {
  return run(id, "load", () => fetch(apiUrl(`/upstream/${modelPath(id)}/`), { cache: "no-store" }));
}

export function unloadModel(id) {
  return run(id, "unload", () =>
    fetch(apiUrl(`/api/models/unload/${modelPath(id)}`), { method: "POST" }),
  );
}

async function unloadAll(button) {
  button.disabled = true;
  try {
    const resp = await fetch(apiUrl("/api/models/unload"), { method: "POST" });
    if (!resp.ok) errors.set("*", `unload all failed: ${await errorText(resp)}`);
    else errors.delete("*");
  } catch (err) {
    errors.set("*", `unload all failed: ${err.message || err}`);
  } finally {
    button.disabled = false;
    rerender();
  }
}

function stateBadge(state) {
  const s = state || "unknown";
  return h("span", { class: `state state-${s}`, "data-testid": "state" }, s);
}

// Why a model is where it is: a pending restart, the failure before it, a sleep.
function stateNote(m) {
  const f = m.lastFailure;
  const why = f ? (REASON_TEXT[f.reason] || f.reason) : "";
  if (m.state === "backoff") {
    const left = m.restartIn !== undefined ? Math.max(0, m.restartIn - (Date.now() - store.modelsAt) / 1000) : null;
    const when = left !== null ? `restart in ${formatDuration(Math.ceil(left) * 1000)}` : "restart pending";
    return h("div", { class: "state-note bad-note", "data-testid": "state-note" },
      `${when}${why ? ` after ${why}` : ""}` + (m.restarts ? ` (restart ${m.restarts})` : ""),
      f && f.detail ? h("div", { class: "muted" }, f.detail) : null);
  }
  if (m.state === "sleeping") {
    return h("div", { class: "state-note muted", "data-testid": "state-note" }, "asleep: wakes on the next request");
  }
  if (f) {
    return h("div", { class: "state-note muted", "data-testid": "state-note", title: f.detail || "" },
      `last failure: ${why}` + (m.restarts ? ` · ${m.restarts} restart${m.restarts === 1 ? "" : "s"}` : ""));
  }
  return null;
}

function inflightFor(id) {
  let n = 0;
  for (const r of store.inflightTable.values()) if (r.model === id) n += 1;
  return n;
}

export function formatBytes2(n) {
  if (n === null || n === undefined) return "?";
  const gib = n / 1024 ** 3;
  if (gib >= 1) return `${gib.toFixed(gib >= 100 ? 0 : 1)} GiB`;
  return `${Math.round(n / 1024 ** 2)} MiB`;
}

// ---- the extra cards: memory, profile, selectors

let memory = null; // GET /api/memory's body, null when the proxy has no memory section
let profiles = null; // GET /api/profiles's body, null without profiles
let selectors = []; // /v1/models records of type selector
const answered = new Set(); // which of those asked have answered (data-answered, for tests)

async function getJSON(path) {
  try {
    const resp = await fetch(apiUrl(path), { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) return null;
    return await resp.json();
  } catch {
    return null;
  }
}

async function refreshMemory() {
  memory = await getJSON("/api/memory");
  answered.add("memory");
  rerender();
}

async function refreshProfiles() {
  const got = await getJSON("/api/profiles");
  profiles = got && Array.isArray(got.profiles) && got.profiles.length ? got : null;
  answered.add("profiles");
  rerender();
}

async function refreshSelectors() {
  const got = await getJSON("/v1/models");
  selectors = ((got && got.data) || []).filter((r) => r.meta && r.meta.llamaswap && r.meta.llamaswap.type === "selector");
  answered.add("selectors");
  rerender();
}

function memoryCard() {
  if (!memory || !memory.devices || !Object.keys(memory.devices).length) return null;
  const ids = Object.keys(memory.models || {}).sort();
  const colorOf = (id) => colorFor(ids.indexOf(id));
  return h("section", { class: "card mem-card", id: "memory-card" },
    h("h2", {}, "Memory"),
    Object.entries(memory.devices).map(([dev, d]) => {
      const residents = ids.filter((id) => (memory.models[id].used || {})[dev] > 0);
      const segs = residents.map((id) => ({
        label: id, value: memory.models[id].used[dev], color: colorOf(id),
        hatch: memory.models[id].state === "sleeping",
        title: `${id}: ${formatBytes2(memory.models[id].used[dev])} (${memory.models[id].state}, ${(memory.models[id].source || {})[dev] || "?"})`,
      }));
      // free, then the headroom the planner keeps free at the bar's end
      if (d.free > 0) segs.push({ label: "free", value: d.free, cls: "free", title: `free ${formatBytes2(d.free)}` });
      if (d.headroom > 0) segs.push({ label: "headroom", value: d.headroom, cls: "headroom", title: `headroom ${formatBytes2(d.headroom)}` });
      const measured = d.device_used !== undefined ? ` · the device reports ${formatBytes2(d.device_used)} used` : "";
      return h("div", { class: "mem-device", "data-device": dev },
        h("div", { class: "mem-head" }, h("b", {}, dev),
          h("span", { class: "muted", "data-testid": "mem-figures" },
            `${formatBytes2(d.used)} used · ${formatBytes2(d.free)} free · budget ${formatBytes2(d.budget)}${measured}`)),
        segmentBar(segs, d.budget, { label: `${dev} memory` }),
        h("div", { class: "legend mem-legend" },
          residents.length ? null : h("span", { class: "legend-item muted" }, "nothing resident"),
          residents.map((id) =>
            h("span", { class: "legend-item", "data-model": id }, swatch(colorOf(id)),
              `${id} ${formatBytes2(memory.models[id].used[dev])}${memory.models[id].state === "sleeping" ? " (asleep)" : ""}`)),
          h("span", { class: "legend-item muted", "data-part": "free" },
            h("span", { class: "swatch sw-free" }), `free ${formatBytes2(d.free)}`),
          d.headroom > 0 ? h("span", { class: "legend-item muted", "data-part": "headroom" },
            h("span", { class: "swatch sw-headroom" }), `headroom ${formatBytes2(d.headroom)}`) : null));
    }));
}

async function switchProfile(select) {
  select.disabled = true;
  try {
    const resp = await fetch(apiUrl("/api/profiles/active"), {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: select.value || null }),
    });
    if (!resp.ok) errors.set("*", `profile switch failed: ${await errorText(resp)}`);
    else errors.delete("*");
  } catch (err) {
    errors.set("*", `profile switch failed: ${err.message || err}`);
  } finally {
    select.disabled = false;
    refreshProfiles();
  }
}

function profileCard() {
  if (!profiles) return null;
  const active = store.profile !== undefined ? store.profile : profiles.active;
  const select = h("select", { id: "profile-select", "aria-label": "Active profile" },
    h("option", { value: "" }, "none"),
    profiles.profiles.map((p) => h("option", { value: p.id }, p.description ? `${p.id} · ${p.description}` : p.id)));
  select.value = active || "";
  select.addEventListener("change", () => switchProfile(select));
  const current = profiles.profiles.find((p) => p.id === active);
  return h("section", { class: "card profile-card", id: "profile-card" },
    h("h2", {}, "Profile"),
    h("div", { class: "profile-body" },
      h("label", { class: "field" }, "Active ", select),
      current && Object.keys(current.pins).length
        ? h("div", { class: "pins", id: "profile-pins" }, Object.entries(current.pins).map(([from, to]) =>
          h("span", { class: "pin" }, h("code", {}, from), " → ", to ? h("code", {}, to) : h("span", { class: "muted" }, "disabled"))))
        : h("span", { class: "muted" }, active ? "no pins" : "requests go to the model they name")));
}

function selectorsCard() {
  if (!selectors.length) return null;
  const stateOf = (id) => (store.models.find((m) => m.id === id) || {}).state || "";
  return h("section", { class: "card", id: "selectors-card" },
    h("h2", {}, "Selectors"),
    h("div", { class: "table-wrap" }, h("table", { class: "grid selectors" },
      h("thead", {}, h("tr", {}, h("th", {}, "Selector"), h("th", {}, "Strategy"), h("th", {}, "Targets"))),
      h("tbody", {}, selectors.map((r) => {
        const meta = r.meta.llamaswap;
        return h("tr", { "data-selector": r.id },
          h("td", {}, h("b", {}, r.id), r.name ? h("div", { class: "muted" }, r.name) : null),
          h("td", {}, meta.strategy + (meta.strategy === "spillover" && meta.spillover ? ` (${meta.spillover})` : "")),
          h("td", { class: "targets" }, (meta.targets || []).map((t) => {
            const st = stateOf(t);
            return h("span", { class: "target" }, h("code", {}, t), st ? h("span", { class: `state state-${st} small` }, st) : null);
          })));
      })))));
}

function localRow(m) {
  const busy = pending.get(m.id);
  const state = m.state || "unknown";
  const canLoad = !busy && (state === "stopped" || state === "backoff" || state === "unknown"
    || state === "sleeping");
  const canUnload = !busy && (state === "ready" || state === "starting" || state === "backoff"
    || state === "sleeping");
  const err = errors.get(m.id);
  return h(
    "tr",
    { "data-model": m.id, class: m.unlisted ? "unlisted" : null },
    h(
      "td",
      { class: "model-cell" },
      h(
        "div",
        { class: "model-name" },
        h("a", { href: apiUrl(`/upstream/${modelPath(m.id)}/`), target: "_blank", rel: "noopener" },
          m.name || m.id),
        m.name && m.name !== m.id ? h("code", { class: "model-id" }, m.id) : null,
        m.unlisted ? h("span", { class: "tag" }, "unlisted") : null,
      ),
      m.description ? h("div", { class: "muted desc" }, m.description) : null,
      m.aliases && m.aliases.length
        ? h("div", { class: "aliases" }, h("span", { class: "muted" }, "aliases: "),
          m.aliases.map((a) => h("code", { class: "alias" }, a)))
        : null,
      err ? h("div", { class: "error-text", role: "alert" }, err) : null,
    ),
    h("td", { class: "state-cell" }, stateBadge(state),
      busy ? h("span", { class: "spinner", title: `${busy} in progress` }) : null,
      inflightFor(m.id) ? h("span", { class: "pill inflight-model", "data-testid": "inflight",
        title: "requests in flight" }, `${inflightFor(m.id)} in flight`) : null,
      stateNote(m)),
    h(
      "td",
      { class: "actions" },
      h("button", { class: "btn primary", disabled: !canLoad, onclick: () => loadModel(m.id) },
        busy === "load" ? "Loading…" : "Load"),
      h("button", { class: "btn", disabled: !canUnload, onclick: () => unloadModel(m.id) },
        busy === "unload" ? "Unloading…" : "Unload"),
    ),
  );
}

function peerRow(m) {
  return h(
    "tr",
    { "data-model": m.id, class: "peer" },
    h("td", { class: "model-cell" },
      h("div", { class: "model-name" }, h("span", {}, m.name || m.id),
        h("span", { class: "tag remote", title: `served by peer ${m.peerID}` },
          `remote · ${m.peerID}`)),
      m.description ? h("div", { class: "muted desc" }, m.description) : null),
    h("td", { class: "state-cell" }, h("span", { class: "state state-remote" }, "remote")),
    h("td", { class: "actions muted" }, "via peer"),
  );
}

export function mount(root) {
  const summary = h("span", { class: "muted" });
  const unlistedToggle = h("input", { type: "checkbox", id: "show-unlisted" });
  unlistedToggle.checked = showUnlisted;
  unlistedToggle.addEventListener("change", () => {
    showUnlisted = unlistedToggle.checked;
    rerender();
  });
  const unloadAllBtn = h("button", { class: "btn danger", id: "unload-all" }, "Unload all");
  unloadAllBtn.addEventListener("click", () => unloadAll(unloadAllBtn));
  const globalError = h("div", { class: "error-text", role: "alert" });
  const localBody = h("tbody", { id: "models-local" });
  const peerBody = h("tbody", { id: "models-peer" });
  const peerSection = h("section", { class: "card" },
    h("h2", {}, "Remote models (peers)"),
    h("div", { class: "table-wrap" }, h("table", { class: "grid models" }, peerBody)));
  const empty = h("p", { class: "muted empty" }, "Waiting for the model list…");
  const extras = h("div", { class: "model-extras" });
  const selectorsBox = h("div");

  root.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Models"), summary,
      h("span", { class: "spacer" }),
      h("label", { class: "check" }, unlistedToggle, " show unlisted"),
      unloadAllBtn),
    globalError,
    extras,
    h("section", { class: "card" },
      h("div", { class: "table-wrap" },
        h("table", { class: "grid models" },
          h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "State"),
            h("th", { class: "actions" }, "Actions"))),
          localBody)),
      empty),
    selectorsBox,
    peerSection,
  );

  rerender = () => {
    replaceChildren(extras, memoryCard(), profileCard());
    extras.dataset.answered = [...answered].sort().join(" ");
    replaceChildren(selectorsBox, selectorsCard());
    const local = store.models.filter((m) => !m.peerID);
    const peers = store.models.filter((m) => m.peerID);
    const shown = local.filter((m) => showUnlisted || !m.unlisted);
    replaceChildren(localBody, shown.map(localRow));
    replaceChildren(peerBody, peers.map(peerRow));
    peerSection.hidden = peers.length === 0;
    const ready = local.filter((m) => m.state === "ready").length;
    const hidden = local.length - shown.length;
    summary.textContent = `${local.length} local, ${ready} ready` +
      (peers.length ? `, ${peers.length} remote` : "") +
      (hidden ? ` (${hidden} unlisted hidden)` : "");
    empty.hidden = store.models.length > 0;
    if (store.connection === "open" && store.models.length === 0) {
      empty.textContent = "No models configured.";
    }
    globalError.textContent = errors.get("*") || "";
  };
  rerender();
  const memorySoon = throttled(refreshMemory);
  let memoryLater = null;
  const refreshAll = () => {
    refreshMemory();
    refreshProfiles();
    refreshSelectors();
  };
  if (store.connection === "open") refreshAll();
  // a backoff's countdown moves on between events
  const ticker = setInterval(() => {
    if (store.models.some((m) => m.state === "backoff")) rerender();
  }, 1000);
  const off = subscribe((what) => {
    if (what === "models") {
      memorySoon(); // a load or a stop changes what is resident; the router's books may
      clearTimeout(memoryLater); // settle a moment after the process: ask again then
      memoryLater = setTimeout(refreshMemory, 1000);
      rerender();
    } else if (what === "reset") {
      refreshAll();
      rerender();
    } else if (what === "connection" || what === "inflight") {
      rerender();
    } else if (what === "profile") {
      refreshProfiles();
    }
  });
  return () => {
    off();
    clearInterval(ticker);
    clearTimeout(memoryLater);
    rerender = () => {};
  };
}
