// The counter's side column: recent redemptions (undo while the box allows it, reprint the
// receipt) and the open shift (summary by product and reason, close with a confirmation).

import { get, post } from "./api.js";
import { busy, debounce, h, notice } from "./dom.js";
import * as events from "./events.js";
import { fmtTime, pick, t, tx } from "./i18n.js";

export function mountSide(root) {
  const list = h("ul", { testid: "recent-list", class: "recent-list" });
  const summary = h("div", { testid: "shift-summary", class: "shift-summary" });
  const closeArea = h("div", { class: "shift-close-area" });
  let rows = [];
  let closing = false;
  let shownShift = null; // the shift on screen: a close names it (409 if another screen closed it)
  let alive = true;

  root.append(
    h("section", { class: "card recent" }, h("h2", {}, t("counter.recent")), list),
    h("section", { class: "card shift" }, h("h2", {}, t("shift.title")), summary, closeArea),
  );

  function voidable(r) {
    if (!r.voidable) return false;
    if (!r.void_until) return true;
    return new Date(r.void_until).getTime() > Date.now();
  }

  function renderRecent() {
    if (!rows.length) {
      list.replaceChildren(h("li", { class: "empty" }, t("counter.recent_empty")));
      return;
    }
    list.replaceChildren(...rows.map((r) => {
      const rid = r.redemption_id;
      return h("li", { testid: `recent-${rid}`, class: `recent-row state-${r.state}`, dataset: { state: r.state || "" } },
        h("div", { class: "recent-main" },
          h("strong", {}, r.product_name || r.kind || rid.slice(0, 8)),
          h("span", { class: "recent-meta" },
            [fmtTime(r.at), tx("state.", r.state), r.lane, r.actor].filter(Boolean).join(" · "))),
        h("div", { class: "recent-actions" },
          r.state !== "voided" ? h("button", {
            testid: `receipt-${rid}`, class: "btn small", onclick: busy(() => reprint(rid)),
          }, t("counter.reprint")) : null,
          voidable(r) ? h("button", {
            testid: `void-${rid}`, class: "btn danger small", onclick: busy(() => undo(rid)),
          }, t("counter.void")) : null));
    }));
  }

  async function refreshRecent() {
    const data = await get("/counter/recent?limit=20");
    if (!alive || !data) return;
    rows = Array.isArray(data) ? data : data.items || [];
    renderRecent();
  }

  async function undo(rid) {
    const out = await post("/counter/void", { redemption_id: rid });
    if (out) {
      notice(t("counter.voided"));
      refresh();
    }
  }

  async function reprint(rid) {
    const job = await post("/counter/receipt", { redemption_id: rid });
    if (job) notice(t("counter.receipt_sent", { state: tx("job.", job.state || "queued") }));
  }

  function table(caption, head, body) {
    return h("table", { class: "mini" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))),
      h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: head.length, class: "empty" }, t("common.none")))));
  }

  function renderShift(s) {
    shownShift = s.shift_id ?? null;
    const byProduct = (s.by_product || []).map((p) =>
      h("tr", {}, h("td", {}, p.product_name || p.product), h("td", { class: "num" }, p.count), h("td", { class: "num" }, p.persons ?? "")));
    const byReason = (s.by_reason || []).map((r) =>
      h("tr", {}, h("td", {}, pick(r.zh, r.en) || tx("reason.", r.reason)), h("td", { class: "num" }, r.count)));
    summary.replaceChildren(
      h("p", { class: "shift-opened" }, t("shift.opened", { at: fmtTime(s.opened_at) })),
      h("div", { class: "totals" },
        total("shift-admits", t("shift.admits"), s.admits),
        total("shift-denies", t("shift.denies"), s.denies),
        total("shift-voids", t("shift.voids"), s.voids)),
      table(t("shift.by_product"), [t("shift.product"), t("shift.count"), t("shift.persons")], byProduct),
      table(t("shift.by_reason"), [t("shift.reason"), t("shift.count")], byReason),
    );
  }

  function total(testid, label, n) {
    return h("div", { class: "total", testid }, h("span", { class: "total-n" }, n ?? 0), h("span", {}, label));
  }

  function renderClose() {
    if (!closing) {
      closeArea.replaceChildren(h("button", {
        testid: "shift-close", class: "btn big", onclick: () => { closing = true; renderClose(); },
      }, t("shift.close")));
      return;
    }
    const note = h("input", { testid: "shift-close-note", maxlength: 500, placeholder: t("shift.note_placeholder"), "aria-label": t("shift.note") });
    closeArea.replaceChildren(h("div", { class: "confirm-box", role: "group" },
      h("p", {}, t("shift.close_explain")),
      note,
      h("div", { class: "row" },
        h("button", { testid: "shift-close-confirm", class: "btn primary big", onclick: busy(() => closeShift(note.value.trim())) }, t("shift.close_confirm")),
        h("button", { testid: "shift-close-cancel", class: "btn big", onclick: () => { closing = false; renderClose(); } }, t("common.cancel")))));
    closeArea.scrollIntoView({ block: "nearest" });
  }

  async function closeShift(noteText) {
    const body = noteText ? { note: noteText } : {};
    if (shownShift != null) body.shift_id = shownShift;
    const out = await post("/counter/shift/close", body);
    if (!out) return refresh();
    closing = false;
    renderClose();
    const job = out.print_job;
    notice(t("shift.closed", {
      admits: out.admits ?? 0,
      printed: job ? tx("job.", job.state || "queued") : t("shift.not_printed"),
    }));
    refresh();
  }

  async function refreshShift() {
    const s = await get("/counter/shift");
    if (alive && s) renderShift(s);
  }

  const refresh = debounce(() => {
    refreshRecent();
    refreshShift();
  }, 250);
  const offShift = events.on("shift", refresh);
  const tick = setInterval(() => rows.some((r) => r.voidable) && renderRecent(), 5000);
  renderRecent();
  renderClose();
  refreshRecent();
  refreshShift();
  return {
    refresh,
    cleanup() {
      alive = false;
      refresh.cancel();
      offShift();
      clearInterval(tick);
    },
  };
}
