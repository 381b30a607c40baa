// Status (technician): devices up/down with the doctor's hints, the cloud link, the code cache,
// the certificate, the clock, the version and the TLS fingerprint to compare on a phone.

import { get } from "./api.js";
import { h } from "./dom.js";
import * as events from "./events.js";
import { fmtAge, fmtDateTime, pickDetail, t, tx } from "./i18n.js";

function kv(rows) {
  return h("dl", { class: "kv" }, rows.filter(Boolean).map(([k, v, cls]) =>
    h("div", { class: cls || "" }, h("dt", {}, k), h("dd", {}, v ?? "—"))));
}

function yes(b) {
  return b ? t("common.yes") : t("common.no");
}

export function mount(root) {
  let alive = true;
  const sections = {
    overall: h("section", { testid: "status-overall", class: "card status-overall" }),
    devices: h("section", { testid: "status-devices", class: "card" }),
    sync: h("section", { testid: "status-sync", class: "card" }),
    cache: h("section", { testid: "status-cache", class: "card" }),
    cert: h("section", { testid: "status-cert", class: "card" }),
    clock: h("section", { testid: "status-clock", class: "card" }),
    version: h("section", { testid: "status-version", class: "card" }),
    tls: h("section", { class: "card" }),
  };
  root.append(h("div", { class: "status-grid" }, Object.values(sections)));

  function device(d) {
    return h("li", { testid: `device-${d.name}`, class: `device ${d.up ? "up" : "down"}`, dataset: { up: String(Boolean(d.up)) } },
      h("span", { class: `tag ${d.up ? "ok" : "bad"}` }, d.up ? t("common.up") : t("common.down")),
      h("strong", {}, d.name),
      h("span", { class: "muted" }, [tx("class.", d.class), d.driver].filter(Boolean).join(" · ")),
      d.error ? h("p", { class: "device-error" }, pickDetail(d.error)) : null,
      d.hint ? h("p", { class: "hint" }, pickDetail(d.hint)) : null);
  }

  function render(s) {
    const sync = s.sync || {};
    const cache = s.cache || {};
    const cert = s.cert;
    const clock = s.clock || {};
    const tls = s.tls || {};
    const alarms = s.alarms || [];
    sections.overall.dataset.state = s.state || "";
    sections.overall.replaceChildren(h("h2", {}, t("status.overall")),
      h("p", { class: `big-state state-${s.state}` }, tx("boxstate.", s.state)),
      h("ul", { class: "alarms" }, alarms.map((a) => h("li", {}, pickDetail(a.reason || a.alarm)))));
    const devices = s.devices || [];
    sections.devices.replaceChildren(h("h2", {}, t("status.devices")),
      h("ul", { class: "device-list" }, devices.length ? devices.map(device) : h("li", { class: "empty" }, t("common.none"))));
    sections.sync.dataset.online = String(Boolean(sync.online));
    const link = sync.configured === false ? t("status.not_configured") : sync.online ? t("status.online_yes") : t("status.online_no");
    sections.sync.replaceChildren(h("h2", {}, t("status.sync")), kv([
      [t("status.online"), link, sync.online ? "ok" : sync.configured === false ? "" : "bad"],
      sync.configured === false ? null : [sync.online ? t("status.online_since") : t("status.offline_since"), fmtDateTime(sync.since)],
      [t("status.outbox_depth"), String(sync.outbox_depth ?? (s.outbox && s.outbox.depth) ?? "—")],
      sync.configured === false ? null : [t("status.last_ack"), fmtDateTime(sync.last_ack)],
      sync.last_error ? [t("status.last_error"), pickDetail(sync.last_error), "bad"] : null,
    ]));
    sections.cache.replaceChildren(h("h2", {}, t("status.cache")), cache.active === false && cache.seq == null
      ? h("p", { class: "bad" }, t("status.no_cache"))
      : kv([
          [t("status.cache_seq"), String(cache.seq ?? "—")],
          [t("status.cache_age"), fmtAge(cache.age_s), cache.stale ? "bad" : ""],
          [t("status.cache_issued"), fmtDateTime(cache.issued_at)],
          [t("status.cache_expires"), fmtDateTime(cache.expires_at)],
          [t("status.cache_stale"), yes(cache.stale)],
        ]));
    sections.cert.replaceChildren(h("h2", {}, t("status.cert")), cert
      ? kv([
          [t("status.cert_not_after"), fmtDateTime(cert.not_after)],
          [t("status.cert_days_left"), t("status.days", { n: cert.days_left ?? "—" }), (cert.days_left ?? 99) < 14 ? "bad" : ""],
          [t("status.cert_renewing"), yes(cert.renewing)],
        ])
      : h("p", { class: "muted" }, t("status.no_cert")));
    const offset = s.clock_offset_s ?? clock.offset_s;
    sections.clock.replaceChildren(h("h2", {}, t("status.clock")), kv([
      [t("status.clock_offset"), offset == null ? t("status.unknown") : t("status.offset_s", { n: Number(offset).toFixed(1) })],
      [t("status.clock_suspect"), yes(clock.suspect), clock.suspect ? "bad" : ""],
      clock.why ? [t("status.clock_why"), pickDetail(clock.why)] : null,
    ]));
    sections.version.replaceChildren(h("h2", {}, t("status.version")), kv([
      [t("status.version"), s.version || "—"],
      [t("status.site"), [s.site, s.device].filter(Boolean).join(" / ")],
    ]));
    sections.tls.replaceChildren(h("h2", {}, t("status.tls")), kv([
      [t("status.tls_enabled"), yes(tls.enabled)],
    ]), h("p", { testid: "status-tls-fingerprint", class: "fingerprint" }, tls.fingerprint || t("status.no_tls")));
  }

  async function refresh() {
    const s = await get("/status");
    if (alive && s) render(s);
  }
  const live = events.keepFresh(refresh, ["device", "cloud"], 5000, 500);
  return () => {
    alive = false;
    live.stop();
  };
}
