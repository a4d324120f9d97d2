// Small DOM helpers: elements, labelled form fields with per-field errors, tables, a cursor pager.
// Text always goes in as text nodes (never innerHTML), so nothing the API returns can become markup.

import { ApiError } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

export const fmt = {
  credits: (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US")),
  date: (s) => (s ? new Date(s).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" }) : "—"),
  day: (s) => (s ? new Date(s).toLocaleDateString("en-GB", { dateStyle: "medium" }) : "—"),
};

/** A notice box; errors from the API show their code and request ID (what support asks for). */
export function notice(kind, message) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

export function errorNotice(err) {
  if (err instanceof ApiError) {
    const text = `${err.message} (${err.code}${err.status ? `, HTTP ${err.status}` : ""})`;
    return notice("error", err.requestId ? `${text} — request ${err.requestId}` : text);
  }
  return notice("error", String(err && err.message ? err.message : err));
}

/**
 * A labelled input. spec: {name, label, type?, required?, options?, value?, hint?, min?, step?,
 * placeholder?, autocomplete?}. Returns the wrapper; its input is reachable by name in the form.
 */
export function field(spec) {
  const id = nextId(`f-${spec.name}`);
  const errId = `${id}-error`;
  const hintId = spec.hint ? `${id}-hint` : null;
  const describedBy = [hintId, errId].filter(Boolean).join(" ");
  let control;
  if (spec.type === "select") {
    control = h(
      "select",
      { id, name: spec.name, required: spec.required, "aria-describedby": describedBy },
      (spec.options || []).map(([value, text]) => h("option", { value, selected: String(spec.value ?? "") === value }, text)),
    );
  } else if (spec.type === "textarea") {
    control = h("textarea", { id, name: spec.name, rows: spec.rows || 3, required: spec.required, "aria-describedby": describedBy });
    control.value = spec.value ?? "";
  } else {
    control = h("input", {
      id,
      name: spec.name,
      type: spec.type || "text",
      required: spec.required,
      min: spec.min,
      max: spec.max,
      step: spec.step,
      placeholder: spec.placeholder,
      autocomplete: spec.autocomplete || "off",
      inputmode: spec.inputmode,
      "aria-describedby": describedBy,
    });
    if (spec.value !== undefined && spec.value !== null) control.value = spec.value;
  }
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, spec.label),
    control,
    hintId ? h("span", { class: "hint", id: hintId }, spec.hint) : null,
    h("span", { class: "error", id: errId, dataset: { errorFor: spec.name } }),
  );
}

/** Checkboxes in a fieldset; their values come back as an array under `name`. */
export function checks(name, legend, options, selected = []) {
  return h(
    "fieldset",
    { class: "field checks" },
    h("legend", {}, legend),
    options.map((value) => {
      const id = nextId(`c-${name}`);
      return h("label", { for: id }, h("input", { id, type: "checkbox", name, value, checked: selected.includes(value) }), value);
    }),
    h("span", { class: "error", dataset: { errorFor: name } }),
  );
}

/** Read a form into an object: empty strings are left out, numbers stay strings until the caller converts. */
export function values(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") {
      (out[el.name] ||= []);
      if (el.checked) out[el.name].push(el.value);
    } else if (el.value !== "") {
      out[el.name] = el.value;
    }
  }
  return out;
}

/**
 * Show an API error: each entry of `details` that names a field of this form goes next to that
 * field (the API names them `body.amount`, `query.to`, …); the rest becomes one notice on top.
 */
export function showErrors(form, err) {
  clearErrors(form);
  const general = [];
  const details = err instanceof ApiError && Array.isArray(err.details) ? err.details : [];
  let placed = false;
  for (const detail of details) {
    const name = String(detail.field || "").split(".").pop();
    const slot = name && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = detail.message || "invalid";
      const input = form.elements.namedItem(name);
      if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
      if (!placed && input && input.focus) input.focus();
      placed = true;
    } else {
      general.push(`${detail.field || "request"}: ${detail.message || "invalid"}`);
    }
  }
  const box = form.querySelector(".form-errors");
  if (!placed || general.length) {
    const el = errorNotice(err);
    if (general.length) el.append(h("ul", {}, general.map((g) => h("li", {}, g))));
    clear(box, el);
  }
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const box = form.querySelector(".form-errors");
  if (box) clear(box);
}

/**
 * A form whose submit calls `onSubmit(values, form)`; errors land next to fields, the button is
 * disabled while the call runs. `attrs.class` "inline" lays the fields out in a row.
 */
