// Long reports are background jobs (202 + a job): poll it, show its progress, then download.

import { api, download, get } from "./api.js";
import { clear, h } from "./ui.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow a report job until it finishes. `box` shows a progress bar with the job's status and
 * the time it has taken; on success the file is downloaded (and a link offered to fetch it again).
 */
export async function followJob(job, box, fallbackName, { interval = 1000, alive = () => true } = {}) {
  const started = Date.now();
  const bar = h("progress", { "aria-label": "Report progress" });
  const text = h("span", { class: "muted" });
  clear(box, h("div", { class: "actions", role: "status" }, bar, text));
  let current = job;
  while (current.status === "queued" || current.status === "running") {
    text.textContent = `Job ${current.status}… ${Math.round((Date.now() - started) / 1000)} s`;
    await sleep(interval);
    if (!alive()) return null;
    current = await get(current.url);
  }
  if (current.status !== "succeeded") {
    const code = (current.error && current.error.code) || current.status;
    clear(box, h("div", { class: "notice error", role: "alert" }, `The report failed (${code}).`));
    return current;
  }
  bar.max = 1;
  bar.value = 1;
  const again = h("button", { type: "button", class: "secondary" }, "Download again");
  again.addEventListener("click", () => download(current.downloadUrl, undefined, fallbackName));
  clear(box, h("div", { class: "actions", role: "status" }, bar, h("span", {}, `Report ready (${current.resultBytes ?? "?"} bytes).`), again));
  await download(current.downloadUrl, undefined, fallbackName);
  return current;
}

/** An analytics overview that came back as a job: poll it with progress, then read its JSON. */
export async function followJobJson(job, box, alive = () => true) {
  const started = Date.now();
  const text = h("span", { class: "muted" });
  clear(box, h("div", { class: "actions", role: "status" }, h("progress", { "aria-label": "Overview progress" }), text));
  let current = job;
  while (current.status === "queued" || current.status === "running") {
    text.textContent = `Computing the overview (${current.status})… ${Math.round((Date.now() - started) / 1000)} s`;
    await sleep(1000);
    if (!alive()) return null;
    current = await get(current.url);
  }
  if (current.status !== "succeeded") {
    clear(box, h("div", { class: "notice error", role: "alert" }, `The overview failed (${(current.error && current.error.code) || current.status}).`));
    return null;
  }
  clear(box);
  const blob = await api("GET", current.downloadUrl, { as: "blob" });
  return JSON.parse(await blob.text());
}
