// Webhooks (/api/webhooks): signed outgoing endpoints, their deliveries, a test event. The
// signing secret is shown once, right after creation. Listing needs webhooks:read; creating,
// editing, deleting and testing webhooks:write (the API checks; the buttons only follow).

import { absent, can, del, get, patch, post } from "../api.js";
import { checks, clear, confirmButton, errorNotice, field, fmt, form, h, notice, pager, secretBox, section, table, unavailable } from "../ui.js";

// The API's event types (core/webhooks/schemas.py EventType); `webhook.test` is only ever sent by "Send test".
const EVENTS = ["credits.low_balance", "payment.succeeded", "payment.refunded", "promo.exhausted", "usage.quota_reached"];

const STATUS_BADGE = { delivered: "good", failed: "bad", pending: "" };

function lastAttempt(d) {
  const log = d.attemptLog || [];
  return log.length ? log[log.length - 1] : null;
}

function deliveryTable(items) {
  return table(
    [
      { label: "When", value: (d) => fmt.date(d.createdAt) },
      { label: "Event", value: (d) => d.eventType },
      { label: "Status", value: (d) => h("span", { class: `badge ${STATUS_BADGE[d.status] || ""}`.trim() }, d.status) },
      { label: "HTTP status", value: (d) => { const a = lastAttempt(d); return a && a.statusCode !== null && a.statusCode !== undefined ? String(a.statusCode) : "—"; }, num: true },
      { label: "Attempts", value: (d) => String(d.attempts), num: true },
      { label: "Last error", value: (d) => { const a = lastAttempt(d); return (a && a.error) || ""; } },
      { label: "Next try", value: (d) => fmt.date(d.nextAttemptAt) },
    ],
    items,
    { caption: "Newest first", empty: "No deliveries yet." },
  );
}

function showDeliveries(box, hook) {
  const list = h("div");
  const again = h("button", { type: "button", class: "secondary" }, "Refresh deliveries");
  clear(box, section(`Deliveries to ${hook.url}`, again, list));
  const p = pager(list, (cursor) => get(`/api/webhooks/${encodeURIComponent(hook.id)}/deliveries`, { cursor, limit: 20 }), deliveryTable);
  again.addEventListener("click", () => p.refresh());
  p.refresh();
}

function editForm(box, hook, done) {
  const f = form(
    { "aria-label": `Edit ${hook.url}` },
    [
      field({ name: "url", label: "Endpoint URL", type: "url", required: true, value: hook.url }),
      checks("events", "Events", EVENTS, hook.events || []),
      field({ name: "description", label: "Description", value: hook.description || "" }),
    ],
    "Save changes",
    async (v) => {
      await patch(`/api/webhooks/${encodeURIComponent(hook.id)}`, { url: v.url || "", events: v.events || [], description: v.description || "" });
      clear(box);
      await done(`Saved ${v.url}.`);
    },
  );
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  cancel.addEventListener("click", () => clear(box));
  clear(box, section(`Edit ${hook.url}`, f, cancel));
  f.querySelector("input").focus();
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
    const writer = can("webhooks:write");
    const shown = h("div", { "aria-live": "polite" });
    const editor = h("div");
    const side = h("div");
    const list = h("div");
    const refreshList = async (message) => {
      first = await get("/api/webhooks", { limit: 20 });
      await p.reload();
      if (message) clear(shown, notice("ok", message));
    };
    const actions = (w) => {
      const seen = h("button", { type: "button", class: "secondary", "aria-label": `Deliveries to ${w.url}` }, "Deliveries");
      seen.addEventListener("click", () => { showDeliveries(side, w); });
      if (!writer) return h("span", { class: "actions" }, seen);
      const test = h("button", { type: "button", class: "secondary", "aria-label": `Send test to ${w.url}` }, "Send test");
      test.addEventListener("click", async () => {
        try {
          await post(`/api/webhooks/${encodeURIComponent(w.id)}/test`, {});
          clear(shown, notice("ok", `Test event queued for ${w.url}.`));
          showDeliveries(side, w);
        } catch (err) {
          clear(shown, errorNotice(err));
        }
      });
      const edit = h("button", { type: "button", class: "secondary", "aria-label": `Edit ${w.url}` }, "Edit");
      edit.addEventListener("click", () => editForm(editor, w, refreshList));
      const flip = h("button", { type: "button", class: "secondary", "aria-label": `${w.active === false ? "Enable" : "Disable"} ${w.url}` }, w.active === false ? "Enable" : "Disable");
      flip.addEventListener("click", async () => {
        try {
          await patch(`/api/webhooks/${encodeURIComponent(w.id)}`, { active: w.active === false });
          await refreshList();
        } catch (err) {
          clear(shown, errorNotice(err));
        }
      });
      const remove = confirmButton(`Delete ${w.url}`, `Delete endpoint ${w.url}`, async () => {
        await del(`/api/webhooks/${encodeURIComponent(w.id)}`);
        clear(side);
        await refreshList(`Deleted ${w.url}.`);
      });
      return h("span", { class: "actions" }, seen, test, edit, flip, remove);
    };
    const p = pager(
      list,
      (cursor) => (cursor ? get("/api/webhooks", { cursor, limit: 20 }) : Promise.resolve(first)),
      (items) =>
        table(
          [
            { label: "URL", value: (w) => h("code", {}, w.url) },
            { label: "Events", value: (w) => (w.events || []).join(", ") },
            { label: "Description", value: (w) => w.description || "" },
            { label: "Active", value: (w) => (w.active === false ? "no" : "yes") },
            { label: "Actions", value: actions },
          ],
          items,
          { empty: "No webhook endpoints yet." },
        ),
    );
    const parts = [];
    if (writer) {
      const create = form(
        { "aria-label": "Add a webhook endpoint" },
        [
          field({ name: "url", label: "Endpoint URL", type: "url", required: true, placeholder: "https://example.com/hooks/aihub" }),
          checks("events", "Events", EVENTS, EVENTS),
          field({ name: "description", label: "Description" }),
        ],
        "Add endpoint",
        async (v, f) => {
          const body = { url: v.url || "", events: v.events || [] };
          if (v.description) body.description = v.description;
          const made = await post("/api/webhooks", body);
          f.reset();
          // Shown here once: the API never returns it again (list and read leave it out).
          clear(shown, secretBox(`Signing secret for ${made.url}`, made.secret, "Copy it now: it is shown once. Verify each delivery's webhook-signature with it (Standard Webhooks)."));
          first = await get("/api/webhooks", { limit: 20 });
          await p.reload();
        },
      );
      parts.push(section("Add an endpoint", create, shown));
    } else {
      parts.push(shown);
    }
    root.append(...parts, section("Endpoints", list), editor, side);
    await p.reload();
  },
};
