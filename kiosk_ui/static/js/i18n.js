// The one catalogue of user-facing text: i18n/zh-CN.json (default) and i18n/en.json.
// Code names each key as a literal, quoted, in a t(...) call (the tests grep them); text from
// the box in both languages (line_zh/line_en, {zh, en} errors) is picked with pick()/pickDetail().

export const LANGS = ["zh-CN", "en"];
const STORE_KEY = "edge.lang";
const catalogues = {};
let lang = LANGS[0];
let cat = {};

function stored() {
  try {
    const v = localStorage.getItem(STORE_KEY);
    return LANGS.includes(v) ? v : null;
  } catch {
    return null; // storage disabled: the default language
  }
}

async function load(l) {
  if (!catalogues[l]) {
    const res = await fetch(new URL(`../i18n/${l}.json`, import.meta.url), { credentials: "same-origin" });
    if (!res.ok) throw new Error(`catalogue ${l}: HTTP ${res.status}`);
    catalogues[l] = await res.json();
  }
  return catalogues[l];
}

export async function initLang() {
  await setLang(stored() || LANGS[0], false);
}

export async function setLang(l, remember = true) {
  cat = await load(l);
  lang = l;
  document.documentElement.lang = l;
  if (remember) {
    try {
      localStorage.setItem(STORE_KEY, l);
    } catch {
      /* not remembered: still switched for this page */
    }
  }
}

export function currentLang() {
  return lang;
}

export function otherLang() {
  return lang === "en" ? "zh-CN" : "en";
}

// t(KEY, {n: 3}) -> the text with {n} replaced; an unknown key shows itself (easy to spot).
export function t(key, vars) {
  let s = Object.prototype.hasOwnProperty.call(cat, key) ? cat[key] : key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  return s;
}

// A key built from a value the box sends (a reason, a state): the value itself when unknown.
export function tx(prefix, value) {
  const key = prefix + value;
  return Object.prototype.hasOwnProperty.call(cat, key) ? cat[key] : String(value ?? "");
}

export function pick(zh, en) {
  return lang === "en" ? en || zh || "" : zh || en || "";
}

const CJK = /[\u3400-\u9fff\uff00-\uffef]/;

// An error detail from the box: {zh, en, message}, "中文 / English", or pydantic's list.
export function pickDetail(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") {
    const i = detail.indexOf(" / ");
    if (i > 0) {
      const a = detail.slice(0, i);
      const b = detail.slice(i + 3);
      if (CJK.test(a) && !CJK.test(b)) return lang === "en" ? b : a;
    }
    return detail;
  }
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (detail.zh || detail.en) return pick(detail.zh, detail.en);
  return detail.message ? pickDetail(detail.message) : JSON.stringify(detail);
}

// Fill [data-i18n] (text), [data-i18n-placeholder] and [data-i18n-label] (aria-label).
export function applyStatic(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

function asDate(v) {
  if (v == null || v === "") return null;
  const d = typeof v === "number" ? new Date(v < 1e12 ? v * 1000 : v) : new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

// Times at the counter: 14:05:09 today, else with the date.
export function fmtTime(v) {
  const d = asDate(v);
  if (!d) return "—";
  const sameDay = d.toDateString() === new Date().toDateString();
  const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (!sameDay) Object.assign(opts, { month: "2-digit", day: "2-digit" });
  return d.toLocaleString(lang, opts);
}

export function fmtClock(v) {
  const d = asDate(v);
  return d ? d.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit", hour12: false }) : "—";
}

export function fmtDateTime(v) {
  const d = asDate(v);
  if (!d) return "—";
  return d.toLocaleString(lang, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false });
}

// 42 s, 5 min, 3.2 h, 2 d
export function fmtAge(seconds) {
  if (seconds == null || Number.isNaN(Number(seconds))) return "—";
  const s = Math.abs(Number(seconds));
  if (s < 90) return t("time.seconds", { n: Math.round(s) });
  if (s < 5400) return t("time.minutes", { n: Math.round(s / 60) });
  if (s < 172800) return t("time.hours", { n: (s / 3600).toFixed(1) });
  return t("time.days", { n: Math.round(s / 86400) });
}
