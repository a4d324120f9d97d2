// Users (users:read): search, view one, change roles, suspend or reactivate, grant or deduct
// credits with a reason. Every action is an API call the API checks; the console adds no right.

import { can, get, idempotencyKey, patch, post, put } from "../api.js";
import { checks, clear, errorNotice, field, fmt, form, h, notice, pager, section, table } from "../ui.js";
import { transactionTable } from "./transactions.js";

function statusBadge(status) {
  return h("span", { class: `badge ${status === "active" ? "good" : "bad"}` }, status);
}

async function detail(box, id, refreshList) {
  const user = await get(`/api/users/${encodeURIComponent(id)}`);
  const accountBox = h("div", { class: "cards", "aria-live": "polite" });
  const txBox = h("div");
  const result = h("div", { "aria-live": "polite" });
  const showAccount = async () => {
    if (!can("credits:read")) return;
    try {
      const account = await get(`/api/credits/accounts/${encodeURIComponent(id)}`);
      clear(
        accountBox,
        h("div", { class: "card" }, h("div", { class: "label", id: "user-balance-label" }, "Balance"), h("div", { class: "value", "aria-labelledby": "user-balance-label", dataset: { figure: "user-balance" } }, fmt.credits(account.balance))),
        h("div", { class: "card" }, h("div", { class: "label" }, "Available"), h("div", { class: "value" }, fmt.credits(account.available))),
      );
      pager(txBox, (cursor) => get(`/api/credits/accounts/${encodeURIComponent(id)}/transactions`, { cursor, limit: 10 }), transactionTable).refresh();
    } catch (err) {
      clear(accountBox, errorNotice(err));
    }
  };
  const parts = [
    h("dl", { class: "facts" },
      h("dt", {}, "Email"), h("dd", {}, user.email),
      h("dt", {}, "Name"), h("dd", {}, user.displayName || "—"),
      h("dt", {}, "Id"), h("dd", {}, h("code", {}, user.id)),
      h("dt", {}, "Status"), h("dd", {}, statusBadge(user.status)),
      h("dt", {}, "Roles"), h("dd", {}, user.roles.join(", ") || "none"),
      h("dt", {}, "Created"), h("dd", {}, fmt.date(user.createdAt))),
    accountBox,
  ];
  if (can("users:update") && user.status !== "deleted") {
    const next = user.status === "active" ? "suspended" : "active";
    const toggle = h("button", { type: "button", class: next === "suspended" ? "danger" : "secondary" }, next === "suspended" ? "Suspend user" : "Reactivate user");
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try {
        await patch(`/api/users/${encodeURIComponent(id)}`, { status: next });
        await detail(box, id, refreshList);
        refreshList();
      } catch (err) {
        clear(result, errorNotice(err));
        toggle.disabled = false;
      }
    });
    parts.push(h("div", { class: "actions" }, toggle));
  }
  if (can("roles:assign") || can("roles:read")) {
    try {
      const roles = await get("/api/roles");
      const names = (roles.items || roles).map((r) => r.name);
      parts.push(
        h("h3", {}, "Roles"),
        form({ "aria-label": "Roles" }, [checks("roles", "Roles of this user", names, user.roles)], "Save roles", async (v) => {
          await put(`/api/users/${encodeURIComponent(id)}/roles`, { roles: v.roles || [] });
          clear(result, notice("ok", "Roles saved."));
          await detail(box, id, refreshList);
        }),
      );
    } catch (err) {
      parts.push(errorNotice(err));
    }
  }
  if (can("credits:grant") || can("credits:deduct")) {
    parts.push(
      h("h3", {}, "Adjust credits"),
      form(
        { class: "inline", "aria-label": "Adjust credits" },
        [
          field({ name: "direction", label: "Action", type: "select", options: [can("credits:grant") ? ["grant", "Grant"] : null, can("credits:deduct") ? ["deduct", "Deduct"] : null].filter(Boolean) }),
          field({ name: "amount", label: "Amount", type: "number", min: 1, step: 1, required: true, inputmode: "numeric" }),
          field({ name: "reason", label: "Reason", type: "select", options: [["adjustment", "adjustment"], ["promo", "promo"], ["purchase", "purchase"], ["usage", "usage (deduct only)"]] }),
          field({ name: "note", label: "Note", hint: "why (kept in the ledger and the audit log)" }),
        ],
        "Apply",
        async (v, f) => {
          const amount = /^\d+$/.test(v.amount || "") ? Number(v.amount) : v.amount ?? null;
          const body = { userId: id, amount, reason: v.reason || "adjustment" };
          if (v.direction === "deduct") {
            if (v.note) body.metadata = { note: v.note };
          } else if (v.note) {
            body.note = v.note;
          }
          const tx = await post(`/api/credits/${v.direction === "deduct" ? "deduct" : "grant"}`, body, { headers: { "Idempotency-Key": idempotencyKey() } });
          f.reset();
          clear(result, notice("ok", `${v.direction === "deduct" ? "Deducted" : "Granted"} ${fmt.credits(Math.abs(tx.amount))} credits; balance now ${fmt.credits(tx.balanceAfter)}.`));
          await showAccount();
        },
      ),
    );
  }
  parts.push(result, h("h3", {}, "Recent transactions"), txBox);
  clear(box, section(`User ${user.email}`, parts));
  await showAccount();
}

export default {
  route: "users",
  title: "Users",
  nav: "Users",
  group: "Administration",
  needs: (can) => can("users:read"),
  async render(root) {
    const list = h("div");
    const view = h("div");
    let filters = {};
    const p = pager(
      list,
      (cursor) => get("/api/users", { ...filters, cursor, limit: 20 }),
      (items) =>
        table(
          [
            { label: "Email", value: (u) => u.email },
            { label: "Roles", value: (u) => u.roles.join(", ") },
            { label: "Status", value: (u) => statusBadge(u.status) },
            { label: "Created", value: (u) => fmt.day(u.createdAt) },
            {
              label: "",
              value: (u) => {
                const b = h("button", { type: "button", class: "secondary", "aria-label": `View ${u.email}` }, "View");
                b.addEventListener("click", () => detail(view, u.id, () => p.refresh()).then(() => view.querySelector("h2").scrollIntoView()).catch((err) => clear(view, errorNotice(err))));
                return b;
              },
            },
          ],
          items,
          { empty: "No user matches." },
        ),
    );
    const search = form(
      { class: "filters", role: "search", "aria-label": "Search users" },
      [
        field({ name: "q", label: "Search", placeholder: "email or name" }),
        field({ name: "role", label: "Role", placeholder: "user" }),
        field({ name: "status", label: "Status", type: "select", options: [["", "Any"], ["active", "active"], ["suspended", "suspended"], ["deleted", "deleted"]] }),
      ],
      "Search",
      async (v) => {
        filters = { q: v.q, role: v.role, status: v.status };
        await p.reload();
      },
    );
    root.append(h("div", { class: "panel" }, search), h("div", { class: "panel" }, list), view);
    await p.reload();
  },
};
