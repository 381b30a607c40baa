// The counter: a scan field that always has the focus (a keyboard-wedge scanner just types),
// submitted only on the scanner's terminator (Enter or Tab), never on a pause; the decision big
// and unmistakable; vouchers wait for one confirming tap; receipt, recent list, shift.

import { post, session } from "./api.js";
import { busy, h, notice } from "./dom.js";
import { decisionBody, verdict } from "./decision.js";
import * as events from "./events.js";
import { t, tx } from "./i18n.js";
import { mountSide } from "./counter_side.js";

const LANE_KEY = "edge.counterLane";
// Kept across remounts (a language switch redraws the screen, the decision stays).
const state = { last: null, pending: null, queue: Promise.resolve() };

function pickLane() {
  const lanes = session.boot.counter_lanes || [];
  let saved = null;
  try {
    saved = localStorage.getItem(LANE_KEY);
  } catch {
    /* no storage: the first lane */
  }
  return lanes.includes(saved) ? saved : lanes[0] || null;
}

function editable(el) {
  return el && el.matches && el.matches("input, textarea, select, [contenteditable=true]");
}

export function mount(root) {
  let lane = pickLane();
  const lanes = session.boot.counter_lanes || [];
  const input = h("input", {
    id: "scan-input",
    testid: "scan-input",
    class: "scan-input",
    autocomplete: "off",
    autocapitalize: "none",
    autocorrect: "off",
    spellcheck: "false",
    enterkeyhint: "go",
    maxlength: 4096,
    lang: "en",
  });
  const panel = h("section", { testid: "decision", class: "decision", "aria-live": "assertive" });
  const actions = h("div", { class: "decision-actions" });
  const laneSelect = lanes.length > 1
    ? h("select", { testid: "counter-lane", class: "lane-select", "aria-label": t("counter.lane"), onchange: (e) => {
        lane = e.target.value;
        try {
          localStorage.setItem(LANE_KEY, lane);
        } catch {
          /* not remembered */
        }
      } }, lanes.map((n) => h("option", { value: n, selected: n === lane }, n)))
    : null;
  const side = h("aside", { class: "counter-side" });
  root.append(
    h("div", { class: "counter" },
      h("div", { class: "counter-main" },
        h("div", { class: "scan-row" },
          h("label", { for: "scan-input", class: "scan-label" }, t("counter.scan_label")),
          laneSelect),
        input,
        lane ? null : h("p", { class: "warn-text" }, t("counter.no_lane")),
        panel,
        actions),
      side),
  );
  const sidePart = mountSide(side);

  function render() {
    const d = state.last;
    const v = d ? (d.pending ? "pending" : verdict(d)) : "idle";
    panel.dataset.decision = v;
    panel.className = `decision decision-${v}`;
    if (!d) {
      panel.replaceChildren(h("p", { class: "decision-wait" }, t("counter.idle")));
    } else if (d.pending) {
      panel.replaceChildren(h("p", { class: "decision-wait" }, t("counter.checking")));
    } else {
      panel.replaceChildren(...decisionBody(d).filter(Boolean));
    }
    const buttons = [];
    if (d && !d.pending && v === "confirm" && state.pending) {
      buttons.push(h("button", { testid: "confirm-redeem", class: "btn confirm huge", onclick: busy(confirm) }, t("counter.confirm_redeem")));
      buttons.push(h("button", { testid: "confirm-cancel", class: "btn", onclick: cancelConfirm }, t("counter.confirm_cancel")));
    } else if (d && !d.pending && v === "confirm") {
      // Neither the code nor a confirm token: the cashier scans or types it again.
      buttons.push(h("p", { class: "warn-text" }, t("counter.confirm_type_code")));
    }
    if (d && !d.pending && d.redemption_id && v === "admit") {
      buttons.push(h("button", { testid: "print-receipt", class: "btn big", onclick: busy(() => printReceipt(d.redemption_id)) }, t("counter.print_receipt")));
    }
    actions.replaceChildren(...buttons);
  }

  function show(d, code) {
    state.last = d;
    state.pending = null;
    const known = code ?? d.code ?? null;
    // One id per confirming tap: a retried tap gets the recorded outcome, never a 2nd redemption.
    // The lane's own scanner sends no code on the bus, only a token the lane holds it under.
    if (d && verdict(d) === "confirm" && (known || d.confirm_token)) {
      state.pending = { code: known, token: d.confirm_token || null, lane: d.lane || lane, rid: newId() };
    }
    render();
    beep(verdict(d));
    sidePart.refresh(); // the shift counts denies too
  }

  function submit(code) {
    state.last = { pending: true };
    state.pending = null;
    render();
    // One after another: a fast second scan waits for the first answer.
    state.queue = state.queue.then(async () => {
      const body = lane ? { code, lane } : { code };
      const d = await post("/counter/scan", body);
      if (d) show(d, code);
      else if (state.last && state.last.pending) {
        state.last = null;
        render();
      }
    });
  }

  async function confirm() {
    const p = state.pending;
    if (!p) return;
    const who = p.token ? { confirm_token: p.token } : { code: p.code };
    const d = await post("/counter/redeem", { ...who, lane: p.lane, redemption_id: p.rid });
    if (d) show(d, null);
    refocus();
  }

  function cancelConfirm() {
    state.pending = null;
    state.last = null;
    render();
    refocus();
  }

  async function printReceipt(rid) {
    const job = await post("/counter/receipt", { redemption_id: rid });
    if (job) notice(t("counter.receipt_sent", { state: tx("job.", job.state || "queued") }));
    refocus();
  }

  input.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" && e.key !== "Tab") return;
    if (e.isComposing) return; // an IME is composing: its Enter commits the text
    e.preventDefault();
    const code = input.value.trim();
    input.value = "";
    if (code) submit(code);
  });

  // Focus comes back to the scan field after any tap, unless the user is typing elsewhere.
  function refocus() {
    if (!input.isConnected || document.activeElement === input) return;
    if (editable(document.activeElement)) return;
    if (document.body.dataset.auth !== "true") return;
    input.focus({ preventScroll: true });
  }
  const later = () => setTimeout(refocus, 0);
  // A key typed while a button has the focus goes to the scan field (Enter must not press the
  // focused button: that could void a redemption).
  function onKey(e) {
    if (e.target === input || editable(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key.length === 1 || e.key === "Enter" || e.key === "Tab") {
      if (e.key !== "Enter" && e.key !== "Tab") input.focus({ preventScroll: true });
      else e.preventDefault();
      refocus();
    }
  }
  document.addEventListener("click", later);
  document.addEventListener("keydown", onKey, true);
  window.addEventListener("focus", later);
  input.addEventListener("blur", later);
  const tick = setInterval(refocus, 1500);

  const offDecision = events.on("decision", (d) => {
    if (!d || d.duplicate || !d.decision) return;
    const counterLane = (session.boot.counter_lanes || []).includes(d.lane);
    if (!counterLane) return;
    // This screen shows its own scans from the answer; the lane's scanner arrives here.
    if (d.lane === lane && d.source !== "kiosk") show(d, d.code);
    else sidePart.refresh();
  });
  const offOpen = events.onOpen(() => sidePart.refresh());

  render();
  input.focus();
  return () => {
    document.removeEventListener("click", later);
    document.removeEventListener("keydown", onKey, true);
    window.removeEventListener("focus", later);
    clearInterval(tick);
    offDecision();
    offOpen();
    sidePart.cleanup();
  };
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A short tone: high for admit, two low for deny, so a cashier hears it without looking.
let audio = null;
function beep(v) {
  if (v !== "admit" && v !== "deny" && v !== "confirm") return;
  try {
    audio = audio || new AudioContext();
    const tones = v === "admit" ? [[880, 0]] : v === "confirm" ? [[660, 0]] : [[220, 0], [220, 0.22]];
    for (const [freq, at] of tones) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      gain.gain.value = 0.15;
      osc.frequency.value = freq;
      osc.connect(gain).connect(audio.destination);
      osc.start(audio.currentTime + at);
      osc.stop(audio.currentTime + at + 0.15);
    }
  } catch {
    /* no audio: the screen says it */
  }
}
