"""Google sign-in: the authorization code flow with state, nonce and PKCE, and its outcome.

1. ``start`` checks the client's ``redirectUri`` against ``AIHUB_OAUTH_REDIRECT_URIS`` and
   keeps the flow (nonce, PKCE verifier, redirect URI, a digest of a browser key, and for a
   link the signed-in user) in the store under the ``state`` for ten minutes. The browser key
   goes to the browser as a short-lived HttpOnly SameSite=Lax cookie: a callback is only
   accepted from the browser that started the flow (login CSRF, RFC 6749 §10.12).
2. ``callback`` claims the state once, exchanges the code (with the verifier), verifies the
   ID token against the provider's JWKS (issuer, audience, expiry, nonce) and resolves the
   user; it answers with a one-time code (60 s, single use) for the client, never a token
   in a URL.
3. ``exchange`` spends that code for the same body as ``POST /login``.

Accounts: a Google account already linked signs in to its user; otherwise an account with the
same email is linked only when Google says the email is verified; otherwise a new user is made
through core's user creation (role ``user``, a credit account, ``verified`` from Google).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass

import structlog
from authlib.common.urls import add_params_to_uri
from sqlalchemy.exc import IntegrityError

from aihub.auth import service as auth
from aihub.auth.identity import repository as repo
from aihub.auth.identity.oidc import Identity, IdTokenInvalid, OidcClient, ProviderError
from aihub.auth.schemas import TokenPair
from aihub.core.audit import service as audit
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, ServiceUnavailable, StoreUnavailableError, register_code
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import User

log = structlog.get_logger("aihub.identity.oauth")

STATE_TTL = 600
CODE_TTL = 60
COOKIE = "aihub_oauth_google"
CALLBACK_PATH = "/api/auth/oauth/google/callback"
_CLIENT: Slot[OidcClient] = Slot("oidc.google")


class InvalidRedirectUri(AppError):
    status_code, code, message = 400, "INVALID_REDIRECT_URI", "This redirectUri is not an allowed client URI"


class OAuthNotConfigured(ServiceUnavailable):
    code, message = "OAUTH_NOT_CONFIGURED", "Google sign-in is not configured on this server"


class ProviderUnavailable(ServiceUnavailable):
    code, message = "OAUTH_PROVIDER_UNAVAILABLE", "The sign-in provider cannot be reached, try again later"


class OAuthStateInvalid(AppError):
    status_code, code = 400, "OAUTH_STATE_INVALID"
    message = "This sign-in attempt is unknown, expired, or was started in another browser"


class OAuthCodeInvalid(AppError):
    status_code, code, message = 400, "OAUTH_CODE_INVALID", "This sign-in code is not valid, expired or was used"


# Sign-in failures after a valid state: the 302 back to the client carries ?error=<code>.
_WHERE = __name__
OAUTH_DENIED = register_code("OAUTH_DENIED", 302, "The user or the provider refused the sign-in", where=_WHERE)
OAUTH_PROVIDER_ERROR = register_code(
    "OAUTH_PROVIDER_ERROR", 302, "The provider failed or refused the code exchange", where=_WHERE
)
INVALID_ID_TOKEN = register_code(
    "INVALID_ID_TOKEN",
    302,
    "The ID token failed verification (signature, issuer, audience, expiry, nonce)",
    where=_WHERE,
)
GOOGLE_ACCOUNT_IN_USE = register_code(
    "GOOGLE_ACCOUNT_IN_USE", 302, "This Google account is linked to another user", where=_WHERE
)
GOOGLE_ACCOUNT_MISMATCH = register_code(
    "GOOGLE_ACCOUNT_MISMATCH", 302, "The account is linked to another Google account", where=_WHERE
)
OAUTH_EMAIL_MISSING = register_code(
    "OAUTH_EMAIL_MISSING", 302, "The provider gave no usable email address", where=_WHERE
)
OAUTH_ACCOUNT_CONFLICT = register_code(
    "OAUTH_ACCOUNT_CONFLICT", 302, "A concurrent sign-in created this account; try again", where=_WHERE
)
ACCOUNT_DELETED = register_code("ACCOUNT_DELETED", 302, "The account with this email was deleted", where=_WHERE)
LINK_FAILED = register_code("LINK_FAILED", 302, "The signed-in account can no longer be linked", where=_WHERE)


class FlowFailed(Exception):
    """Sign-in failed after the state was accepted: the browser goes back with ``?error=``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Started:
    url: str
    browser_key: str  # the cookie's value


