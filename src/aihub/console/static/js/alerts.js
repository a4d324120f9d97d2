// Low-balance alerts (/api/credits/alerts): the available-credit levels at which the user is
// warned (a `credits.low_balance` webhook event, and an email when opted in). Shown on the
// dashboard, next to the balance they are about.

import { get, put } from "./api.js";
import { clear, errorNotice, field, fmt, form, h, notice } from "./ui.js";

/** "1000, 100" → [1000, 100]. A part that is not a whole number is sent as typed, so the API's
 * validation names it (body.thresholds.N) and the message lands next to the field. */
export function parseThresholds(text) {
  return String(text || "")
    .split(/[\s,;]+/)
    .filter(Boolean)
    .map((part) => (/^\d+$/.test(part) ? Number(part) : part));
}

function describe(settings) {
  if (!settings.thresholds.length) return "Alerts are off.";
  const levels = settings.thresholds.map((t) => fmt.credits(t)).join(", ");
  const how = settings.email ? "a webhook event and an email" : "a webhook event";
  const source = settings.inherited ? " (the server's default; save to make them yours)" : "";
  return `When your available credits fall below ${levels}: ${how}${source}.`;
}

function emailBox(checked) {
  const id = "alerts-email";
  return h(
    "div",
    { class: "field checks" },
    h("label", { for: id }, h("input", { id, type: "checkbox", name: "email", value: "yes", checked, "aria-describedby": `${id}-error` }), "Also email me"),
    h("span", { class: "error", id: `${id}-error`, dataset: { errorFor: "email" } }),
  );
}

function alertsForm(el, settings) {
  const summary = h("p", { dataset: { alerts: "summary" } }, describe(settings));
  const result = h("div", { "aria-live": "polite" });
  const f = form(
    { "aria-label": "Low-balance alerts" },
    [
      field({
        name: "thresholds",
        label: "Alert thresholds (credits)",
        value: settings.thresholds.join(", "),
        inputmode: "numeric",
        hint: "comma-separated, e.g. 1000, 100; empty turns alerts off",
      }),
      emailBox(settings.email),
    ],
    "Save alerts",
    async (v) => {
      clear(result);
      const saved = await put("/api/credits/alerts", { thresholds: parseThresholds(v.thresholds), email: (v.email || []).length > 0 });
      alertsForm(el, saved);
      clear(el.querySelector("[data-alerts=result]"), notice("ok", "Alerts saved."));
    },
  );
  result.dataset.alerts = "result";
  clear(el, summary, f, result);
}

/** Draw the alerts panel into `el` from the API's current settings. */
export async function alertsPanel(el) {
  try {
    alertsForm(el, await get("/api/credits/alerts"));
  } catch (err) {
    clear(el, errorNotice(err));
  }
}
