// Playground: streaming chat through POST /v1/chat/completions, opening on a chat model;
// tabs for images, speech and transcription where a model serves them (js/media.js).

import { apiUrl, h, replaceChildren, throttled } from "./dom.js";
import { store, subscribe } from "./events.js";
import { renderMarkdown } from "./markdown.js";
import { PANELS, TABS, modelsFor } from "./media.js";

// Models that are not for chat, by what the config says they do, else by their name.
const NOT_CHAT = /embed|rerank|whisper|tts|speech|bge-|nomic|stable-diffusion|sdxl|flux/i;
export function isChatModel(m) {
  const c = m.capabilities || {};
  if (c.reranker || c.image_generation || c.image_to_image || c.audio_speech || c.audio_transcriptions) {
    return false;
  }
  return !NOT_CHAT.test(`${m.id} ${m.name || ""}`);
}

let tab = "chat"; // the tab shown, kept across page switches

const saved = (() => {
  try {
    return JSON.parse(localStorage.getItem("llamaswap.playground") || "{}");
  } catch {
    return {};
  }
})();

function save(settings) {
  Object.assign(saved, settings);
  try {
    localStorage.setItem("llamaswap.playground", JSON.stringify(settings));
  } catch {
    // private mode: settings just are not remembered
  }
}

// Conversation survives page switches (not reloads).
const chat = { messages: [], turns: [] };
let controller = null; // the answer being streamed, if any (outlives page switches)
let mounted = null; // the mounted page's updateButtons

// The proxy's loading-state chunks carry only choices[].delta.reasoning_content: no id,
// no object, no model. Real upstream chunks always carry at least one of those.
export function isLoadingChunk(chunk) {
  return chunk && !chunk.id && !chunk.object && !chunk.model && Array.isArray(chunk.choices);
}

export function parseSSELines(buffer, onData) {
  const lines = buffer.split("\n");
  const rest = lines.pop();
  for (const raw of lines) {
    const line = raw.replace(/\r$/, "");
    if (line.startsWith("data:")) onData(line.slice(5).trim());
    else if (line.trim().startsWith("{")) onData(line.trim()); // a raw JSON error appended
  }
  return rest;
}

function statsText(turn) {
  const parts = [];
  const t = turn.timings;
  const u = turn.usage;
  const wall = (turn.end - turn.start) / 1000;
  let outTokens = null;
  let genRate = null;
  let promptRate = null;
  if (t && t.predicted_n !== undefined) {
    outTokens = t.predicted_n;
    genRate = t.predicted_per_second;
    promptRate = t.prompt_per_second;
  } else if (u && (u.completion_tokens ?? u.output_tokens) !== undefined) {
    outTokens = u.completion_tokens ?? u.output_tokens;
  }
  if (genRate === null || genRate === undefined) {
    const n = outTokens ?? turn.chunks;
    const genSeconds = turn.first ? (turn.end - turn.first) / 1000 : wall;
    if (n && genSeconds > 0) genRate = n / genSeconds;
  }
  if (u && (u.prompt_tokens ?? u.input_tokens) !== undefined) {
    parts.push(`${u.prompt_tokens ?? u.input_tokens} prompt tokens`);
  }
  parts.push(outTokens !== null ? `${outTokens} tokens` : `~${turn.chunks} chunks`);
  if (promptRate > 0) parts.push(`prompt ${promptRate.toFixed(1)} t/s`);
  if (genRate > 0) parts.push(`${genRate.toFixed(1)} t/s`);
  if (turn.first && turn.loadingStart) parts.push(`load ${((turn.loadEnd - turn.loadingStart) / 1000).toFixed(1)} s`);
  parts.push(`${wall.toFixed(2)} s total`);
  return parts.join(" · ");
}

