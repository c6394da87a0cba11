// Models: every model with its live state; Load / Unload / Unload all.

import { apiUrl, h, modelPath, replaceChildren } from "./dom.js";
import { store, subscribe } from "./events.js";

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
      busy ? h("span", { class: "spinner", title: `${busy} in progress` }) : null),
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

  root.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Models"), summary,
      h("span", { class: "spacer" }),
      h("label", { class: "check" }, unlistedToggle, " show unlisted"),
      unloadAllBtn),
    globalError,
    h("section", { class: "card" },
      h("div", { class: "table-wrap" },
        h("table", { class: "grid models" },
          h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "State"),
            h("th", { class: "actions" }, "Actions"))),
          localBody)),
      empty),
    peerSection,
  );

  rerender = () => {
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
  const off = subscribe((what) => {
    if (what === "models" || what === "reset" || what === "connection") rerender();
  });
  return () => {
    off();
    rerender = () => {};
  };
}
