// The Playground's other tabs: images (POST /v1/images/generations), speech (POST
// /v1/audio/speech) and transcription (multipart POST /v1/audio/transcriptions). A tab is
// offered when a model's capabilities say it serves that (capabilities.out/in in the config).

import { apiUrl, formatDuration, h, replaceChildren } from "./dom.js";
import { store } from "./events.js";

export const TABS = [
  { id: "images", label: "Images", flag: "image_generation" },
  { id: "speech", label: "Speech", flag: "audio_speech" },
  { id: "transcription", label: "Transcription", flag: "audio_transcriptions" },
];

export function modelsFor(flag) {
  return store.models.filter((m) => !m.unlisted && m.capabilities && m.capabilities[flag]);
}

// Results outlive page switches (not reloads).
const results = { images: [], speech: null, transcript: null };

async function failure(resp) {
  let msg = (await resp.text()).trim();
  try {
    const j = JSON.parse(msg);
    msg = (j.error && (j.error.message || j.error)) || msg;
  } catch {
    // a text body
  }
  return `${resp.status}: ${msg || resp.statusText}`;
}

function modelPicker(id, flag) {
  const select = h("select", { id, "aria-label": "Model" });
  const render = () => {
    const list = modelsFor(flag);
    const sig = list.map((m) => m.id).join("\n");
    if (select.dataset.sig === sig) return;
    const was = select.value;
    select.dataset.sig = sig;
    replaceChildren(select, list.map((m) => h("option", { value: m.id }, m.name && m.name !== m.id ? `${m.name} (${m.id})` : m.id)));
    if (list.some((m) => m.id === was)) select.value = was;
  };
  render();
  return { select, render };
}

// Runs one request with a status line: "working…", then the time taken or the error.
async function run(button, status, fn) {
  button.disabled = true;
  status.className = "muted";
  status.textContent = "working… (the model may be loading)";
  const began = performance.now();
  try {
    await fn();
    status.textContent = `done in ${formatDuration(performance.now() - began)}`;
  } catch (err) {
    status.className = "error-text";
    status.textContent = err.message || String(err);
  } finally {
    button.disabled = false;
  }
}

function imagesPanel() {
  const picker = modelPicker("img-model", "image_generation");
  const prompt = h("textarea", { id: "img-prompt", rows: "3", placeholder: "A lighthouse at dusk, watercolour", "aria-label": "Prompt" });
  const size = h("select", { id: "img-size", "aria-label": "Size" }, ["256x256", "512x512", "1024x1024"].map((v) => h("option", { value: v }, v)));
  size.value = "512x512";
  const count = h("select", { id: "img-n", "aria-label": "Images" }, [1, 2, 4].map((v) => h("option", { value: String(v) }, String(v))));
  const go = h("button", { class: "btn primary", id: "img-go" }, "Generate");
  const status = h("span", { class: "muted", id: "img-status" });
  const gallery = h("div", { class: "gallery", id: "img-gallery" });
  const paint = () => replaceChildren(gallery, results.images.map((src, i) =>
    h("a", { href: src, download: `image-${i + 1}.png` }, h("img", { src, alt: `generated image ${i + 1}` }))));
  go.addEventListener("click", () => run(go, status, async () => {
    const resp = await fetch(apiUrl("/v1/images/generations"), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: picker.select.value, prompt: prompt.value, size: size.value,
        n: Number(count.value), response_format: "b64_json" }),
    });
    if (!resp.ok) throw new Error(await failure(resp));
    const body = await resp.json();
    results.images = (body.data || []).map((d) => (d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url)).filter(Boolean);
    if (!results.images.length) throw new Error("the answer had no image");
    paint();
  }));
  paint();
  return {
    el: h("div", { class: "media-panel" },
      h("div", { class: "toolbar" }, h("label", { class: "field" }, "Model ", picker.select),
        h("label", { class: "field" }, "Size ", size), h("label", { class: "field" }, "Images ", count)),
      h("section", { class: "card media-card" }, prompt,
        h("div", { class: "media-actions" }, go, status), gallery)),
    render: picker.render,
  };
}

function speechPanel() {
  const picker = modelPicker("tts-model", "audio_speech");
  const text = h("textarea", { id: "tts-input", rows: "3", placeholder: "Text to speak", "aria-label": "Text" });
  const voice = h("input", { type: "text", id: "tts-voice", value: "alloy", "aria-label": "Voice" });
  const go = h("button", { class: "btn primary", id: "tts-go" }, "Speak");
  const status = h("span", { class: "muted", id: "tts-status" });
  const out = h("div", { class: "media-out", id: "tts-out" });
  const paint = () => replaceChildren(out, results.speech
    ? [h("audio", { controls: true, src: results.speech.url, id: "tts-audio" }),
      h("a", { href: results.speech.url, download: `speech.${results.speech.ext}` }, "Download")]
    : null);
  go.addEventListener("click", () => run(go, status, async () => {
    const resp = await fetch(apiUrl("/v1/audio/speech"), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: picker.select.value, input: text.value, voice: voice.value }),
    });
    if (!resp.ok) throw new Error(await failure(resp));
    const blob = await resp.blob();
    if (results.speech) URL.revokeObjectURL(results.speech.url);
    const type = blob.type || "audio/mpeg";
    results.speech = { url: URL.createObjectURL(blob), ext: type.includes("wav") ? "wav" : type.split("/")[1] || "mp3", bytes: blob.size };
    paint();
  }));
  paint();
  return {
    el: h("div", { class: "media-panel" },
      h("div", { class: "toolbar" }, h("label", { class: "field" }, "Model ", picker.select),
        h("label", { class: "field" }, "Voice ", voice)),
      h("section", { class: "card media-card" }, text, h("div", { class: "media-actions" }, go, status), out)),
    render: picker.render,
  };
}

function transcriptionPanel() {
  const picker = modelPicker("stt-model", "audio_transcriptions");
  const file = h("input", { type: "file", id: "stt-file", accept: "audio/*,video/*", "aria-label": "Audio file" });
  const language = h("input", { type: "text", id: "stt-language", placeholder: "auto", "aria-label": "Language" });
  const go = h("button", { class: "btn primary", id: "stt-go" }, "Transcribe");
  const status = h("span", { class: "muted", id: "stt-status" });
  const out = h("pre", { class: "code transcript", id: "stt-out", hidden: true });
  const paint = () => {
    out.hidden = results.transcript === null;
    out.textContent = results.transcript || "";
  };
  go.addEventListener("click", () => run(go, status, async () => {
    if (!file.files.length) throw new Error("choose an audio file first");
    const form = new FormData();
    form.append("model", picker.select.value);
    form.append("file", file.files[0]);
    if (language.value.trim()) form.append("language", language.value.trim());
    const resp = await fetch(apiUrl("/v1/audio/transcriptions"), { method: "POST", body: form });
    if (!resp.ok) throw new Error(await failure(resp));
    const ctype = resp.headers.get("content-type") || "";
    results.transcript = ctype.includes("json") ? ((await resp.json()).text ?? "") : await resp.text();
    paint();
  }));
  paint();
  return {
    el: h("div", { class: "media-panel" },
      h("div", { class: "toolbar" }, h("label", { class: "field" }, "Model ", picker.select),
        h("label", { class: "field" }, "Language ", language)),
      h("section", { class: "card media-card" }, file, h("div", { class: "media-actions" }, go, status), out)),
    render: picker.render,
  };
}

export const PANELS = { images: imagesPanel, speech: speechPanel, transcription: transcriptionPanel };
