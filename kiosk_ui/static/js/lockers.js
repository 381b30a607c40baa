// Lockers: the wall as a grid per bank (free, occupied, open, fault, expired: colour and text),
// deposit an order (cashier), open a door and re-issue the pickup slip (supervisor).

import { can, get, post, session } from "./api.js";
import { busy, debounce, h, notice } from "./dom.js";
import * as events from "./events.js";
import { fmtTime, t, tx } from "./i18n.js";

export function mount(root) {
  const banks = session.boot.banks || [];
  const supervisor = can("supervisor");
  let grids = {};
  let alive = true;
  let depositing = null; // bank name while a deposit waits for its door to close
  const wall = h("div", { class: "lockers-wall" });
  const result = h("div", { testid: "deposit-result", class: "deposit-result", "aria-live": "polite" });
  const bankSel = h("select", { id: "deposit-bank", testid: "deposit-bank", onchange: () => fillSizes() },
    banks.map((b) => h("option", { value: b }, b)));
  const order = h("input", { id: "deposit-order", testid: "deposit-order", autocomplete: "off", maxlength: 64, spellcheck: "false" });
  const size = h("select", { id: "deposit-size", testid: "deposit-size" });
  const submit = h("button", { type: "submit", testid: "deposit-submit", class: "btn primary big" }, t("lockers.deposit_submit"));
  const why = h("select", { id: "open-why", testid: "open-why" },
    h("option", { value: "customer" }, t("lockers.why_customer")),
    h("option", { value: "staff" }, t("lockers.why_staff")),
    h("option", { value: "maintenance" }, t("lockers.why_maintenance")));

  root.append(h("div", { class: "lockers" },
    h("form", { class: "card deposit", onsubmit: deposit, novalidate: true },
      h("h2", {}, t("lockers.deposit_title")),
      banks.length > 1 ? [h("label", { for: "deposit-bank" }, t("lockers.bank")), bankSel] : null,
      h("label", { for: "deposit-order" }, t("lockers.order_no")), order,
      h("label", { for: "deposit-size" }, t("lockers.size")), size,
      submit,
      result),
    h("section", { class: "lockers-grid-area" },
      supervisor ? h("div", { class: "row why-row" }, h("label", { for: "open-why" }, t("lockers.open_why")), why) : null,
      h("div", { class: "legend" }, ["free", "occupied", "open", "fault", "expired"].map((s) =>
        h("span", { class: `legend-item door-${s}` }, tx("door.", s)))),
      wall)));
  if (!banks.length) wall.append(h("p", { class: "empty" }, t("lockers.no_banks")));

  function fillSizes() {
    const bank = bankSel.value || banks[0];
    const sizes = [...new Set((grids[bank] || []).map((d) => d.size).filter(Boolean))];
    const keep = size.value;
    size.replaceChildren(h("option", { value: "" }, t("lockers.size_any")), ...sizes.map((s) => h("option", { value: s, selected: s === keep }, s)));
  }

  function door(bank, d) {
    const id = `${bank}-${d.door}`;
    const active = d.state === "occupied" || d.state === "expired";
    return h("div", { testid: `door-${id}`, class: `door door-${d.state}`, dataset: { state: d.state } },
      h("div", { class: "door-head" }, h("span", { class: "door-no" }, d.door), h("span", { class: "door-size" }, d.size || "")),
      h("div", { class: "door-state" }, tx("door.", d.state)),
      d.order_no ? h("div", { class: "door-order" }, d.order_no) : null,
      d.expires_at && active ? h("div", { class: "door-exp" }, t("lockers.until", { at: fmtTime(d.expires_at) })) : null,
      supervisor ? h("div", { class: "door-actions" },
        h("button", { testid: `door-open-${id}`, class: "btn small", onclick: busy(() => openDoor(bank, d.door)) }, t("lockers.open")),
        active ? h("button", { testid: `door-reissue-${id}`, class: "btn small", onclick: busy(() => reissue(bank, d.door)) }, t("lockers.reissue")) : null)
        : null);
  }

  function render() {
    if (!banks.length) return;
    wall.replaceChildren(...banks.map((bank) => {
      const doors = grids[bank] || [];
      const free = doors.filter((d) => d.state === "free").length;
      return h("section", { testid: `bank-${bank}`, class: "card bank" },
        h("h2", {}, t("lockers.bank_title", { bank, free, total: doors.length })),
        h("div", { class: "door-grid" }, doors.map((d) => door(bank, d))));
    }));
  }

  async function refresh() {
    const data = await get("/lockers");
    if (!alive || !data) return;
    grids = data.banks || {};
    render();
    fillSizes();
  }
  const later = debounce(refresh, 300);

  async function deposit(ev) {
    ev.preventDefault();
    const no = order.value.trim();
    if (!no) {
      say(t("lockers.order_missing"), "error");
      order.focus();
      return;
    }
    const bank = bankSel.value || banks[0];
    submit.disabled = true;
    depositing = bank;
    say(t("lockers.opening"), "busy");
    try {
      const out = await post(`/lockers/${encodeURIComponent(bank)}/deposit`, size.value ? { order_no: no, size: size.value } : { order_no: no });
      if (!out) return say("", "");
      order.value = "";
      say(out.printed
        ? t("lockers.deposited", { door: out.door, order: out.order_no })
        : t("lockers.deposited_no_slip", { door: out.door, order: out.order_no, code: out.code || "—" }), out.printed ? "ok" : "warn");
      later();
    } finally {
      depositing = null;
      submit.disabled = false;
    }
  }

  function say(text, kind) {
    result.textContent = text;
    result.dataset.kind = kind;
  }

  async function openDoor(bank, n) {
    const out = await post(`/lockers/${encodeURIComponent(bank)}/doors/${n}/open`, { why: why.selectedOptions[0].textContent });
    if (out) notice(out.opened === false ? t("lockers.not_opened", { door: n }) : t("lockers.opened", { door: n }));
    later();
  }

  async function reissue(bank, n) {
    const out = await post(`/lockers/${encodeURIComponent(bank)}/doors/${n}/reissue`, {});
    if (out) notice(out.printed ? t("lockers.reissued", { door: n }) : t("lockers.reissued_no_slip", { door: n, code: out.code || "—" }));
    later();
  }

  const offs = [
    events.on("locker", (e) => {
      if (e.event === "deposit_open" && e.locker === depositing) say(t("lockers.put_in", { door: e.door }), "busy");
      later();
    }),
    events.onOpen(refresh),
  ];
  // Doors also change without an event (a customer shuts a door): look again every few seconds.
  const tick = setInterval(() => depositing || refresh(), 4000);
  refresh();
  return () => {
    alive = false;
    later.cancel();
    clearInterval(tick);
    offs.forEach((off) => off());
  };
}
