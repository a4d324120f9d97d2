"""Settings, read once from the environment (prefix ``AIHUB_``).

Every deployment and every outside test relies on these names; the README's configuration
table documents each one. A bad value stops the process at start with a clear message.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "aihub-development-secret-change-me-0123456789"  # noqa: S105 - refused in production


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    """Every setting carries a ``description``: ``scripts/config_table.py`` renders them as the
    README's configuration table, and a test keeps the two in step. ``doc_default`` (in
    ``json_schema_extra``) replaces a default that reads badly in a table."""

    model_config = SettingsConfigDict(env_prefix="AIHUB_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = Field(
        default="development",
        description="`production` refuses the default JWT secret and secrets under 32 characters",
    )
    host: str = Field(default="127.0.0.1", description="listening address of every service (`0.0.0.0` in a container)")
    database_url: str = Field(
        default="sqlite+aiosqlite:///./aihub.db",
        description="`sqlite+aiosqlite:///path` (embedded) or `postgresql+asyncpg://user:pass@host:5432/db`",
    )
    redis_url: str | None = Field(
        default=None,
        description="`redis://host:port/db` (or `rediss://`, `unix://`); unset: in-process stores, one process only",
    )
    jwt_secret: str = Field(
        default=DEV_JWT_SECRET,
        description="HS256 signing secret (at least 32 characters in production)",
        json_schema_extra={"doc_default": "a public development secret"},
    )
    jwt_issuer: str = Field(default="aihub-auth", description="`iss` claim issued and expected")
    jwt_audience: str = Field(default="aihub", description="`aud` claim issued and expected")
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300, description="clock skew allowed on `exp`")
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400, description="access-token lifetime")
    refresh_token_ttl_seconds: int = Field(default=7 * 86_400, ge=300, description="refresh-token lifetime")
    # Two tabs refreshing at once present the same refresh token: within this grace the one
    # that lost the race gets the winner's new pair instead of tripping reuse detection.
    refresh_reuse_grace_seconds: int = Field(
        default=10,
        ge=0,
        le=60,
        description="seconds after a rotation in which the spent refresh token returns the same new pair "
        "(concurrent refreshes); later reuse revokes the family (0: no grace)",
    )
    # Asymmetric signing (auth signs; every service verifies). A private key is inline PEM or a
    # file path; RSA (>= 2048 bits) signs RS256, Ed25519 signs EdDSA. Its kid is the RFC 7638
    # thumbprint unless AIHUB_JWT_KEY_ID is set.
    jwt_private_key: str | None = Field(
        default=None,
        description="PEM (inline or a file path) of an RSA (≥ 2048 bits) or Ed25519 key: tokens are then "
        "signed RS256/EdDSA with a `kid`, and auth publishes `/.well-known/jwks.json`",
    )
    jwt_key_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="`kid` of the signing key",
        json_schema_extra={"doc_default": "the key's RFC 7638 thumbprint"},
    )
    # Public keys that still verify (rotation: the previous key until its tokens expire; or, on
    # a verify-only service such as core or the gateway, the signer's public key). Comma-separated.
    jwt_public_keys: str = Field(
        default="",
        description="comma-separated PEMs (or paths) that still verify: the previous key during a rotation, "
        "or the signer's key on verify-only services",
    )
    # HS256 with AIHUB_JWT_SECRET is accepted by default only while no asymmetric key is set;
    # set it to true during a switch from HS256 to RS256/EdDSA so older tokens keep working.
    jwt_accept_hs256: bool | None = Field(
        default=None,
        description="accept HS256 tokens signed with `AIHUB_JWT_SECRET` (set true during a switch to RS256/EdDSA)",
        json_schema_extra={"doc_default": "true only while no asymmetric key or JWKS URL is set"},
    )
    # Verify-only services (gateway, core) may load the signer's public keys from auth's JWKS
    # instead of AIHUB_JWT_PUBLIC_KEYS: fetched at start (readiness is 503 until it loaded),
    # refreshed every JWKS_REFRESH_SECONDS (sooner when the answer's Cache-Control max-age says
    # so), and fetched again when a token names an unknown kid, at most once per
    # JWKS_REFETCH_INTERVAL_SECONDS so forged kids cannot make the verifiers hammer auth.
    jwks_url: str = Field(
        default="",
        description="auth's key set, e.g. `http://auth:3001/.well-known/jwks.json`: the gateway and core take "
        "their verification keys from it (instead of, or on top of, `AIHUB_JWT_PUBLIC_KEYS`); only RS256/EdDSA "
        "signature keys are used from it, HS and `none` entries are ignored. Loaded in the background at start "
        '(`/health/ready` is 503 with `checks.jwks = "loading"` until then; start never fails because auth is '
        "down), refreshed periodically, and fetched again when a token names an unknown `kid`",
    )
    jwks_refresh_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="refresh period of the key set; a shorter `Cache-Control: max-age` in auth's answer wins. "
        'A failed refresh keeps the keys held (`checks.jwks = "stale"`) and retries with back-off',
    )
    jwks_refetch_interval_seconds: float = Field(
        default=10.0,
        ge=0.1,
        le=3_600,
        description="at most one fetch per this many seconds for tokens with an unknown `kid` (a burst waits on "
        "one request; forged kids get 401 `INVALID_TOKEN` without reaching auth)",
    )
    jwks_timeout_seconds: float = Field(default=3.0, gt=0, le=60, description="timeout of one JWKS request")
    # Login lockout: after this many failed attempts for one account within the window, further
    # attempts are refused (429) until the window ends. 0 turns the lockout off.
    login_max_failures: int = Field(
        default=5,
        ge=0,
        le=1_000,
        description="failed logins per account before further attempts get 429 for the lockout window (0: off)",
    )
    login_lockout_seconds: int = Field(default=900, ge=1, le=86_400, description="the login lockout window")
    service_token_max_days: int = Field(
        default=3_650, ge=1, description="longest `expiresInDays` a service token may have"
    )

    # How long a Sora generation may run before its credit hold expires (and releases itself).
    sora_hold_ttl_seconds: int = Field(
        default=3_600,
        ge=60,
        le=7 * 86_400,
        description="how long a video generation may take before its credit hold expires",
    )

    gateway_port: int = Field(default=3000, ge=1, le=65_535, description="gateway listening port")
    auth_port: int = Field(default=3001, ge=1, le=65_535, description="auth listening port")
    core_port: int = Field(default=3002, ge=1, le=65_535, description="core listening port")
    auth_url: str = Field(
        default="",
        description="auth upstream(s) of the gateway; a comma-separated list means several instances",
        json_schema_extra={"doc_default": "`http://127.0.0.1:<AIHUB_AUTH_PORT>`"},
    )
    core_url: str = Field(
        default="",
        description="core upstream(s) of the gateway; a comma-separated list means several instances",
        json_schema_extra={"doc_default": "`http://127.0.0.1:<AIHUB_CORE_PORT>`"},
    )
    mcp_url: str = Field(
        default="http://127.0.0.1:3003",
        description="MCP server upstream(s) of `/api/mcp` and `/api/ws` (not part of aihub)",
    )
    gateway_routes: str | None = Field(
        default=None,
        description="path of a YAML or TOML route file that replaces the default table "
        "(format in `src/aihub/gateway/routing.py`, example in `deploy/gateway-routes.yaml`)",
        json_schema_extra={"doc_default": "unset: the default table"},
    )
    cors_origins: str = Field(default="", description="comma-separated allowed CORS origins")
    console_enabled: bool = Field(
        default=True,
        description="the gateway serves the web console at `/console/` (static files; every action is an API call)",
    )

    # --- gateway (issue 8) ---
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400, description="the rate-limit window")
    # Rate limits per role, requests per window; 0 means unlimited (no limit headers are sent).
    rate_limit_guest: int = Field(
        default=10, ge=0, description="gateway requests per window without a token (0: unlimited)"
    )
    rate_limit_user: int = Field(default=60, ge=0, description="requests per window for role `user` (0: unlimited)")
    rate_limit_manager: int = Field(
        default=120, ge=0, description="requests per window for role `manager` (0: unlimited)"
    )
    rate_limit_admin: int = Field(default=0, ge=0, description="requests per window for role `admin` (0: unlimited)")
    rate_limit_service: int = Field(
        default=0, ge=0, description="requests per window for service tokens (0: unlimited)"
    )
    # Any other role, as "name=limit,name=limit"; a role missing everywhere gets the user limit.
    rate_limit_roles: str = Field(
        default="", description="limits of other roles, `name=limit,…`; an unknown role gets the user limit"
    )
    # Stricter per-route limits (per client IP, or per user once signed in) against brute force.
    rate_limit_login: int = Field(default=10, ge=0, description="`/api/auth/login` requests per window per client IP")
    rate_limit_register: int = Field(
        default=5, ge=0, description="`/api/auth/register` requests per window per client IP"
    )
    rate_limit_promo_redeem: int = Field(
        default=10, ge=0, description="`/api/promo-codes/redeem` requests per window per user"
    )
    # Off only for benchmarks of the bare proxy; never in production.
    rate_limit_enabled: bool = Field(default=True, description="rate limits on (off only to benchmark the bare proxy)")
    # Redis unreachable: True refuses requests with 503 instead of limiting per process.
    rate_limit_fail_closed: bool = Field(
        default=False, description="with Redis down: false limits per process (fail open), true answers 503"
    )
    # Peers whose X-Forwarded-For is believed (CIDRs); everyone else is the client itself.
    gateway_trusted_proxies: str = Field(default="", description="CIDRs whose `X-Forwarded-For` is believed")
    # Addresses refused outright (CIDRs), on top of the dynamic blocks made through the admin API.
    gateway_deny_cidrs: str = Field(
        default="", description="CIDRs always refused (on top of blocks made through the API)"
    )
    # Automatic temporary ban: this many rejections (429s, or failed authentications) in the window.
    gateway_ban_after_rate_limited: int = Field(
        default=50, ge=0, description="429s from one address within the ban window before it is banned (0: never)"
    )
    gateway_ban_after_auth_failures: int = Field(
        default=20,
        ge=0,
        description="failed authentications from one address within the ban window before a ban (0: never)",
    )
    gateway_ban_window_seconds: int = Field(default=60, ge=1, description="window that counts rejections for a ban")
    gateway_ban_seconds: int = Field(default=900, ge=1, description="length of an automatic ban")
    # Upstream behaviour: connect and response-header timeouts, health checks, passive ejection.
    gateway_connect_timeout_seconds: float = Field(default=3.0, gt=0, description="upstream connect timeout")
    gateway_timeout_seconds: float = Field(
        default=60.0, gt=0, description="upstream response timeout (per route in a route file)"
    )
    gateway_health_interval_seconds: float = Field(
        default=5.0, gt=0, description="interval of active upstream `/health` checks"
    )
    gateway_eject_after_failures: int = Field(
        default=3, ge=1, description="consecutive connection failures that eject an upstream instance"
    )
    gateway_eject_seconds: float = Field(default=10.0, gt=0, description="how long an ejected instance stays out")
    # WebSocket passthrough: largest message and how long a silent connection stays open.
    gateway_ws_max_message_bytes: int = Field(default=1_048_576, ge=1_024, description="largest WebSocket message")
    gateway_ws_idle_seconds: float = Field(default=300.0, gt=0, description="a silent WebSocket is closed after this")
    gateway_api_key_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="how long a gateway keeps an API key it resolved through core (0: ask core every time); "
        "revocation and a user's suspension take effect at once anyway (a marker read in the rate-limit round trip)",
    )
    # One JSON access-log line per request; off only for benchmarks.
    gateway_access_log: bool = Field(
        default=True, description="one JSON access-log line per request (off only for benchmarks)"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    max_body_bytes: int = Field(default=1_048_576, ge=1_024, description="request bodies above this get 413")
    metrics_allow: str = Field(
        default="127.0.0.0/8,::1", description="comma-separated networks allowed to read `/metrics`"
    )
    db_pool_size: int = Field(default=20, ge=1, le=500, description="PostgreSQL connections kept per process")
    db_pool_overflow: int = Field(
        default=10, ge=0, le=500, description="extra PostgreSQL connections per process under load"
    )
    permission_cache_ttl_seconds: int = Field(
        default=300, ge=0, description="lifetime of cached effective permissions (invalidated on every change anyway)"
    )
    admin_email: str = Field(default="admin@aihub.local", description="the admin created on a first embedded start")

    # Credit ledger.
    hold_default_ttl_seconds: int = Field(
        default=900, ge=1, le=7 * 86_400, description="default lifetime of a credit hold"
    )
    ledger_usage_writers: int = Field(
        default=2,
        ge=1,
        le=8,
        description="usage-event writers per core process on PostgreSQL, each with its own connection "
        "(users are split between them, so their batches commit side by side)",
    )
    hold_sweep_interval_seconds: float = Field(default=15.0, gt=0, description="how often expired holds are released")
    # Below this many available credits an account emits a low-balance event (0: off);
    # an account's own threshold overrides it.
    low_balance_threshold: int = Field(
        default=0,
        ge=0,
        description="below this many available credits an account emits a low-balance event, once per crossing "
        "(0: off; an account's own threshold wins)",
    )
    low_balance_webhook_url: str | None = Field(default=None, description="where low-balance events are POSTed")
    # Outgoing email (verification, password reset, low-balance alerts). Unset: emails are written
    # to the log instead, so the embedded default needs no mail server.
    smtp_url: str | None = Field(
        default=None,
        description="`smtp://[user:pass@]host:port` (STARTTLS when the server offers it), `smtps://…` (TLS from "
        "the start); unset: emails are written to the log",
    )
    email_from: str = Field(default="aihub <no-reply@aihub.local>", description="`From` of every email aihub sends")
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="timeout of one SMTP delivery")
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, description="timeout of one webhook delivery")
    # Identity: email verification, password reset, Google sign-in (OpenID Connect).
    public_url: str | None = Field(
        default=None,
        description="the gateway's public base URL: links in emails and the OAuth callback are built on it",
        json_schema_extra={"doc_default": "`http://127.0.0.1:<AIHUB_GATEWAY_PORT>`"},
    )
    require_verified_email: bool = Field(
        default=False, description="refuse sign-in (403 `EMAIL_NOT_VERIFIED`) until the user verified their email"
    )
    identity_email_limit: int = Field(
        default=5,
        ge=1,
        description="verification or password-reset requests per account (or email address) per "
        "`AIHUB_IDENTITY_EMAIL_WINDOW_SECONDS`",
    )
    identity_email_window_seconds: int = Field(
        default=3600, ge=1, le=86_400, description="the window of `AIHUB_IDENTITY_EMAIL_LIMIT`"
    )
    rate_limit_identity: int = Field(
        default=20,
        ge=0,
        description="gateway: requests per window per client IP to the public verification, password-reset and "
        "OAuth endpoints",
    )
    google_client_id: str | None = Field(default=None, description="Google OAuth client id (unset: no Google sign-in)")
    google_client_secret: SecretStr | None = Field(default=None, description="Google OAuth client secret")
    oidc_google_issuer: str = Field(
        default="https://accounts.google.com",
        description="OpenID provider of Google sign-in; its endpoints come from "
        "`<issuer>/.well-known/openid-configuration`",
    )
    oauth_redirect_uris: str = Field(
        default="",
        description="comma-separated client URIs that `/api/auth/oauth/google/start` may send the browser back to "
        "(the console, `<AIHUB_PUBLIC_URL>/console/`, is always allowed while it is enabled)",
    )
    oidc_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="timeout of one request to the OpenID provider"
    )
    webhook_max_attempts: int = Field(default=5, ge=1, le=20, description="webhook delivery attempts")
    webhook_backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay, doubled on each attempt")
    # Signed webhook endpoints (/api/webhooks): retried with doubling delays, capped, for a day.
    webhook_backoff_max_seconds: float = Field(
        default=3600.0, gt=0, description="longest delay between two attempts of one webhook endpoint delivery"
    )
    webhook_retry_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 7,
        description="a webhook endpoint delivery is retried until this many hours after its event, then marked failed",
    )
    webhook_retry_interval_seconds: float = Field(
        default=5.0, ge=0, description="how often the job runner sends webhook deliveries that are due again (0: never)"
    )
    webhook_allow_private_addresses: bool | None = Field(
        default=None,
        description="allow webhook endpoints on loopback, private and link-local addresses (a server-side request "
        "forgery risk: they reach internal services); unset: allowed in development and test, refused in production",
    )
    # Payments (Stripe Checkout).
    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe secret key (`sk_…`); unset: checkout answers 503 `PAYMENTS_NOT_CONFIGURED`"
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        description="signing secret (`whsec_…`) of the Stripe webhook endpoint `/api/payments/webhooks/stripe`; "
        "unset: every event is refused with 400 `INVALID_SIGNATURE`",
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com", description="Stripe API base URL (tests point it at a local fake Stripe)"
    )
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="timeout of one Stripe API call")
    stripe_webhook_tolerance_seconds: int = Field(
        default=300, ge=1, le=3600, description="how old (or early) a Stripe event's signed timestamp may be"
    )
    # How often core re-checks the whole ledger for the reconcile gauges (0: never).
    ledger_reconcile_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="how often the job runner re-checks the whole ledger for the `aihub_ledger_reconcile_*` "
        "metrics (0: never)",
    )
    # Promo codes: failed redemption attempts allowed per user and per client IP within the
    # window before further attempts get 429 PROMO_RATE_LIMITED (0 turns that limit off).
    promo_max_failures_per_user: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="failed promo redemptions (any refusal) per user in the window before 429 (0: off)",
    )
    # Per address only guesses count (codes that do not exist), and the default leaves room for
    # many people behind one NAT; a user's own limit above stays strict.
    promo_max_failures_per_ip: int = Field(
        default=100,
        ge=0,
        le=100_000,
        description="redemption attempts on codes that do not exist, per client IP in the window, before 429 (0: off)",
    )
    promo_failure_window_seconds: int = Field(
        default=900, ge=1, le=86_400, description="window that counts failed promo redemptions"
    )
    # Usage rollups (per UTC day x user x provider x model): how often the job brings them up to
    # date, and how many finished days each run recomputes again to catch events that committed late.
    usage_rollup_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="how often the daily usage rollups are brought up to date (0: never; reads then use the "
        "raw events)",
    )
    usage_rollup_lookback_days: int = Field(
        default=2,
        ge=0,
        le=366,
        description="finished days each rollup run recomputes again, to catch events that committed late",
    )
    # Reports: one whose period is longer than this many days (or any billing export of all
    # users) is answered 202 with a background job; its result is kept this long after it ends.
    report_sync_max_days: float = Field(
        default=31.0,
        gt=0,
        le=36_600,
        description="a billing report or analytics overview over a longer period is answered 202 with a "
        "background job (as is every all-users export, and any report asked with `Prefer: respond-async`)",
    )
    report_retention_seconds: int = Field(
        default=86_400, ge=60, le=90 * 86_400, description="how long a finished report job and its result are kept"
    )
    # A report job running longer than this fails with REPORT_TIMEOUT; one whose worker vanished
    # is failed by the sweep (REPORT_INTERRUPTED), which runs this often.
    report_job_timeout_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="a report job running longer fails with `REPORT_TIMEOUT`"
    )
    report_sweep_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="how often report jobs whose worker vanished are failed and expired ones deleted",
    )
    # Apply pending migrations when a service starts (under a lock on PostgreSQL); false when a
    # separate `aihub migrate` step owns schema changes.
    auto_migrate: bool = Field(
        default=True,
        description="apply pending migrations when a service starts (false when an `aihub migrate` step owns them)",
    )

    # --- operations (issue 9) ---
    # On SIGTERM a service first reports not-ready for this long (so load balancers, the
    # gateway included, stop sending), then stops accepting and finishes in-flight requests
    # within the timeout. SIGINT (Ctrl-C) skips the drain delay.
    shutdown_drain_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="on SIGTERM, how long a service answers 503 on `/health/ready` (and marks its responses "
        "draining) while still serving, before it stops accepting; SIGINT skips it",
    )
    shutdown_timeout_seconds: int = Field(
        default=20,
        ge=1,
        le=3_600,
        description="after the drain, how long in-flight requests (and running jobs) may take to finish "
        "before they are cancelled; the process then exits 0",
    )
    # Whether a serving core process also consumes the job queue and ticks the periodic jobs;
    # false when `aihub worker` processes do that work.
    core_run_jobs: bool = Field(
        default=True,
        description="a serving core process also consumes the job queue and runs the periodic jobs "
        "(false when `aihub worker` processes do)",
    )
    # `aihub worker`: port of its /health, /health/ready and /metrics (0: no HTTP at all).
    worker_port: int = Field(
        default=0,
        ge=0,
        le=65_535,
        description="port of `aihub worker`'s `/health`, `/health/ready` and `/metrics` (0: no HTTP)",
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("smtp://", "smtps://")):
            raise ValueError("must start with smtp:// or smtps://")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if not value else cls._issuer(value).rstrip("/")

    @field_validator("oidc_google_issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value  # kept exactly: the ID token's `iss` must equal it

    @field_validator("stripe_api_base")
    @classmethod
    def _stripe_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local fake)")
        return value.rstrip("/")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in _split(value):
            ipaddress.ip_network(part, strict=False)
        return value

    @field_validator("gateway_trusted_proxies", "gateway_deny_cidrs")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for part in _split(value):
            ipaddress.ip_network(part, strict=False)
        return value

    @field_validator("rate_limit_roles")
    @classmethod
    def _role_limits(cls, value: str) -> str:
        for part in _split(value):
            name, _, limit = part.partition("=")
            if not name.strip() or not limit.strip().isdigit():
                raise ValueError("must look like role=limit,role=limit")
        return value

    @model_validator(mode="after")
    def _keys_load(self) -> Settings:
        # Fail at start with the setting's name, not at the first token.
        from aihub.keys import load_signing_key, load_verify_keys

        if self.jwt_private_key:
            load_signing_key(self.jwt_private_key, self.jwt_key_id)
        load_verify_keys(self.jwt_public_keys)
        return self

    @property
    def hs256_accepted(self) -> bool:
        if self.jwt_accept_hs256 is not None:
            return self.jwt_accept_hs256
        return not (self.jwt_private_key or self.jwt_public_keys.strip() or self.jwks_url)

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.env == "production" and self.hs256_accepted:
            if self.jwt_secret == DEV_JWT_SECRET:
                raise ValueError("AIHUB_JWT_SECRET must be set in production (the default is public)")
            if len(self.jwt_secret) < 32:
                raise ValueError("AIHUB_JWT_SECRET must be at least 32 characters in production")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @cached_property
    def metrics_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(part, strict=False) for part in _split(self.metrics_allow)]

    @cached_property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(part, strict=False) for part in _split(self.gateway_trusted_proxies)]

    @cached_property
    def deny_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(part, strict=False) for part in _split(self.gateway_deny_cidrs)]

    @cached_property
    def role_rate_limits(self) -> dict[str, int]:
        """Requests per window by role; 0 is unlimited."""
        limits = {
            "guest": self.rate_limit_guest,
            "user": self.rate_limit_user,
            "manager": self.rate_limit_manager,
            "admin": self.rate_limit_admin,
            "service": self.rate_limit_service,
        }
        for part in _split(self.rate_limit_roles):
            name, _, limit = part.partition("=")
            limits[name.strip()] = int(limit)
        return limits

    @property
    def public_base_url(self) -> str:
        return self.public_url or f"http://127.0.0.1:{self.gateway_port}"

    @property
    def console_url(self) -> str:
        return f"{self.public_base_url}/console/"

    @property
    def google_sign_in_configured(self) -> bool:
        return bool(self.google_client_id and self.google_client_secret)

    @cached_property
    def oauth_redirect_uri_list(self) -> list[str]:
        uris = _split(self.oauth_redirect_uris)
        # The console (same origin, served by this gateway) spends the code itself, so it is
        # always a safe place to come back to; other clients must be listed by the operator.
        if self.console_enabled and self.console_url not in uris:
            uris.append(self.console_url)
        return uris

    def upstream_urls(self, service: Literal["auth", "core", "mcp"]) -> list[str]:
        explicit = {"auth": self.auth_url, "core": self.core_url, "mcp": self.mcp_url}[service]
        if explicit:
            return _split(explicit)
        port = {"auth": self.auth_port, "core": self.core_port, "mcp": 3003}[service]
        return [f"http://127.0.0.1:{port}"]
