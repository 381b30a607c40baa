// Gate supervisor: lanes live (last scan, decision, passages), zones against their thresholds
// with the crowd alert, manual open, deny counts by reason, the fire banner; force admit and
// emergency free passage live in gate_actions.js.

import { get, post, session } from "./api.js";
import { busy, h, notice } from "./dom.js";
import { summary, verdict } from "./decision.js";
import * as events from "./events.js";
import { fmtTime, pick, t, tx } from "./i18n.js";
import { emergencyPanel, forceForm } from "./gate_actions.js";

const passages = {}; // lane -> last passage event (kept across remounts)

export function mount(root) {
  let view = null;
  let alive = true;
  const fire = h("div", { testid: "fire-banner", class: "banner fire", role: "alert" });
  fire.hidden = true;
  const crowd = h("div", { testid: "crowd-alert", class: "banner crowd", role: "status" });
  crowd.hidden = true;
  const lanesBox = h("div", { class: "lane-grid" });
  const zonesBox = h("div", { class: "zones" });
  const denyBox = h("div", { testid: "deny-counts", class: "deny-counts" });
  const emergency = emergencyPanel(() => view, (out) => apply(out));
  const force = forceForm(() => session.boot.gate_lanes || []);

  root.append(
    fire,
    crowd,
    h("div", { class: "gate" },
      h("section", { class: "gate-main" },
        emergency.el,
        h("h2", {}, t("gate.lanes")),
        lanesBox,
        h("h2", {}, t("gate.zones")),
        zonesBox),
      h("aside", { class: "gate-side" },
        force.el,
        h("section", { class: "card" }, h("h2", {}, t("gate.deny_counts")), denyBox))),
  );

  function laneCard(name, lane) {
    const last = lane.last || null;
    const v = last ? verdict(last) : "idle";
    const p = passages[name];
    const flags = [
      lane.fire ? h("span", { class: "tag fire" }, t("gate.fire_tag")) : null,
      lane.emergency ? h("span", { class: "tag warn" }, t("gate.emergency_tag")) : null,
      lane.busy ? h("span", { class: "tag" }, t("gate.busy_tag")) : null,
    ];
    return h("article", { testid: `lane-${name}`, class: `card lane lane-${v}`, dataset: { fire: String(Boolean(lane.fire)) } },
      h("header", { class: "lane-head" },
        h("h3", {}, name),
        h("span", { class: "lane-dir" }, tx("direction.", lane.direction)),
        flags),
      h("p", { testid: `lane-${name}-last`, class: `lane-last v-${v}`, dataset: { decision: v } }, summary(last)),
      h("p", { class: "lane-passage" }, p
        ? t("gate.passage", { passed: p.passed ?? 0, requested: p.requested ?? 1, state: tx("state.", p.state), at: fmtTime(p.at) })
        : t("gate.no_passage")),
      h("p", { class: "lane-count" }, t("gate.scans", { n: lane.scans ?? 0 })),
      h("button", {
        testid: `open-${name}`, class: "btn big", disabled: !lane.gate || lane.fire,
        onclick: busy(() => manualOpen(name)),
      }, t("gate.open_one")));
  }

  async function manualOpen(name) {
    const out = await post(`/gate/lanes/${encodeURIComponent(name)}/open`, { persons: 1 });
    if (out) notice(out.fire ? t("gate.open_fire") : t("gate.opened", { lane: name, n: out.passed ?? 0 }));
  }

  function zoneRow(z) {
    const load = z.load ?? (z.inside ?? 0) + (z.pending ?? 0);
    const top = z.full || z.warn || Math.max(load, 1);
    const bar = h("div", { class: "bar-fill" });
    bar.style.width = `${Math.min(100, Math.round((100 * load) / top))}%`;
    return h("div", { testid: `zone-${z.zone}`, class: `zone level-${z.level}`, dataset: { level: z.level } },
      h("div", { class: "zone-head" },
        h("strong", {}, z.name || z.zone),
        h("span", { class: "zone-level" }, pick(z.text_zh, z.text_en) || tx("level.", z.level))),
      h("div", { class: "bar", role: "meter", "aria-valuenow": load, "aria-valuemin": 0, "aria-valuemax": top }, bar),
      h("p", { class: "zone-numbers" }, t("gate.zone_numbers", {
        inside: z.inside ?? 0, pending: z.pending ?? 0, warn: z.warn ?? "—", full: z.full ?? "—",
      })));
  }

  function renderDeny(counts) {
    const rows = [];
    for (const [lane, reasons] of Object.entries(counts || {})) {
      for (const [reason, n] of Object.entries(reasons || {})) {
        rows.push(h("tr", {}, h("td", {}, lane), h("td", {}, tx("reason.", reason)), h("td", { class: "num" }, n)));
      }
    }
    denyBox.replaceChildren(rows.length
      ? h("table", { class: "mini" },
          h("thead", {}, h("tr", {}, h("th", {}, t("gate.lane")), h("th", {}, t("shift.reason")), h("th", {}, t("shift.count")))),
          h("tbody", {}, rows))
      : h("p", { class: "empty" }, t("gate.no_denies")));
  }

  function render() {
    if (!view) return;
    const anyFire = Boolean(view.fire) || Object.values(view.lanes || {}).some((l) => l.fire);
    fire.hidden = !anyFire;
    fire.replaceChildren(
      h("strong", {}, t("gate.fire_title")),
      h("span", {}, pick(view.fire_zh, view.fire_en) || t("gate.fire_text")),
      h("span", {}, t("gate.fire_lanes", { lanes: (view.fire_lanes || []).join(", ") || "—" })));
    const gates = Object.entries(view.lanes || {}).filter(([, l]) => l.kind === "gate");
    lanesBox.replaceChildren(...gates.map(([n, l]) => laneCard(n, l)));
    const zones = view.zones || [];
    zonesBox.replaceChildren(...(zones.length ? zones.map(zoneRow) : [h("p", { class: "empty" }, t("gate.no_zones"))]));
    const hot = zones.filter((z) => z.level && z.level !== "normal");
    crowd.hidden = !hot.length;
    crowd.textContent = hot.length
      ? t("gate.crowd_alert", { zones: hot.map((z) => `${z.name || z.zone} (${pick(z.text_zh, z.text_en) || tx("level.", z.level)})`).join(", ") })
      : "";
    renderDeny(view.deny_counts);
    emergency.render();
  }

  function apply(part) {
    if (!view || !part) return;
    if (part.lanes) view.lanes = part.lanes;
    for (const k of ["emergency", "fire", "fire_lanes", "fire_zh", "fire_en"]) if (k in part) view[k] = part[k];
    render();
  }

  async function refresh() {
    const data = await get("/gate/overview");
    if (alive && data) {
      view = data;
      render();
    }
  }
  const live = events.keepFresh(refresh, ["crowd"], 15000, 400);
  const later = live.later;

  const offs = [
    events.on("decision", (d) => {
      if (d.duplicate) return;
      const lane = view && view.lanes && view.lanes[d.lane];
      if (!lane) return later(); // the overview is still loading: it may predate this scan
      lane.last = d;
      render();
      if (verdict(d) === "deny") later();
    }),
    events.on("passage", (p, msg) => {
      passages[p.lane] = { ...p, at: (msg && msg.at) || Date.now() / 1000 };
      render();
    }),
    events.on("lane", (l) => {
      const lane = view && view.lanes && view.lanes[l.lane];
      if (!lane) return later();
      if ("fire" in l) lane.fire = l.fire;
      if ("emergency" in l) lane.emergency = l.emergency;
      view.emergency = Object.values(view.lanes).some((x) => x.kind === "gate" && x.emergency);
      view.fire = Object.values(view.lanes).some((x) => x.fire);
      render();
      later();
    }),
    events.on("occupancy", (o) => {
      if (!view) return;
      if (Array.isArray(o.zones)) view.zones = o.zones;
      else if (o.zone) view.zones = (view.zones || []).map((z) => (z.zone === o.zone ? { ...z, ...o } : z));
      render();
    }),
  ];
  return () => {
    alive = false;
    live.stop();
    offs.forEach((off) => off());
    force.cleanup();
  };
}
