// DOM helpers. Every piece of text from the server or a model goes in through
// textContent or attribute setters, never through innerHTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replaceChildren(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// The proxy may sit under a path prefix (a reverse proxy); everything the UI calls
// lives next to /ui/, on the same origin, so the browser re-sends Basic credentials.
const uiAt = location.pathname.search(/\/ui(\/|$)/);
export const BASE = uiAt > 0 ? location.pathname.slice(0, uiAt) : "";

export function apiUrl(path) {
  return BASE + path;
}

// Model IDs may contain "/": keep the slashes, escape everything else per segment.
export function modelPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

export function formatTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return d.toLocaleTimeString([], { hour12: false });
}

export function formatDuration(ms) {
  if (ms === undefined || ms === null || ms < 0) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  const m = Math.floor(ms / 60000);
  return `${m}m ${((ms % 60000) / 1000).toFixed(0)}s`;
}

export function formatRate(v) {
  // -1 means unknown; 0 comes with requests that produced no usage (errors, aborts)
  if (v === undefined || v === null || !(v > 0)) return "-";
  if (v >= 100) return `${Math.round(v).toLocaleString()} t/s`;
  return `${v.toFixed(1)} t/s`;
}

export function formatCount(v) {
  if (v === undefined || v === null || v < 0) return "-";
  return v.toLocaleString();
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// Base64 to text as UTF-8 (atob alone yields Latin-1 and garbles non-ASCII bodies).
export function decodeBase64(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

export function bytesToText(bytes) {
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

// One rAF-throttled call, however often it is asked for.
export function throttled(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}
