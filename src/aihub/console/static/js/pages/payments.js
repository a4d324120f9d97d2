// Payments (issue 18's /api/payments): buy a credit package through Stripe Checkout, see past
// payments; with payments:write, manage the packages. Absent or unconfigured: says so.

import { absent, ApiError, can, del, get, post, put } from "../api.js";
import { clear, confirmButton, errorNotice, field, fmt, form, h, pager, rerender, section, table, unavailable } from "../ui.js";

const itemsOf = (page) => (Array.isArray(page) ? page : page.items || []);
const money = (amount, currency) => new Intl.NumberFormat("en-US", { style: "currency", currency: (currency || "usd").toUpperCase() }).format(amount / 100);

function notConfigured(err) {
  return absent(err) || (err instanceof ApiError && (err.status === 501 || err.code === "PAYMENTS_NOT_CONFIGURED"));
}

export default {
  route: "payments",
  title: "Payments",
  nav: "Buy credits",
  group: "You",
  async render(root, params) {
    let packages;
    try {
      packages = itemsOf(await get("/api/payments/packages"));
    } catch (err) {
      if (notConfigured(err)) {
        root.append(unavailable("Payments are not configured on this server.", "Ask an administrator for credits, or redeem a promo code on the dashboard."));
        return;
      }
      throw err;
    }
    if (params.get("checkout") === "done") root.append(h("div", { class: "notice ok", role: "status" }, "Thank you: the credits appear once the payment is confirmed."));
    const buyBox = h("div", { "aria-live": "polite" });
    const active = packages.filter((p) => p.active !== false);
    const cards = active.length
      ? h(
          "div",
          { class: "cards" },
          active.map((p) => {
            const buy = h("button", { type: "button" }, `Buy ${p.name}`);
            buy.addEventListener("click", async () => {
              buy.disabled = true;
              try {
                const back = `${location.origin}/console/#/payments`;
                const session = await post("/api/payments/checkout", { packageId: p.id, successUrl: `${back}?checkout=done`, cancelUrl: back });
                location.assign(session.url);
              } catch (err) {
                clear(buyBox, errorNotice(err));
                buy.disabled = false;
              }
            });
            return h("div", { class: "card" }, h("div", { class: "label" }, p.name), h("div", { class: "value" }, `${fmt.credits(p.credits)} credits`), h("p", {}, money(p.amount, p.currency)), buy);
          }),
        )
      : h("p", { class: "muted" }, "No packages are on sale.");
    const history = h("div");
    root.append(section("Buy credits", cards, buyBox), section("Your payments", history));
    pager(
      history,
      (cursor) => get("/api/payments", { cursor, limit: 20 }),
      (items) =>
        table(
          [
            { label: "When", value: (x) => fmt.date(x.createdAt) },
            { label: "Credits", value: (x) => fmt.credits(x.credits), num: true },
            { label: "Amount", value: (x) => money(x.amount, x.currency), num: true },
            { label: "Status", value: (x) => x.status },
          ],
          items,
          { empty: "No payments yet." },
        ),
    ).refresh();
    if (can("payments:write")) root.append(section("Packages (admin)", manage(packages, rerender)));
  },
};

function manage(packages, changed) {
  const out = h("div");
  const rows = table(
    [
      { label: "Id", value: (p) => h("code", {}, p.id) },
      { label: "Name", value: (p) => p.name },
      { label: "Credits", value: (p) => fmt.credits(p.credits), num: true },
      { label: "Price", value: (p) => money(p.amount, p.currency), num: true },
      { label: "Active", value: (p) => (p.active === false ? "no" : "yes") },
      { label: "Actions", value: (p) => confirmButton("Delete", `Delete ${p.name}`, async () => { await del(`/api/payments/packages/${encodeURIComponent(p.id)}`); changed(); }) },
    ],
    packages,
    { empty: "No packages." },
  );
  const f = form(
    { "aria-label": "Save a package", class: "inline" },
    [
      field({ name: "id", label: "Package id", required: true, placeholder: "starter" }),
      field({ name: "name", label: "Name", required: true }),
      field({ name: "credits", label: "Credits", type: "number", min: 1, required: true }),
      field({ name: "amount", label: "Amount (cents)", type: "number", min: 1, required: true }),
      field({ name: "currency", label: "Currency", value: "usd", required: true }),
      field({ name: "active", label: "Active", type: "select", options: [["true", "yes"], ["false", "no"]] }),
    ],
    "Save package",
    async (v) => {
      await put(`/api/payments/packages/${encodeURIComponent(v.id || "")}`, {
        name: v.name || "",
        credits: Number(v.credits),
        amount: Number(v.amount),
        currency: v.currency || "usd",
        active: v.active !== "false",
      });
      changed();
    },
  );
  out.append(rows, f);
  return out;
}
