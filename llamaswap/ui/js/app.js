// Shell: header (pages, in-flight count, connection, version) and the hash router.

import { h, replaceChildren } from "./dom.js";
import { connect, store, subscribe } from "./events.js";
import * as playground from "./playground.js";
import * as models from "./models.js";
import * as activity from "./activity.js";
import * as logs from "./logs.js";
import * as timeline from "./timeline.js";
import * as perfPage from "./performance.js";

// `optional` pages are listed once their API answers (a feature the config turned off, or
// a proxy without it, leaves them out of the navigation).
const PAGES = [
  { route: "/", title: "Playground", page: playground },
  { route: "/models", title: "Models", page: models },
  { route: "/timeline", title: "Timeline", page: timeline },
  { route: "/activity", title: "Activity", page: activity },
  { route: "/performance", title: "Performance", page: perfPage, optional: perfPage.available },
  { route: "/logs", title: "Logs", page: logs },
];
const shown = new Set(PAGES.filter((p) => !p.optional).map((p) => p.route));

const main = document.getElementById("page");
const nav = document.getElementById("nav");
const inflightEl = document.getElementById("inflight");
const connEl = document.getElementById("conn");
const bannerEl = document.getElementById("banner");
const versionEl = document.getElementById("version");

let current = null; // { route, unmount }

function currentRoute() {
  let route = location.hash.replace(/^#/, "");
  if (!route) {
    // /upstream redirects to /ui/models: honour a page name in the path as well.
    const tail = location.pathname.replace(/\/+$/, "").split("/").pop();
    route = "/" + (tail === "ui" ? "" : tail);
  }
  route = route.split("?")[0].replace(/\/+$/, "") || "/";
  return PAGES.find((p) => p.route === route) || PAGES[0];
}

function render() {
  const target = currentRoute();
  if (current && current.route === target.route) return;
  if (current && current.unmount) current.unmount();
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.route === target.route) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${target.title} · llama-swap`;
  const container = h("div", { class: "page", id: `page-${target.title.toLowerCase()}` });
  replaceChildren(main, container);
  current = { route: target.route, unmount: target.page.mount(container) };
}

function renderNav() {
  replaceChildren(
    nav,
    PAGES.map((p) => h("a", { href: `#${p.route}`, "data-route": p.route, hidden: !shown.has(p.route) },
      p.title)),
  );
  for (const link of nav.querySelectorAll("a")) {
    if (current && link.dataset.route === current.route) link.setAttribute("aria-current", "page");
  }
}

async function probePages() {
  let changed = false;
  for (const p of PAGES.filter((pp) => pp.optional)) {
    const on = await p.optional();
    if (on !== shown.has(p.route)) {
      if (on) shown.add(p.route);
      else shown.delete(p.route);
      changed = true;
    }
  }
  if (changed) renderNav();
}

function renderInflight() {
  inflightEl.textContent = String(store.inflight);
  inflightEl.parentElement.classList.toggle("busy", store.inflight > 0);
}

function renderConnection() {
  connEl.dataset.state = store.connection;
  if (store.connection === "open") {
    connEl.title = "Live: connected to /api/events";
    connEl.textContent = "live";
    bannerEl.hidden = true;
    return;
  }
  if (store.connection === "connecting") {
    connEl.textContent = "connecting";
    connEl.title = "Connecting to /api/events";
    if (store.attempts === 0) {
      bannerEl.hidden = true;
      return;
    }
    bannerEl.textContent = `Reconnecting to the proxy (attempt ${store.attempts + 1})…`;
  } else {
    connEl.textContent = "offline";
    connEl.title = "Disconnected from /api/events";
    bannerEl.textContent =
      `Connection to the proxy lost. Reconnecting in ${store.retryIn} s` +
      ` (attempt ${store.attempts + 1}).`;
  }
  bannerEl.hidden = false;
}

function renderVersion() {
  const v = store.version;
  if (!v) return;
  versionEl.textContent = v.version ? `v${String(v.version).replace(/^v/, "")}` : "";
  versionEl.title = `commit ${v.commit || "?"}, built ${v.build_date || "?"}`;
}

subscribe((what) => {
  if (what === "reset") probePages(); // a restarted proxy may have another config
  if (what === "inflight" || what === "reset") renderInflight();
  if (what === "connection") renderConnection();
  if (what === "version") renderVersion();
});

renderNav();
renderInflight();
renderConnection();
window.addEventListener("hashchange", render);
render();
connect();
