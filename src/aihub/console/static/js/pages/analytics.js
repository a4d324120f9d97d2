// Analytics (analytics:read): credits, requests and active users per day, top users and models.
// A long period is a background job: its progress is shown until the overview is ready.

import { api } from "../api.js";
import { dayRange, lines, ranking, stackedBars } from "../chart.js";
import { followJobJson } from "../jobs.js";
import { clear, dayAfter, dayStart, daysAgo, field, fmt, form, h, isoDay, section, table } from "../ui.js";

function draw(box, overview, first, last) {
  const days = dayRange(first, last);
  const byDay = (key) => Object.fromEntries(overview.daily.map((d) => [d.day, d[key]]));
  clear(
    box,
    h(
      "div",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "label" }, "Credits spent"), h("div", { class: "value" }, fmt.credits(overview.totals.credits))),
      h("div", { class: "card" }, h("div", { class: "label" }, "Requests"), h("div", { class: "value" }, fmt.credits(overview.totals.requests))),
      h("div", { class: "card" }, h("div", { class: "label" }, "Active users"), h("div", { class: "value" }, fmt.credits(overview.activeUsers))),
    ),
    section("Credits per day", stackedBars("Credits spent per day", days, [{ name: "credits", values: byDay("credits") }])),
    section("Requests per day", lines("Requests per day", days, [{ name: "requests", values: byDay("requests") }])),
    section("Active users per day", lines("Active users per day", days, [{ name: "active users", values: byDay("activeUsers") }])),
    section("Top users", ranking("Top users by credits", overview.topUsers.map((u) => ({ name: u.email || u.userId, value: u.credits })))),
    section("Top models", ranking("Top models by credits", [...overview.byModel].sort((a, b) => b.credits - a.credits).slice(0, 10).map((m) => ({ name: `${m.provider}/${m.model}`, value: m.credits })))),
    section(
      "By provider",
      table(
        [
          { label: "Provider", value: (p) => p.provider },
          { label: "Requests", value: (p) => fmt.credits(p.requests), num: true },
          { label: "Tokens", value: (p) => fmt.credits(p.inputTokens + p.outputTokens), num: true },
          { label: "Credits", value: (p) => fmt.credits(p.credits), num: true },
        ],
        overview.byProvider,
        { empty: "No usage in this period." },
      ),
    ),
  );
}

export default {
  route: "analytics",
  title: "Analytics",
  nav: "Analytics",
  group: "Administration",
  needs: (can) => can("analytics:read"),
  async render(root, _params, alive) {
    const box = h("div");
    const progress = h("div");
    const show = async (from, to) => {
      clear(progress);
      let overview = await api("GET", "/api/analytics/overview", { query: { from: dayStart(from), to: dayAfter(to) } });
      if (overview.status && overview.url) overview = await followJobJson(overview, progress, alive);
      if (overview) draw(box, overview, from, to);
    };
    const f = form(
      { class: "filters", "aria-label": "Period" },
      [field({ name: "from", label: "From", type: "date", value: isoDay(daysAgo(29)) }), field({ name: "to", label: "To", type: "date", value: isoDay(daysAgo(0)), hint: "inclusive; over 31 days runs as a job" })],
      "Show",
      (v) => show(v.from || isoDay(daysAgo(29)), v.to || isoDay(daysAgo(0))),
    );
    root.append(h("div", { class: "panel" }, f, progress), box);
    await show(isoDay(daysAgo(29)), isoDay(daysAgo(0)));
  },
};
