// A tiny element builder and the page-wide message areas (toast: errors; notice: done).

// h("button", {testid: "x", class: "big", onclick: fn, disabled: false}, "text", child, [more])
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "testid") el.dataset.testid = v;
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function byTestId(id, root = document) {
  return root.querySelector(`[data-testid="${CSS.escape(id)}"]`);
}

function flash(id, text, ms) {
  const el = byTestId(id);
  if (!el) return;
  clearTimeout(el._timer);
  el.textContent = text;
  el.hidden = !text;
  if (text) el._timer = setTimeout(() => (el.hidden = true), ms);
}

// Errors stay up long enough to be read from a metre away; a new one replaces the old.
export function toast(text) {
  flash("toast", text, 8000);
}

// A success supersedes an earlier error (the error toast would otherwise contradict it).
export function notice(text) {
  flash("toast", "", 0);
  flash("notice", text, 4000);
}

export function hideToast() {
  flash("toast", "", 0);
}

// One call at a time per button: it is disabled while the request runs (no double taps).
export function busy(fn) {
  return async (ev) => {
    const button = ev.currentTarget;
    if (button.disabled) return;
    button.disabled = true;
    try {
      await fn(ev);
    } finally {
      button.disabled = false;
    }
  };
}

// fn at most once per `ms` (trailing): many SSE events -> one refetch.
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
