// Transactions: the caller's ledger rows, filtered by reason and dates, a page at a time.

import { get } from "../api.js";
import { dayAfter, dayStart, field, fmt, form, h, pager, table } from "../ui.js";

export const REASONS = [
  ["", "Any reason"],
  ["purchase", "purchase"],
  ["usage", "usage"],
  ["refund", "refund"],
  ["promo", "promo"],
  ["adjustment", "adjustment"],
  ["hold_capture", "hold_capture"],
];

export function transactionTable(items) {
  return table(
    [
      { label: "When", value: (t) => fmt.date(t.createdAt) },
      { label: "Reason", value: (t) => t.reason },
      { label: "Amount", value: (t) => (t.amount > 0 ? `+${fmt.credits(t.amount)}` : fmt.credits(t.amount)), num: true },
      { label: "Balance after", value: (t) => fmt.credits(t.balanceAfter), num: true },
      { label: "Note", value: (t) => (t.metadata && (t.metadata.note || t.metadata.code)) || "" },
    ],
    items,
    { empty: "No transactions match." },
  );
}

export default {
  route: "transactions",
  title: "Transactions",
  nav: "Transactions",
  group: "You",
  async render(root) {
    const list = h("div");
    let filters = {};
    const p = pager(list, (cursor) => get("/api/credits/transactions", { ...filters, cursor, limit: 20 }), transactionTable);
    const f = form(
      { class: "filters", "aria-label": "Filter transactions" },
      [
        field({ name: "reason", label: "Reason", type: "select", options: REASONS }),
        field({ name: "from", label: "From", type: "date" }),
        field({ name: "to", label: "To", type: "date", hint: "inclusive" }),
      ],
      "Apply filters",
      async (v) => {
        filters = { reason: v.reason, from: dayStart(v.from), to: dayAfter(v.to) };
        await p.reload();
      },
    );
    root.append(h("div", { class: "panel" }, f), h("div", { class: "panel" }, list));
    await p.reload();
  },
};
