// Pricing: the public price list; with pricing:write, set or remove a model's price.

import { can, del, get, put } from "../api.js";
import { clear, confirmButton, field, form, h, notice, section, table } from "../ui.js";

export default {
  route: "pricing",
  title: "Pricing",
  nav: "Pricing",
  group: "You",
  async render(root) {
    const list = h("div");
    const saved = h("div", { "aria-live": "polite" });
    const writer = can("pricing:write");
    const load = async () => {
      const prices = await get("/api/pricing");
      const columns = [
        { label: "Provider", value: (p) => p.provider },
        { label: "Model", value: (p) => p.model },
        { label: "Input / 1k tokens", value: (p) => p.inputPer1k, num: true },
        { label: "Output / 1k tokens", value: (p) => p.outputPer1k, num: true },
        { label: "Per request", value: (p) => p.perRequest, num: true },
        { label: "Per second", value: (p) => p.perSecond, num: true },
      ];
      if (writer) {
        columns.push({
          label: "Actions",
          value: (p) => confirmButton("Remove", `Remove ${p.provider}/${p.model}`, async () => { await del(`/api/pricing/${encodeURIComponent(p.provider)}/${encodeURIComponent(p.model)}`); await load(); }),
        });
      }
      clear(list, table(columns, prices.items || prices, { caption: "Credits per unit (1 credit = USD 0.001 in the seeded prices)" }));
    };
    root.append(section("Price list", list));
    if (writer) {
      const f = form(
        { class: "inline", "aria-label": "Set a price" },
        [
          field({ name: "provider", label: "Provider", required: true }),
          field({ name: "model", label: "Model", required: true }),
          field({ name: "inputPer1k", label: "Input per 1k", required: true, inputmode: "decimal" }),
          field({ name: "outputPer1k", label: "Output per 1k", required: true, inputmode: "decimal" }),
          field({ name: "perRequest", label: "Per request", inputmode: "decimal" }),
          field({ name: "perSecond", label: "Per second", inputmode: "decimal" }),
        ],
        "Save price",
        async (v) => {
          const body = {};
          for (const k of ["inputPer1k", "outputPer1k", "perRequest", "perSecond"]) if (v[k] !== undefined) body[k] = v[k];
          await put(`/api/pricing/${encodeURIComponent(v.provider || "")}/${encodeURIComponent(v.model || "")}`, body);
          clear(saved, notice("ok", `Price of ${v.provider}/${v.model} saved; it applies to calls from now on.`));
          await load();
        },
      );
      root.append(section("Set a price", f, saved));
    }
    await load();
  },
};
