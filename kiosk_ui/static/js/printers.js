// Printers: each printer's state and queue, held jobs and why (paper out ...), recent jobs with
// reprint, a test page per printer.

import { get, post } from "./api.js";
import { busy, h, notice } from "./dom.js";
import * as events from "./events.js";
import { fmtTime, pickDetail, t, tx } from "./i18n.js";

const REPRINTABLE = new Set(["printed", "incomplete", "uncertain", "failed"]);

export function mount(root) {
  let alive = true;
  const cards = h("div", { class: "printer-grid" });
  const jobs = h("tbody", {});
  root.append(h("div", { class: "printers" },
    h("h2", {}, t("printers.title")),
    cards,
    h("section", { class: "card" },
      h("h2", {}, t("printers.jobs")),
      h("div", { class: "table-wrap" },
        h("table", { class: "jobs", testid: "print-jobs" },
          h("thead", {}, h("tr", {},
            [t("printers.job_time"), t("printers.job_title"), t("printers.printer"), t("printers.job_state"), t("printers.job_error"), ""]
              .map((x) => h("th", {}, x)))),
          jobs)))));

  function card(p) {
    const state = p.state || (p.up ? "ready" : "down");
    const held = p.held || [];
    return h("article", { testid: `printer-${p.name}`, class: `card printer ${p.up ? "up" : "down"}`, dataset: { state, up: String(Boolean(p.up)) } },
      h("header", { class: "lane-head" },
        h("h3", {}, p.name),
        h("span", { class: `tag ${p.up ? "ok" : "bad"}` }, p.up ? t("common.up") : t("common.down"))),
      h("p", { class: "printer-state" }, tx("printer.", state)),
      p.hint || p.problem ? h("p", { class: "hint" }, pickDetail(p.hint || p.problem)) : null,
      h("p", {}, t("printers.queue", { n: p.queue ?? 0 })),
      held.length ? h("ul", { class: "held" }, held.map((j) =>
        h("li", { testid: `held-${j.id}` }, h("strong", {}, t("printers.held")), " ", j.title ? `${j.title}: ` : "", pickDetail(j.why) || tx("job.", "held")))) : null,
      h("button", { testid: `test-page-${p.name}`, class: "btn", onclick: busy(() => testPage(p.name)) }, t("printers.test_page")));
  }

  function jobRow(j) {
    const canReprint = REPRINTABLE.has(j.state) && j.template !== "pickup_slip";
    return h("tr", { testid: `job-${j.id}`, dataset: { state: j.state } },
      h("td", {}, fmtTime(j.created_at)),
      h("td", {}, j.title || j.template || j.id),
      h("td", {}, j.printer || j.target || ""),
      h("td", {}, h("span", { class: `tag job-${j.state}` }, tx("job.", j.state))),
      h("td", { class: "hint" }, pickDetail(j.last_error || "")),
      h("td", {}, canReprint
        ? h("button", { testid: `reprint-${j.id}`, class: "btn small", onclick: busy(() => reprint(j.id)) }, t("printers.reprint"))
        : null));
  }

  async function testPage(name) {
    const out = await post(`/printers/${encodeURIComponent(name)}/test-page`, {});
    if (out) notice(t("printers.test_sent", { printer: name }));
    live.later();
  }

  async function reprint(id) {
    const out = await post(`/printers/jobs/${encodeURIComponent(id)}/reprint`, {});
    if (out) notice(t("printers.reprint_sent"));
    live.later();
  }

  async function refresh() {
    const data = await get("/printers");
    if (!alive || !data) return;
    const list = data.printers || [];
    cards.replaceChildren(...(list.length ? list.map(card) : [h("p", { class: "empty" }, t("printers.none"))]));
    const rows = data.jobs || [];
    jobs.replaceChildren(...(rows.length ? rows.map(jobRow) : [h("tr", {}, h("td", { colspan: 6, class: "empty" }, t("common.none")))]));
  }
  const live = events.keepFresh(refresh, ["print", "device"], 10000, 300);
  return () => {
    alive = false;
    live.stop();
  };
}
