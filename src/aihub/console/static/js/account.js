// Pages reached without a session: Google sign-in's return, "Forgot password?", and the pages
// the emails link to (#/verify-email?token=…, #/reset-password?token=…). The tokens ride in the
// fragment, which the browser never sends to a server; each page drops it from the address bar
// as soon as it has read it.

import { ApiError, publicCall, signedIn, signInWithCode } from "./api.js";
import { clear, errorNotice, field, form, h, notice, pageTitle } from "./ui.js";

// What the callback's ?error= codes mean to a person (docs/identity.md lists them).
const OAUTH_ERRORS = {
  OAUTH_DENIED: "Google sign-in was cancelled or refused.",
  OAUTH_PROVIDER_ERROR: "Google did not complete the sign-in. Try again.",
  INVALID_ID_TOKEN: "Google's answer could not be verified. Try again.",
  OAUTH_EMAIL_MISSING: "Google gave no verified email address for this account.",
  OAUTH_ACCOUNT_CONFLICT: "This account was being created at the same moment. Try again.",
  GOOGLE_ACCOUNT_IN_USE: "This Google account is linked to another user.",
  GOOGLE_ACCOUNT_MISMATCH: "This account is linked to another Google account.",
  EMAIL_NOT_VERIFIED: "An account with this email exists, and Google has not verified the address. Sign in with the password.",
  ACCOUNT_SUSPENDED: "This account is suspended.",
};

/** The console's own address, as Google sign-in comes back to it (AIHUB_OAUTH_REDIRECT_URIS). */
export function consoleUrl() {
  return `${location.origin}${location.pathname}`;
}

let config = null;

/** The gateway's console config (whether Google sign-in is configured), read once. */
export async function consoleConfig() {
  config ||= publicCall("GET", "config.json").catch(() => ({ googleSignIn: false }));
  return config;
}

/**
 * Coming back from Google: ?code= or ?error= in the query. The code is spent at once and both
 * are removed from the address bar (and history) before anything else. Returns an error to
 * show on the sign-in page, or null.
 */
export async function finishOAuthReturn() {
  const query = new URLSearchParams(location.search);
  const code = query.get("code");
  const error = query.get("error");
  if (code === null && error === null) return null;
  history.replaceState(null, "", `${location.pathname}${location.hash}`);
  if (error !== null) {
    return new ApiError(400, { code: error, message: OAUTH_ERRORS[error] || "Google sign-in failed." });
  }
  try {
    await signInWithCode(code);
    return null;
  } catch (err) {
    return err;
  }
}

export function googleButton() {
  const button = h("button", { type: "button", class: "secondary google" }, "Sign in with Google");
  button.addEventListener("click", () => {
    button.disabled = true;
    location.assign(`/api/auth/oauth/google/start?redirectUri=${encodeURIComponent(consoleUrl())}`);
  });
  return button;
}

/** Read the token from the fragment, then take it out of the address bar and history. */
function takeToken(params, route) {
  const token = params.get("token") || "";
  if (token) history.replaceState(null, "", `${location.pathname}${location.search}#/${route}`);
  return token;
}

function backLink() {
  return h("p", {}, h("a", { href: "#/dashboard" }, signedIn() ? "Back to the console" : "Back to sign in"));
}

function shell(main, title, ...children) {
  clear(main, h("div", { class: "signin" }, pageTitle(title), ...children));
}

export function forgotPage(main) {
  const box = h("div", { "aria-live": "polite" });
  const f = form(
    { class: "panel", "aria-label": "Reset password" },
    [field({ name: "email", label: "Email", type: "email", required: true, autocomplete: "username" })],
    "Send reset link",
    async (v) => {
      clear(box);
      const answer = await publicCall("POST", "/api/auth/password-reset/request", { email: v.email || "" });
      clear(box, notice("success", `${answer.message}. The link in it is valid for one hour.`));
    },
  );
  shell(main, "Forgot your password?", h("p", {}, "Enter your account's email: we send it a link to choose a new password."), box, f, backLink());
  f.querySelector("input").focus();
}

export async function verifyPage(main, params, initial) {
  const token = initial ?? takeToken(params, "verify-email");
  const box = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Verifying…"));
  shell(main, "Verify your email", box, backLink());
  if (!token) {
    clear(box, notice("error", "This link has no verification token. Open the link from the email again."));
    return;
  }
  try {
    const answer = await publicCall("POST", "/api/auth/verify-email", { token });
    clear(box, notice("success", `${answer.user.email} is verified.`));
  } catch (err) {
    clear(box, errorNotice(err));
  }
}

export function resetPage(main, params, initial) {
  const token = initial ?? takeToken(params, "reset-password");
  const box = h("div", { "aria-live": "polite" });
  if (!token) {
    shell(main, "Choose a new password", notice("error", "This link has no reset token. Open the link from the email again, or ask for a new one."), h("p", {}, h("a", { href: "#/forgot-password" }, "Ask for a new link")));
    return;
  }
  const f = form(
    { class: "panel", "aria-label": "Choose a new password" },
    [
      field({ name: "password", label: "New password", type: "password", required: true, autocomplete: "new-password", hint: "At least 8 characters." }),
      field({ name: "confirm", label: "Repeat password", type: "password", required: true, autocomplete: "new-password" }),
    ],
    "Set new password",
    async (v) => {
      clear(box);
      if ((v.password || "") !== (v.confirm || "")) {
        throw new ApiError(422, { code: "VALIDATION_ERROR", message: "The passwords differ", details: [{ field: "confirm", message: "must repeat the new password" }] });
      }
      await publicCall("POST", "/api/auth/password-reset", { token, password: v.password || "" });
      f.remove();
      clear(box, notice("success", "Your password is changed, and every session of this account ended. Sign in with the new password."));
    },
  );
  shell(main, "Choose a new password", box, f, backLink());
  f.querySelector("input").focus();
}

/** The routes that render without a session (and also with one). */
export const PUBLIC_PAGES = {
  "forgot-password": { title: "Forgot password", render: (main) => forgotPage(main) },
  "verify-email": { title: "Verify email", render: (main, params) => verifyPage(main, params) },
  "reset-password": { title: "Reset password", render: (main, params) => resetPage(main, params) },
};
