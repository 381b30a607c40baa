// The page: language, session, navigation by role, hash routes (#/counter ...), live events.

import { ApiError, KIOSK, SESSION, can, onUnauthorized, report, request, session } from "./api.js";
import { byTestId, h, hideToast, toast } from "./dom.js";
import * as events from "./events.js";
import { applyStatic, initLang, otherLang, pickDetail, setLang, t } from "./i18n.js";
import { showLogin } from "./login.js";

// Route -> lowest role, its module. Cashiers see counter and lockers (deposit only).
const ROUTES = [
  { name: "counter", role: "cashier", load: () => import("./counter.js") },
  { name: "gate", role: "supervisor", load: () => import("./gate.js") },
  { name: "lockers", role: "cashier", load: () => import("./lockers.js") },
  { name: "printers", role: "supervisor", load: () => import("./printers.js") },
  { name: "status", role: "technician", load: () => import("./status.js") },
];
const main = document.getElementById("main");
let current = null; // {name, cleanup}
let routeToken = 0;
let assetsTag = null;

function allowed() {
  return ROUTES.filter((r) => can(r.role));
}

function buildNav() {
  const nav = document.getElementById("nav");
  const here = (location.hash.match(/^#\/(\w+)/) || [])[1];
  nav.replaceChildren(
    ...allowed().map((r) =>
      h("a", {
        href: `#/${r.name}`,
        testid: `nav-${r.name}`,
        class: r.name === here ? "nav-link active" : "nav-link",
        "aria-current": r.name === here ? "page" : null,
      }, t(`nav.${r.name}`)),
    ),
  );
}

function paintHeader() {
  const who = byTestId("user-name");
  const loggedIn = Boolean(session.user);
  document.body.dataset.auth = String(loggedIn);
  who.textContent = loggedIn ? t("header.user", { user: session.user, role: t(`role.${session.role}`) }) : "";
  byTestId("logout").hidden = !loggedIn;
  const toggle = byTestId("lang-toggle");
  toggle.textContent = t("lang.switch_to");
  toggle.lang = otherLang();
  document.title = t("app.title");
  const site = byTestId("site-name");
  site.textContent = session.boot ? `${session.boot.site} · ${session.boot.device}` : "";
  events.paintLive();
  if (loggedIn) buildNav();
  else document.getElementById("nav").replaceChildren();
}

async function unmount() {
  if (current && current.cleanup) {
    try {
      current.cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  current = null;
}

async function route() {
  if (!session.user) return;
  const token = ++routeToken;
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const target = allowed().find((r) => r.name === name);
  if (!target) {
    location.replace(`#/${allowed()[0].name}`);
    return;
  }
  buildNav();
  if (!current || current.name !== target.name) hideToast();
  const mod = await target.load();
  if (token !== routeToken) return;
  await unmount();
  main.replaceChildren();
  main.dataset.screen = target.name;
  current = { name: target.name, cleanup: await mod.mount(main) };
}

async function enter(s) {
  session.user = s.user;
  session.role = s.role;
  session.csrf = s.csrf_token;
  session.boot = await request("GET", `${KIOSK}/bootstrap`);
  hideToast();
  paintHeader();
  events.connect(checkSession);
  if (!location.hash.startsWith("#/") || location.hash === "#/login") location.replace("#/counter");
  await route();
}

function leave(message) {
  events.disconnect();
  unmount();
  Object.assign(session, { user: null, role: null, csrf: null, boot: null });
  paintHeader();
  main.dataset.screen = "login";
  showLogin(main, { message, onLoggedIn: (s) => enter(s).catch(report) });
}

// Before reopening the event stream: still logged in? (a 401 ends the session on screen)
async function checkSession() {
  try {
    await request("GET", SESSION);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      leave(pickDetail(err.detail));
      return false;
    }
    throw err;
  }
  await reloadIfUpgraded();
  return true;
}

// After an upgrade the box serves new assets: reload to run them (index.html's ETag names them).
async function reloadIfUpgraded() {
  try {
    const res = await fetch("/kiosk/", { method: "HEAD", cache: "no-store" });
    const tag = res.headers.get("ETag");
    if (assetsTag && tag && tag !== assetsTag) location.reload();
    assetsTag = assetsTag || tag;
  } catch {
    /* offline: nothing to compare */
  }
}

async function logout() {
  try {
    await request("DELETE", SESSION);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(err.message);
  }
  leave("");
}

async function toggleLang() {
  await setLang(otherLang());
  applyStatic(document);
  paintHeader();
  if (session.user) {
    routeToken++;
    await route();
  } else {
    leave("");
  }
}

async function start() {
  try {
    await initLang();
  } catch (err) {
    console.error(err);
  }
  applyStatic(document);
  byTestId("lang-toggle").addEventListener("click", () => toggleLang().catch(report));
  byTestId("logout").addEventListener("click", () => logout());
  onUnauthorized((err) => leave(pickDetail(err.detail)));
  window.addEventListener("hashchange", () => route().catch(report));
  reloadIfUpgraded();
  // A session that timed out while nobody touched the screen shows the login, not stale data.
  setInterval(() => session.user && checkSession().catch(() => {}), 60000);
  try {
    await enter(await request("GET", SESSION));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) leave("");
    else {
      leave("");
      toast(err.message);
    }
  }
}

start();