export function mount(root) {

  const modelSelect = h("select", { id: "pg-model", "aria-label": "Model" });
  const temperature = h("input", {
    type: "number", id: "pg-temperature", min: "0", max: "2", step: "0.1",
    value: saved.temperature ?? "0.7", "aria-label": "Temperature",
  });
  const maxTokens = h("input", {
    type: "number", id: "pg-max-tokens", min: "1", step: "1", placeholder: "default",
    value: saved.max_tokens ?? "", "aria-label": "Max tokens",
  });
  const system = h("textarea", { id: "pg-system", rows: "2", placeholder: "You are a helpful assistant." });
  system.value = saved.system ?? "";
  const clearBtn = h("button", { class: "btn", id: "pg-clear" }, "New chat");
  const log = h("div", { class: "chat-log", id: "chat-log", "aria-live": "polite" });
  const input = h("textarea", {
    id: "pg-input", rows: "3", placeholder: "Send a message (Enter to send, Shift+Enter for a new line)",
    "aria-label": "Message",
  });
  const sendBtn = h("button", { class: "btn primary", id: "pg-send" }, "Send");
  const stopBtn = h("button", { class: "btn danger", id: "pg-stop", hidden: true }, "Stop");
  const note = h("span", { class: "muted", id: "pg-note" });

  const tabBar = h("div", { class: "tabs", role: "tablist", id: "pg-tabs" });
  const chatPanel = h("div", { id: "pg-chat-panel" });
  const panels = { chat: chatPanel };
  const mediaPanels = {};
  for (const t of TABS) {
    mediaPanels[t.id] = PANELS[t.id]();
    panels[t.id] = h("div", { id: `pg-${t.id}-panel`, hidden: true }, mediaPanels[t.id].el);
  }

  function renderTabs() {
    const offered = [{ id: "chat", label: "Chat" }, ...TABS.filter((t) => modelsFor(t.flag).length)];
    if (!offered.some((t) => t.id === tab)) tab = "chat";
    replaceChildren(tabBar, offered.length > 1 ? offered.map((t) => h("button", {
      class: "tab", role: "tab", "data-tab": t.id, "aria-selected": String(t.id === tab),
      onclick: () => {
        tab = t.id;
        renderTabs();
      },
    }, t.label)) : null);
    for (const [id, el] of Object.entries(panels)) el.hidden = id !== tab;
    for (const p of Object.values(mediaPanels)) p.render();
  }

  root.append(h("div", { class: "toolbar pg-head" }, h("h1", {}, "Playground"), tabBar),
    chatPanel, ...TABS.map((t) => panels[t.id]));
  chatPanel.append(
    h("div", { class: "toolbar" },
      h("label", { class: "field" }, "Model ", modelSelect),
      h("label", { class: "field" }, "Temperature ", temperature),
      h("label", { class: "field" }, "Max tokens ", maxTokens),
      h("span", { class: "spacer" }),
      clearBtn),
    h("details", { class: "card system" }, h("summary", {}, "System prompt"), system),
    h("section", { class: "card chat" }, log,
      h("div", { class: "composer" }, input,
        h("div", { class: "composer-actions" }, sendBtn, stopBtn, note))),
  );
  let chosen = saved.model; // the user's pick; until there is one, the first chat model
  modelSelect.addEventListener("change", () => {
    chosen = modelSelect.value;
  });

  function persist() {
    save({
      model: modelSelect.value, temperature: temperature.value, max_tokens: maxTokens.value,
      system: system.value,
    });
  }
  for (const el of [modelSelect, temperature, maxTokens, system]) el.addEventListener("change", persist);

  function renderModels() {
    const usable = store.models.filter((m) => !m.unlisted);
    const chat = usable.find(isChatModel) || usable[0];
    const want = usable.some((m) => m.id === chosen) ? chosen : chat && chat.id;
    const sig = usable.map((m) => m.id).join("\n");
    if (modelSelect.dataset.sig !== sig) {
      modelSelect.dataset.sig = sig;
      replaceChildren(modelSelect, usable.length
        ? usable.map((m) => h("option", { value: m.id },
          m.peerID ? `${m.id} (remote · ${m.peerID})` : (m.name && m.name !== m.id ? `${m.name} (${m.id})` : m.id)))
        : h("option", { value: "" }, store.connection === "open" ? "no models" : "waiting for models…"));
      if (usable.some((m) => m.id === want)) modelSelect.value = want;
    }
    updateButtons();
  }

  function updateButtons() {
    const busy = controller !== null;
    sendBtn.hidden = busy;
    stopBtn.hidden = !busy;
    sendBtn.disabled = !modelSelect.value;
  }

  function turnView(turn) {
    const view = {};
    view.loading = h("div", { class: "loading-box", hidden: true },
      h("div", { class: "loading-title" }, h("span", { class: "spinner" }), " Loading model"),
      h("pre", { class: "loading-text" }));
    view.reasoningText = h("div", { class: "reasoning-text" });
    view.reasoning = h("details", { class: "reasoning", hidden: true, open: true },
      h("summary", {}, "Reasoning"), view.reasoningText);
    view.content = h("div", { class: "md assistant-content" });
    view.stats = h("div", { class: "stats muted" });
    view.error = h("div", { class: "error-text", role: "alert", hidden: true });
    view.el = h("div", { class: "msg assistant", "data-testid": "assistant" },
      h("div", { class: "role" }, turn.model),
      view.loading, view.reasoning, view.content, view.error, view.stats);
    turn.view = view;
    return view.el;
  }

  function paint(turn) {
    const v = turn.view;
    if (!v) return;
    if (turn.loadingText) {
      v.loading.hidden = false;
      v.loading.querySelector(".loading-text").textContent = turn.loadingText;
      v.loading.classList.toggle("done", turn.loadEnd !== undefined);
      v.loading.querySelector(".loading-title").lastChild.textContent =
        turn.loadEnd !== undefined ? " Model loaded" : " Loading model";
    }
    if (turn.reasoning) {
      v.reasoning.hidden = false;
      v.reasoningText.textContent = turn.reasoning;
    }
    replaceChildren(v.content, renderMarkdown(turn.content));
    v.content.classList.toggle("streaming", !turn.end);
    if (turn.error) {
      v.error.hidden = false;
      v.error.textContent = turn.error;
    }
    if (turn.end) {
      v.stats.textContent = (turn.stopped ? "stopped · " : "") + statsText(turn);
      if (turn.reasoning && turn.content) v.reasoning.open = false;
    } else {
      if (turn.loadingText && turn.loadEnd === undefined) v.stats.textContent = "loading the model…";
      else if (!turn.chunks) v.stats.textContent = "waiting for the answer (the model may be loading)…";
      else v.stats.textContent = "streaming…";
    }
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    if (nearBottom || !turn.end) log.scrollTop = log.scrollHeight;
  }

  function userView(text) {
    return h("div", { class: "msg user" }, h("div", { class: "role" }, "you"),
      h("div", { class: "user-text" }, text));
  }

  function renderLog() {
    replaceChildren(log);
    if (!chat.turns.length) {
      log.append(h("p", { class: "muted empty" },
        "Pick a model and send a message. If the model is not loaded, the proxy loads it first."));
    }
    for (const t of chat.turns) {
      if (t.role === "user") log.append(userView(t.content));
      else {
        log.append(turnView(t));
        paint(t);
      }
    }
  }

  async function send() {
    const text = input.value.trim();
    const model = modelSelect.value;
    if (!text || !model || controller) return;
    input.value = "";
    persist();
    if (!chat.turns.length) log.textContent = "";
    chat.messages.push({ role: "user", content: text });
    chat.turns.push({ role: "user", content: text });
    log.append(userView(text));
    const turn = {
      role: "assistant", model, content: "", reasoning: "", loadingText: "", chunks: 0,
      start: performance.now(),
    };
    chat.turns.push(turn);
    log.append(turnView(turn));
    const repaint = throttled(() => paint(turn));
    paint(turn);

    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push(...chat.messages);
    const body = { model, messages, stream: true, stream_options: { include_usage: true } };
    const temp = parseFloat(temperature.value);
    if (!Number.isNaN(temp)) body.temperature = temp;
    const max = parseInt(maxTokens.value, 10);
    if (max > 0) body.max_tokens = max;

    controller = new AbortController();
    updateButtons();
    try {
      const resp = await fetch(apiUrl("/v1/chat/completions"), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream, application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const ctype = resp.headers.get("content-type") || "";
      if (!resp.ok) {
        const raw = await resp.text();
        let msg = raw.trim();
        try {
          const j = JSON.parse(raw);
          msg = (j.error && (j.error.message || j.error)) || msg;
        } catch {
          // text body
        }
        throw new Error(`${resp.status}: ${msg || resp.statusText}`);
      }
      if (!ctype.includes("event-stream")) {
        const j = await resp.json();
        const msg = j.choices && j.choices[0] && j.choices[0].message;
        turn.content = (msg && msg.content) || "";
        turn.reasoning = (msg && (msg.reasoning_content || msg.reasoning)) || "";
        turn.usage = j.usage;
        turn.timings = j.timings;
        turn.first = turn.start;
      } else {
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        const onData = (payload) => {
          if (!payload || payload === "[DONE]") return;
          let chunk;
          try {
            chunk = JSON.parse(payload);
          } catch {
            return;
          }
          if (chunk.error) {
            turn.error = chunk.error.message || (typeof chunk.error === "string" ? chunk.error : JSON.stringify(chunk.error));
            return;
          }
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          if (isLoadingChunk(chunk)) {
            if (turn.loadingStart === undefined) turn.loadingStart = performance.now();
            turn.loadingText += delta.reasoning_content || "";
            return;
          }
          if (turn.loadingStart !== undefined && turn.loadEnd === undefined) turn.loadEnd = performance.now();
          const r = delta.reasoning_content || delta.reasoning || "";
          const c = delta.content || "";
          if ((r || c) && !turn.first) turn.first = performance.now();
          if (r || c) turn.chunks += 1;
          turn.reasoning += r;
          turn.content += c;
          if (chunk.usage) turn.usage = chunk.usage;
          if (chunk.timings) turn.timings = chunk.timings;
        };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = parseSSELines(buffer + decoder.decode(value, { stream: true }), onData);
          repaint();
        }
        parseSSELines(buffer + "\n", onData);
      }
    } catch (err) {
      if (controller && controller.signal.aborted) turn.stopped = true;
      else turn.error = `Request failed: ${err.message || err}`;
    }
    turn.end = performance.now();
    if (turn.loadingStart !== undefined && turn.loadEnd === undefined) turn.loadEnd = turn.end;
    if (turn.content) chat.messages.push({ role: "assistant", content: turn.content });
    controller = null;
    if (mounted) mounted();
    paint(turn);
    if (mounted) input.focus();
  }

  sendBtn.addEventListener("click", send);
  stopBtn.addEventListener("click", () => controller && controller.abort());
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  clearBtn.addEventListener("click", () => {
    if (controller) controller.abort();
    chat.messages = [];
    chat.turns = [];
    renderLog();
  });

  renderModels();
  renderTabs();
  renderLog();
  mounted = updateButtons;
  const off = subscribe((what) => {
    if (what === "models" || what === "reset" || what === "connection") {
      renderModels();
      renderTabs();
    }
  });
  return () => {
    off();
    mounted = null;
    // A streaming answer keeps going in the background; its turn is repainted on return.
    for (const t of chat.turns) delete t.view;
  };
}
