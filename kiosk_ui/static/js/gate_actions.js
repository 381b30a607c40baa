// Gate supervisor's two deliberate actions: force admit (a reason is required; recorded and
// synced as forced) and emergency free passage (the user's own PIN again and a confirmation;
// it never clears the hardware fire input).

import { post, session } from "./api.js";
import { busy, h, notice, toast } from "./dom.js";
import { summary } from "./decision.js";
import { t } from "./i18n.js";

export function forceForm(gateLanes) {
  const lanes = [...gateLanes(), ...(session.boot.counter_lanes || [])];
  const code = h("input", { id: "force-code", testid: "force-code", autocomplete: "off", spellcheck: "false", maxlength: 2048 });
  const lane = h("select", { id: "force-lane", testid: "force-lane" }, lanes.map((n) => h("option", { value: n }, n)));
  const note = h("textarea", { id: "force-note", testid: "force-note", maxlength: 500, rows: 2, placeholder: t("force.note_placeholder") });
  const result = h("p", { testid: "force-result", class: "force-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit", testid: "force-submit", class: "btn warn big" }, t("force.submit"));

  async function send(ev) {
    ev.preventDefault();
    const why = note.value.trim();
    if (!code.value.trim()) return say(t("force.code_missing"), "deny");
    if (!why) {
      note.focus();
      return say(t("force.note_missing"), "deny");
    }
    submit.disabled = true;
    try {
      const out = await post("/gate/force-admit", { code: code.value.trim(), lane: lane.value, note: why });
      if (!out) return;
      say(summary(out), out.decision === "admit" ? "admit" : "deny");
      if (out.decision === "admit") {
        code.value = "";
        note.value = "";
      }
    } finally {
      submit.disabled = false;
    }
  }

  function say(text, v) {
    result.textContent = text;
    result.dataset.decision = v;
  }

  const el = h("form", { class: "card force", onsubmit: send, novalidate: true },
    h("h2", {}, t("force.title")),
    h("p", { class: "hint" }, t("force.explain")),
    h("label", { for: "force-code" }, t("force.code")), code,
    h("label", { for: "force-lane" }, t("force.lane")), lane,
    h("label", { for: "force-note" }, t("force.note")), note,
    submit,
    result);
  return { el, cleanup() {} };
}

export function emergencyPanel(getView, apply) {
  const el = h("section", { class: "card emergency" });
  let asking = false;
  let shown = null; // what is on screen: "on|asking"; unchanged -> keep it (and the typed PIN)

  function isOn() {
    const v = getView();
    return Boolean(v && v.emergency);
  }

  function render() {
    const on = isOn();
    const key = `${on}|${asking}`;
    if (key === shown) return;
    shown = key;
    el.className = `card emergency ${on ? "on" : "off"}`;
    const state = h("p", { testid: "emergency-state", class: "emergency-state", dataset: { on: String(on) } },
      on ? t("emergency.on") : t("emergency.off"));
    const toggle = h("button", {
      testid: "emergency-toggle",
      class: on ? "btn big" : "btn danger big",
      onclick: () => {
        asking = !asking;
        render();
      },
      "aria-expanded": String(asking),
    }, on ? t("emergency.turn_off") : t("emergency.turn_on"));
    const parts = [h("h2", {}, t("emergency.title")), h("div", { class: "row" }, state, toggle)];
    if (asking) parts.push(confirmBox(on));
    el.replaceChildren(...parts);
    if (asking) el.querySelector("input").focus({ preventScroll: true });
  }

  function confirmBox(on) {
    const pin = h("input", {
      id: "emergency-pin", testid: "emergency-pin", type: "password", inputmode: "numeric",
      autocomplete: "off", maxlength: 12,
    });
    const error = h("p", { class: "login-error", role: "alert" });
    error.hidden = true;
    const confirm = h("button", {
      type: "submit",
      testid: "emergency-confirm",
      class: on ? "btn primary big" : "btn danger big",
      onclick: busy(async (ev) => {
        ev.preventDefault();
        if (!/^[0-9]{4,12}$/.test(pin.value)) {
          error.textContent = t("login.pin_format");
          error.hidden = false;
          return;
        }
        const out = await post("/gate/emergency", { on: !on, pin: pin.value, confirm: true });
        pin.value = "";
        if (!out) return;
        asking = false;
        apply(out);
        notice(out.emergency ? t("emergency.now_on") : t("emergency.now_off"));
        if (!out.emergency && out.fire) toast(t("emergency.fire_still")); // a warning: red
      }),
    }, on ? t("emergency.confirm_off") : t("emergency.confirm_on"));
    // A form, so Enter in the PIN field confirms (the submit event clicks the button).
    return h("form", { class: "confirm-box", novalidate: true, onsubmit: (ev) => ev.preventDefault() },
      h("p", {}, on ? t("emergency.explain_off") : t("emergency.explain_on")),
      h("p", { class: "hint" }, t("emergency.fire_note")),
      h("label", { for: "emergency-pin" }, t("emergency.pin")),
      pin,
      error,
      h("div", { class: "row" },
        confirm,
        h("button", { type: "button", testid: "emergency-cancel", class: "btn big", onclick: () => { asking = false; render(); } }, t("common.cancel"))));
  }

  return { el, render };
}
