"""Verification keys fetched from auth's JWKS (``AIHUB_JWKS_URL``) by the services that verify.

Life of the key set:

- **start**: the first fetch runs in the background, never blocking the start (in the
  all-in-one process auth is not listening yet when the gateway starts). Until it succeeds the
  service reports not-ready (``checks.jwks = "loading"``), failed attempts are retried with
  back-off (0.25 s doubling, at most 30 s), each attempt bounded by ``AIHUB_JWKS_TIMEOUT_SECONDS``.
- **refresh**: every ``AIHUB_JWKS_REFRESH_SECONDS``, or sooner when the answer's
  ``Cache-Control: max-age`` asks for it (never more often than the refetch interval). A failed
  refresh keeps the keys already loaded (``checks.jwks = "stale"``) and retries with back-off.
- **unknown kid**: a token naming a key we do not have triggers one more fetch, so a rotation
  on auth is picked up by the first token signed with the new key. Such fetches are
  single-flight (a burst of tokens with unknown kids waits on one request) and at most one per
  ``AIHUB_JWKS_REFETCH_INTERVAL_SECONDS`` (any fetch counts): forged kids cannot make every
  verifier hammer auth; inside the interval they are refused at once.

Only RSA (RS256) and Ed25519 (EdDSA) signature keys are taken from the set (see
``keys.key_from_jwk``); a symmetric, ``alg: none`` or otherwise unusable entry is skipped with a
log line. A set with no usable key counts as a failed fetch: one misconfigured auth instance
must not wipe the keys every verifier holds. A key that disappears from the set (or changes
under the same kid) empties the codec's verified-token cache, so a withdrawn key stops
verifying at once rather than when its cached tokens expire.

The HTTP client is aiohttp (never httpx on a request path); the hot path, a token whose kid is
known, never reaches this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Literal

import aiohttp
import structlog
from prometheus_client import Counter
from yarl import URL

from aihub.config import Settings
from aihub.keys import KeyConfigError, VerifyKey, key_from_jwk, public_jwk
from aihub.kit.jsonutil import loads

log = structlog.get_logger("aihub.jwks")

FETCHES = Counter("aihub_jwks_fetches_total", "JWKS fetches by result (ok, failed)", ["result"])
THROTTLED = Counter(
    "aihub_jwks_refetch_throttled_total",
    "Tokens with an unknown kid refused without a fetch because one ran within the refetch interval",
)
_FETCH_OK, _FETCH_FAILED = FETCHES.labels("ok"), FETCHES.labels("failed")

_MAX_BYTES = 256 * 1024  # a key set is a few kilobytes; anything far larger is not one
_FIRST_BACKOFF = 0.25
_MAX_BACKOFF = 30.0

JwksState = Literal["loading", "ok", "stale"]


class JwksError(Exception):
    """A fetch that gave no usable key set (kept internal: callers see a failed fetch)."""


def max_age(cache_control: str | None) -> float | None:
    """Seconds from ``Cache-Control`` (``no-cache``/``no-store`` mean 0), or None when absent."""
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        name = name.lower()
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age":
            try:
                return float(max(0, int(value.strip().strip('"'))))
            except ValueError:
                return None
    return None


def next_refresh(wanted: float | None, *, refresh: float, floor: float) -> float:
    """The answer's max-age when it asks for sooner than ``refresh``, never under ``floor``."""
    return refresh if wanted is None else max(floor, min(wanted, refresh))


