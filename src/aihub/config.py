"""Settings, read once from the environment (prefix ``AIHUB_``).

Every deployment and every outside test relies on these names; the README's configuration
table documents each one. A bad value stops the process at start with a clear message.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "aihub-development-secret-change-me-0123456789"  # noqa: S105 - refused in production


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIHUB_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    database_url: str = "sqlite+aiosqlite:///./aihub.db"
    redis_url: str | None = None
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "aihub-auth"
    jwt_audience: str = "aihub"
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300)
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=7 * 86_400, ge=300)
    # Asymmetric signing (auth signs; every service verifies). A private key is inline PEM or a
    # file path; RSA (>= 2048 bits) signs RS256, Ed25519 signs EdDSA. Its kid is the RFC 7638
    # thumbprint unless AIHUB_JWT_KEY_ID is set.
    jwt_private_key: str | None = None
    jwt_key_id: str | None = Field(default=None, min_length=1, max_length=128)
    # Public keys that still verify (rotation: the previous key until its tokens expire; or, on
    # a verify-only service such as core or the gateway, the signer's public key). Comma-separated.
    jwt_public_keys: str = ""
    # HS256 with AIHUB_JWT_SECRET is accepted by default only while no asymmetric key is set;
    # set it to true during a switch from HS256 to RS256/EdDSA so older tokens keep working.
    jwt_accept_hs256: bool | None = None
    # Login lockout: after this many failed attempts for one account within the window, further
    # attempts are refused (429) until the window ends. 0 turns the lockout off.
    login_max_failures: int = Field(default=5, ge=0, le=1_000)
    login_lockout_seconds: int = Field(default=900, ge=1, le=86_400)
    service_token_max_days: int = Field(default=3_650, ge=1)

    # How long a Sora generation may run before its credit hold expires (and releases itself).
    sora_hold_ttl_seconds: int = Field(default=3_600, ge=60, le=7 * 86_400)

    gateway_port: int = Field(default=3000, ge=1, le=65_535)
    auth_port: int = Field(default=3001, ge=1, le=65_535)
    core_port: int = Field(default=3002, ge=1, le=65_535)
    auth_url: str = ""
    core_url: str = ""
    mcp_url: str = "http://127.0.0.1:3003"
    gateway_routes: str | None = None
    cors_origins: str = ""

    # --- gateway (issue 8) ---
    # Rate limits per role, requests per window; 0 means unlimited (no limit headers are sent).
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    rate_limit_guest: int = Field(default=10, ge=0)
    rate_limit_user: int = Field(default=60, ge=0)
    rate_limit_manager: int = Field(default=120, ge=0)
    rate_limit_admin: int = Field(default=0, ge=0)
    rate_limit_service: int = Field(default=0, ge=0)
    # Any other role, as "name=limit,name=limit"; a role missing everywhere gets the user limit.
    rate_limit_roles: str = ""
    # Stricter per-route limits (per client IP, or per user once signed in) against brute force.
    rate_limit_login: int = Field(default=10, ge=0)
    rate_limit_register: int = Field(default=5, ge=0)
    rate_limit_promo_redeem: int = Field(default=10, ge=0)
    # Off only for benchmarks of the bare proxy; never in production.
    rate_limit_enabled: bool = True
    # Redis unreachable: True refuses requests with 503 instead of limiting per process.
    rate_limit_fail_closed: bool = False
    # Peers whose X-Forwarded-For is believed (CIDRs); everyone else is the client itself.
    gateway_trusted_proxies: str = ""
    # Addresses refused outright (CIDRs), on top of the dynamic blocks made through the admin API.
    gateway_deny_cidrs: str = ""
    # Automatic temporary ban: this many rejections (429s, or failed authentications) in the window.
    gateway_ban_after_rate_limited: int = Field(default=50, ge=0)
    gateway_ban_after_auth_failures: int = Field(default=20, ge=0)
    gateway_ban_window_seconds: int = Field(default=60, ge=1)
    gateway_ban_seconds: int = Field(default=900, ge=1)
    # Upstream behaviour: connect and response-header timeouts, health checks, passive ejection.
    gateway_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    gateway_timeout_seconds: float = Field(default=60.0, gt=0)
    gateway_health_interval_seconds: float = Field(default=5.0, gt=0)
    gateway_eject_after_failures: int = Field(default=3, ge=1)
    gateway_eject_seconds: float = Field(default=10.0, gt=0)
    # WebSocket passthrough: largest message and how long a silent connection stays open.
    gateway_ws_max_message_bytes: int = Field(default=1_048_576, ge=1_024)
    gateway_ws_idle_seconds: float = Field(default=300.0, gt=0)
    # One JSON access-log line per request; off only for benchmarks.
    gateway_access_log: bool = True

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1_048_576, ge=1_024)
    metrics_allow: str = "127.0.0.0/8,::1"
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_pool_overflow: int = Field(default=10, ge=0, le=500)
    permission_cache_ttl_seconds: int = Field(default=300, ge=0)
    admin_email: str = "admin@aihub.local"

    # Credit ledger.
    hold_default_ttl_seconds: int = Field(default=900, ge=1, le=7 * 86_400)
    hold_sweep_interval_seconds: float = Field(default=15.0, gt=0)
    # Below this many available credits an account emits a low-balance event (0: off);
    # an account's own threshold overrides it.
    low_balance_threshold: int = Field(default=0, ge=0)
    low_balance_webhook_url: str | None = None
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_seconds: float = Field(default=1.0, ge=0)
    # How often core re-checks the whole ledger for the reconcile gauges (0: never).
    ledger_reconcile_interval_seconds: float = Field(default=3600.0, ge=0)
    # Promo codes: failed redemption attempts allowed per user and per client IP within the
    # window before further attempts get 429 PROMO_RATE_LIMITED (0 turns that limit off).
    promo_max_failures_per_user: int = Field(default=10, ge=0, le=100_000)
    promo_max_failures_per_ip: int = Field(default=10, ge=0, le=100_000)
    promo_failure_window_seconds: int = Field(default=900, ge=1, le=86_400)
    # Usage rollups (per UTC day x user x provider x model): how often the job brings them up to
    # date (0: never; reads then use raw events only), and how many finished days each run
    # recomputes again to catch events that committed late.
    usage_rollup_interval_seconds: float = Field(default=3600.0, ge=0)
    usage_rollup_lookback_days: int = Field(default=2, ge=0, le=366)
    # Reports: one whose period is longer than this many days (or any billing export of all
    # users) is answered 202 with a background job; its result is kept this long after it ends.
    report_sync_max_days: float = Field(default=31.0, gt=0, le=36_600)
    report_retention_seconds: int = Field(default=86_400, ge=60, le=90 * 86_400)
    # A report job running longer than this fails with REPORT_TIMEOUT; one whose worker vanished
    # is failed by the sweep (REPORT_INTERRUPTED), which runs this often.
    report_job_timeout_seconds: float = Field(default=900.0, gt=0, le=86_400)
    report_sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # Apply pending migrations when a service starts (under a lock on PostgreSQL); false when a
    # separate `aihub migrate` step owns schema changes.
    auto_migrate: bool = True

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
        from aihub.kit.keys import load_signing_key, load_verify_keys

        if self.jwt_private_key:
            load_signing_key(self.jwt_private_key, self.jwt_key_id)
        load_verify_keys(self.jwt_public_keys)
        return self

    @property
    def hs256_accepted(self) -> bool:
        if self.jwt_accept_hs256 is not None:
            return self.jwt_accept_hs256
        return not (self.jwt_private_key or self.jwt_public_keys.strip())

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

    def upstream_urls(self, service: Literal["auth", "core", "mcp"]) -> list[str]:
        explicit = {"auth": self.auth_url, "core": self.core_url, "mcp": self.mcp_url}[service]
        if explicit:
            return _split(explicit)
        port = {"auth": self.auth_port, "core": self.core_port, "mcp": 3003}[service]
        return [f"http://127.0.0.1:{port}"]
