// API keys (issue 17's /api/keys): create (the key is shown once), list, revoke.
// A server without the API answers 404 on the route: the page says so instead of failing.

import { absent, del, get, post } from "../api.js";
import { clear, confirmButton, dayAfter, errorNotice, field, fmt, form, h, pager, secretBox, section, table, unavailable } from "../ui.js";

function status(key) {
  if (key.revokedAt || key.status === "revoked") return h("span", { class: "badge bad" }, "revoked");
  if (key.expiresAt && new Date(key.expiresAt) < new Date()) return h("span", { class: "badge bad" }, "expired");
  return h("span", { class: "badge good" }, "active");
}

function body(v) {
  const out = { name: v.name || "" };
  if (v.expiresOn) out.expiresAt = dayAfter(v.expiresOn);
  if (v.models) out.models = v.models.split(",").map((m) => m.trim()).filter(Boolean);
  if (v.allowedIps) out.allowedIps = v.allowedIps.split(",").map((m) => m.trim()).filter(Boolean);
  if (v.requestsPerMinute) out.requestsPerMinute = Number(v.requestsPerMinute);
  if (v.maxCredits) out.budget = { maxCredits: Number(v.maxCredits), period: v.period || "month" };
  return out;
}

export default {
  route: "keys",
  title: "API keys",
  nav: "API keys",
  group: "You",
  async render(root) {
    let first;
    try {
      first = await get("/api/keys", { limit: 20 });
    } catch (err) {
      if (absent(err)) {
        root.append(unavailable("API keys are not available on this server yet.", "Sign in with your account token instead; keys arrive with a later aihub version."));
        return;
      }
      throw err;
    }
    const shown = h("div", { "aria-live": "polite" });
    const list = h("div");
    const p = pager(
      list,
      (cursor) => (cursor ? get("/api/keys", { cursor, limit: 20 }) : Promise.resolve(first)),
      (items) =>
        table(
          [
            { label: "Name", value: (k) => k.name },
            { label: "Key", value: (k) => h("code", {}, `ahk_${k.prefix || ""}…`) },
            { label: "Status", value: status },
            { label: "Created", value: (k) => fmt.date(k.createdAt) },
            { label: "Expires", value: (k) => (k.expiresAt ? fmt.date(k.expiresAt) : "never") },
            { label: "Last used", value: (k) => fmt.date(k.lastUsedAt) },
            {
              label: "Actions",
              value: (k) =>
                k.revokedAt || k.status === "revoked"
                  ? ""
                  : confirmButton(`Revoke ${k.name}`, `Revoke key ${k.name}`, async () => {
                      await del(`/api/keys/${encodeURIComponent(k.id)}`);
                      first = await get("/api/keys", { limit: 20 });
                      await p.reload();
                    }),
            },
          ],
          items,
          { empty: "You have no API keys yet." },
        ),
    );
    const create = form(
      { "aria-label": "Create an API key" },
      [
        field({ name: "name", label: "Key name", required: true }),
        h(
          "div",
          { class: "filters" },
          field({ name: "expiresOn", label: "Expires on", type: "date", hint: "optional; the key stops working after that day" }),
          field({ name: "models", label: "Models", placeholder: "openai/gpt-4o, anthropic/*", hint: "optional, comma-separated" }),
          field({ name: "allowedIps", label: "Allowed IPs", placeholder: "203.0.113.0/24", hint: "optional CIDRs, comma-separated" }),
          field({ name: "requestsPerMinute", label: "Requests per minute", type: "number", min: 1 }),
          field({ name: "maxCredits", label: "Budget (credits)", type: "number", min: 1 }),
          field({ name: "period", label: "Budget period", type: "select", options: [["month", "month"], ["day", "day"], ["total", "total"]] }),
        ),
      ],
      "Create key",
      async (v, f) => {
        const created = await post("/api/keys", body(v));
        f.reset();
        clear(shown, secretBox(`New key “${created.name}”`, created.key, "Copy it now: it is shown once and stored only as a hash."));
        first = await get("/api/keys", { limit: 20 });
        await p.reload();
      },
    );
    root.append(section("Create a key", create, shown), section("Your keys", list));
    try {
      await p.reload();
    } catch (err) {
      clear(list, errorNotice(err));
    }
  },
};