def client_of(runtime: Runtime) -> OidcClient:
    """One client per process: it caches the discovery document and the key set."""
    existing = runtime.extras.get(_CLIENT)
    if existing is None:
        existing = OidcClient.from_settings(runtime.settings)
        runtime.extras.set(_CLIENT, existing)
        runtime.on_close(existing.close)
    return existing


def callback_url(runtime: Runtime) -> str:
    return runtime.settings.public_base_url + CALLBACK_PATH


def cookie_secure(runtime: Runtime) -> bool:
    return runtime.settings.public_base_url.startswith("https://")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _put(store: Store, key: str, value: str, ttl: int) -> None:
    try:
        await store.set(key, value, ttl=ttl)
    except StoreUnavailable as exc:
        raise StoreUnavailableError from exc


async def _take(store: Store, key: str) -> str | None:
    """Read and delete: of two callers with the same key only the one whose delete removed
    the entry gets the value, so a state or a code works once."""
    try:
        value = await store.get(key)
        if value is None or await store.delete(key) != 1:
            return None
    except StoreUnavailable as exc:
        raise StoreUnavailableError from exc
    return value


# ---------------------------------------------------------------- 1. start


async def start(runtime: Runtime, *, redirect_uri: str, link_user_id: uuid.UUID | None = None) -> Started:
    settings = runtime.settings
    if not settings.google_client_id or not settings.google_client_secret:
        raise OAuthNotConfigured
    if redirect_uri not in settings.oauth_redirect_uri_list:
        raise InvalidRedirectUri(details={"redirectUri": redirect_uri[:200]})
    client = client_of(runtime)
    try:
        meta = await client.metadata()
    except ProviderError as exc:
        log.warning("oidc_discovery_failed", error=str(exc))
        raise ProviderUnavailable from exc
    state, nonce, verifier, browser = (secrets.token_urlsafe(32) for _ in range(4))
    flow = Flow(nonce, verifier, redirect_uri, _digest(browser), str(link_user_id) if link_user_id else None)
    await _put(runtime.store, "oauth:state:" + _digest(state), flow.dumps(), STATE_TTL)
    url = client.authorization_url(
        meta, redirect_uri=callback_url(runtime), state=state, nonce=nonce, verifier=verifier
    )
    return Started(url=url, browser_key=browser)


# ---------------------------------------------------------------- 2. callback


@dataclass(frozen=True, slots=True)
class Flow:
    """One sign-in in progress, kept in the store under its state (as JSON, camelCase keys)."""

    nonce: str
    verifier: str
    redirect_uri: str
    browser: str  # the digest of the browser key
    link_user_id: str | None

    def dumps(self) -> str:
        return json.dumps(
            {
                "nonce": self.nonce,
                "verifier": self.verifier,
                "redirectUri": self.redirect_uri,
                "browser": self.browser,
                "linkUserId": self.link_user_id,
            }
        )

    @classmethod
    def loads(cls, raw: str) -> Flow:
        doc = json.loads(raw)
        return cls(doc["nonce"], doc["verifier"], doc["redirectUri"], doc["browser"], doc.get("linkUserId"))