def parse_key_set(body: bytes) -> dict[str, VerifyKey]:
    try:
        document = loads(body)
    except ValueError as exc:
        raise JwksError("the key set is not JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError("the key set has no 'keys' list")
    keys: dict[str, VerifyKey] = {}
    for entry in entries:
        try:
            key = key_from_jwk(entry)
        except KeyConfigError as exc:
            log.warning("jwks_key_skipped", reason=str(exc))
            continue
        keys.setdefault(key.kid, key)  # the first of a repeated kid wins, as auth lists the signer first
    if not keys:
        raise JwksError("the key set holds no usable RS256 or EdDSA key")
    return keys


def _changed(old: dict[str, VerifyKey], new: dict[str, VerifyKey]) -> bool:
    """True when a key we held is gone or now means another key material."""
    return any(kid not in new or public_jwk(new[kid].key) != public_jwk(key.key) for kid, key in old.items())


class JwksClient:
    def __init__(
        self,
        url: str,
        *,
        refresh_seconds: float,
        refetch_interval: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.refetch_interval = refetch_interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.keys: dict[str, VerifyKey] = {}  # replaced whole, never mutated: readers need no lock
        self.loaded = False
        self.failing = False
        # Called when a key is withdrawn (the codec empties its verified-token cache).
        self.on_withdrawn: list[Callable[[], None]] = []
        self._shown = str(URL(url).with_user(None).with_query(None))  # never credentials in a log
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[float | None] | None = None
        self._clock = clock  # a test's own clock makes the rate limit checkable without waiting
        self._last_attempt = -math.inf
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> JwksClient | None:
        if not settings.jwks_url:
            return None
        return cls(
            settings.jwks_url,
            refresh_seconds=settings.jwks_refresh_seconds,
            refetch_interval=settings.jwks_refetch_interval_seconds,
            timeout=settings.jwks_timeout_seconds,
        )

    @property
    def state(self) -> JwksState:
        if not self.loaded:
            return "loading"
        return "stale" if self.failing else "ok"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Begin loading and refreshing in the background. Idempotent: the gateway and the
        FastAPI services may share one codec in the all-in-one process."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _refresh_forever(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            delay = await self._fetch_shared()
            if delay is None:
                delay, backoff = backoff, min(backoff * 2, _MAX_BACKOFF, self.refresh_seconds)
            else:
                backoff = _FIRST_BACKOFF
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ unknown kid
    async def refetch(self, kid: str) -> bool:
        """Fetch the key set again for a token naming ``kid``; True when ``kid`` is known after.

        Joins a fetch already running; starts one only when none started within the refetch
        interval, so any number of forged kids costs auth at most one request per interval.
        """
        if kid in self.keys:
            return True  # another request's fetch brought it meanwhile
        if self._inflight is None and self._clock() - self._last_attempt < self.refetch_interval:
            THROTTLED.inc()
            return False
        await self._fetch_shared()
        return kid in self.keys

    # ------------------------------------------------------------------ fetching
    async def _fetch_shared(self) -> float | None:
        """The running fetch, or a new one; shielded so that a client who goes away does not
        cancel the fetch other requests wait on."""
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[float | None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> float | None:
        """One request; the delay until the next refresh, or None when it failed."""
        try:
            body, cache_control = await self._get()
            keys = parse_key_set(body)
        except (aiohttp.ClientError, TimeoutError, OSError, JwksError) as exc:
            _FETCH_FAILED.inc()
            self.failing = True
            log.warning("jwks_fetch_failed", url=self._shown, error=str(exc) or type(exc).__name__)
            return None
        _FETCH_OK.inc()
        withdrawn = _changed(self.keys, keys)
        if set(keys) != set(self.keys) or not self.loaded:
            log.info("jwks_loaded", url=self._shown, kids=sorted(keys))
        self.keys, self.loaded, self.failing = keys, True, False
        if withdrawn:
            for callback in self.on_withdrawn:
                callback()
        return next_refresh(max_age(cache_control), refresh=self.refresh_seconds, floor=self.refetch_interval)

    async def _get(self) -> tuple[bytes, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, cookie_jar=aiohttp.DummyCookieJar())
        async with self._session.get(self.url, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise JwksError(f"the key set answered HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65_536):
                body += chunk
                if len(body) > _MAX_BYTES:
                    raise JwksError("the key set is too large")
            return bytes(body), resp.headers.get("Cache-Control")
