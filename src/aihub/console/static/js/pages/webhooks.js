// Webhooks (issue 18's /api/webhooks): endpoints, their deliveries, a test event. The signing
// secret is shown once. A server without the API answers 404: the page says so.

import { absent, del, get, patch, post } from "../api.js";
import { checks, clear, confirmButton, errorNotice, field, fmt, form, h, notice, pager, secretBox, section, table, unavailable } from "../ui.js";

const EVENTS = ["credits.low_balance", "payment.succeeded", "payment.refunded", "promo.exhausted", "usage.quota_reached"];

function deliveries(box, hook) {
  const list = h("div");
  clear(box, section(`Deliveries to ${hook.url}`, list));
  pager(
    list,
    (cursor) => get(`/api/webhooks/${encodeURIComponent(hook.id)}/deliveries`, { cursor, limit: 20 }),
    (items) =>
      table(
        [
          { label: "When", value: (d) => fmt.date(d.createdAt || d.attemptedAt) },
          { label: "Event", value: (d) => d.type || d.event || "" },
          { label: "Status", value: (d) => String(d.status ?? d.responseStatus ?? "") },
          { label: "Attempts", value: (d) => String(d.attempts ?? d.attempt ?? ""), num: true },
          { label: "Next try", value: (d) => fmt.date(d.nextAttemptAt) },
        ],
        items,
        { empty: "No deliveries yet." },
      ),
  ).refresh();
}

export default {
  route: "webhooks",
  title: "Webhooks",
  nav: "Webhooks",
  group: "Administration",
  needs: (can) => can("webhooks:read") || can("webhooks:write"),
  async render(root) {
    let first;
    try {
      first = await get("/api/webhooks", { limit: 20 });
    } catch (err) {
      if (absent(err)) {
        root.append(unavailable("Webhooks are not available on this server yet.", "The low-balance webhook URL setting (AIHUB_LOW_BALANCE_WEBHOOK_URL) still works."));
        return;
      }
      throw err;
    }
    const shown = h("div", { "aria-live": "polite" });
    const side = h("div");
    const list = h("div");
    const p = pager(
      list,
      (cursor) => (cursor ? get("/api/webhooks", { cursor, limit: 20 }) : Promise.resolve(first)),
      (items) =>
        table(
          [
            { label: "URL", value: (w) => h("code", {}, w.url) },
            { label: "Events", value: (w) => (w.events || []).join(", ") },
            { label: "Active", value: (w) => (w.active === false ? "no" : "yes") },
            {
              label: "Actions",
              value: (w) => {
                const seen = h("button", { type: "button", class: "secondary" }, "Deliveries");
                seen.addEventListener("click", () => deliveries(side, w));
                const test = h("button", { type: "button", class: "secondary" }, "Send test");
                test.addEventListener("click", async () => {
                  try {
                    await post(`/api/webhooks/${encodeURIComponent(w.id)}/test`, {});
                    clear(shown, notice("ok", `Test event queued for ${w.url}.`));
                  } catch (err) {
                    clear(shown, errorNotice(err));
                  }
                });
                const flip = h("button", { type: "button", class: "secondary" }, w.active === false ? "Enable" : "Disable");
                flip.addEventListener("click", async () => {
                  await patch(`/api/webhooks/${encodeURIComponent(w.id)}`, { active: w.active === false }).catch((err) => clear(shown, errorNotice(err)));
                  first = await get("/api/webhooks", { limit: 20 });
                  await p.reload();
                });
                const remove = confirmButton("Delete", `Delete ${w.url}`, async () => {
                  await del(`/api/webhooks/${encodeURIComponent(w.id)}`);
                  first = await get("/api/webhooks", { limit: 20 });
                  await p.reload();
                });
                return h("span", { class: "actions" }, seen, test, flip, remove);
              },
            },
          ],
          items,
          { empty: "No webhook endpoints yet." },
        ),
    );
    const create = form(
      { "aria-label": "Add a webhook endpoint" },
      [field({ name: "url", label: "Endpoint URL", type: "url", required: true, placeholder: "https://example.com/hooks/aihub" }), checks("events", "Events", EVENTS, EVENTS), field({ name: "description", label: "Description" })],
      "Add endpoint",
      async (v, f) => {
        const body = { url: v.url || "", events: v.events || [] };
        if (v.description) body.description = v.description;
        const made = await post("/api/webhooks", body);
        f.reset();
        clear(shown, secretBox("Signing secret", made.secret, "Verify each delivery's webhook-signature with it (Standard Webhooks). Shown once."));
        first = await get("/api/webhooks", { limit: 20 });
        await p.reload();
      },
    );
    root.append(section("Add an endpoint", create, shown), section("Endpoints", list), side);
    await p.reload();
  },
};
