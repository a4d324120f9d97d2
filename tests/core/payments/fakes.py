"""A fake Stripe API on loopback, speaking the real protocol, and Stripe's webhook signing.

The fake implements what aihub calls: ``POST /v1/checkout/sessions`` with Stripe's
form encoding (``line_items[0][price_data][unit_amount]=…``), bearer-key authentication,
``Idempotency-Key`` replays, and Stripe's error object. Events are signed the way Stripe signs
them: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import LocalServer

API_KEY = "sk_test_aihub_fake"
WEBHOOK_SECRET = "whsec_test_aihub_fake_secret"


@dataclass
class FakeStripe(LocalServer):
    port: int
    runner: Any = None
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    by_key: dict[str, str] = field(default_factory=dict)
    fail_next: int = 0  # answer this many creates with Stripe's 500 api_error
    shutdown_timeout = 0.1

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._create_session)
        return app

    @staticmethod
    def _error(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
        error: dict[str, Any] = {"type": kind, "message": message}
        if param:
            error["param"] = param
        return web.json_response({"error": error}, status=status)

    async def _create_session(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._error(400, "invalid_request_error", "Expected form encoding")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.requests.append({"form": form, "headers": dict(request.headers)})
        if self.fail_next > 0:
            self.fail_next -= 1
            return self._error(500, "api_error", "Something went wrong on Stripe's end")
        key = request.headers.get("Idempotency-Key")
        if key and key in self.by_key:
            return web.json_response(self.sessions[self.by_key[key]])
        for required in (
            "mode",
            "success_url",
            "cancel_url",
            "line_items[0][price_data][currency]",
            "line_items[0][price_data][unit_amount]",
            "line_items[0][price_data][product_data][name]",
            "line_items[0][quantity]",
        ):
            if not form.get(required):
                return self._error(400, "invalid_request_error", f"Missing required param: {required}.", required)
        session_id = "cs_test_" + secrets.token_hex(16)
        now = int(time.time())
        quantity = int(form["line_items[0][quantity]"])
        amount = int(form["line_items[0][price_data][unit_amount]"]) * quantity
        metadata = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": form["cancel_url"],
            "client_reference_id": form.get("client_reference_id"),
            "created": now,
            "currency": form["line_items[0][price_data][currency]"],
            "customer": None,
            "customer_email": form.get("customer_email"),
            "expires_at": now + 86_400,
            "livemode": False,
            "metadata": metadata,
            "mode": form["mode"],
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": form["success_url"],
            "url": f"https://checkout.stripe.com/c/pay/{session_id}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
        }
        self.sessions[session_id] = session
        if key:
            self.by_key[key] = session_id
        return web.json_response(session)


def signature(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    body = {
        "id": event_id or "evt_" + uuid.uuid4().hex[:24],
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj},
    }
    return orjson.dumps(body)


def completed(session: dict[str, Any], intent: str, *, paid: bool = True, event_id: str | None = None) -> bytes:
    obj = {
        **session,
        "status": "complete",
        "payment_status": "paid" if paid else "unpaid",
        "payment_intent": intent,
    }
    return event("checkout.session.completed", obj, event_id)


def refunded(intent: str, amount: int, amount_refunded: int, event_id: str | None = None) -> bytes:
    obj = {
        "id": "ch_" + uuid.uuid4().hex[:24],
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "currency": "usd",
        "paid": True,
        "payment_intent": intent,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }
    return event("charge.refunded", obj, event_id)
