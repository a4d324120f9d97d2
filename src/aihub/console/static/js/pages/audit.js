// Audit log (audit:read): filtered, paginated rows, and a check of the whole hash chain.

import { get } from "../api.js";
import { clear, dayAfter, dayStart, errorNotice, field, fmt, form, h, notice, pager, section, table } from "../ui.js";

function change(row) {
  if (!row.before && !row.after) return "";
  const details = h("details", {}, h("summary", {}, "before / after"), h("pre", { class: "json" }, JSON.stringify({ before: row.before, after: row.after }, null, 2)));
  return details;
}

export default {
  route: "audit",
  title: "Audit log",
  nav: "Audit log",
  group: "Administration",
  needs: (can) => can("audit:read"),
  async render(root) {
    const list = h("div");
    const verdict = h("div", { "aria-live": "polite" });
    let filters = {};
    const p = pager(
      list,
      (cursor) => get("/api/audit-logs", { ...filters, cursor, limit: 25 }),
      (items) =>
        table(
          [
            { label: "When", value: (r) => fmt.date(r.createdAt) },
            { label: "Action", value: (r) => r.action },
            { label: "Entity", value: (r) => `${r.entityType}${r.entityId ? ` ${r.entityId}` : ""}` },
            { label: "Actor", value: (r) => `${r.actorType}${r.actorId ? ` ${r.actorId}` : ""}` },
            { label: "IP", value: (r) => r.ip || "" },
            { label: "Change", value: change },
          ],
          items,
          { empty: "No audit rows match." },
        ),
    );
    const f = form(
      { class: "filters", "aria-label": "Filter the audit log" },
      [
        field({ name: "action", label: "Action", placeholder: "credits.grant" }),
        field({ name: "entityType", label: "Entity type", placeholder: "user" }),
        field({ name: "entityId", label: "Entity id" }),
        field({ name: "actorId", label: "Actor id" }),
        field({ name: "from", label: "From", type: "date" }),
        field({ name: "to", label: "To", type: "date", hint: "inclusive" }),
      ],
      "Filter",
      async (v) => {
        filters = { action: v.action, entityType: v.entityType, entityId: v.entityId, actorId: v.actorId, from: dayStart(v.from), to: dayAfter(v.to) };
        await p.reload();
      },
    );
    const verify = h("button", { type: "button" }, "Verify chain");
    verify.addEventListener("click", async () => {
      verify.disabled = true;
      clear(verdict, h("span", { class: "muted" }, "Recomputing every hash…"));
      try {
        const out = await get("/api/audit-logs/verify");
        clear(
          verdict,
          out.valid
            ? notice("ok", `The chain is intact: ${fmt.credits(out.checked)} rows checked.`)
            : notice("error", `The chain is broken at row ${out.firstBrokenId} (${fmt.credits(out.checked)} rows checked).`),
        );
      } catch (err) {
        clear(verdict, errorNotice(err));
      } finally {
        verify.disabled = false;
      }
    });
    root.append(section("Chain verification", h("p", { class: "muted" }, "Every row's hash links the one before it: an edited, inserted or deleted row breaks the chain."), verify, verdict), h("div", { class: "panel" }, f), h("div", { class: "panel" }, list));
    await p.reload();
  },
};
