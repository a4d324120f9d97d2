// Sora2 video tool sessions: the token to paste into the tool (shown once), the list, revoke.

import { del, get, post } from "../api.js";
import { clear, confirmButton, fmt, h, secretBox, section, table } from "../ui.js";

export default {
  route: "sora",
  title: "Sora sessions",
  nav: "Sora sessions",
  group: "You",
  async render(root) {
    const shown = h("div", { "aria-live": "polite" });
    const list = h("div");
    const create = h("button", { type: "button" }, "New session token");
    const load = async () => {
      const page = await get("/api/sora/sessions");
      clear(
        list,
        table(
          [
            { label: "Created", value: (s) => fmt.date(s.createdAt) },
            { label: "Expires", value: (s) => fmt.date(s.expiresAt) },
            { label: "Last used", value: (s) => fmt.date(s.lastUsedAt) },
            { label: "Status", value: (s) => (s.revokedAt ? h("span", { class: "badge bad" }, "revoked") : h("span", { class: "badge good" }, "active")) },
            {
              label: "Actions",
              value: (s) => (s.revokedAt ? "" : confirmButton("Revoke", "Revoke this session", async () => { await del(`/api/sora/sessions/${encodeURIComponent(s.id)}`); await load(); })),
            },
          ],
          page.items || [],
          { empty: "No sessions yet." },
        ),
      );
    };
    create.addEventListener("click", async () => {
      create.disabled = true;
      try {
        const made = await post("/api/sora/sessions", {});
        clear(shown, secretBox("Session token", made.sessionToken, `Paste it into the Sora2 tool. Shown once; valid until ${fmt.date(made.expiresAt)}.`));
        await load();
      } finally {
        create.disabled = false;
      }
    });
    root.append(section("Connect the Sora2 video tool", h("p", {}, "The tool asks for a session token; it spends your credits on the videos you make with it."), create, shown), section("Your sessions", list));
    await load();
  },
};
