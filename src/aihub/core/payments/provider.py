"""The payment provider interface and its Stripe implementation.

A provider does two things: open a hosted checkout for a payment, and tell a genuine event
from a forged one. Everything else (what a paid checkout grants, refunds, idempotency) is the
service's, so a second provider only adds a class here.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import stripe

from aihub.kit.errors import AppError, ServiceUnavailable
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

_PROVIDER: Slot[StripeProvider] = Slot("payments.provider")


class InvalidSignature(AppError):
    status_code, code, message = 400, "INVALID_SIGNATURE", "The event's signature is missing, wrong or too old"


class InvalidEvent(AppError):
    status_code, code, message = 400, "INVALID_EVENT", "The event body is not a provider event"


class PaymentsNotConfigured(ServiceUnavailable):
    code, message = "PAYMENTS_NOT_CONFIGURED", "Payments are not configured on this server"


class ProviderError(AppError):
    status_code, code, message = 502, "PAYMENT_PROVIDER_ERROR", "The payment provider failed; try again"


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    payment_id: uuid.UUID
    user_id: uuid.UUID
    email: str | None
    package_id: str
    package_name: str
    credits: int
    amount: int
    currency: str
    success_url: str
    cancel_url: str


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class Event:
    """A verified provider event: its id and type, and the object it is about. The object stays
    the provider's JSON; the few fields the service acts on are read here, each checked."""

    id: str
    type: str
    data: dict[str, Any]  # Stripe's data.object

    @property
    def object_id(self) -> str | None:
        """The object's id (a checkout session's)."""
        return _text(self.data.get("id"))

    @property
    def payment_intent(self) -> str | None:
        """The charge's PaymentIntent (how a payment is found again)."""
        return _text(self.data.get("payment_intent"))

    @property
    def paid(self) -> bool:
        """A checkout session whose payment went through (async methods report it later)."""
        return bool(self.data.get("payment_status") == "paid")

    @property
    def amount_refunded(self) -> int | None:
        """A charge's refunded total so far (minor units), when it is a positive integer."""
        value = self.data.get("amount_refunded")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return None
        return value

    @property
    def recorded(self) -> dict[str, object]:
        """What is kept of the object with the event: its kind and id, as sent."""
        return {"object": self.data.get("object"), "id": self.data.get("id")}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class Provider(Protocol):
    name: str

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession: ...

    def verify(self, body: bytes, signature: str | None, now: float | None = None) -> Event: ...


def verify_stripe_signature(body: bytes, header: str | None, secret: str, tolerance: int, now: float) -> None:
    """``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">[,v1=…]`` over the raw bytes.

    Several ``v1`` entries are allowed (Stripe sends two while a secret is being rolled); one
    matching is enough. A timestamp further than ``tolerance`` seconds from now, either way,
    is refused: a captured event cannot be replayed later.
    """
    if not header or not secret:
        raise InvalidSignature
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise InvalidSignature from exc
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature
    expected = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature
    if abs(now - timestamp) > tolerance:
        raise InvalidSignature("The event's signature is too old")


class StripeProvider:
    """Stripe Checkout through the official library, on its aiohttp client (never blocking the loop)."""

    name = "stripe"

    def __init__(self, api_key: str, api_base: str, timeout: float, webhook_secret: str, tolerance: int) -> None:
        self._http = stripe.AIOHTTPClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")},
            http_client=self._http,
            max_network_retries=2,  # safe: every create carries an idempotency key
        )
        self._secret = webhook_secret
        self._tolerance = tolerance

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        metadata = {
            "paymentId": str(request.payment_id),
            "userId": str(request.user_id),
            "packageId": request.package_id,
            "credits": str(request.credits),
        }
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": str(request.payment_id),
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency,
                        "unit_amount": request.amount,
                        "product_data": {
                            "name": request.package_name,
                            "description": f"{request.credits} credits",
                        },
                    },
                }
            ],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
        }
        if request.email:
            params["customer_email"] = request.email
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": f"aihub-checkout-{request.payment_id}"},
            )
        except stripe.StripeError as exc:
            # The library's message may quote the request; only its class and code go out.
            raise ProviderError(details={"provider": "stripe", "error": type(exc).__name__, "code": exc.code}) from exc
        if not session.url:
            raise ProviderError(details={"provider": "stripe", "error": "no checkout URL"})
        return CheckoutSession(id=session.id, url=session.url)

    def verify(self, body: bytes, signature: str | None, now: float | None = None) -> Event:
        verify_stripe_signature(body, signature, self._secret, self._tolerance, time.time() if now is None else now)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent from exc
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("id"), str)
            or not isinstance(event.get("type"), str)
            or not isinstance(event.get("data"), dict)
            or not isinstance(event["data"].get("object"), dict)
        ):
            raise InvalidEvent
        return Event(event["id"], event["type"], event["data"]["object"])

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def stripe_provider(runtime: Runtime) -> StripeProvider:
    """The process's Stripe client (one aiohttp session), built on first use."""
    existing = runtime.extras.get(_PROVIDER)
    if existing is None:
        settings = runtime.settings
        key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else ""
        secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else ""
        existing = StripeProvider(
            key or "sk_unset",
            settings.stripe_api_base,
            settings.stripe_timeout_seconds,
            secret,
            settings.stripe_webhook_tolerance_seconds,
        )
        runtime.extras.set(_PROVIDER, existing)
        runtime.on_close(existing.close)
    return existing


def require_checkout(runtime: Runtime) -> StripeProvider:
    if not runtime.settings.stripe_api_key:
        raise PaymentsNotConfigured
    return stripe_provider(runtime)
