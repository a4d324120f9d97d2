// Blocked IPs (gateway:admin): the gateway's block list, block an address or network, unblock.

import { del, get, post } from "../api.js";
import { clear, confirmButton, field, fmt, form, h, notice, section, table } from "../ui.js";

export default {
  route: "blocked-ips",
  title: "Blocked IPs",
  nav: "Blocked IPs",
  group: "Administration",
  needs: (can) => can("gateway:admin"),
  async render(root) {
    const list = h("div");
    const result = h("div", { "aria-live": "polite" });
    const load = async () => {
      const page = await get("/api/gateway/blocked-ips");
      clear(
        list,
        table(
          [
            { label: "Address", value: (b) => h("code", {}, b.ip) },
            { label: "Reason", value: (b) => b.reason || "" },
            { label: "Since", value: (b) => (b.createdAt ? fmt.date(typeof b.createdAt === "number" ? b.createdAt * 1000 : b.createdAt) : "—") },
            { label: "Until", value: (b) => (b.expiresAt ? fmt.date(typeof b.expiresAt === "number" ? b.expiresAt * 1000 : b.expiresAt) : "until removed") },
            { label: "Actions", value: (b) => confirmButton(`Unblock ${b.ip}`, `Unblock ${b.ip}`, async () => { await del(`/api/gateway/blocked-ips/${encodeURIComponent(b.ip)}`); await load(); }) },
          ],
          page.items || [],
          { empty: "No address is blocked." },
        ),
      );
    };
    const f = form(
      { class: "inline", "aria-label": "Block an address" },
      [
        field({ name: "ip", label: "IP or CIDR", required: true, placeholder: "203.0.113.7 or 203.0.113.0/24" }),
        field({ name: "ttlSeconds", label: "For (seconds)", type: "number", min: 1, hint: "empty: until removed" }),
        field({ name: "reason", label: "Reason" }),
      ],
      "Block",
      async (v, el) => {
        const body = { ip: v.ip || "" };
        if (v.ttlSeconds) body.ttlSeconds = /^\d+$/.test(v.ttlSeconds) ? Number(v.ttlSeconds) : v.ttlSeconds;
        if (v.reason) body.reason = v.reason;
        const made = await post("/api/gateway/blocked-ips", body);
        el.reset();
        clear(result, notice("ok", `Blocked ${made.ip}.`));
        await load();
      },
    );
    root.append(section("Block an address", f, result), section("Blocked now", list));
    await load();
  },
};
