// Billing: one's own report (JSON summary, CSV download); with billing:read, any user's report
// and the all-users export, which is always a background job (progress shown while it runs).

import { can, download, get } from "../api.js";
import { followJob } from "../jobs.js";
import { clear, dayAfter, dayStart, daysAgo, field, fmt, form, h, isoDay, section, table } from "../ui.js";

function period(v) {
  return { from: dayStart(v.from), to: dayAfter(v.to) };
}

function summary(report) {
  return h(
    "div",
    {},
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Account"), h("dd", {}, report.email),
      h("dt", {}, "Opening balance"), h("dd", {}, fmt.credits(report.openingBalance)),
      h("dt", {}, "Credits"), h("dd", {}, `+${fmt.credits(report.credits)}`),
      h("dt", {}, "Debits"), h("dd", {}, `−${fmt.credits(report.debits)}`),
      h("dt", {}, "Closing balance"), h("dd", {}, fmt.credits(report.closingBalance)),
    ),
    h("h3", {}, "By reason"),
    table(
      [
        { label: "Reason", value: (r) => r.reason },
        { label: "Credits", value: (r) => fmt.credits(r.credits), num: true },
        { label: "Debits", value: (r) => fmt.credits(r.debits), num: true },
        { label: "Rows", value: (r) => r.count, num: true },
      ],
      report.byReason,
    ),
    h("h3", {}, "Usage"),
    table(
      [
        { label: "Model", value: (r) => `${r.provider}/${r.model}` },
        { label: "Requests", value: (r) => fmt.credits(r.requests), num: true },
        { label: "Credits", value: (r) => fmt.credits(r.credits), num: true },
      ],
      report.usage,
    ),
  );
}

export default {
  route: "billing",
  title: "Billing",
  nav: "Billing",
  group: "You",
  async render(root, _params, alive) {
    const out = h("div", { "aria-live": "polite" });
    const job = h("div");
    const admin = can("billing:read");
    const dates = () => [
      field({ name: "from", label: "From", type: "date", value: isoDay(daysAgo(29)) }),
      field({ name: "to", label: "To", type: "date", value: isoDay(daysAgo(0)), hint: "inclusive" }),
    ];
    const report = form(
      { class: "filters", "aria-label": "Billing report" },
      [admin ? field({ name: "userId", label: "User id", hint: "empty: your own" }) : null, dates(), field({ name: "format", label: "Format", type: "select", options: [["json", "Show here"], ["csv", "Download CSV"]] })],
      "Get report",
      async (v) => {
        clear(out);
        const query = { ...period(v), userId: v.userId };
        if (v.format === "csv") {
          const pending = await download("/api/billing/report", { ...query, format: "csv" }, "billing.csv");
          if (pending) await followJob(pending, job, "billing.csv", { alive });
          return;
        }
        const answer = await get("/api/billing/report", query);
        if (answer.status && answer.url) {
          await followJob(answer, job, "billing.json", { alive });
          return;
        }
        clear(out, summary(answer));
      },
    );
    root.append(section("Billing report", report, job, out));
    if (admin) {
      const exportJob = h("div");
      const exporter = form(
        { class: "filters", "aria-label": "Export every user's billing" },
        [dates()],
        "Export all users (CSV)",
        async (v) => {
          const pending = await download("/api/billing/export", { ...period(v), format: "csv" }, "billing-export.csv");
          if (pending) await followJob(pending, exportJob, "billing-export.csv", { alive });
        },
      );
      root.append(section("All users", h("p", { class: "muted" }, "Runs as a background job; the download starts when it is ready."), exporter, exportJob));
    }
  },
};
