// The console's shell: sign-in, navigation (only the pages the user's permissions allow), and a
// hash router (#/users): the fragment never reaches the server or its logs, and holds no secret.

import { can, me, onSessionChange, signedIn, signIn, signOut } from "./api.js";
import { clear, errorNotice, field, form, h, pageTitle } from "./ui.js";
import { PAGES } from "./pages/index.js";
import { consoleConfig, finishOAuthReturn, googleButton, PUBLIC_PAGES } from "./account.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const toggle = document.getElementById("menu-toggle");

function visible(page) {
  return !page.needs || page.needs(can);
}

function renderNav(current) {
  const groups = new Map();
  for (const page of PAGES) {
    if (!page.nav || !visible(page)) continue;
    if (!groups.has(page.group)) groups.set(page.group, []);
    groups.get(page.group).push(page);
  }
  clear(
    nav,
    [...groups].map(([group, pages]) => [
      h("h2", {}, group),
      h("ul", {}, pages.map((p) => h("li", {}, h("a", { href: `#/${p.route}`, "aria-current": p === current ? "page" : null }, p.nav)))),
    ]),
  );
}

function renderWho() {
  const user = me();
  if (!user) {
    clear(who);
    return;
  }
  const out = h("button", { type: "button" }, "Sign out");
  out.addEventListener("click", async () => {
    await signOut();
    location.hash = "#/dashboard";
  });
  clear(who, h("span", { class: "email" }, user.user.email), h("span", { class: "badge" }, user.roles.join(", ") || "no role"), out);
}

function signInPage(problem) {
  nav.hidden = true;
  toggle.hidden = true;
  document.title = "Sign in · aihub console";
  const box = h("div", { "aria-live": "polite" }, problem ? errorNotice(problem) : null);
  const google = h("div", { class: "alt-signin" });
  const f = form(
    { class: "panel", "aria-label": "Sign in" },
    [
      field({ name: "email", label: "Email", type: "email", required: true, autocomplete: "username" }),
      field({ name: "password", label: "Password", type: "password", required: true, autocomplete: "current-password" }),
    ],
    "Sign in",
    async (v) => {
      clear(box);
      await signIn(v.email || "", v.password || "");
      route();
    },
  );
  const forgot = h("p", {}, h("a", { href: "#/forgot-password" }, "Forgot password?"));
  clear(main, h("div", { class: "signin" }, pageTitle("Sign in to aihub"), box, f, forgot, google));
  f.querySelector("input").focus();
  consoleConfig().then((config) => {
    if (config.googleSignIn && google.isConnected) clear(google, h("p", { class: "muted" }, "or"), googleButton());
  });
}

function parse() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { path: path || "dashboard", params: new URLSearchParams(query) };
}

let renderToken = 0;

async function route(problem) {
  const { path, params } = parse();
  const open = PUBLIC_PAGES[path];
  if (open) {
    // Email links work signed in or not; without a session there is no nav to show.
    if (!signedIn()) {
      nav.hidden = true;
      toggle.hidden = true;
    }
    document.title = `${open.title} · aihub console`;
    ++renderToken;
    await open.render(main, params);
    return;
  }
  if (!signedIn()) {
    signInPage(problem);
    return;
  }
  const page = PAGES.find((p) => p.route === path) || PAGES[0];
  nav.hidden = false;
  toggle.hidden = false;
  renderNav(page);
  renderWho();
  document.title = `${page.title} · aihub console`;
  const mine = ++renderToken;
  const root = h("div");
  clear(main, pageTitle(page.title), root);
  if (document.activeElement === document.body || nav.contains(document.activeElement)) {
    document.getElementById("page-title").focus();
  }
  try {
    // Pages render even when the nav hides them: the API, not the console, decides (403 shown).
    await page.render(root, params, () => mine === renderToken);
  } catch (err) {
    if (mine === renderToken) clear(root, errorNotice(err));
  }
}

toggle.addEventListener("click", () => {
  const open = toggle.getAttribute("aria-expanded") !== "true";
  toggle.setAttribute("aria-expanded", String(open));
  nav.classList.toggle("collapsed", !open);
});
if (window.matchMedia("(max-width: 760px)").matches) nav.classList.add("collapsed");

onSessionChange((user) => {
  if (!user) route();
});
window.addEventListener("hashchange", () => {
  if (window.matchMedia("(max-width: 760px)").matches) {
    nav.classList.add("collapsed");
    toggle.setAttribute("aria-expanded", "false");
  }
  route();
});
finishOAuthReturn().then((problem) => route(problem));
