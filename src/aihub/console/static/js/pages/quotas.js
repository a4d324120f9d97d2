// Quotas (quotas:read / quotas:write): each role's quota, and any role's or user's to set or remove.

import { absent, ApiError, can, del, get, put } from "../api.js";
import { clear, confirmButton, errorNotice, field, fmt, form, h, notice, section, table } from "../ui.js";

async function quotaOf(scope) {
  try {
    return await get(`/api/quotas/${encodeURIComponent(scope)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && !absent(err)) return null; // QUOTA_NOT_FOUND: none set
    throw err;
  }
}

const limit = (n) => (n === null || n === undefined ? "no limit" : fmt.credits(n));

export default {
  route: "quotas",
  title: "Quotas",
  nav: "Quotas",
  group: "Administration",
  needs: (can) => can("quotas:read"),
  async render(root) {
    const list = h("div");
    const result = h("div", { "aria-live": "polite" });
    const writer = can("quotas:write");
    const load = async () => {
      let roles = [];
      if (can("roles:read")) roles = ((await get("/api/roles")).items || []).map((r) => `role:${r.name}`);
      const rows = [];
      for (const scope of roles) rows.push({ scope, quota: await quotaOf(scope) });
      const columns = [
        { label: "Scope", value: (r) => r.scope },
        { label: "Period", value: (r) => (r.quota ? r.quota.period : "none") },
        { label: "Max credits", value: (r) => (r.quota ? limit(r.quota.maxCredits) : "—"), num: true },
        { label: "Max tokens", value: (r) => (r.quota ? limit(r.quota.maxTokens) : "—"), num: true },
        { label: "Max requests", value: (r) => (r.quota ? limit(r.quota.maxRequests) : "—"), num: true },
      ];
      if (writer) {
        columns.push({
          label: "Actions",
          value: (r) => (r.quota ? confirmButton("Remove", `Remove quota of ${r.scope}`, async () => { await del(`/api/quotas/${encodeURIComponent(r.scope)}`); await load(); }) : ""),
        });
      }
      clear(list, table(columns, rows, { empty: "No roles visible (needs roles:read); look a scope up below." }));
    };
    const lookup = h("div");
    const finder = form({ class: "inline", "aria-label": "Look up a quota" }, [field({ name: "scope", label: "Scope", placeholder: "user:<id> or role:<name>", required: true })], "Look up", async (v) => {
      const quota = await quotaOf(v.scope || "");
      clear(lookup, quota ? h("pre", { class: "json" }, JSON.stringify(quota, null, 2)) : notice("info", `No quota is set for ${v.scope}.`));
    });
    root.append(section("Quotas by role", list), section("Any scope", finder, lookup));
    if (writer) {
      const editor = form(
        { class: "inline", "aria-label": "Set a quota" },
        [
          field({ name: "scope", label: "Scope", placeholder: "role:user", required: true }),
          field({ name: "period", label: "Period", type: "select", options: [["day", "day"], ["month", "month"]] }),
          field({ name: "maxCredits", label: "Max credits", type: "number", min: 0 }),
          field({ name: "maxTokens", label: "Max tokens", type: "number", min: 0 }),
          field({ name: "maxRequests", label: "Max requests", type: "number", min: 0 }),
        ],
        "Save quota",
        async (v) => {
          const body = { period: v.period || "day" };
          for (const k of ["maxCredits", "maxTokens", "maxRequests"]) if (v[k] !== undefined) body[k] = /^\d+$/.test(v[k]) ? Number(v[k]) : v[k];
          await put(`/api/quotas/${encodeURIComponent(v.scope || "")}`, body);
          clear(result, notice("ok", `Quota of ${v.scope} saved.`));
          await load();
        },
      );
      root.append(section("Set a quota", editor, result));
    }
    try {
      await load();
    } catch (err) {
      clear(list, errorNotice(err));
    }
  },
};
