// Logs: proxy, upstream or one model's output, streamed live from /logs/stream/<name>.

import { apiUrl, formatBytes, h, modelPath, replaceChildren, throttled } from "./dom.js";
import { backoffMs, store, subscribe } from "./events.js";

// What the page keeps per stream: enough to scroll back, small enough that a chatty
// backend cannot freeze the browser.
export const KEEP_CHARS = 256 * 1024;
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

let selected = "proxy";

export function mount(root) {
  let text = "";
  let paused = false;
  let unseen = 0;
  let controller = null;
  let retryTimer = null;
  let attempts = 0;
  let alive = true;

  const select = h("select", { id: "log-source", "aria-label": "Log source" });
  const filter = h("input", {
    type: "search", id: "log-filter", placeholder: "Filter lines…", "aria-label": "Filter",
  });
  const pauseBtn = h("button", { class: "btn", id: "log-pause" }, "Pause");
  const clearBtn = h("button", { class: "btn", id: "log-clear" }, "Clear");
  const status = h("span", { class: "muted", id: "log-status" });
  const pre = h("pre", { class: "logview", id: "log-text", tabindex: "0" });

  root.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Logs"), select, filter, h("span", { class: "spacer" }), status,
      pauseBtn, clearBtn),
    h("section", { class: "card log-card" }, pre),
  );

  const render = throttled(() => {
    if (paused) {
      status.textContent = unseen ? `paused · ${formatBytes(unseen)} new` : "paused";
      return;
    }
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    const needle = filter.value.trim().toLowerCase();
    let shown = text;
    if (needle) {
      shown = text.split("\n").filter((line) => line.toLowerCase().includes(needle)).join("\n");
    }
    pre.textContent = shown;
    pre.classList.toggle("empty", !shown);
    if (!shown) pre.textContent = needle ? "No lines match the filter." : "No log output yet.";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    status.textContent = `${formatBytes(text.length)} kept`;
  });

  function add(chunk) {
    text += chunk.replace(ANSI, "");
    if (text.length > KEEP_CHARS) {
      let cut = text.length - KEEP_CHARS;
      const nl = text.indexOf("\n", cut);
      if (nl >= 0 && nl - cut < 4096) cut = nl + 1;
      text = text.slice(cut);
    }
    if (paused) unseen += chunk.length;
    render();
  }

  async function stream() {
    clearTimeout(retryTimer);
    if (controller) controller.abort();
    const mine = new AbortController();
    controller = mine;
    const name = selected;
    text = ""; // the stream starts with the full history
    render();
    try {
      const resp = await fetch(apiUrl(`/logs/stream/${modelPath(name)}`), {
        signal: mine.signal, cache: "no-store",
      });
      if (!resp.ok) {
        add(`[${resp.status}] ${(await resp.text()).trim()}\n`);
        return;
      }
      attempts = 0;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        add(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (mine.signal.aborted) return;
    }
    if (!alive || mine !== controller || mine.signal.aborted) return;
    // The server went away (restart, config reload): try again with backoff.
    attempts += 1;
    const wait = backoffMs(attempts);
    status.textContent = `stream ended · retrying in ${Math.ceil(wait / 1000)} s`;
    retryTimer = setTimeout(stream, wait);
  }

  function renderSources() {
    const names = ["proxy", "upstream"].concat(
      store.models.filter((m) => !m.peerID).map((m) => m.id),
    );
    if (!names.includes(selected)) names.push(selected);
    const current = Array.from(select.options).map((o) => o.value).join("\n");
    if (current === names.join("\n")) return;
    replaceChildren(select, names.map((n, i) =>
      h("option", { value: n }, i < 2 ? n : `model: ${n}`)));
    select.value = selected;
  }

  select.addEventListener("change", () => {
    selected = select.value;
    stream();
  });
  filter.addEventListener("input", render);
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    unseen = 0;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.classList.toggle("primary", paused);
    render();
  });
  clearBtn.addEventListener("click", () => {
    text = "";
    render();
  });

  renderSources();
  const off = subscribe((what) => {
    if (what === "models" || what === "reset") renderSources();
  });
  stream();
  return () => {
    alive = false;
    off();
    clearTimeout(retryTimer);
    if (controller) controller.abort();
  };
}
