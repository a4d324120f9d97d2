// Hand-written SVG charts (no library): stacked bars per day, and lines over days.
// Each chart is an <svg role="img"> whose accessible name says what it shows; a table or
// legend beside it carries the figures for those who cannot see it.

import { h } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
const H = 260;

/** Drawing width in SVG units: the full 720 on a desktop, fewer on a phone so the text stays legible. */
function chartWidth() {
  return window.matchMedia("(max-width: 600px)").matches ? 380 : 720;
}
const PAD = { left: 56, right: 12, top: 12, bottom: 34 };

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 4, 5, 8, 10]) if (step * exp >= value) return step * exp;
  return 10 * exp;
}

const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

function frame(W, label, max, days) {
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet" });
  svg.append(s("title", {}, label));
  const plotH = H - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.top + plotH - (plotH * i) / 4;
    svg.append(s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    svg.append(s("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, compact.format((max * i) / 4)));
  }
  svg.append(s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH }));
  const every = Math.max(1, Math.ceil(days.length / (W < 500 ? 4 : 8)));
  const slot = (W - PAD.left - PAD.right) / Math.max(1, days.length);
  days.forEach((day, i) => {
    const last = i === days.length - 1;
    // Every n-th day, and the last one; a tick too close before the last is left out.
    if (!last && (i % every !== 0 || days.length - 1 - i < every)) return;
    svg.append(s("text", { x: PAD.left + slot * (i + 0.5), y: H - 12, "text-anchor": "middle" }, day.slice(5)));
  });
  return { svg, plotH, slot };
}

function legend(names) {
  return h("ul", { class: "legend" }, names.map((name, i) => h("li", {}, h("span", { class: `swatch s${i % 8}`, "aria-hidden": "true" }), name)));
}

/**
 * Stacked bars: `days` (YYYY-MM-DD, in order), `series` [{name, values: {day: number}}].
 * Returns a figure holding the svg and its legend.
 */
export function stackedBars(label, days, series, unit = "") {
  const totals = days.map((d) => series.reduce((sum, sr) => sum + (sr.values[d] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const W = chartWidth();
  const { svg, plotH, slot } = frame(W, label, max, days);
  const barW = Math.max(2, slot * 0.7);
  days.forEach((day, i) => {
    let y = PAD.top + plotH;
    series.forEach((sr, k) => {
      const v = sr.values[day] || 0;
      if (!v) return;
      const hgt = (v / max) * plotH;
      y -= hgt;
      const rect = s("rect", { class: `bar s${k % 8}`, x: PAD.left + slot * i + (slot - barW) / 2, y, width: barW, height: Math.max(1, hgt), "data-day": day, "data-series": sr.name, "data-value": v });
      rect.append(s("title", {}, `${day} · ${sr.name}: ${v.toLocaleString("en-US")}${unit}`));
      svg.append(rect);
    });
  });
  return h("figure", { class: "chart-figure" }, svg, legend(series.map((sr) => sr.name)));
}

/** Lines: `series` [{name, values: {day: number}}] over `days`. */
export function lines(label, days, series) {
  const max = niceMax(Math.max(0, ...series.flatMap((sr) => days.map((d) => sr.values[d] || 0))));
  const W = chartWidth();
  const { svg, plotH, slot } = frame(W, label, max, days);
  series.forEach((sr, k) => {
    const points = days.map((d, i) => [PAD.left + slot * (i + 0.5), PAD.top + plotH - ((sr.values[d] || 0) / max) * plotH]);
    const path = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    svg.append(s("path", { class: `line s${k % 8}`, d: path, "data-series": sr.name }));
    points.forEach(([x, y], i) => {
      const v = sr.values[days[i]] || 0;
      if (!v) return;
      const dot = s("circle", { class: `s${k % 8}`, cx: x, cy: y, r: 3, "data-day": days[i], "data-value": v });
      dot.append(s("title", {}, `${days[i]} · ${sr.name}: ${v.toLocaleString("en-US")}`));
      svg.append(dot);
    });
  });
  return h("figure", { class: "chart-figure" }, svg, legend(series.map((sr) => sr.name)));
}

/** Horizontal bars for a top-N list: rows [{name, value}]. */
export function ranking(label, rows) {
  const max = niceMax(Math.max(0, ...rows.map((r) => r.value)));
  const W = chartWidth();
  const rowH = 26;
  const height = Math.max(40, rows.length * rowH + 10);
  const left = W < 500 ? 130 : 190;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": label });
  svg.append(s("title", {}, label));
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    const width = ((W - left - 80) * r.value) / max;
    svg.append(s("text", { x: left - 8, y: y + 16, "text-anchor": "end" }, r.name.length > (W < 500 ? 18 : 28) ? `${r.name.slice(0, W < 500 ? 17 : 27)}…` : r.name));
    const rect = s("rect", { class: "bar s0", x: left, y: y + 3, width: Math.max(1, width), height: rowH - 8, "data-value": r.value });
    rect.append(s("title", {}, `${r.name}: ${r.value.toLocaleString("en-US")}`));
    svg.append(rect);
    svg.append(s("text", { x: left + width + 6, y: y + 16 }, r.value.toLocaleString("en-US")));
  });
  return svg;
}

/** Every UTC day from `first` to `last` inclusive, as YYYY-MM-DD. */
export function dayRange(first, last) {
  const out = [];
  const d = new Date(`${first}T00:00:00Z`);
  const end = new Date(`${last}T00:00:00Z`);
  while (d <= end) {
    out.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}