export function form(attrs, fields, submitLabel, onSubmit) {
  const button = h("button", { type: "submit" }, submitLabel);
  const el = h("form", { novalidate: true, ...attrs }, h("div", { class: "form-errors", "aria-live": "polite" }), fields, h("div", { class: "actions" }, button));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(el);
    button.disabled = true;
    try {
      await onSubmit(values(el), el);
    } catch (err) {
      showErrors(el, err);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

/** columns: [{label, value: row => text|Node, num?}] */
export function table(columns, rows, { caption, empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", { class: "muted" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row)))))),
    ),
  );
}

/**
 * A paginated list over a `{items, nextCursor}` endpoint: `load(cursor)` fetches one page,
 * `render(items)` draws it. Keeps the cursors seen so "Previous" goes back without a new API.
 */
export function pager(container, load, render) {
  const cursors = [null];
  let index = 0;
  const body = h("div", { "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "secondary" }, "Previous");
  const next = h("button", { type: "button", class: "secondary" }, "Next");
  const where = h("span", { class: "muted" });
  clear(container, body, h("div", { class: "pager" }, prev, where, next));

  async function show(rethrow = false) {
    prev.disabled = next.disabled = true;
    try {
      const page = await load(cursors[index]);
      clear(body, render(page.items || []));
      if (page.nextCursor && cursors.length === index + 1) cursors.push(page.nextCursor);
      next.disabled = !page.nextCursor;
      prev.disabled = index === 0;
      where.textContent = `Page ${index + 1}`;
    } catch (err) {
      prev.disabled = index === 0;
      if (rethrow) {
        clear(body);
        throw err; // the caller shows it (next to a filter field, or in place of the page)
      }
      clear(body, errorNotice(err));
    }
  }
  prev.addEventListener("click", () => { if (index > 0) { index -= 1; show(); } });
  next.addEventListener("click", () => { if (index + 1 < cursors.length) { index += 1; show(); } });
  return { reload: () => { cursors.length = 1; index = 0; return show(true); }, refresh: () => show() };
}

/** A two-step destructive button: the first press asks, the second does it (no blocking dialogs). */
export function confirmButton(label, confirmLabel, action) {
  const wrap = h("span", { class: "actions" });
  const start = h("button", { type: "button", class: "secondary" }, label);
  const reset = () => clear(wrap, start);
  start.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger" }, confirmLabel);
    const no = h("button", { type: "button", class: "secondary" }, "Cancel");
    yes.addEventListener("click", async () => {
      yes.disabled = no.disabled = true;
      try {
        await action();
      } catch (err) {
        clear(wrap, errorNotice(err), start);
        return;
      }
      reset();
    });
    no.addEventListener("click", () => { reset(); start.focus(); });
    clear(wrap, yes, no);
    yes.focus();
  });
  reset();
  return wrap;
}

/** The value shown once (a key, a secret, a session token), with a copy button. */
export function secretBox(title, value, note) {
  const copy = h("button", { type: "button", class: "secondary" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value);
      copy.textContent = "Copied";
    } catch (_) {
      copy.textContent = "Select and copy it by hand";
    }
  });
  return h("div", { class: "secret", role: "status" }, h("strong", {}, title), h("p", {}, h("code", { dataset: { secret: "" } }, value)), h("p", { class: "muted" }, note), copy);
}

/** A date input's value (YYYY-MM-DD) as the RFC 3339 instant starting that UTC day. */
export function dayStart(value) {
  return value ? `${value}T00:00:00Z` : undefined;
}

/** The day after (for an inclusive "to" date turned into the API's exclusive `to`). */
export function dayAfter(value) {
  if (!value) return undefined;
  const d = new Date(`${value}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().replace(".000Z", "Z");
}

export function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

export function daysAgo(n) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - n);
  return d;
}

export function section(title, ...children) {
  return h("section", { class: "panel", "aria-label": title }, h("h2", {}, title), children);
}

/** A page's title: focused after navigation so screen readers announce where they are. */
export function pageTitle(text) {
  return h("h1", { tabindex: "-1", id: "page-title" }, text);
}

/** The page "not available" state for an API this server does not have (404 on its route). */
export function unavailable(what, why) {
  return notice("info", `${what} ${why}`);
}

/** Draw the current page again (after a change that affects all of it); tokens stay in memory. */
export function rerender() {
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}
