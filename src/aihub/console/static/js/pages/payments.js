// Payments (/api/payments): buy a credit package through Stripe Checkout, see one's payments;
// with payments:write, manage the packages. The package list is public and answers without
// Stripe; only a checkout says 503 PAYMENTS_NOT_CONFIGURED, and then the page says so.

import { absent, ApiError, can, del, get, post, put } from "../api.js";
import { clear, confirmButton, errorNotice, field, fmt, form, h, pager, rerender, section, table, unavailable } from "../ui.js";

const money = (amount, currency) => new Intl.NumberFormat("en-US", { style: "currency", currency: (currency || "usd").toUpperCase() }).format(amount / 100);
const NOT_CONFIGURED = "Payments are not configured on this server.";
const ASK = "Ask an administrator for credits, or redeem a promo code on the dashboard.";

function notConfigured(err) {
  return absent(err) || (err instanceof ApiError && err.status === 503 && err.code === "PAYMENTS_NOT_CONFIGURED");
}

const STATUS_BADGE = { paid: "good", refunded: "bad", failed: "bad", pending: "" };

function statusBadge(p) {
  return h("span", { class: `badge ${STATUS_BADGE[p.status] || ""}`.trim(), dataset: { status: p.status } }, p.status);
}

/** Where Stripe sends the customer back: this console's payments page (the hash route survives). */
function returnUrls() {
  const back = `${location.origin}${location.pathname}#/payments`;
  return { successUrl: `${back}?checkout=done`, cancelUrl: `${back}?checkout=cancelled` };
}

function buyCards(packages, box) {
  if (!packages.length) return h("p", { class: "muted" }, "No packages are on sale.");
  const buttons = [];
  const cards = packages.map((p) => {
    const buy = h("button", { type: "button", "aria-label": `Buy ${p.name}` }, `Buy ${p.name}`);
    buttons.push(buy);
    buy.addEventListener("click", async () => {
      for (const b of buttons) b.disabled = true;
      clear(box);
      try {
        const checkout = await post("/api/payments/checkout", { packageId: p.id, ...returnUrls() });
        location.assign(checkout.url); // Stripe's hosted page; it comes back to returnUrls()
      } catch (err) {
        if (notConfigured(err)) {
          clear(box, unavailable(NOT_CONFIGURED, ASK));
          return; // the buttons stay disabled: no checkout can work until an admin configures Stripe
        }
        clear(box, errorNotice(err));
        for (const b of buttons) b.disabled = false;
      }
    });
    return h(
      "div",
      { class: "card", dataset: { package: p.id } },
      h("div", { class: "label" }, p.name),
      h("div", { class: "value" }, `${fmt.credits(p.credits)} credits`),
      h("p", {}, money(p.amount, p.currency)),
      buy,
    );
  });
  return h("div", { class: "cards" }, cards);
}

function returned(params) {
  const how = params.get("checkout");
  if (how === "done") return h("div", { class: "notice ok", role: "status" }, "Thank you: the credits appear on your dashboard once Stripe confirms the payment.");
  if (how === "cancelled") return h("div", { class: "notice info", role: "status" }, "Checkout cancelled: nothing was charged.");
  return null;
}

export default {
  route: "payments",
  title: "Payments",
  nav: "Buy credits",
  group: "You",
  async render(root, params) {
    let packages;
    try {
      packages = (await get("/api/payments/packages")).items || [];
    } catch (err) {
      if (notConfigured(err)) {
        root.append(unavailable(NOT_CONFIGURED, ASK));
        return;
      }
      throw err;
    }
    const buyBox = h("div", { "aria-live": "polite" });
    const history = h("div");
    root.append(
      returned(params) || "",
      section("Buy credits", buyCards(packages.filter((p) => p.active !== false), buyBox), buyBox),
      section("Your payments", history),
    );
    pager(
      history,
      (cursor) => get("/api/payments", { cursor, limit: 20 }),
      (items) =>
        table(
          [
            { label: "When", value: (x) => fmt.date(x.createdAt) },
            // With payments:read the API lists everyone's: say whose each one is.
            ...(can("payments:read") ? [{ label: "User", value: (x) => h("code", {}, x.userId) }] : []),
            { label: "Package", value: (x) => x.packageId },
            { label: "Credits", value: (x) => fmt.credits(x.credits), num: true },
            { label: "Amount", value: (x) => money(x.amount, x.currency), num: true },
            { label: "Status", value: statusBadge },
            { label: "Paid", value: (x) => fmt.date(x.paidAt) },
          ],
          items,
          { caption: can("payments:read") ? "Every user's payments, newest first" : "Newest first", empty: "No payments yet." },
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
      { label: "Actions", value: (p) => confirmButton(`Delete ${p.name}`, `Delete package ${p.name}`, async () => { await del(`/api/payments/packages/${encodeURIComponent(p.id)}`); changed(); }) },
    ],
    packages,
    { empty: "No packages on sale." },
  );
  const f = form(
    { "aria-label": "Save a package", class: "inline" },
    [
      field({ name: "id", label: "Package id", required: true, placeholder: "starter", hint: "lower-case letters, digits, - and _" }),
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
        currency: v.currency || "",
        active: v.active !== "false",
      });
      changed();
    },
  );
  out.append(rows, f);
  return out;
}