async def _claim_state(store: Store, state: str | None, browser_key: str | None) -> Flow:
    if not state or len(state) > 200:
        raise OAuthStateInvalid
    key = "oauth:state:" + _digest(state)
    try:
        raw = await store.get(key)
    except StoreUnavailable as exc:
        raise StoreUnavailableError from exc
    if raw is None:
        raise OAuthStateInvalid
    flow = Flow.loads(raw)
    # Another browser (no cookie, or its own) cannot finish this flow, nor use it up.
    if not browser_key or not hmac.compare_digest(_digest(browser_key), flow.browser):
        raise OAuthStateInvalid
    if await _take(store, key) is None:  # a concurrent callback with the same state won
        raise OAuthStateInvalid
    return flow


async def callback(
    runtime: Runtime,
    *,
    state: str | None,
    code: str | None,
    error: str | None,
    browser_key: str | None,
    request_id: str | None,
    ip: str | None,
) -> str:
    """Where the browser goes next: the client's redirect URI with ``code`` (sign-in),
    ``linked=google`` (link) or ``error``. A bad state raises instead: there is no trusted
    place to send that browser back to."""
    flow = await _claim_state(runtime.store, state, browser_key)
    target = flow.redirect_uri
    try:
        if error:
            raise FlowFailed(OAUTH_DENIED)
        if not code or len(code) > 2048:
            raise FlowFailed(OAUTH_PROVIDER_ERROR)
        identity = await _verified_identity(runtime, code, flow)
        tx = runtime.tx(request_id=request_id, ip=ip)
        try:
            if flow.link_user_id:
                await _link(tx, uuid.UUID(flow.link_user_id), identity)
                await tx.commit()
                return str(add_params_to_uri(target, [("linked", "google")]))
            user = await _sign_in_user(tx, runtime, identity)
            await tx.commit()
        except IntegrityError as exc:  # a concurrent first sign-in of the same account won
            raise FlowFailed(OAUTH_ACCOUNT_CONFLICT) from exc
        finally:
            await tx.close()
        one_time = secrets.token_urlsafe(32)
        await _put(runtime.store, "oauth:code:" + _digest(one_time), str(user.id), CODE_TTL)
        return str(add_params_to_uri(target, [("code", one_time)]))
    except FlowFailed as failed:
        log.info("oauth_sign_in_failed", error=failed.code)
        return str(add_params_to_uri(target, [("error", failed.code)]))


async def _verified_identity(runtime: Runtime, code: str, flow: Flow) -> Identity:
    client = client_of(runtime)
    try:
        tokens = await client.exchange(code, redirect_uri=callback_url(runtime), verifier=flow.verifier)
        identity = await client.verify_id_token(tokens.id_token, nonce=flow.nonce, access_token=tokens.access_token)
    except ProviderError as exc:
        log.warning("oidc_provider_error", error=str(exc))
        raise FlowFailed(OAUTH_PROVIDER_ERROR) from exc
    except IdTokenInvalid as exc:
        log.warning("oidc_id_token_invalid", error=str(exc))
        raise FlowFailed(INVALID_ID_TOKEN) from exc
    return identity


def _actor(user: User) -> audit.Actor:
    return audit.Actor(id=str(user.id), type="user")


async def _sign_in_user(tx: Tx, runtime: Runtime, identity: Identity) -> User:
    user = await repo.by_google_id(tx.session, identity.sub, for_update=True)
    if user is not None and user.status == "deleted":
        user.google_id = None  # an erased account keeps no link; this is a new person now
        await tx.session.flush()
        user = None
    if user is None:
        if not identity.email:
            raise FlowFailed(OAUTH_EMAIL_MISSING)
        try:
            email = users.normalise_email(identity.email)
        except users.InvalidEmail as exc:
            raise FlowFailed(OAUTH_EMAIL_MISSING) from exc
        user = await users_repo.by_email(tx.session, email)
        if user is not None:
            user = await _link_by_email(tx, user, identity)
        else:
            user = await _create(tx, runtime, email, identity)
    if user.status == "suspended":
        raise FlowFailed(auth.SuspendedLogin.code)
    if runtime.settings.require_verified_email and not user.verified:
        raise FlowFailed(auth.EmailNotVerified.code)
    return user


