// How a decision reads: one big word (admit / deny / confirm), the reason in plain words, and
// what the cashier tells the visitor (product, slot, entries left, persons).

import { h } from "./dom.js";
import { currentLang, fmtClock, fmtTime, pick, t, tx } from "./i18n.js";

// admit | deny | confirm | free_passage (what data-decision says)
export function verdict(d) {
  if (!d) return "idle";
  if (d.needs_confirm || d.decision === "confirm") return "confirm";
  if (d.decision === "admit" || d.decision === "deny" || d.decision === "free_passage") return d.decision;
  return d.reason === "ok" ? "admit" : "deny";
}

export function word(d) {
  const v = verdict(d);
  if (v === "admit") return d.forced ? t("decision.forced") : t("decision.admit");
  if (v === "deny") return t("decision.deny");
  if (v === "confirm") return t("decision.confirm");
  if (v === "free_passage") return t("decision.free_passage");
  return t("decision.idle");
}

// The plain-words reason: the box's display line in the current language, else the catalogue.
export function line(d) {
  const text = pick(d.line_zh, d.line_en);
  if (text) return text;
  return d.reason ? tx("reason.", d.reason) : "";
}

export function product(d) {
  const name = d.product_name || d.product || "";
  const kind = d.kind ? tx("kind.", d.kind) : "";
  return [name, kind].filter(Boolean).join(" · ");
}

export function slot(d) {
  if (!Array.isArray(d.slot) || d.slot.length !== 2) return "";
  return t("decision.slot", { from: fmtClock(d.slot[0]), to: fmtClock(d.slot[1]) });
}

export function remaining(d) {
  if (d.remaining == null) return "";
  return t("decision.remaining", { n: d.remaining });
}

// The big panel's inner parts (the caller owns the element with data-testid="decision").
export function decisionBody(d) {
  const v = verdict(d);
  const icon = { admit: "✓", deny: "✕", confirm: "?", free_passage: "⇄" }[v] || "…";
  const reasonText = d.reason && d.reason !== "ok" ? tx("reason.", d.reason) : "";
  const shown = line(d);
  const warnings = (d.warnings || []).map((w) => h("li", {}, tx("reason.", w)));
  return [
    h("div", { class: "decision-head" },
      h("span", { class: "decision-icon", "aria-hidden": "true" }, icon),
      h("span", { class: "decision-word" }, word(d))),
    // The display line (what the visitor's screen says) and, under it, the reason in full.
    h("div", { testid: "decision-line", class: "decision-line" },
      h("span", {}, shown),
      reasonText && !shown.includes(reasonText) ? h("span", { class: "decision-reason" }, reasonText) : null),
    h("dl", { class: "decision-facts" },
      fact({ testid: "decision-product" }, t("decision.product"), product(d)),
      fact({ testid: "decision-slot" }, t("decision.slot_label"), slot(d)),
      fact({ testid: "decision-remaining" }, t("decision.remaining_label"), remaining(d)),
      d.persons > 1 ? fact({ testid: "decision-persons" }, t("decision.persons_label"), t("decision.persons", { n: d.persons })) : null,
      fact({ testid: "decision-time" }, t("decision.time"), fmtTime(d.at))),
    warnings.length ? h("ul", { class: "decision-warnings" }, warnings) : null,
    d.forced ? h("p", { class: "decision-forced" }, t("decision.forced_note")) : null,
  ];
}

function fact({ testid }, label, value) {
  return h("div", { class: value ? "fact" : "fact empty" },
    h("dt", {}, label),
    h("dd", { testid, lang: currentLang() }, value || "—"));
}

// A one-line summary (gate cards, lists): "✓ 通过 · 成人票 · 14:05:09".
export function summary(d) {
  if (!d || (!d.decision && !d.reason)) return t("decision.none");
  return [word(d), line(d), product(d), fmtTime(d.at)].filter(Boolean).join(" · ");
}
