// Promo codes (promo:read / promo:write): list, create one, create a batch, export as CSV,
// see who redeemed a code, deactivate or reactivate.

import { can, get, patch, post, saveBlob } from "../api.js";
import { clear, dayAfter, errorNotice, field, fmt, form, h, notice, pager, section, table } from "../ui.js";

const COLUMNS = ["code", "credits", "maxRedemptions", "perUserLimit", "redeemedCount", "creditsGranted", "active", "startsAt", "expiresAt", "description", "createdAt"];

/** A CSV cell; formula-looking text is prefixed so a spreadsheet shows it instead of running it. */
function cell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function promoCsv(items) {
  return [COLUMNS.join(","), ...items.map((p) => COLUMNS.map((c) => cell(p[c])).join(","))].join("\r\n") + "\r\n";
}

/** Every code matching the filters, page by page (the API's 100-row pages). */
async function everyCode(filters, progress) {
  const all = [];
  let cursor = null;
  do {
    const page = await get("/api/promo-codes", { ...filters, cursor, limit: 100 });
    all.push(...page.items);
    cursor = page.nextCursor;
    progress(all.length);
  } while (cursor);
  return all;
}

function numbers(v, names) {
  const out = {};
  for (const name of names) if (v[name] !== undefined) out[name] = /^\d+$/.test(v[name]) ? Number(v[name]) : v[name];
  return out;
}

function promoBody(v) {
  const body = numbers(v, ["credits", "maxRedemptions", "perUserLimit"]);
  if (v.code) body.code = v.code;
  if (v.description) body.description = v.description;
  if (v.expiresOn) body.expiresAt = dayAfter(v.expiresOn);
  return body;
}

function redemptions(box, promo) {
  const list = h("div");
  clear(box, section(`Redemptions of ${promo.code}`, list));
  pager(
    list,
    (cursor) => get(`/api/promo-codes/${encodeURIComponent(promo.id)}/redemptions`, { cursor, limit: 20 }),
    (items) =>
      table(
        [
          { label: "When", value: (r) => fmt.date(r.createdAt) },
          { label: "User", value: (r) => r.email || r.userId },
          { label: "Credits", value: (r) => fmt.credits(r.credits), num: true },
        ],
        items,
        { empty: "Nobody has redeemed this code yet." },
      ),
  ).refresh();
  box.scrollIntoView();
}

export default {
  route: "promos",
  title: "Promo codes",
  nav: "Promo codes",
  group: "Administration",
  needs: (can) => can("promo:read"),
  async render(root) {
    const list = h("div");
    const side = h("div");
    const made = h("div", { "aria-live": "polite" });
    const exported = h("div", { "aria-live": "polite" });
    let filters = {};
    const writer = can("promo:write");
    const p = pager(
      list,
      (cursor) => get("/api/promo-codes", { ...filters, cursor, limit: 20 }),
      (items) =>
        table(
          [
            { label: "Code", value: (x) => h("code", {}, x.code) },
            { label: "Credits", value: (x) => fmt.credits(x.credits), num: true },
            { label: "Redeemed", value: (x) => `${x.redeemedCount}${x.maxRedemptions ? ` / ${x.maxRedemptions}` : ""}`, num: true },
            { label: "Expires", value: (x) => fmt.date(x.expiresAt) },
            { label: "Active", value: (x) => h("span", { class: `badge ${x.active ? "good" : "bad"}` }, x.active ? "active" : "inactive") },
            {
              label: "Actions",
              value: (x) => {
                const who = h("button", { type: "button", class: "secondary", "aria-label": `Redemptions of ${x.code}` }, "Redemptions");
                who.addEventListener("click", () => redemptions(side, x));
                if (!writer) return who;
                const flip = h("button", { type: "button", class: "secondary", "aria-label": `${x.active ? "Deactivate" : "Activate"} ${x.code}` }, x.active ? "Deactivate" : "Activate");
                flip.addEventListener("click", async () => {
                  flip.disabled = true;
                  try {
                    await patch(`/api/promo-codes/${encodeURIComponent(x.id)}`, { active: !x.active });
                    await p.refresh();
                  } catch (err) {
                    clear(side, errorNotice(err));
                  }
                });
                return h("span", { class: "actions" }, who, flip);
              },
            },
          ],
          items,
          { empty: "No promo codes match." },
        ),
    );
    const filterForm = form(
      { class: "filters", "aria-label": "Filter promo codes" },
      [
        field({ name: "code", label: "Code" }),
        field({ name: "active", label: "State", type: "select", options: [["", "Any"], ["true", "active"], ["false", "inactive"]] }),
      ],
      "Filter",
      async (v) => {
        filters = { code: v.code, active: v.active };
        await p.reload();
      },
    );
    const exportButton = h("button", { type: "button", class: "secondary" }, "Export CSV");
    exportButton.addEventListener("click", async () => {
      exportButton.disabled = true;
      try {
        const items = await everyCode(filters, (n) => clear(exported, h("span", { class: "muted" }, `Fetched ${n} codes…`)));
        saveBlob(new Blob([promoCsv(items)], { type: "text/csv;charset=utf-8" }), "promo-codes.csv");
        clear(exported, notice("ok", `Exported ${items.length} codes.`));
      } catch (err) {
        clear(exported, errorNotice(err));
      } finally {
        exportButton.disabled = false;
      }
    });
    root.append(h("div", { class: "panel" }, filterForm, h("div", { class: "actions" }, exportButton, exported)), h("div", { class: "panel" }, list), side);
    if (writer) {
      const common = () => [
        field({ name: "credits", label: "Credits", type: "number", min: 1, required: true }),
        field({ name: "maxRedemptions", label: "Max redemptions", type: "number", min: 1, hint: "empty: unlimited" }),
        field({ name: "perUserLimit", label: "Per user", type: "number", min: 1, value: "1" }),
        field({ name: "expiresOn", label: "Expires after", type: "date" }),
        field({ name: "description", label: "Description" }),
      ];
      const single = form({ class: "inline", "aria-label": "Create a promo code" }, [field({ name: "code", label: "Code", hint: "empty: generated" }), common()], "Create code", async (v, f) => {
        const created = await post("/api/promo-codes", promoBody(v));
        f.reset();
        clear(made, notice("ok", `Created ${created.code} (${fmt.credits(created.credits)} credits).`));
        await p.reload();
      });
      const batch = form(
        { class: "inline", "aria-label": "Create a batch of codes" },
        [field({ name: "count", label: "How many", type: "number", min: 1, max: 1000, required: true }), field({ name: "prefix", label: "Prefix" }), common()],
        "Create batch",
        async (v, f) => {
          const body = { ...promoBody(v), ...numbers(v, ["count"]) };
          if (v.prefix) body.prefix = v.prefix;
          const created = await post("/api/promo-codes/batch", body);
          f.reset();
          clear(made, notice("ok", `Created ${created.items.length} codes.`));
          await p.reload();
        },
      );
      root.append(section("New code", single), section("New batch", batch), made);
    }
    await p.reload();
  },
};