async def _link_by_email(tx: Tx, user: User, identity: Identity) -> User:
    """An account with this email exists: Google's word that the email is verified is what
    lets its owner in; an unverified claim could be anybody's."""
    if user.status == "deleted":
        raise FlowFailed(ACCOUNT_DELETED)
    if not identity.email_verified:
        raise FlowFailed(auth.EmailNotVerified.code)
    if user.google_id is not None and user.google_id != identity.sub:
        raise FlowFailed(GOOGLE_ACCOUNT_MISMATCH)  # linked to another Google account already
    locked = await users_repo.get(tx.session, user.id, for_update=True)
    assert locked is not None
    before = await users.read(tx, locked.id)
    locked.google_id = identity.sub
    locked.verified = True
    locked.updated_at = utcnow()
    await tx.session.flush()
    after = await users.read(tx, locked.id)
    audit.record(
        tx,
        "auth.google_linked",
        "user",
        locked.id,
        before=before.snapshot(),
        after=after.snapshot(),
        actor=_actor(locked),
    )
    return locked


async def _create(tx: Tx, runtime: Runtime, email: str, identity: Identity) -> User:
    audit.set_actor(tx, auth.ANONYMOUS)
    try:
        view = await users.create(
            tx,
            runtime.store,
            None,
            email=email,
            password=None,
            display_name=identity.name,
            verified=identity.email_verified,
            action="auth.register_google",
        )
    except users.EmailTaken as exc:
        raise FlowFailed(OAUTH_ACCOUNT_CONFLICT) from exc
    user = await users_repo.get(tx.session, view.id, for_update=True)
    assert user is not None
    user.google_id = identity.sub
    await tx.session.flush()
    audit.record(tx, "auth.google_linked", "user", user.id, after={"google": True}, actor=_actor(user))
    return user


async def _link(tx: Tx, user_id: uuid.UUID, identity: Identity) -> None:
    """Link while signed in: the user proved both accounts, so the emails need not match."""
    user = await users_repo.get(tx.session, user_id, for_update=True)
    if user is None or user.status != "active":
        suspended = user is not None and user.status == "suspended"
        raise FlowFailed(auth.SuspendedLogin.code if suspended else LINK_FAILED)
    other = await repo.by_google_id(tx.session, identity.sub)
    if other is not None and other.id != user.id:
        raise FlowFailed(GOOGLE_ACCOUNT_IN_USE)
    if user.google_id is not None and user.google_id != identity.sub:
        raise FlowFailed(GOOGLE_ACCOUNT_MISMATCH)
    before = await users.read(tx, user.id)
    user.google_id = identity.sub
    if identity.email_verified and identity.email and identity.email.strip().lower() == user.email:
        user.verified = True
    user.updated_at = utcnow()
    await tx.session.flush()
    after = await users.read(tx, user.id)
    audit.record(
        tx, "auth.google_linked", "user", user.id, before=before.snapshot(), after=after.snapshot(), actor=_actor(user)
    )


# ---------------------------------------------------------------- 3. exchange


async def exchange(tx: Tx, runtime: Runtime, code: str) -> TokenPair:
    user_id = await _take(runtime.store, "oauth:code:" + _digest(code))
    if user_id is None:
        raise OAuthCodeInvalid
    user = await users_repo.get(tx.session, uuid.UUID(user_id))
    if user is None or user.status == "deleted":
        raise OAuthCodeInvalid
    if user.status != "active":
        raise auth.SuspendedLogin
    if runtime.settings.require_verified_email and not user.verified:
        raise auth.EmailNotVerified
    family = uuid.uuid4()
    pair = await auth._issue_pair(tx, runtime, user, family)  # login's own pair
    audit.record(
        tx, "auth.login", "user", user.id, after={"session": str(family), "method": "google"}, actor=_actor(user)
    )
    return pair
