// The login screen: name and PIN. Errors (wrong PIN, lockout with its wait) show under the form.

import { ApiError, SESSION, request } from "./api.js";
import { h } from "./dom.js";
import { t } from "./i18n.js";

export function showLogin(root, { message, onLoggedIn }) {
  const name = h("input", {
    id: "login-name",
    testid: "login-name",
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    maxlength: 64,
    required: true,
  });
  const pin = h("input", {
    id: "login-pin",
    testid: "login-pin",
    type: "password",
    inputmode: "numeric",
    autocomplete: "off",
    maxlength: 12,
    required: true,
  });
  const error = h("p", { testid: "login-error", class: "login-error", role: "alert" }, message || "");
  error.hidden = !message;
  const submit = h("button", { type: "submit", testid: "login-submit", class: "btn primary big" }, t("login.submit"));

  async function login(ev) {
    ev.preventDefault();
    if (submit.disabled) return;
    const who = name.value.trim();
    if (!who || !/^[0-9]{4,12}$/.test(pin.value)) {
      show(who ? t("login.pin_format") : t("login.name_missing"));
      return;
    }
    submit.disabled = true;
    show("");
    try {
      const s = await request("POST", SESSION, { name: who, pin: pin.value });
      pin.value = "";
      await onLoggedIn(s);
    } catch (err) {
      pin.value = "";
      show(err instanceof ApiError ? err.message : t("error.unexpected"));
      pin.focus();
    } finally {
      submit.disabled = false;
    }
  }

  function show(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  const form = h(
    "form",
    { class: "login card", onsubmit: login, novalidate: true },
    h("h1", {}, t("login.title")),
    h("label", { for: "login-name" }, t("login.name")),
    name,
    h("label", { for: "login-pin" }, t("login.pin")),
    pin,
    error,
    submit,
  );
  root.replaceChildren(h("section", { class: "login-wrap" }, form));
  name.focus();
}
