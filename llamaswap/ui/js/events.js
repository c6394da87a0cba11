// The one live connection: EventSource('/api/events') feeds every page through this store.
// Envelope: {"type": "...", "data": "<JSON text>"}; types modelStatus, logData, metrics,
// inflight (the total and the table: snapshot, upsert, remove), activity (a new row's id),
// timeline (a model state change with its reason) and profileChanged.

import { apiUrl } from "./dom.js";

const LOG_CAP = 100 * 1024; // per source, as upstream's UI keeps
const METRICS_CAP = 1000;
const TIMELINE_CAP = 5000; // live changes kept; the timeline page fetches history itself

export const store = {
  connection: "connecting", // connecting | open | waiting
  retryIn: 0,
  attempts: 0,
  models: [],
  modelsAt: 0,
  metrics: [], // oldest first
  inflight: 0,
  inflightTable: new Map(), // id -> upstream's in-flight entry
  timeline: [], // state changes seen live, oldest first (seq order)
  profile: undefined, // the active profile's name, null for none, undefined before told
  version: null,
  logs: { proxy: "", upstream: "" },
};

const listeners = new Set();

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(what, payload) {
  for (const fn of listeners) {
    try {
      fn(what, payload);
    } catch (err) {
      console.error(err);
    }
  }
}

let source = null;
let retryTimer = null;
let countdownTimer = null;

export function backoffMs(attempt) {
  return Math.min(1000 * 2 ** (attempt - 1), 5000);
}

export function connect() {
  clearTimeout(retryTimer);
  clearInterval(countdownTimer);
  if (source) source.close();
  store.connection = "connecting";
  emit("connection");
  source = new EventSource(apiUrl("/api/events"));
  source.onopen = () => {
    store.attempts = 0;
    store.connection = "open";
    // A fresh connection replays everything: start from empty stores.
    store.models = [];
    store.metrics = [];
    store.logs = { proxy: "", upstream: "" };
    store.inflightTable = new Map();
    store.timeline = []; // the timeline page fetches the history again on "reset"
    emit("connection");
    emit("reset");
    fetchVersion();
  };
  source.onmessage = (ev) => handle(ev.data);
  source.onerror = () => {
    // EventSource retries on its own with a fixed delay; we want our own backoff.
    source.close();
    source = null;
    store.attempts += 1;
    const wait = backoffMs(store.attempts);
    store.connection = "waiting";
    store.retryIn = Math.ceil(wait / 1000);
    emit("connection");
    countdownTimer = setInterval(() => {
      store.retryIn = Math.max(0, store.retryIn - 1);
      emit("connection");
    }, 1000);
    retryTimer = setTimeout(connect, wait);
  };
}

function handle(raw) {
  let envelope, data;
  try {
    envelope = JSON.parse(raw);
    data = JSON.parse(envelope.data);
  } catch (err) {
    console.warn("bad event", raw, err);
    return;
  }
  switch (envelope.type) {
    case "modelStatus":
      store.models = Array.isArray(data) ? data : [];
      store.modelsAt = Date.now(); // restartIn counts from here
      emit("models");
      break;
    case "logData": {
      const src = data.source === "upstream" ? "upstream" : "proxy";
      let text = store.logs[src] + (data.data || "");
      if (text.length > LOG_CAP) text = text.slice(text.length - LOG_CAP);
      store.logs[src] = text;
      emit("logs");
      break;
    }
    case "metrics":
      if (Array.isArray(data) && data.length) {
        store.metrics = store.metrics.concat(data);
        if (store.metrics.length > METRICS_CAP) {
          store.metrics = store.metrics.slice(store.metrics.length - METRICS_CAP);
        }
      }
      emit("metrics", Array.isArray(data) ? data : []);
      break;
    case "inflight":
      store.inflight = Number(data.total) || 0;
      // _seen: when elapsed_ms was true, so pages can count on from there
      if (data.operation === "snapshot") {
        store.inflightTable = new Map((data.requests || []).map((r) => [r.id, { ...r, _seen: Date.now() }]));
      } else if (data.operation === "upsert" && data.request) {
        store.inflightTable.set(data.request.id, { ...data.request, _seen: Date.now() });
      } else if (data.operation === "remove") {
        store.inflightTable.delete(data.id);
      }
      emit("inflight");
      break;
    case "timeline": {
      const last = store.timeline.length ? store.timeline[store.timeline.length - 1] : null;
      if (last && data.seq <= last.seq) {
        // a late reason for a change already here (a crash): replace it
        const i = store.timeline.findIndex((c) => c.seq === data.seq);
        if (i >= 0) store.timeline[i] = data;
      } else {
        store.timeline.push(data);
        if (store.timeline.length > TIMELINE_CAP) store.timeline.splice(0, store.timeline.length - TIMELINE_CAP);
      }
      emit("timeline", data);
      break;
    }
    case "activity":
      emit("activity", data);
      break;
    case "profileChanged":
      store.profile = data.active ?? null;
      emit("profile");
      break;
    default:
      break;
  }
}

async function fetchVersion() {
  try {
    const resp = await fetch(apiUrl("/api/version"), { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    store.version = await resp.json();
    emit("version");
  } catch {
    // version is decoration; the connection banner reports real trouble
  }
}
