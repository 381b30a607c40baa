// Live updates: one EventSource on /api/v1/kiosk/events for the whole page. The browser
// retries a dropped stream by itself; when it gives up (the box answered an error, e.g. after a
// restart or a logout) we reopen with backoff after checking the session. Each (re)connection
// emits "open" so that screens refetch what they may have missed.

import { byTestId, debounce } from "./dom.js";
import { t } from "./i18n.js";

export const TOPICS = [
  "decision", "lane", "passage", "occupancy", "crowd",
  "locker", "print", "device", "cloud", "shift",
];
const URL_ = "/api/v1/kiosk/events";
const handlers = new Map();
let source = null;
let wanted = false;
let timer = null;
let delay = 1000;
let beforeReopen = async () => true;

// on("decision", fn) -> off(); fn(data, event) with data = the bus event's fields.
export function on(topic, fn) {
  if (!handlers.has(topic)) handlers.set(topic, new Set());
  handlers.get(topic).add(fn);
  return () => handlers.get(topic).delete(fn);
}

function emit(topic, data, msg) {
  for (const fn of [...(handlers.get(topic) || [])]) {
    try {
      fn(data, msg);
    } catch (err) {
      console.error("handler for", topic, err);
    }
  }
}

export function paintLive() {
  const el = byTestId("live-state");
  if (el) setLive(el.dataset.live === "true");
}

function setLive(live) {
  const el = byTestId("live-state");
  if (!el) return;
  el.dataset.live = String(live);
  el.textContent = live ? t("live.on") : t("live.off");
}

// beforeReopen(): false when the stream should stay closed (the session ended).
export function connect(check) {
  if (check) beforeReopen = check;
  wanted = true;
  if (!source) open();
}

export function disconnect() {
  wanted = false;
  clearTimeout(timer);
  if (source) source.close();
  source = null;
  setLive(false);
}

function open() {
  const es = new EventSource(URL_);
  source = es;
  es.onopen = () => {
    delay = 1000;
    setLive(true);
    emit("open", {});
  };
  for (const topic of TOPICS) {
    es.addEventListener(topic, (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      const data = msg && typeof msg === "object" && "topic" in msg && "data" in msg ? msg.data : msg;
      emit(topic, data || {}, msg);
    });
  }
  es.onerror = () => {
    setLive(false);
    if (es.readyState !== EventSource.CLOSED) return; // the browser is retrying
    es.close();
    if (source === es) source = null;
    if (!wanted) return;
    clearTimeout(timer);
    timer = setTimeout(reopen, delay);
    delay = Math.min(delay * 2, 15000);
  };
}

async function reopen() {
  if (!wanted || source) return;
  let ok = false;
  try {
    ok = await beforeReopen();
  } catch {
    ok = true; // the box is unreachable: keep trying
  }
  if (wanted && ok && !source) open();
  else if (wanted && !source) timer = setTimeout(reopen, delay);
}

// Refresh what the page shows after a lost connection: the "open" event (see above).
export function onOpen(fn) {
  return on("open", fn);
}

// A screen that shows what the box reports: `refresh` now, again (debounced by `settleMs`) on
// each event of `topics` and after every (re)connection, and every `everyMs` for what changes
// without an event. Returns the debounced refresh (for other handlers) and a stop function.
export function keepFresh(refresh, topics, everyMs, settleMs) {
  const later = debounce(refresh, settleMs);
  const offs = [...topics.map((topic) => on(topic, later)), onOpen(refresh)];
  const tick = setInterval(refresh, everyMs);
  refresh();
  const stop = () => {
    later.cancel();
    clearInterval(tick);
    offs.forEach((off) => off());
  };
  return { later, stop };
}
