// Dashboard: balance and available credits, usage per day split by model, quota, promo redemption.

import { get, idempotencyKey, post } from "../api.js";
import { dayRange, stackedBars } from "../chart.js";
import { clear, daysAgo, errorNotice, field, fmt, form, h, isoDay, notice, section, table } from "../ui.js";

const MEASURES = [
  ["credits", "Credits"],
  ["requests", "Requests"],
  ["tokens", "Tokens"],
];

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label", id: `${id}-label` }, label), h("div", { class: "value", "aria-labelledby": `${id}-label`, dataset: { figure: id } }, value));
}

async function balanceCards(el) {
  const account = await get("/api/credits/balance");
  clear(el, card("Balance", fmt.credits(account.balance), "balance"), card("Reserved", fmt.credits(account.reserved), "reserved"), card("Available", fmt.credits(account.available), "available"));
}

/** The summary's `day_model` keys are `YYYY-MM-DD/provider/model`. */
export function splitByModel(items, measure) {
  const series = new Map();
  for (const item of items) {
    const day = item.key.slice(0, 10);
    const model = item.key.slice(11);
    const value = measure === "tokens" ? item.inputTokens + item.outputTokens : item[measure];
    if (!series.has(model)) series.set(model, { name: model, values: {} });
    series.get(model).values[day] = (series.get(model).values[day] || 0) + value;
  }
  return [...series.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function usageChart(el, items, days, measure) {
  const label = MEASURES.find(([m]) => m === measure)[1];
  const series = splitByModel(items, measure);
  if (!series.length) {
    clear(el, notice("info", "No usage in the last 30 days yet."));
    return;
  }
  clear(el, stackedBars(`Usage per day by model (${label.toLowerCase()}), last 30 days`, days, series));
}

function totalsByModel(items) {
  const rows = new Map();
  for (const item of items) {
    const model = item.key.slice(11);
    const row = rows.get(model) || { model, requests: 0, tokens: 0, credits: 0 };
    row.requests += item.requests;
    row.tokens += item.inputTokens + item.outputTokens;
    row.credits += item.credits;
    rows.set(model, row);
  }
  return table(
    [
      { label: "Model", value: (r) => r.model },
      { label: "Requests", value: (r) => fmt.credits(r.requests), num: true },
      { label: "Tokens", value: (r) => fmt.credits(r.tokens), num: true },
      { label: "Credits", value: (r) => fmt.credits(r.credits), num: true },
    ],
    [...rows.values()].sort((a, b) => a.model.localeCompare(b.model)),
    { caption: "Usage by model, last 30 days", empty: "No usage yet." },
  );
}

async function quotaPanel(el) {
  const quota = await get("/api/usage/quota");
  if (!quota.scope) {
    clear(el, h("p", { class: "muted" }, "No quota applies to you."));
    return;
  }
  const row = (name) => ({ name, limit: quota.limits[name], used: quota.used[name], remaining: quota.remaining[name] });
  clear(
    el,
    h("p", {}, `Quota ${quota.scope}, per ${quota.period}; resets ${fmt.date(quota.resetsAt)}.`),
    table(
      [
        { label: "Measure", value: (r) => r.name },
        { label: "Limit", value: (r) => (r.limit === null ? "no limit" : fmt.credits(r.limit)), num: true },
        { label: "Used", value: (r) => fmt.credits(r.used), num: true },
        { label: "Left", value: (r) => (r.remaining === null ? "—" : fmt.credits(r.remaining)), num: true },
      ],
      ["credits", "tokens", "requests"].map(row),
    ),
  );
}

export default {
  route: "dashboard",
  title: "Dashboard",
  nav: "Dashboard",
  group: "You",
  async render(root) {
    const cards = h("div", { class: "cards", "aria-live": "polite" });
    const chart = h("div", { class: "chart-box" });
    const byModel = h("div");
    const quota = h("div");
    const redeemResult = h("div", { "aria-live": "polite" });
    const measure = field({ name: "measure", label: "Measure", type: "select", options: MEASURES, value: "credits" });
    const redeem = form(
      { class: "inline", "aria-label": "Redeem a promo code" },
      [field({ name: "code", label: "Promo code", required: true, autocomplete: "off" })],
      "Redeem",
      async (v, f) => {
        clear(redeemResult);
        const out = await post("/api/promo-codes/redeem", { code: v.code || "" }, { headers: { "Idempotency-Key": idempotencyKey() } });
        f.reset();
        clear(redeemResult, notice("ok", `Redeemed ${out.code}: +${fmt.credits(out.credits)} credits. Balance ${fmt.credits(out.balance)}.`));
        await balanceCards(cards);
      },
    );
    clear(
      root,
      cards,
      section("Usage", h("div", { class: "filters" }, measure), chart, byModel),
      h("div", { class: "grid2" }, section("Quota", quota), section("Redeem a promo code", redeem, redeemResult)),
    );
    const first = isoDay(daysAgo(29));
    const days = dayRange(first, isoDay(daysAgo(0)));
    const results = await Promise.allSettled([
      balanceCards(cards),
      get("/api/usage/summary", { groupBy: "day_model", from: `${first}T00:00:00Z` }).then((summary) => {
        const select = measure.querySelector("select");
        const draw = () => usageChart(chart, summary.items, days, select.value);
        select.addEventListener("change", draw);
        draw();
        clear(byModel, totalsByModel(summary.items));
      }),
      quotaPanel(quota),
    ]);
    [cards, chart, quota].forEach((el, i) => {
      if (results[i].status === "rejected") clear(el, errorNotice(results[i].reason));
    });
  },
};
